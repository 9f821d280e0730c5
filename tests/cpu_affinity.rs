//! Workers kept to a CPU each when they are as many as the CPUs the process may run on, those were
//! set apart for it or `cpu_affinity = "on"` asks, and more than one of them has connections
//! (docs/design.md#workers-on-cpus-of-their-own), read from `/proc`: each thread's own affinity,
//! under a mask set as a container's cpuset would set it (`taskset`).
mod common;

use common::*;

/// A CPU list as `/proc` and `taskset` write it: `0-2,5`.
fn cpu_list(text: &str) -> Vec<usize> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .flat_map(|part| match part.split_once('-') {
            Some((first, last)) => first.parse().unwrap()..=last.parse().unwrap(),
            None => part.parse().unwrap()..=part.parse().unwrap(),
        })
        .collect()
}

/// The CPUs a task may run on, from its `status` file.
fn allowed_cpus(status: &str) -> Vec<usize> {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list in status");
    cpu_list(line.trim())
}

/// The threads of process `pid` by name, each with the CPUs it may run on (a thread that ends
/// while they are read, such as an idle blocking thread, is left out).
fn threads(pid: u32) -> Vec<(String, Vec<usize>)> {
    let mut threads: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| {
            let task = task.ok()?.path();
            let name = std::fs::read_to_string(task.join("comm")).ok()?;
            let status = std::fs::read_to_string(task.join("status")).ok()?;
            Some((name.trim().to_owned(), allowed_cpus(&status)))
        })
        .collect();
    threads.sort();
    threads
}

/// The CPUs of the threads named `name` (one list per thread).
fn cpus_of(threads: &[(String, Vec<usize>)], name: &str) -> Vec<Vec<usize>> {
    threads
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, cpus)| cpus.clone())
        .collect()
}

/// Two CPUs this test may use, or `None` (and a skip, which CI does not allow) on a machine with
/// fewer.
fn two_cpus(test: &str) -> Option<[usize; 2]> {
    let mine = allowed_cpus(&std::fs::read_to_string("/proc/self/status").unwrap());
    match mine[..] {
        [a, b, ..] => Some([a, b]),
        _ => {
            skip_unless_ci(test, "this machine lets the test use fewer than two CPUs");
            None
        }
    }
}

/// A configuration with `server` keys and its password, in a directory of their own.
fn write_config(fake_url: &str, server: &str) -> (TempDir, std::path::PathBuf) {
    let dir = tempdir();
    std::fs::write(dir.join("password"), format!("{PASSWORD}\n")).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(
        &path,
        config_toml(fake_url, server, &profile_from_file("password", "")),
    )
    .unwrap();
    (dir, path)
}

async fn served(binary: &Binary) {
    let response = reqwest::get(format!("{}/v3/user", binary.url))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// How many CPUs the machine has online.
fn online_cpus() -> usize {
    cpu_list(
        std::fs::read_to_string("/sys/devices/system/cpu/online")
            .unwrap()
            .trim(),
    )
    .len()
}

/// Each worker's CPUs, by worker.
fn worker_cpus(binary: &Binary) -> Vec<Vec<Vec<usize>>> {
    let threads = threads(binary.child.id());
    ["cma-proxy-0", "cma-proxy-1"]
        .iter()
        .map(|worker| cpus_of(&threads, worker))
        .collect()
}

/// Enough open connections that both workers have some: the first worker takes 16 before the
/// next gets any (the acceptor's fill threshold), so 17 (docs/design.md#listeners-and-limits).
async fn connections_on_both_workers(binary: &Binary) -> Vec<tokio::net::TcpStream> {
    let address = binary.url.trim_start_matches("http://").to_owned();
    let mut open = Vec::new();
    for _ in 0..17 {
        open.push(tokio::net::TcpStream::connect(&address).await.unwrap());
    }
    open
}

/// Waits until each worker's CPUs are `expected` (by worker), as the workers' placement changes
/// when their connections open and end.
async fn workers_on(binary: &Binary, expected: [[Vec<usize>; 1]; 2]) {
    eventually(10, &format!("workers on {expected:?}"), || async {
        worker_cpus(binary) == expected
    })
    .await;
}

/// With connections on both workers, they still run on either CPU: checked once a request on a
/// newer connection is answered, by which time the acceptor has handed out every connection
/// before it (it takes them in order).
async fn still_anywhere(binary: &Binary, [a, b]: [usize; 2]) {
    served(binary).await;
    assert_eq!(
        worker_cpus(binary),
        [[vec![a, b]], [vec![a, b]]],
        "{}",
        binary.log_text()
    );
}

#[tokio::test]
async fn workers_keep_to_a_cpu_each_while_both_have_connections_until_a_restart() {
    let test = "workers_keep_to_a_cpu_each_while_both_have_connections_until_a_restart";
    let Some([a, b]) = two_cpus(test) else {
        return;
    };
    let fake = fake().await;
    // `workers = 0`: one per CPU the process may use, here two.
    let on = "workers = 0\ncpu_affinity = \"on\"";
    let (_dir, config) = write_config(&fake.url(), on);
    let mut binary = Binary::start_on_cpus(&config, &[a, b]);
    binary.wait_for_logged("each worker keeps to a CPU of its own while more than one has");
    served(&binary).await;
    // One worker with connections (a handful all go to it) runs where the kernel puts it.
    assert_eq!(worker_cpus(&binary), [[vec![a, b]], [vec![a, b]]]);

    let spread = |binary: &Binary| {
        let threads = threads(binary.child.id());
        assert_eq!(cpus_of(&threads, "cma-proxy-0"), [vec![a]], "{threads:?}");
        assert_eq!(cpus_of(&threads, "cma-proxy-1"), [vec![b]], "{threads:?}");
        // Only the workers: the acceptor and the rest go where the kernel puts them.
        assert_eq!(cpus_of(&threads, "cma-accept"), [vec![a, b]], "{threads:?}");
    };
    let open = connections_on_both_workers(&binary).await;
    workers_on(&binary, [[vec![a]], [vec![b]]]).await;
    spread(&binary);
    // The second worker's connection ends: the first may go anywhere again.
    drop(open);
    workers_on(&binary, [[vec![a, b]], [vec![a, b]]]).await;

    // The workers are made at start: turning it off takes a restart, and says so.
    let off = "workers = 0\ncpu_affinity = \"off\"";
    std::fs::write(
        &config,
        config_toml(&fake.url(), off, &profile_from_file("password", "")),
    )
    .unwrap();
    binary.signal("HUP");
    binary.wait_for_line("server.workers and server.cpu_affinity change only with a restart");
    let open = connections_on_both_workers(&binary).await;
    workers_on(&binary, [[vec![a]], [vec![b]]]).await;
    spread(&binary);
    served(&binary).await;
    drop(open);
    drop(binary);

    let binary = Binary::start_on_cpus(&config, &[a, b]);
    served(&binary).await;
    let open = connections_on_both_workers(&binary).await;
    still_anywhere(&binary, [a, b]).await;
    drop(open);
}

/// By default the workers keep to CPUs only when the process was given CPUs of its own: fewer
/// than the machine has, as a container's exclusive cpuset. Here the two CPUs are all of this
/// machine's (CI's has two), or two of more.
#[tokio::test]
async fn by_default_only_cpus_set_apart_for_the_process_are_kept_to() {
    let Some([a, b]) = two_cpus("by_default_only_cpus_set_apart_for_the_process_are_kept_to")
    else {
        return;
    };
    let fake = fake().await;
    let (_dir, config) = write_config(&fake.url(), "workers = 0");
    let binary = Binary::start_on_cpus(&config, &[a, b]);
    served(&binary).await;
    let set_apart = online_cpus() > 2;
    let open = connections_on_both_workers(&binary).await;
    if set_apart {
        workers_on(&binary, [[vec![a]], [vec![b]]]).await;
    } else {
        still_anywhere(&binary, [a, b]).await;
    }
    drop(open);
    assert_eq!(
        binary
            .log_text()
            .contains("each worker keeps to a CPU of its own"),
        set_apart
    );
}

#[tokio::test]
async fn with_more_cpus_than_workers_the_kernel_places_them() {
    let Some([a, b]) = two_cpus("with_more_cpus_than_workers_the_kernel_places_them") else {
        return;
    };
    let fake = fake().await;
    let (_dir, config) = write_config(&fake.url(), "workers = 1\ncpu_affinity = \"on\"");
    let binary = Binary::start_on_cpus(&config, &[a, b]);
    served(&binary).await;
    let threads = threads(binary.child.id());
    assert_eq!(
        cpus_of(&threads, "cma-proxy-0"),
        [vec![a, b]],
        "{threads:?}"
    );
    assert!(
        !binary.log_text().contains("keeps to a CPU"),
        "{}",
        binary.log_text()
    );
}

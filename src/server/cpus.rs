//! Which CPU each worker keeps to (docs/design.md#workers-on-cpus-of-their-own). When the
//! workers are as many as the CPUs the process may run on, the kernel can still put two of them on
//! one CPU while the other runs something else; each then has work at every moment, so they take
//! turns a scheduler tick at a time (4 ms at 250 Hz), and every connection of the one waiting waits
//! with it. Kept to a CPU each, two workers never share one. That is only while two or more have
//! connections: a handful of connections all go to one worker, and that one, kept to a CPU, could
//! not leave it when the application or another process took it ([`Placement`]).
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rustix::process::Pid;
use rustix::thread::{CpuSet, gettid, sched_getaffinity, sched_setaffinity};

use crate::config::CpuAffinity;

/// The CPUs the process may run on (`allowed`, its affinity mask) and how many the machine has
/// online.
pub struct Cpus {
    pub allowed: Vec<usize>,
    pub online: Option<usize>,
}

impl Cpus {
    /// Read for the calling thread (a thread made later inherits its mask).
    pub fn of_this_process() -> Cpus {
        let allowed = sched_getaffinity(None)
            .map(|set| {
                (0..CpuSet::MAX_CPU)
                    .filter(|&cpu| set.is_set(cpu))
                    .collect()
            })
            .unwrap_or_default();
        let online = std::fs::read_to_string("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|list| count_list(list.trim()));
        Cpus { allowed, online }
    }

    /// Whether the process was given CPUs of its own: a mask narrower than the machine's online
    /// CPUs is one someone set (a container's exclusive cpuset under Kubernetes' static CPU
    /// manager policy, `docker --cpuset-cpus`, `taskset`, systemd's `CPUAffinity=`).
    fn set_apart(&self) -> bool {
        self.online
            .is_some_and(|online| self.allowed.len() < online)
    }
}

/// How many CPUs a list as the kernel writes it names (`0-3,8`), or `None` if it is not one.
fn count_list(list: &str) -> Option<usize> {
    list.split(',').try_fold(0, |count, part| {
        let (first, last) = part.split_once('-').unwrap_or((part, part));
        let (first, last): (usize, usize) = (first.parse().ok()?, last.parse().ok()?);
        Some(count + last.checked_sub(first)? + 1)
    })
}

/// The CPU for each worker, by index, or `None` to leave their placement to the kernel. Only
/// with at least two workers and exactly as many allowed CPUs (with fewer, some would share one
/// anyway; with more, the kernel has room to keep them apart); and, with `Auto`, only when those
/// CPUs were set apart for the process. Without that, as in a pod with no CPU limit on a shared
/// node (where `workers = 0` is one per node CPU), a pinned worker could not leave a CPU that
/// another pod keeps busy; the kernel's placement is the better default there.
pub fn plan(workers: usize, cpus: &Cpus, affinity: CpuAffinity) -> Option<Vec<usize>> {
    let fits = workers >= 2 && cpus.allowed.len() == workers;
    let pin = match affinity {
        CpuAffinity::Auto => fits && cpus.set_apart(),
        CpuAffinity::On => fits,
        CpuAffinity::Off => false,
    };
    pin.then(|| cpus.allowed.clone())
}

/// Where the workers run: each on a CPU of its own (`cpus[worker]`) while two or more of them have
/// connections, anywhere in the process's CPUs (`allowed`) while at most one does. The acceptor
/// hands a worker's first connection ([`Placement::opened`]), the worker closes its last
/// ([`Placement::emptied`]); only those moments, not requests, touch it.
pub struct Placement {
    cpus: Vec<usize>,
    allowed: Vec<usize>,
    /// Each worker's thread id while its thread runs, 0 before and after.
    threads: Vec<AtomicI32>,
    busy: AtomicUsize,
    apart: Mutex<bool>,
    /// Whether a move has failed and been logged as a warning; later failures are logged at
    /// debug level, since each change of placement would repeat the same one.
    warned: AtomicBool,
}

impl Placement {
    /// For workers whose CPUs are `cpus` (from [`plan`]), in a process that may run on `allowed`.
    pub fn new(cpus: Vec<usize>, allowed: Vec<usize>) -> Placement {
        Placement {
            threads: cpus.iter().map(|_| AtomicI32::new(0)).collect(),
            cpus,
            allowed,
            busy: AtomicUsize::new(0),
            apart: Mutex::new(false),
            warned: AtomicBool::new(false),
        }
    }

    /// Called on worker `index`'s thread as it starts, before it has a connection; the thread is
    /// placed until the guard drops (when the worker's task ends, or unwinds), so that a thread
    /// id the kernel gives out again later is never touched.
    pub fn register(self: &Arc<Self>, index: usize) -> Registered {
        self.threads[index].store(gettid().as_raw_nonzero().get(), Ordering::SeqCst);
        Registered {
            placement: self.clone(),
            index,
        }
    }

    /// A worker had no connection and now has one.
    pub fn opened(&self) {
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.settle();
    }

    /// A worker's last connection has ended.
    pub fn emptied(&self) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
        self.settle();
    }

    /// Whether the workers are kept apart now.
    pub fn apart(&self) -> bool {
        *self.apart.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps the workers apart or lets them go, as the count of busy workers now asks. Under the
    /// lock, so that of two changes at once the later one's count decides.
    fn settle(&self) {
        let mut apart = self.apart.lock().unwrap_or_else(|e| e.into_inner());
        let wanted = self.busy.load(Ordering::SeqCst) >= 2;
        if *apart == wanted {
            return;
        }
        *apart = wanted;
        for (index, thread) in self.threads.iter().enumerate() {
            let Some(thread) = Pid::from_raw(thread.load(Ordering::SeqCst)) else {
                continue;
            };
            let cpus = if wanted {
                std::slice::from_ref(&self.cpus[index])
            } else {
                &self.allowed[..]
            };
            let mut set = CpuSet::new();
            cpus.iter().for_each(|&cpu| set.set(cpu));
            if let Err(e) = sched_setaffinity(Some(thread), &set) {
                // A seccomp profile that forbids it: the kernel places the worker. Said once,
                // since every later change of placement would fail the same way.
                if self.warned.swap(true, Ordering::Relaxed) {
                    tracing::debug!(worker = index, "could not set the worker's CPUs: {e}");
                } else {
                    tracing::warn!(
                        worker = index,
                        "could not set the worker's CPUs: {e}; the kernel places the workers \
                         (logged once; later failures at debug level)"
                    );
                }
            }
        }
        tracing::debug!(apart = wanted, "workers' placement");
    }
}

/// A worker's thread, registered with the [`Placement`] until this drops.
pub struct Registered {
    placement: Arc<Placement>,
    index: usize,
}

impl Drop for Registered {
    fn drop(&mut self) {
        // Under the lock, so that a change in progress does not touch the thread after this.
        let _apart = self
            .placement
            .apart
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        self.placement.threads[self.index].store(0, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(allowed: &[usize], online: Option<usize>) -> Cpus {
        Cpus {
            allowed: allowed.to_vec(),
            online,
        }
    }

    #[test]
    fn workers_keep_to_a_cpu_each_only_on_cpus_of_their_own_and_as_many() {
        use CpuAffinity::{Auto, Off, On};
        // CPUs set apart for the process (an exclusive cpuset), whichever they are.
        assert_eq!(plan(2, &cpus(&[4, 9], Some(16)), Auto), Some(vec![4, 9]));
        assert_eq!(
            plan(3, &cpus(&[0, 1, 2], Some(4)), Auto),
            Some(vec![0, 1, 2])
        );
        // Every CPU of the machine (a pod without a CPU limit on a shared node, or a VM): only
        // when asked for.
        assert_eq!(plan(2, &cpus(&[0, 1], Some(2)), Auto), None);
        assert_eq!(plan(2, &cpus(&[0, 1], Some(2)), On), Some(vec![0, 1]));
        // The machine's count unknown: not known to be set apart.
        assert_eq!(plan(2, &cpus(&[0, 1], None), Auto), None);
        // More CPUs than workers, fewer, a single worker, an unknown mask: never.
        for affinity in [Auto, On] {
            assert_eq!(plan(2, &cpus(&[0, 1, 2, 3], Some(8)), affinity), None);
            assert_eq!(plan(4, &cpus(&[0, 1], Some(8)), affinity), None);
            assert_eq!(plan(1, &cpus(&[3], Some(8)), affinity), None);
            assert_eq!(plan(2, &cpus(&[], Some(8)), affinity), None);
        }
        assert_eq!(plan(2, &cpus(&[4, 9], Some(16)), Off), None);
    }

    #[test]
    fn workers_are_kept_apart_only_while_two_have_connections() {
        // No thread registered: only the decision is made.
        let placement = Placement::new(vec![0, 1, 2], vec![0, 1, 2]);
        assert!(!placement.apart());
        placement.opened();
        assert!(
            !placement.apart(),
            "one busy worker runs where the kernel puts it"
        );
        placement.opened();
        assert!(placement.apart());
        placement.opened();
        placement.emptied();
        assert!(placement.apart(), "two are still busy");
        placement.emptied();
        assert!(!placement.apart());
        placement.emptied();
        assert!(!placement.apart());
    }

    #[test]
    fn a_registered_thread_is_moved_and_let_go_and_forgotten_when_it_ends() {
        let allowed = Cpus::of_this_process().allowed;
        let first = allowed[0];
        let placement = Arc::new(Placement::new(vec![first, first], allowed.clone()));
        // The calling thread's own CPUs.
        let mine = || Cpus::of_this_process().allowed;
        let in_thread = placement.clone();
        std::thread::spawn(move || {
            let placement = in_thread;
            let registered = placement.register(0);
            placement.opened();
            placement.opened();
            assert_eq!(mine(), [first]);
            placement.emptied();
            assert_eq!(mine(), allowed);
            drop(registered);
            placement.opened();
            assert_eq!(mine(), allowed, "a thread no longer registered stays");
        })
        .join()
        .unwrap();
        assert!(placement.apart());
        assert_eq!(placement.threads[0].load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_move_the_kernel_refuses_is_warned_of_once() {
        // A CPU the machine does not have: the kernel refuses the move, as a seccomp profile
        // that forbids the call would.
        let absent = CpuSet::MAX_CPU - 1;
        let allowed = Cpus::of_this_process().allowed;
        let placement = Arc::new(Placement::new(vec![absent, absent], allowed.clone()));
        let log = Log::default();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(log.clone())
            .finish();
        std::thread::spawn(move || {
            tracing::subscriber::with_default(subscriber, || {
                let _registered = placement.register(0);
                for _ in 0..3 {
                    placement.opened();
                    placement.opened();
                    assert!(placement.apart());
                    assert_eq!(
                        Cpus::of_this_process().allowed,
                        allowed,
                        "left where it was"
                    );
                    placement.emptied();
                    placement.emptied();
                }
            })
        })
        .join()
        .unwrap();
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let failures: Vec<&str> = text
            .lines()
            .filter(|line| line.contains("could not set the worker's CPUs"))
            .collect();
        assert_eq!(failures.len(), 3, "{text}");
        assert!(failures[0].contains("WARN"), "{text}");
        assert!(
            failures[1..].iter().all(|line| line.contains("DEBUG")),
            "{text}"
        );
    }

    /// What a test's subscriber writes.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Log {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Log {
        type Writer = Log;

        fn make_writer(&'a self) -> Log {
            self.clone()
        }
    }

    #[test]
    fn cpu_lists_are_counted_as_the_kernel_writes_them() {
        assert_eq!(count_list("0"), Some(1));
        assert_eq!(count_list("0-3"), Some(4));
        assert_eq!(count_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_list(""), None);
        assert_eq!(count_list("3-1"), None);
        assert_eq!(count_list("a"), None);
    }
}

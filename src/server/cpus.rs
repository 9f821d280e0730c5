//! Which CPU each worker keeps to (docs/design.md#workers-on-cpus-of-their-own). When the
//! workers are as many as the CPUs the process may run on, the kernel can still put two of them on
//! one CPU while the other runs something else; each then has work at every moment, so they take
//! turns a scheduler tick at a time (4 ms at 250 Hz), and every connection of the one waiting waits
//! with it. Kept to a CPU each, two workers never share one.
use core_affinity::CoreId;

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
        let allowed = core_affinity::get_core_ids()
            .unwrap_or_default()
            .into_iter()
            .map(|core| core.id)
            .collect();
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

/// Keeps the calling thread, and the threads it makes from now on, to `cpu`. A refusal (a seccomp
/// profile that forbids it) is logged and leaves the thread where the kernel puts it.
pub fn keep_to(cpu: usize, thread: &str) {
    if core_affinity::set_for_current(CoreId { id: cpu }) {
        tracing::debug!(thread, cpu, "worker keeps to its CPU");
    } else {
        tracing::warn!(
            thread,
            cpu,
            "could not keep the worker to a CPU of its own; the kernel places it"
        );
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
    fn cpu_lists_are_counted_as_the_kernel_writes_them() {
        assert_eq!(count_list("0"), Some(1));
        assert_eq!(count_list("0-3"), Some(4));
        assert_eq!(count_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_list(""), None);
        assert_eq!(count_list("3-1"), None);
        assert_eq!(count_list("a"), None);
    }
}

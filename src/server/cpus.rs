//! Which CPU each worker keeps to (docs/design.md#workers-on-cpus-of-their-own). When the
//! workers are as many as the CPUs the process may run on, the kernel can still put two of them on
//! one CPU while the other runs something else; each then has work at every moment, so they take
//! turns a scheduler tick at a time (4 ms at 250 Hz), and every connection of the one waiting waits
//! with it. Kept to a CPU each, two workers never share one.
use core_affinity::CoreId;

use crate::config::CpuAffinity;

/// The CPU for each worker, by index, or `None` to leave their placement to the kernel: with
/// `Auto`, when there are at least two workers and exactly as many CPUs in `allowed` (the CPUs the
/// process may run on: its affinity mask, which a container's exclusive cpuset sets). With more
/// CPUs than workers the kernel has room to keep them apart, and spreading the workers over a
/// shared node's CPUs is its job; with fewer, some would have to share one anyway.
pub fn plan(workers: usize, allowed: &[usize], affinity: CpuAffinity) -> Option<Vec<usize>> {
    match affinity {
        CpuAffinity::Auto if workers >= 2 && allowed.len() == workers => Some(allowed.to_vec()),
        CpuAffinity::Auto | CpuAffinity::Off => None,
    }
}

/// The CPUs the calling thread may run on (a thread made later inherits them), in order.
pub fn allowed() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|core| core.id)
        .collect()
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

    #[test]
    fn workers_keep_to_a_cpu_each_only_when_as_many_as_the_cpus() {
        use CpuAffinity::{Auto, Off};
        assert_eq!(plan(2, &[0, 1], Auto), Some(vec![0, 1]));
        // The process's own CPUs, whichever they are (a container's exclusive cpuset).
        assert_eq!(plan(3, &[4, 9, 12], Auto), Some(vec![4, 9, 12]));
        // More CPUs than workers (a share of a larger node), fewer, or a single worker.
        assert_eq!(plan(2, &[0, 1, 2, 3], Auto), None);
        assert_eq!(plan(4, &[0, 1], Auto), None);
        assert_eq!(plan(1, &[0], Auto), None);
        // An unknown mask (the call failed) pins nothing.
        assert_eq!(plan(2, &[], Auto), None);
        assert_eq!(plan(2, &[0, 1], Off), None);
    }
}

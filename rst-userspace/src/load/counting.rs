//! How the programs count: per-CPU adds, or atomic adds where programs can preempt each other on
//! one CPU (PREEMPT_RT kernels), told from `/sys/kernel/realtime` and the version string.

use rst_common::wire::CountingPrograms;

/// How the programs count. Their per-CPU counters, flow cache and eviction logs are exact only
/// while two programs on one CPU never interleave: true where softirqs and the BPF programs in
/// them run with preemption off, which is every kernel but PREEMPT_RT (there softirqs are
/// preemptible threads, and since 2025 the per-CPU softirq lock that serialized them is optional:
/// `CONFIG_PREEMPT_RT_NEEDS_BH_LOCK`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Counting {
    /// `atomic` on a PREEMPT_RT kernel, `per-cpu` elsewhere.
    #[default]
    Auto,
    /// Plain adds to per-CPU counters and the per-CPU flow cache in front of the classifier.
    PerCpu,
    /// Atomic adds only, every RST classified and added to the shared flow table: exact on
    /// every kernel, dearer per RST.
    Atomic,
}

impl Counting {
    /// What the choice means on this kernel.
    pub fn resolve(self) -> CountingMode {
        match self {
            Counting::Auto if this_kernel_is_preempt_rt() => CountingMode::Atomic,
            Counting::Auto | Counting::PerCpu => CountingMode::PerCpu,
            Counting::Atomic => CountingMode::Atomic,
        }
    }
}

/// How the loaded programs count: what [`Counting`] resolved to when they were loaded. Its
/// serialized names are the summary's `counting` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CountingMode {
    PerCpu,
    Atomic,
}

impl CountingMode {
    /// `"per-cpu"` or `"atomic"`, as the run summary says it.
    pub fn as_str(self) -> &'static str {
        match self {
            CountingMode::PerCpu => "per-cpu",
            CountingMode::Atomic => "atomic",
        }
    }

    /// The programs that count this way.
    pub fn programs(self) -> CountingPrograms {
        CountingPrograms::new(self == CountingMode::Atomic)
    }
}

pub(super) fn this_kernel_is_preempt_rt() -> bool {
    is_preempt_rt(
        std::fs::read_to_string("/sys/kernel/realtime").ok().as_deref(),
        &std::fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default(),
    )
}

/// PREEMPT_RT kernels have `/sys/kernel/realtime` reading 1 (mainline since 6.12, the RT patch
/// set before) and say `PREEMPT_RT` in their version string (`uname -v`).
pub fn is_preempt_rt(sys_kernel_realtime: Option<&str>, version: &str) -> bool {
    sys_kernel_realtime.is_some_and(|value| value.trim() == "1")
        || version.split_whitespace().any(|word| word == "PREEMPT_RT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preempt_rt_is_told_by_sys_kernel_realtime_or_the_version_string() {
        const RT_VERSION: &str = "#1 SMP PREEMPT_RT Thu Oct  2 10:00:00 UTC 2025\n";
        const THIS_VM: &str = "#1 SMP PREEMPT_DYNAMIC @0\n";
        assert!(is_preempt_rt(Some("1\n"), THIS_VM));
        assert!(is_preempt_rt(None, RT_VERSION));
        assert!(!is_preempt_rt(None, THIS_VM));
        assert!(!is_preempt_rt(Some("0\n"), "#1 SMP PREEMPT Mon Jan  1 00:00:00 UTC 2024"));
        // A word that merely starts with it is not the flag.
        assert!(!is_preempt_rt(None, "#1 SMP PREEMPT_RTX"));
    }
}

//! Sampling the counting program's run time with kernel BPF stats, a short window at a time.

use std::time::Duration;

/// How often the program's run time is sampled, and for how long. Kernel BPF stats add tens of
/// nanoseconds to every run of every program on the machine while they are on, so they are on
/// only for this window, through a `BPF_ENABLE_STATS` file descriptor: closing it restores the
/// previous state, whatever `kernel.bpf_stats_enabled` says, also if rstwatch is killed.
pub const RUN_TIME_EVERY: Duration = Duration::from_secs(60);
pub const RUN_TIME_WINDOW: Duration = Duration::from_secs(1);

/// One sampling window of kernel BPF run-time statistics.
pub struct RunTimeWindow {
    _stats: std::os::fd::OwnedFd,
    run_time: Duration,
    run_count: u64,
}

impl RunTimeWindow {
    /// Turns stats on and takes the first reading. Needs CAP_SYS_ADMIN (BPF_ENABLE_STATS).
    pub fn open(program: &aya::programs::Program) -> anyhow::Result<Self> {
        let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)?;
        let info = program.info()?;
        Ok(RunTimeWindow { _stats: stats, run_time: info.run_time(), run_count: info.run_count() })
    }

    /// Takes the second reading and turns stats off again (unless someone else keeps them on).
    /// Returns nanoseconds per run, or `None` if the program did not run.
    pub fn close(self, program: &aya::programs::Program) -> anyhow::Result<Option<f64>> {
        let info = program.info()?;
        let runs = info.run_count().saturating_sub(self.run_count);
        let time = info.run_time().saturating_sub(self.run_time);
        Ok((runs > 0).then(|| time.as_nanos() as f64 / runs as f64))
    }
}

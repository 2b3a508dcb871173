//! clock_gettime(2): the clock BPF programs stamp records and events with (`bpf_ktime_get_ns`:
//! CLOCK_MONOTONIC), so they can be turned into run time or wall-clock time.

use super::{Error, Result};

/// Now on `CLOCK_MONOTONIC` in ns: time since boot, not counting suspend, which
/// [`std::time::Instant`] does not expose as a number.
///
/// Minimum kernel: any. Errors: [`Error::Os`], none on Linux ≥ 2.6 for this clock (`EINVAL`
/// would mean it is missing).
pub fn monotonic_ns() -> Result<u64> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return Err(Error::last("clock_gettime(CLOCK_MONOTONIC)"));
    }
    Ok(u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0))
}

/// [`monotonic_ns`] in ms.
pub fn monotonic_ms() -> Result<u64> {
    monotonic_ns().map(|ns| ns / 1_000_000)
}

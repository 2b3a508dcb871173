//! The clock the BPF programs stamp records with (`bpf_ktime_get_ns`: CLOCK_MONOTONIC), so a
//! capture's timestamps can be turned into wall-clock time.

use super::{Error, Result};

/// CLOCK_MONOTONIC in nanoseconds.
///
/// Minimum kernel: any. Errors: none in practice (EINVAL only for an unknown clock id).
pub fn monotonic_ns() -> Result<u64> {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return Err(Error::last("clock_gettime(CLOCK_MONOTONIC)"));
    }
    Ok(now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64)
}

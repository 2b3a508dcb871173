//! Loads started ahead of use: replay reads a file front to back and a table at random, and
//! both wait on memory unless the line was asked for a little earlier.

/// Starts loading the cache line at `address` into the nearest cache; nothing happens where
/// the CPU has no such hint.
#[inline(always)]
pub fn prefetch<T>(address: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that never faults, whatever the address (one not mapped is
    // ignored); SSE, which it needs, is part of every x86_64 CPU.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(address.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

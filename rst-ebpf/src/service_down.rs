//! A service's down word in the kernel (see [`rst_common::services`]): moved on by a turn-away
//! made with nothing else open, ended by the next accept, and carried into the interval's
//! [`ServiceValue`] so userspace can tell a service that died after its last accept of the
//! interval from one that came back. Only the accept and turn-away paths come here; the clock
//! is read only when nothing is open at a turn-away.
//!
//! The updates are out of line (BPF-to-BPF calls), behind inline tests of whether there is
//! anything to do: inlined, their code tipped LLVM into leaving the per-CPU programs' bodies
//! out of line instead, a call every frame paid (docs/benchmark-history.md, "went_down inside one interval").

use aya_ebpf::helpers::bpf_ktime_get_ns;
use rst_common::wire::{down_after_accept, down_after_turnaway, down_in_run, ServiceValue};

use crate::services::update_word;

/// One more turn-away with nothing open; returns the down word after it (0 when the update
/// kept losing to other CPUs: that interval then tells no run, never a wrong one).
///
/// # Safety
/// `down` points into a live `SERVICE_OPEN` element every writer of which uses atomics.
#[inline(never)]
pub(crate) unsafe fn turned_away(down: *mut u64) -> u64 {
    // SAFETY: no preconditions; CLOCK_MONOTONIC, which userspace maps to the run's start.
    let now_ms = unsafe { bpf_ktime_get_ns() } / 1_000_000;
    // SAFETY: the caller's pointer.
    match unsafe { update_word(down, |word| down_after_turnaway(word, now_ms)) } {
        Some(before) => down_after_turnaway(before, now_ms),
        None => 0,
    }
}

/// An accept: ends the service's run, if it was in one; returns the word it ended (0: none).
/// The usual accept finds no run and makes no call or write.
///
/// # Safety
/// As for [`turned_away`].
#[inline(always)]
pub(crate) unsafe fn end(down: *mut u64) -> u64 {
    // SAFETY: the caller's pointer; an aligned u64 is never torn.
    if !down_in_run(unsafe { core::ptr::read_volatile(down) }) {
        return 0;
    }
    // SAFETY: as above.
    unsafe { end_run(down) }
}

/// # Safety
/// As for [`turned_away`].
#[inline(never)]
unsafe fn end_run(down: *mut u64) -> u64 {
    // SAFETY: the caller's pointer.
    match unsafe { update_word(down, down_after_accept) } {
        Some(before) if down_in_run(before) => before,
        _ => 0,
    }
}

/// Folds `counts`' down words into the interval's entry `value` by maximum (see
/// [`ServiceValue::merge`]); most counts carry none, and then there is no call.
///
/// # Safety
/// `value` points into a live `SERVICES_*` element every writer of which uses atomics.
#[inline(always)]
pub(crate) unsafe fn count(value: *mut ServiceValue, counts: &ServiceValue) {
    let (latest, ended) = (counts.down_latest, counts.down_ended);
    if latest | ended != 0 {
        // SAFETY: the caller's pointer.
        unsafe { count_words(value, latest, ended) };
    }
}

/// # Safety
/// As for [`count`].
#[inline(never)]
unsafe fn count_words(value: *mut ServiceValue, latest: u64, ended: u64) {
    if latest != 0 {
        // SAFETY: the caller's pointer; the field is 8-aligned (asserted in rst-common).
        unsafe { update_word(&raw mut (*value).down_latest, |current| current.max(latest)) };
    }
    if ended != 0 {
        // SAFETY: as above.
        unsafe { update_word(&raw mut (*value).down_ended, |current| current.max(ended)) };
    }
}

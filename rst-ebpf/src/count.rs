//! The counting path every counting and payload program runs: a frame's traffic, its TCP
//! segment's effect on connections and services, and an RST's count through the per-CPU flow
//! cache and the classifier.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use rst_common::{
    count, inspect_tunnels,
    parse::{FrameCounters, TcpEvent, TCP_RST},
    track,
    wire::{FlowKey, TrafficCounters, DIRECTION_TX, FLOW_CACHE_SLOTS},
    Cursor, Tracked,
};

use crate::{
    capture,
    maps::{current_epoch, FLOW_CACHE, RESET_COUNTERS, TRAFFIC},
    payload,
    services::record_service,
    tables::{conn_generation, write_back, Connections},
    tunnels::KernelTunnels,
};

#[inline(always)]
pub(crate) fn count_frame<
    const ATOMIC: bool,
    const CAPTURE: bool,
    const PAYLOAD: bool,
    C: Cursor,
    S: payload::Bytes,
>(
    frame: &C,
    source: &S,
    direction: u8,
    ifindex: impl FnOnce() -> u32,
) {
    // One slot per direction: the index is a constant of each program.
    let Some(traffic) = TRAFFIC.get_ptr_mut(u32::from(direction)) else {
        return;
    };
    let observation = inspect_tunnels(frame, direction, ifindex, &mut KernelTunnels);
    // A payload program's caller counted the frame's traffic already.
    let event =
        if PAYLOAD { count(&mut Counted, &observation) } else { count(&mut Traffic::<ATOMIC>(traffic), &observation) };
    let Some(event) = event else {
        return;
    };
    if event.flags & TCP_RST != 0 {
        if PAYLOAD {
            payload::hand_over::<ATOMIC, _>(source, &event.key, payload::wanted(event.payload_at, event.payload_len));
        } else if !CAPTURE && event.payload_len != 0 {
            // The capturing programs hand over every RST's frame, its payload included; here the
            // payload program of this set does, and counts the RST. Returns only when none is
            // loaded; then the RST is counted here.
            source.count_elsewhere(direction);
        }
        count_reset::<ATOMIC, CAPTURE, _>(event, source);
        return;
    }
    if PAYLOAD {
        return;
    }
    if CAPTURE {
        capture::handshake(source, &event.key, event.flags);
    }
    match track(&mut Connections, event) {
        // Resets were counted above, with the flow cache in front of the classifier.
        Tracked::Reset(..) => {}
        Tracked::Service(change) => record_service::<ATOMIC>(&change),
        Tracked::Nothing => {}
    }
}

/// Adds `n` to a counter that only programs on this CPU write (a per-CPU map value): a plain
/// add, unless programs on one CPU may interleave (`ATOMIC`).
///
/// # Safety
/// `counter` points into a live per-CPU map value of this CPU.
#[inline(always)]
pub(crate) unsafe fn add_local<const ATOMIC: bool>(counter: *mut u64, n: u64) {
    if ATOMIC {
        // SAFETY: the caller's pointer; every writer of a per-CPU counter comes through here.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
    } else {
        // SAFETY: as above; programs on one CPU do not preempt each other while one runs.
        unsafe { *counter += n };
    }
}

/// The [`FrameCounters`] of a frame whose traffic its first program counted (see `payload`).
struct Counted;

impl FrameCounters for Counted {
    #[inline(always)]
    fn not_tcp(&mut self) {}
    #[inline(always)]
    fn tcp(&mut self) {}
    #[inline(always)]
    fn malformed(&mut self) {}
    #[inline(always)]
    fn fragment(&mut self) {}
}

/// This CPU's `TRAFFIC` slot for one direction as the parser's [`FrameCounters`].
struct Traffic<const ATOMIC: bool>(*mut TrafficCounters);

impl<const ATOMIC: bool> FrameCounters for Traffic<ATOMIC> {
    #[inline(always)]
    fn not_tcp(&mut self) {
        // SAFETY: a live per-CPU slot of `TRAFFIC`, from `count_frame`.
        unsafe { add_local::<ATOMIC>(&raw mut (*self.0).not_tcp, 1) }
    }
    #[inline(always)]
    fn tcp(&mut self) {
        // SAFETY: as in `not_tcp`.
        unsafe { add_local::<ATOMIC>(&raw mut (*self.0).tcp, 1) }
    }
    #[inline(always)]
    fn malformed(&mut self) {
        // SAFETY: as in `not_tcp`.
        unsafe { add_local::<ATOMIC>(&raw mut (*self.0).malformed, 1) }
    }
    #[inline(always)]
    fn fragment(&mut self) {
        // SAFETY: as in `not_tcp`.
        unsafe { add_local::<ATOMIC>(&raw mut (*self.0).fragments, 1) }
    }
}

/// Counts an RST. A repeated RST whose verdict the per-CPU cache slot still holds (see
/// [`CacheSlot`]) is one add; anything else goes through the classifier first.
/// A capturing program (`CAPTURE`) hands it to the capture ring with the class it was counted
/// under; in the others those calls are compiled out, leaving the instructions they had before.
#[inline(always)]
fn count_reset<const ATOMIC: bool, const CAPTURE: bool, S: capture::Source>(event: &TcpEvent, source: &S) {
    let epoch = current_epoch();
    let Some(counters) = RESET_COUNTERS.get_ptr_mut(epoch) else {
        return;
    };
    // SAFETY: this CPU's live slot.
    unsafe {
        add_local::<ATOMIC>(&raw mut (*counters).resets, 1);
        add_local::<ATOMIC>(&raw mut (*counters).tx_resets, u64::from(event.key.direction == DIRECTION_TX));
    }
    // SAFETY: this CPU's live slot; below, only written through `add_local` unless programs on
    // one CPU cannot interleave.
    let counters = unsafe { &mut *counters };
    if ATOMIC {
        let key = classify::<ATOMIC>(event);
        write_back::<ATOMIC>(epoch, &key, 1, counters);
        if CAPTURE {
            capture::reset::<ATOMIC, _>(source, &key);
        }
        return;
    }
    // Without a generation to check a verdict against (never for an in-range index), or
    // without a slot: classify and go straight to the table.
    let (cache_slot, generation_slot) = event.key.cache_and_generation_slots();
    let (Some(generation), Some(slot)) =
        (conn_generation(generation_slot), FLOW_CACHE.get_ptr_mut(epoch * FLOW_CACHE_SLOTS + cache_slot))
    else {
        let key = classify::<ATOMIC>(event);
        write_back::<ATOMIC>(epoch, &key, 1, counters);
        if CAPTURE {
            capture::reset::<ATOMIC, _>(source, &key);
        }
        return;
    };
    // SAFETY: per-CPU slot, as above.
    let slot = unsafe { &mut *slot };
    if slot.holds_verdict_for(event, generation) {
        slot.resets += 1;
        if CAPTURE {
            capture::reset::<ATOMIC, _>(source, &slot.key);
        }
        return;
    }
    let key = classify::<ATOMIC>(event);
    if CAPTURE {
        capture::reset::<ATOMIC, _>(source, &key);
    }
    if slot.resets != 0 {
        if slot.key.same_flow(&key) {
            slot.resets += 1;
            slot.remember(event, generation);
            return;
        }
        write_back::<ATOMIC>(epoch, &slot.key, slot.resets, counters);
    }
    slot.hold(&key, event, generation, 1);
}

/// Classifies an RST and counts what it did to its service (a close or a turn-away). A cached
/// verdict skips this, but never for a connection's first RST, the only one with a service
/// change: that first RST changes the connection, so its group's generation moves on.
#[inline(always)]
fn classify<const ATOMIC: bool>(event: &TcpEvent) -> FlowKey {
    match track(&mut Connections, event) {
        Tracked::Reset(key, service) => {
            if let Some(change) = service {
                record_service::<ATOMIC>(&change);
            }
            key
        }
        // `track` answers every RST with `Reset`.
        _ => event.key,
    }
}

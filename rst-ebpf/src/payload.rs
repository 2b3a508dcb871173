//! RST payloads in every counting program: the first bytes of an RST that carries data (the
//! text some devices put in a reset) go to userspace through a small ring buffer of their own,
//! which it drains each interval into the flow record's `rst_payload`. Only an RST whose IP
//! length leaves room for data comes here; bare RSTs and all other traffic never do.
//!
//! Before it counts such an RST, the counting program tail-calls a program of its set
//! (`rstwatch_*_payload`, through [`PAYLOAD_XDP_PROGRAMS`] / [`PAYLOAD_TC_PROGRAMS`]) that walks
//! the frame again, hands it over and counts the RST. A call from the counting program itself,
//! even out of line, kept more of its registers live across the RST branch (every bare RST paid
//! ~18 ns for it) and left its stack chain at the verifier's 512-byte limit; a tail call keeps
//! nothing live in the counting program and starts a stack of its own. (At the program's end,
//! after the counting, the context and one bit live across it took the counting programs past
//! 512 stack bytes.)
//!
//! Minimum kernel: 5.18 (`bpf_xdp_load_bytes`; the ring buffer 5.8; tail calls from
//! multi-buffer XDP programs into one 5.18).

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    macros::map,
    maps::{PerCpuArray, ProgramArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use rst_common::wire::{
    FlowKey, PayloadCounters, PayloadRecord, PAYLOAD_FRAME_BYTES, PAYLOAD_RING_BYTES, RST_PAYLOAD_BYTES,
    TUNNEL_INTERFACE,
};

use crate::capture::Source;

/// Userspace drains the ring once per interval, so no submit schedules a wake-up.
const BPF_RB_NO_WAKEUP: u64 = 1;

#[map]
static PAYLOAD_RING: RingBuf = RingBuf::with_byte_size(PAYLOAD_RING_BYTES, 0);
/// The XDP program of the loaded set (slot 0) that counts an RST with a payload.
#[map]
static PAYLOAD_XDP_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(1, 0);
/// The TC programs of the loaded set that do, by direction (`DIRECTION_RX`, `DIRECTION_TX`).
#[map]
static PAYLOAD_TC_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(2, 0);
/// Cumulative, never flipped: userspace reads it each interval and says what was lost.
#[map]
static PAYLOAD_COUNTERS: PerCpuArray<PayloadCounters> = PerCpuArray::with_max_entries(1, 0);

/// A program's way to the payload program of its hook; its frame's bytes are read as the
/// capture reads them ([`Source`]: the whole frame, all XDP buffers, the whole skb, so a payload
/// beyond the directly readable part is read too).
pub trait Bytes: Source {
    /// Tail-calls the program that counts an RST with a payload on this hook; returns only if
    /// none took over (an empty slot: the kernel tests load the counting programs alone).
    fn count_elsewhere(&self, direction: u8);
}

impl Bytes for XdpContext {
    #[inline(always)]
    fn count_elsewhere(&self, _direction: u8) {
        // SAFETY: a tail call with this run's context into a program of the same type that
        // counts what the caller left uncounted and returns PASS, as the caller would have.
        unsafe { PAYLOAD_XDP_PROGRAMS.tail_call(self, 0) }
    }
}

impl Bytes for TcContext {
    #[inline(always)]
    fn count_elsewhere(&self, direction: u8) {
        // SAFETY: as for XDP.
        unsafe { PAYLOAD_TC_PROGRAMS.tail_call(self, u32::from(direction)) }
    }
}

/// The frame bytes a record of an RST with a payload wants: its headers and the payload's first
/// [`RST_PAYLOAD_BYTES`] (`payload_at` and `payload_len` of the
/// [`rst_common::parse::TcpEvent`]).
#[inline(always)]
pub fn wanted(payload_at: u16, payload_len: u16) -> u32 {
    u32::from(payload_at) + u32::from(payload_len).min(RST_PAYLOAD_BYTES as u32)
}

/// Hands one RST with a payload, of flow `key`, to the ring — or counts why not: the frame's
/// first `wanted` bytes (see [`wanted`]). Each call adds exactly one to one of the
/// [`PayloadCounters`]; counting never depends on it. Inline: the payload program's stack is
/// the counting code's (496 bytes), and a frame of its own would add to it.
#[inline(always)]
pub fn hand_over<const ATOMIC: bool, S: Bytes>(source: &S, key: &FlowKey, wanted: u32) {
    let outcome = send(source, key, wanted);
    let Some(counters) = PAYLOAD_COUNTERS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a live per-CPU slot, for each field.
    let counter = unsafe {
        match outcome {
            Sent::Yes => &raw mut (*counters).sent,
            Sent::RingFull => &raw mut (*counters).ring_full,
            Sent::Unreadable => &raw mut (*counters).unreadable,
        }
    };
    if ATOMIC {
        // SAFETY: a live per-CPU slot; every writer adds atomically in this mode.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
    } else {
        // SAFETY: this CPU's slot; programs on one CPU do not interleave (see `add_local`).
        unsafe { *counter += 1 };
    }
}

enum Sent {
    Yes,
    RingFull,
    Unreadable,
}

/// The record takes as much of what is wanted as the frame holds (the IP length may claim more
/// than arrived) and the record has room for.
#[inline(always)]
fn send<S: Bytes>(source: &S, key: &FlowKey, wanted: u32) -> Sent {
    // At least 1 by a clamp on `len` itself, not by a test: LLVM answered `len == 0` with a test
    // of the frame's length, which leaves the verifier without a lower bound on `len`. A frame
    // of length 0 (none reaches a program) fails the load below instead.
    let len = wanted.min(source.bytes_on_wire()).clamp(1, PAYLOAD_FRAME_BYTES as u32);
    let Some(mut entry) = PAYLOAD_RING.reserve::<PayloadRecord>(0) else {
        return Sent::RingFull;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` is the reserved, writable record; only plain fields are written, and
    // `data` is filled by the helper below.
    unsafe {
        (*record).ifindex = key.ifindex;
        (*record).captured = len as u16;
        (*record).direction = key.direction;
        (*record)._pad = 0;
    }
    // SAFETY: as above; `len` is at most the array's size.
    if !source.load(unsafe { (&raw mut (*record).data).cast::<u8>() }, len) {
        entry.discard(BPF_RB_NO_WAKEUP);
        return Sent::Unreadable;
    }
    if key.ifindex & TUNNEL_INTERFACE != 0 {
        // A tunnelled RST's key holds its tunnel's number: the record names the interface
        // (userspace finds the tunnel again in the frame).
        // SAFETY: as above.
        unsafe { (*record).ifindex = source.ifindex() };
    }
    entry.submit(BPF_RB_NO_WAKEUP);
    Sent::Yes
}

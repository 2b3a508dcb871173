//! `--capture`: the counting programs' capturing twins hand every RST they count (and, with
//! `--capture-handshakes`, SYN and SYN+ACK segments) to userspace through a BPF ring buffer,
//! within a per-second budget. Only the capturing programs call into this module; the default
//! programs are the same instructions as without it.
//!
//! Minimum kernel: 5.18 (`bpf_xdp_load_bytes`, `bpf_xdp_get_buff_len`; the ring buffer 5.8).

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use rst_common::wire::{
    CaptureBudget, CaptureCounters, CaptureRecord, FlowKey, CAPTURE_DEFAULT_BUDGET, CAPTURE_DEFAULT_SNAPLEN,
    CAPTURE_HANDSHAKE, CAPTURE_MAX_SNAPLEN, CAPTURE_RING_BYTES, CAPTURE_RST,
};

/// Userspace polls the ring (every few ms, see `rstwatch::capture`), so no submit needs to
/// schedule the wake-up that costs a notification per record.
const BPF_RB_NO_WAKEUP: u64 = 1;

#[map]
static CAPTURE_RING: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);
/// Cumulative, never flipped: userspace reads it at the end (and for the table's line).
#[map]
static CAPTURE_COUNTERS: PerCpuArray<CaptureCounters> = PerCpuArray::with_max_entries(1, 0);
/// The budget's current second, shared by all CPUs.
#[map]
static CAPTURE_BUDGET: Array<CaptureBudget> = Array::with_max_entries(1, 0);

#[unsafe(no_mangle)]
static CAPTURE_BUDGET_PER_SECOND: u32 = CAPTURE_DEFAULT_BUDGET;
#[unsafe(no_mangle)]
static CAPTURE_SNAPLEN: u32 = CAPTURE_DEFAULT_SNAPLEN;
#[unsafe(no_mangle)]
static CAPTURE_HANDSHAKES: u32 = 0;

/// Where a program's frame bytes come from: the whole frame (all XDP buffers, the whole skb),
/// not only the directly readable part.
pub trait Source {
    fn bytes_on_wire(&self) -> u32;
    /// Copies the frame's first `len` bytes (1 ..= [`CAPTURE_MAX_SNAPLEN`]) to `dst`.
    fn load(&self, dst: *mut u8, len: u32) -> bool;
}

impl Source for XdpContext {
    #[inline(always)]
    fn bytes_on_wire(&self) -> u32 {
        // SAFETY: the helper reads the context the kernel passed to this run.
        unsafe { bpf_xdp_get_buff_len(self.ctx) as u32 }
    }

    #[inline(always)]
    fn load(&self, dst: *mut u8, len: u32) -> bool {
        // SAFETY: `dst` holds `len` writable bytes (a ring record's data), checked by the verifier.
        unsafe { bpf_xdp_load_bytes(self.ctx, 0, dst.cast(), len) == 0 }
    }
}

impl Source for TcContext {
    #[inline(always)]
    fn bytes_on_wire(&self) -> u32 {
        // SAFETY: `skb` is the context pointer the kernel passed to this program run.
        unsafe { (*self.skb.skb).len }
    }

    #[inline(always)]
    fn load(&self, dst: *mut u8, len: u32) -> bool {
        // SAFETY: as for XDP.
        unsafe { bpf_skb_load_bytes(self.skb.skb.cast(), 0, dst.cast(), len) == 0 }
    }
}

/// Volatile reads of globals the loader sets, so the compiler does not fold in the defaults.
#[inline(always)]
fn global(value: &'static u32) -> u32 {
    // SAFETY: a plain read of an aligned static.
    unsafe { core::ptr::read_volatile(value) }
}

#[inline(always)]
fn bump<const ATOMIC: bool>(counter: *mut u64) {
    if ATOMIC {
        // SAFETY: a live per-CPU slot; every writer adds atomically in this mode.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, 1) };
    } else {
        // SAFETY: this CPU's slot; programs on one CPU do not interleave (see `add_local`).
        unsafe { *counter += 1 };
    }
}

/// Hands one counted RST, classified as `key` says, to the ring — or counts why not. Each call
/// adds exactly one to one of the [`CaptureCounters`], so userspace can account for every RST.
///
/// Out of line (a BPF-to-BPF call, only on the capturing programs' RSTs): inlined at its four
/// call sites, its locals beside the down-run and diagnosis ones took the TC programs past the
/// 512-byte stack frame.
#[inline(never)]
pub fn reset<const ATOMIC: bool, S: Source>(source: &S, key: &FlowKey) {
    let Some(counters) = CAPTURE_COUNTERS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_ns() };
    if !within_budget(now) {
        // SAFETY: a live per-CPU slot.
        bump::<ATOMIC>(unsafe { &raw mut (*counters).over_budget });
        return;
    }
    let outcome = send(source, key, now, CAPTURE_RST);
    // SAFETY: as above, for each field.
    let counter = unsafe {
        match outcome {
            Sent::Yes => &raw mut (*counters).sent,
            Sent::RingFull => &raw mut (*counters).ring_full,
            Sent::Unreadable => &raw mut (*counters).unreadable,
        }
    };
    bump::<ATOMIC>(counter);
}

/// A SYN or SYN+ACK, with `--capture-handshakes`: outside the budget and the counters (it is
/// only context for an RST that may follow; userspace drops those never followed by one).
#[inline(always)]
pub fn handshake<S: Source>(source: &S, key: &FlowKey, flags: u8) {
    if global(&CAPTURE_HANDSHAKES) == 0 || flags & rst_common::parse::TCP_SYN == 0 {
        return;
    }
    // SAFETY: the helper has no preconditions.
    let _ = send(source, key, unsafe { bpf_ktime_get_ns() }, CAPTURE_HANDSHAKE);
}

enum Sent {
    Yes,
    RingFull,
    Unreadable,
}

#[inline(always)]
fn send<S: Source>(source: &S, key: &FlowKey, now: u64, what: u8) -> Sent {
    let Some(mut entry) = CAPTURE_RING.reserve::<CaptureRecord>(0) else {
        return Sent::RingFull;
    };
    let wire_len = source.bytes_on_wire();
    let len = wire_len.min(global(&CAPTURE_SNAPLEN)).min(CAPTURE_MAX_SNAPLEN as u32);
    let record = entry.as_mut_ptr();
    // SAFETY: `record` is the reserved, writable record; only plain fields are written, and
    // `data` is filled by the helper below.
    unsafe {
        (*record).time_ns = now;
        (*record).ifindex = key.ifindex;
        (*record).wire_len = wire_len;
        (*record).captured = len as u16;
        (*record).direction = key.direction;
        (*record).what = what;
        (*record).class = key.class;
        (*record).rst_ttl = key.rst_ttl;
        (*record).peer_ttl = key.peer_ttl;
        (*record)._pad = 0;
    }
    // SAFETY: as above; `len` is at most the array's size.
    if len == 0 || !source.load(unsafe { (&raw mut (*record).data).cast::<u8>() }, len) {
        entry.discard(BPF_RB_NO_WAKEUP);
        return Sent::Unreadable;
    }
    entry.submit(BPF_RB_NO_WAKEUP);
    Sent::Yes
}

/// Takes one RST from this second's budget. A second starts with the first RST after the last
/// one ended (a comparison, not a division: a 64-bit divide costs the over-budget path more than
/// everything else in it). Two CPUs crossing into a new second at once may both restart the
/// count, so a second can take a few more than the budget (at most one per CPU); what was not
/// taken is counted either way.
#[inline(always)]
fn within_budget(now: u64) -> bool {
    let Some(window) = CAPTURE_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: a live array element; aligned u64 words are never torn, and the count is added
    // atomically.
    unsafe {
        if now >= core::ptr::read_volatile(&raw const (*window).ends_ns) {
            core::ptr::write_volatile(&raw mut (*window).ends_ns, now + 1_000_000_000);
            core::ptr::write_volatile(&raw mut (*window).used, 0);
        }
        if core::ptr::read_volatile(&raw const (*window).used) >= u64::from(global(&CAPTURE_BUDGET_PER_SECOND)) {
            return false;
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*window).used, 1);
    }
    true
}

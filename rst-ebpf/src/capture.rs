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
    maps::{Array, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use rst_common::wire::{
    reason_byte, CaptureBudget, CaptureCounters, CaptureReason, CaptureReasonKey, CaptureRecord, FlowKey,
    CAPTURE_DEFAULT_BUDGET, CAPTURE_DEFAULT_SNAPLEN, CAPTURE_HANDSHAKE, CAPTURE_MAX_SNAPLEN, CAPTURE_REASONS_ENTRIES,
    CAPTURE_REASON_MAX_AGE_NS, CAPTURE_RING_BYTES, CAPTURE_RST, TUNNEL_INTERFACE,
};

/// Userspace polls the ring (every few ms, see `rstwatch::output::capture`), so no submit needs to
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

/// The kernel's reason for each RST this host's stack sent, by the RST's tuple: the tracepoint
/// writes it before the RST reaches a hook, the capture programs read it into the record. The
/// reasons the summary reports come from the stack-reset tables; this is only for the records,
/// which are written before any interval ends.
#[map]
static CAPTURE_REASONS: LruHashMap<CaptureReasonKey, CaptureReason> =
    LruHashMap::with_max_entries(CAPTURE_REASONS_ENTRIES, 0);
/// Set by the loader with `--capture`; without it the tracepoint leaves the map alone.
#[unsafe(no_mangle)]
static CAPTURE_REASONS_ON: u32 = 0;

/// `tcp:tcp_send_reset`, while capturing: remembers why the stack sends this RST, for the
/// capture program that sees it leave (or arrive at a watched peer). Addresses and ports as
/// [`CaptureReasonKey::new`] takes them, in the RST's direction.
#[inline(always)]
pub fn stack_reset(src: [u32; 4], dst: [u32; 4], ports: (u16, u16), family: u8, reason: u32) {
    if global(&CAPTURE_REASONS_ON) == 0 {
        return;
    }
    let key = CaptureReasonKey::new(src, dst, ports.0, ports.1, family);
    // SAFETY: the helper has no preconditions.
    let value = CaptureReason { time_ns: unsafe { bpf_ktime_get_ns() }, reason, _pad: 0 };
    // A full LRU evicts its oldest entry: nothing to do on failure, the record then has none.
    let _ = CAPTURE_REASONS.insert(key, value, 0);
}

/// The record's [`CaptureRecord::kernel_reason`] byte for the RST `key` counted at `*now` (the
/// record's time, read again after the lookup rather than kept in a register or the stack): the
/// reason the tracepoint wrote for its tuple within the last [`CAPTURE_REASON_MAX_AGE_NS`],
/// else 0 (an RST this host's stack did not send: forwarded, forged, or from a raw socket).
#[inline(always)]
fn kernel_reason(key: &FlowKey, now: *const u64) -> u8 {
    let key = CaptureReasonKey::of_flow(key);
    let Some(found) = CAPTURE_REASONS.get_ptr(key) else {
        return 0;
    };
    // SAFETY: a live map value; read field by field, not copied to the stack (this frame is at
    // the limit). A concurrent update may change it between the reads: both are this tuple's.
    let (time_ns, reason) = unsafe {
        (core::ptr::read_volatile(&raw const (*found).time_ns), core::ptr::read_volatile(&raw const (*found).reason))
    };
    // SAFETY: `now` is the reserved record's time field.
    let now = unsafe { core::ptr::read_volatile(now) };
    // `now` may be a little earlier than `time_ns` when the tracepoint ran on another CPU.
    if now.wrapping_sub(time_ns) as i64 > CAPTURE_REASON_MAX_AGE_NS as i64 {
        return 0;
    }
    reason_byte(reason)
}

/// Where a program's frame bytes come from: the whole frame (all XDP buffers, the whole skb),
/// not only the directly readable part.
pub trait Source {
    fn bytes_on_wire(&self) -> u32;
    /// The interface the frame crossed: what a tunnelled RST's record names, where its key has
    /// the tunnel's number (see `rst_common::wire::TUNNEL_INTERFACE`).
    fn ifindex(&self) -> u32;
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
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
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
    fn ifindex(&self) -> u32 {
        // SAFETY: as above.
        unsafe { (*self.skb.skb).ifindex }
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
    let outcome = send::<true, _>(source, key, now, CAPTURE_RST);
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
    let _ = send::<false, _>(source, key, unsafe { bpf_ktime_get_ns() }, CAPTURE_HANDSHAKE);
}

enum Sent {
    Yes,
    RingFull,
    Unreadable,
}

#[inline(always)]
/// `REASON`: look the kernel's reason up (RSTs; a const so the inlined handshake path carries
/// none of it).
fn send<const REASON: bool, S: Source>(source: &S, key: &FlowKey, now: u64, what: u8) -> Sent {
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
        (*record).kernel_reason = 0;
    }
    let mut len = len;
    if REASON {
        // After the fields above, and `len` read back after it, so that only the key's address
        // is live across the lookup: `reset`'s frame and its caller's are at the 512-byte limit
        // together.
        // SAFETY: as above.
        unsafe {
            (*record).kernel_reason = kernel_reason(key, &raw const (*record).time_ns);
            // Bounded again for the verifier, which does not know what the field holds.
            len = u32::from(core::ptr::read_volatile(&raw const (*record).captured)).min(CAPTURE_MAX_SNAPLEN as u32);
        }
    }
    // SAFETY: as above; `len` is at most the array's size.
    if len == 0 || !source.load(unsafe { (&raw mut (*record).data).cast::<u8>() }, len) {
        entry.discard(BPF_RB_NO_WAKEUP);
        return Sent::Unreadable;
    }
    if key.ifindex & TUNNEL_INTERFACE != 0 {
        // After the copy: set before it, the branch had LLVM check the length in one register
        // and pass another to the helper, whose zero length the verifier then could not rule
        // out.
        // SAFETY: as above.
        unsafe { (*record).ifindex = source.ifindex() };
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

//! rstwatch's kernel side: an XDP program (and the same count on the TC ingress hook) that
//! counts TCP resets per directional 5-tuple, a TC egress program for what the host sends, and
//! a tracepoint program that records the reason the host's TCP stack gives for its own resets.
//!
//! Minimum kernel: 5.18 (XDP multi-buffer, `xdp.frags`); bpf_link attachment needs 5.9, tcx
//! links 6.6, the `reason` of `tcp:tcp_send_reset` 6.10 (without it the rest works).
//! The programs never change a frame: XDP always returns `XDP_PASS`, TC always "next".
#![no_std]
#![no_main]
// Rust's BPF target declares no compare-and-swap, so `AtomicU64` has neither `fetch_add` nor
// `compare_exchange` there; the intrinsics lower to BPF's atomic add and, for 64-bit values,
// BPF_CMPXCHG (Linux ≥ 5.12; LLVM needs no `alu32` / v3 for the 64-bit form).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod workload;

use core::intrinsics::{atomic_cxchg, atomic_or, atomic_xadd, AtomicOrdering};

mod capture;

use aya_ebpf::{
    bindings::{xdp_action, BPF_F_MMAPABLE, BPF_NOEXIST},
    helpers::bpf_get_smp_processor_id,
    macros::{classifier, map, tracepoint, xdp},
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
    programs::{TcContext, TracePointContext, XdpContext},
};
use rst_common::{
    count, inspect_with,
    parse::{FrameCounters, TcpEvent, TCP_RST},
    service_counts,
    table::{
        add_to_flow_table, conn_fingerprint_words, conn_lookup, conn_store, flow_block_words, flow_table_bits, Added,
        ConnSlot, ConnSlots, FlowSlot, SlotArray,
    },
    track,
    wire::{
        accept_bits, accept_from_bits, merge_accept, merge_turnaway, turnaway_bits, turnaway_from_bits, CacheSlot,
        ConnKey, ConnState, FlowKey, FlowValue, LoggedFlow, OpenValue, ResetCounters, ServiceKey, ServiceValue,
        SourceKey, StackResetKey, TrafficCounters, CONN_GENERATIONS as CONN_GENERATIONS_LEN, DEFAULT_MAX_FLOWS,
        DEFAULT_MAX_OVERFLOW_SOURCES, DEFAULT_MAX_SERVICES, DIRECTION_RX, DIRECTION_TX, FAMILY_IPV4, FAMILY_IPV6,
        FLOW_CACHE_SLOTS,
    },
    ConnTable, Cursor, Header, OpenConnections, Opened, ServiceChange, Tracked, TurnAway,
};

mod service_down;

mod payload;

/// Two flow tables (the halves of one array, see [`rst_common::table`]) and two reset-counter
/// slots used in turn: the program writes to half `EPOCH` and `RESET_COUNTERS[EPOCH]` while
/// userspace drains the other pair. Userspace flips `EPOCH` and waits for an RCU grace period
/// before draining, so no program still writes into what is being drained: no increment is
/// lost, and each interval's flows add up to its counters exactly. Userspace sizes the table
/// from `--max-flows` at load (and sets `FLOW_TABLE_BITS` to match) and maps it to read it.
#[map]
static FLOW_TABLE: Array<FlowSlot> = Array::with_max_entries(2 << DEFAULT_FLOW_TABLE_BITS, BPF_F_MMAPABLE);
/// Which blocks of `FLOW_TABLE` hold a flow (see [`rst_common::table::SLOTS_PER_BLOCK_LOG2`]):
/// set here on every claim, read and cleared by userspace, which drains only marked blocks.
#[map]
static FLOW_BLOCKS: Array<u64> = Array::with_max_entries(flow_block_words(DEFAULT_FLOW_TABLE_BITS), BPF_F_MMAPABLE);
/// log2 of one epoch's slots in `FLOW_TABLE`, and of the slots of `CONNECTIONS`; the loader
/// sets it.
#[unsafe(no_mangle)]
static FLOW_TABLE_BITS: u32 = DEFAULT_FLOW_TABLE_BITS;
const DEFAULT_FLOW_TABLE_BITS: u32 = flow_table_bits(DEFAULT_MAX_FLOWS);
/// Per source address, the RSTs that found no room in the flow table of the same epoch, so a
/// scan that floods the flow table cannot hide who sends the resets.
#[map]
static OVERFLOW_SOURCES_0: HashMap<SourceKey, FlowValue> = HashMap::with_max_entries(DEFAULT_MAX_OVERFLOW_SOURCES, 0);
#[map]
static OVERFLOW_SOURCES_1: HashMap<SourceKey, FlowValue> = HashMap::with_max_entries(DEFAULT_MAX_OVERFLOW_SOURCES, 0);
/// The flows each CPU's cache evicted (see [`LoggedFlow`]): per CPU and epoch, a run of
/// `EVICTION_LOG_SLOTS` entries at `((cpu * 2) + epoch) * EVICTION_LOG_SLOTS`, written only by
/// that CPU. A plain array rather than a per-CPU one so that userspace maps and reads it
/// without a syscall per entry. The loader sizes it for every possible CPU id (a CPU id beyond
/// them would find no entry and write to the table).
#[map]
static EVICTION_LOG: Array<LoggedFlow> = Array::with_max_entries(2 * DEFAULT_EVICTION_LOG_SLOTS, BPF_F_MMAPABLE);
#[unsafe(no_mangle)]
static EVICTION_LOG_SLOTS: u32 = DEFAULT_EVICTION_LOG_SLOTS;
const DEFAULT_EVICTION_LOG_SLOTS: u32 = 256;
/// Per-CPU, direct-mapped cache in front of the flow tables; see [`CacheSlot`].
#[map]
static FLOW_CACHE: PerCpuArray<CacheSlot> = PerCpuArray::with_max_entries(2 * FLOW_CACHE_SLOTS, 0);
/// Which half of the flow table, which reset counters, services and stack-reset tables the
/// programs write to (bit 0); userspace flips it. A global rather than a one-entry map: reading
/// it is one load instead of an inlined map lookup (~15 instructions, ~3 ns per RST). It is the
/// object's only zero-initialized global, so its `.bss` map holds it alone and userspace
/// updates that map as a one-entry array of u32 (which fails loudly should that change).
#[unsafe(no_mangle)]
static mut EPOCH: u32 = 0;
/// Per group of connections ([`ConnKey::generation_slot`]), bumped on every change to one of
/// them in `CONNECTIONS`: a flow-cache verdict made before it is not reused.
#[map]
static CONN_GENERATIONS: Array<u64> = Array::with_max_entries(CONN_GENERATIONS_LEN, 0);
#[map]
static RESET_COUNTERS: PerCpuArray<ResetCounters> = PerCpuArray::with_max_entries(2, 0);
/// Cumulative, never flipped, one slot per direction (rx, tx): the common path touches only this.
#[map]
static TRAFFIC: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(2, 0);
/// What SYN, SYN+ACK and FIN segments told about each connection; read by the reset
/// classifier (see [`ConnSlots`]: pairs of slots, the older connection of a pair forgotten
/// first). Losing an entry only turns an observed classification into an inferred one: no
/// count depends on it. Mmap-able only for its page-aligned (so cache-line-aligned) slots.
#[map]
static CONNECTIONS: Array<ConnSlot> = Array::with_max_entries(1 << DEFAULT_FLOW_TABLE_BITS, BPF_F_MMAPABLE);
/// One byte per `CONNECTIONS` slot, eight to an element (see [`ConnSlots::fingerprints`]).
#[map]
static CONN_FINGERPRINTS: Array<u64> = Array::with_max_entries(conn_fingerprint_words(DEFAULT_FLOW_TABLE_BITS), 0);
/// Connection attempts and SYN+ACKs per service, flipped and drained like the flow tables.
#[map]
static SERVICES_0: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
#[map]
static SERVICES_1: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
/// Open connections and the down word per service (see [`rst_common::services`]): lives across
/// intervals, never flipped or drained; only SYN+ACKs, FINs and RSTs of tracked connections
/// touch it. An LRU map: every server a host ever talks to is a service (pod addresses churn),
/// and a plain hash, once full, left every new service without an open count for the rest of
/// the run; here the service longest untouched makes room.
#[map]
static SERVICE_OPEN: LruHashMap<ServiceKey, OpenValue> = LruHashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
/// Resets the host's TCP stack sent, per 4-tuple and kernel reason; flipped and drained too.
#[map]
static STACK_RESETS_0: HashMap<StackResetKey, FlowValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
#[map]
static STACK_RESETS_1: HashMap<StackResetKey, FlowValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// Where `tcp:tcp_send_reset` keeps its fields; the loader sets them from the tracepoint's
/// format file, the defaults are Linux 6.10–6.18's.
#[unsafe(no_mangle)]
static SEND_RESET_REASON_OFFSET: u32 = 28;
#[unsafe(no_mangle)]
static SEND_RESET_SADDR_OFFSET: u32 = 32;
#[unsafe(no_mangle)]
static SEND_RESET_DADDR_OFFSET: u32 = 60;

const EEXIST: i32 = 17;

/// The directly readable bytes of a packet (`data` .. `data_end`) as a [`Cursor`]: the first
/// buffer of a multi-buffer XDP frame, the linear part of an skb. The headers rstwatch reads
/// are there.
struct Packet {
    start: usize,
    end: usize,
}

impl Cursor for Packet {
    #[inline(always)]
    fn header<T: Header>(&self, offset: usize) -> Option<&T> {
        let Packet { start, end } = *self;
        if start + offset + core::mem::size_of::<T>() > end {
            return None;
        }
        // SAFETY: the verifier-visible check above keeps the whole T inside the packet, and
        // `Header` types have alignment 1 and accept every bit pattern.
        Some(unsafe { &*((start + offset) as *const T) })
    }
}

#[xdp(frags)]
pub fn rstwatch_xdp(ctx: XdpContext) -> u32 {
    count_xdp::<PER_CPU, NO_CAPTURE>(&ctx)
}

/// The same count on the TC ingress hook (tcx, kernel ≥ 6.6), for interfaces whose XDP hook
/// another program holds. Returns "next": the verdict stays with the other programs and the stack.
#[classifier]
pub fn rstwatch_tc(ctx: TcContext) -> i32 {
    count_skb::<PER_CPU, NO_CAPTURE>(&ctx, DIRECTION_RX)
}

/// What the host sends (tcx egress): its own resets and its side of every handshake.
#[classifier]
pub fn rstwatch_tc_egress(ctx: TcContext) -> i32 {
    count_skb::<PER_CPU, NO_CAPTURE>(&ctx, DIRECTION_TX)
}

// The three counting programs again, counting with atomic adds only and without the per-CPU
// flow cache and eviction logs, whose multi-field updates no atomic covers: for kernels where
// two programs on one CPU may interleave (PREEMPT_RT, whose softirqs are preemptible threads).
// The loader loads one set or the other. Separate programs rather than a flag the verifier
// folds: one more branch in the default program cost it up to ~10 ns per RST in register spills.

#[xdp(frags)]
pub fn rstwatch_xdp_atomic(ctx: XdpContext) -> u32 {
    count_xdp::<ATOMIC_ADDS, NO_CAPTURE>(&ctx)
}

#[classifier]
pub fn rstwatch_tc_atomic(ctx: TcContext) -> i32 {
    count_skb::<ATOMIC_ADDS, NO_CAPTURE>(&ctx, DIRECTION_RX)
}

#[classifier]
pub fn rstwatch_tc_egress_atomic(ctx: TcContext) -> i32 {
    count_skb::<ATOMIC_ADDS, NO_CAPTURE>(&ctx, DIRECTION_TX)
}

// `--capture`: both sets again, handing each RST to userspace (see `capture`). Separate
// programs for the same reason as the atomic set: the default ones carry nothing of it.

#[xdp(frags)]
pub fn rstwatch_xdp_capture(ctx: XdpContext) -> u32 {
    count_xdp::<PER_CPU, CAPTURE>(&ctx)
}

#[classifier]
pub fn rstwatch_tc_capture(ctx: TcContext) -> i32 {
    count_skb::<PER_CPU, CAPTURE>(&ctx, DIRECTION_RX)
}

#[classifier]
pub fn rstwatch_tc_egress_capture(ctx: TcContext) -> i32 {
    count_skb::<PER_CPU, CAPTURE>(&ctx, DIRECTION_TX)
}

#[xdp(frags)]
pub fn rstwatch_xdp_atomic_capture(ctx: XdpContext) -> u32 {
    count_xdp::<ATOMIC_ADDS, CAPTURE>(&ctx)
}

#[classifier]
pub fn rstwatch_tc_atomic_capture(ctx: TcContext) -> i32 {
    count_skb::<ATOMIC_ADDS, CAPTURE>(&ctx, DIRECTION_RX)
}

#[classifier]
pub fn rstwatch_tc_egress_atomic_capture(ctx: TcContext) -> i32 {
    count_skb::<ATOMIC_ADDS, CAPTURE>(&ctx, DIRECTION_TX)
}

// An RST with a payload, tail-called from the counting program of the same set and hook once it
// counted the frame's traffic (see `payload`): hands the payload to userspace and counts the
// RST. The loader puts the ones of the set it loads in the program arrays.

#[xdp(frags)]
pub fn rstwatch_xdp_payload(ctx: XdpContext) -> u32 {
    count_payload_xdp::<PER_CPU>(&ctx)
}

#[classifier]
pub fn rstwatch_tc_payload(ctx: TcContext) -> i32 {
    count_payload_skb::<PER_CPU>(&ctx, DIRECTION_RX)
}

#[classifier]
pub fn rstwatch_tc_egress_payload(ctx: TcContext) -> i32 {
    count_payload_skb::<PER_CPU>(&ctx, DIRECTION_TX)
}

#[xdp(frags)]
pub fn rstwatch_xdp_atomic_payload(ctx: XdpContext) -> u32 {
    count_payload_xdp::<ATOMIC_ADDS>(&ctx)
}

#[classifier]
pub fn rstwatch_tc_atomic_payload(ctx: TcContext) -> i32 {
    count_payload_skb::<ATOMIC_ADDS>(&ctx, DIRECTION_RX)
}

#[classifier]
pub fn rstwatch_tc_egress_atomic_payload(ctx: TcContext) -> i32 {
    count_payload_skb::<ATOMIC_ADDS>(&ctx, DIRECTION_TX)
}

/// Whether a program is a counting program or the payload program one tail-calls (the `PAYLOAD`
/// parameter below).
const COUNTING: bool = false;
const PAYLOAD: bool = true;

/// Whether a program hands RSTs to the capture ring (the `CAPTURE` parameter below).
const NO_CAPTURE: bool = false;
const CAPTURE: bool = true;

/// How a program counts (the `ATOMIC` parameter below): plain adds to per-CPU state, or
/// atomic adds only.
const PER_CPU: bool = false;
const ATOMIC_ADDS: bool = true;

#[inline(always)]
fn count_xdp<const ATOMIC: bool, const CAPTURE: bool>(ctx: &XdpContext) -> u32 {
    count_frame::<ATOMIC, CAPTURE, COUNTING, _, _>(
        &Packet { start: ctx.data(), end: ctx.data_end() },
        ctx,
        DIRECTION_RX,
        || ctx.ingress_ifindex() as u32,
    );
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count_skb<const ATOMIC: bool, const CAPTURE: bool>(ctx: &TcContext, direction: u8) -> i32 {
    count_frame::<ATOMIC, CAPTURE, COUNTING, _, _>(
        &Packet { start: ctx.data(), end: ctx.data_end() },
        ctx,
        direction,
        || {
            // SAFETY: `skb` is the context pointer the kernel passed to this program run.
            unsafe { (*ctx.skb.skb).ifindex }
        },
    );
    TCX_NEXT
}

#[inline(always)]
fn count_payload_xdp<const ATOMIC: bool>(ctx: &XdpContext) -> u32 {
    count_frame::<ATOMIC, NO_CAPTURE, PAYLOAD, _, _>(
        &Packet { start: ctx.data(), end: ctx.data_end() },
        ctx,
        DIRECTION_RX,
        || ctx.ingress_ifindex() as u32,
    );
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count_payload_skb<const ATOMIC: bool>(ctx: &TcContext, direction: u8) -> i32 {
    count_frame::<ATOMIC, NO_CAPTURE, PAYLOAD, _, _>(
        &Packet { start: ctx.data(), end: ctx.data_end() },
        ctx,
        direction,
        || {
            // SAFETY: `skb` is the context pointer the kernel passed to this program run.
            unsafe { (*ctx.skb.skb).ifindex }
        },
    );
    TCX_NEXT
}

/// `tcp:tcp_send_reset`: this host's stack decided to send an RST, and why. Always returns 0.
#[tracepoint]
pub fn rstwatch_send_reset(ctx: TracePointContext) -> u32 {
    let _ = record_stack_reset(&ctx);
    0
}

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// The tracepoint's `saddr` / `daddr`: a `struct sockaddr_in` or `sockaddr_in6`. Aligned so
/// its address words load whole (stack accesses must be aligned).
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct SockAddr([u8; 28]);

#[inline(always)]
fn record_stack_reset(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: plain reads of statics the loader may have rewritten before load; volatile so the
    // compiler does not fold in the defaults.
    let (reason_offset, saddr_offset, daddr_offset) = unsafe {
        (
            core::ptr::read_volatile(&raw const SEND_RESET_REASON_OFFSET),
            core::ptr::read_volatile(&raw const SEND_RESET_SADDR_OFFSET),
            core::ptr::read_volatile(&raw const SEND_RESET_DADDR_OFFSET),
        )
    };
    // SAFETY: bpf_probe_read of the tracepoint record at offsets its format file gives.
    let (reason, src, dst) = unsafe {
        (
            ctx.read_at::<u32>(reason_offset as usize)?,
            ctx.read_at::<SockAddr>(saddr_offset as usize)?,
            ctx.read_at::<SockAddr>(daddr_offset as usize)?,
        )
    };
    let Some((family, sport, src)) = sockaddr(&src) else {
        return Ok(());
    };
    let Some((_, dport, dst)) = sockaddr(&dst) else {
        return Ok(());
    };
    workload::sent(ctx, src, dst, (sport, dport), family);
    capture::stack_reset(src, dst, (sport, dport), family, reason);
    let key = StackResetKey::new(src, dst, sport, dport, family, reason);
    let epoch = current_epoch();
    let recorded = match epoch {
        0 => add_to_table(&STACK_RESETS_0, &key, 1),
        _ => add_to_table(&STACK_RESETS_1, &key, 1),
    };
    if !recorded {
        if let Some(counters) = RESET_COUNTERS.get_ptr_mut(epoch) {
            // SAFETY: a live per-CPU slot; atomic because a tracepoint program may run in
            // process context, where another program on this CPU could interleave.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*counters).stack_overflow, 1) };
        }
    }
    Ok(())
}

/// Family, port (host order) and address (as in [`FlowKey`], native-endian words) of a sockaddr.
#[inline(always)]
fn sockaddr(raw: &SockAddr) -> Option<(u8, u16, [u32; 4])> {
    let raw = &raw.0;
    let family = u16::from_ne_bytes([raw[0], raw[1]]);
    let port = u16::from_be_bytes([raw[2], raw[3]]);
    let word = |at: usize| u32::from_ne_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
    match family {
        AF_INET => Some((FAMILY_IPV4, port, [word(4), 0, 0, 0])),
        // A dual-stack socket (`[::]` listeners) speaking IPv4 reports ::ffff:a.b.c.d; the
        // segment on the wire, and so its flow, is IPv4.
        AF_INET6 if word(8) == 0 && word(12) == 0 && word(16) == u32::from_ne_bytes([0, 0, 0xff, 0xff]) => {
            Some((FAMILY_IPV4, port, [word(20), 0, 0, 0]))
        }
        // sin6_port, sin6_flowinfo, then the address.
        AF_INET6 => Some((FAMILY_IPV6, port, [word(8), word(12), word(16), word(20)])),
        _ => None,
    }
}

/// `TCX_NEXT` (include/uapi/linux/bpf.h), the same value as `TC_ACT_UNSPEC` for clsact.
const TCX_NEXT: i32 = -1;

/// The baseline for cost measurements: the cheapest program the same hook can run.
#[xdp(frags)]
pub fn rstwatch_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The same baseline for the TC programs.
#[classifier]
pub fn rstwatch_tc_next(_ctx: TcContext) -> i32 {
    TCX_NEXT
}

#[inline(always)]
fn count_frame<const ATOMIC: bool, const CAPTURE: bool, const PAYLOAD: bool, C: Cursor, S: payload::Bytes>(
    frame: &C,
    source: &S,
    direction: u8,
    ifindex: impl FnOnce() -> u32,
) {
    // One slot per direction: the index is a constant of each program.
    let Some(traffic) = TRAFFIC.get_ptr_mut(u32::from(direction)) else {
        return;
    };
    let observation = inspect_with(frame, direction, ifindex);
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
unsafe fn add_local<const ATOMIC: bool>(counter: *mut u64, n: u64) {
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

/// The kernel's [`ConnTable`]: the `CONNECTIONS` array.
struct Connections;

impl ConnSlots for Connections {
    #[inline(always)]
    fn slot(&self, index: u32) -> Option<*mut ConnSlot> {
        CONNECTIONS.get_ptr_mut(index)
    }

    #[inline(always)]
    fn fingerprints(&self, set: u32) -> Option<*mut [u8; 2]> {
        let word = CONN_FINGERPRINTS.get_ptr_mut(set / 8)?;
        // SAFETY: byte offset 0, 2, 4 or 6 of a live 8-byte element: both bytes inside it.
        Some(unsafe { word.cast::<u8>().add((set & 6) as usize) }.cast::<[u8; 2]>())
    }
}

/// `FLOW_TABLE_BITS`, as the loader set it.
#[inline(always)]
fn table_bits() -> u32 {
    // SAFETY: a plain read of a global the loader may have rewritten before load; volatile so
    // the compiler does not fold in the default.
    unsafe { core::ptr::read_volatile(&raw const FLOW_TABLE_BITS) }
}

impl ConnTable for Connections {
    #[inline(always)]
    fn get(&mut self, key: &ConnKey) -> Option<&mut ConnState> {
        // SAFETY: array elements live as long as the map. Two CPUs updating one connection at
        // once may lose a flag: it only changes a classification, never a count.
        conn_lookup(self, table_bits(), key).map(|state| unsafe { &mut *state })
    }

    #[inline(always)]
    fn put(&mut self, key: &ConnKey, state: &ConnState) {
        conn_store(self, table_bits(), key, state);
    }

    #[inline(always)]
    fn changed(&mut self, key: &ConnKey) {
        if let Some(generation) = CONN_GENERATIONS.get_ptr_mut(key.generation_slot()) {
            // SAFETY: a live array element; every CPU adds atomically.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(generation, 1) };
        }
    }
}

/// The generation of a connection group ([`FlowKey::generation_slot`]); `None` (never for an
/// in-range index) means no verdict may be reused.
#[inline(always)]
fn conn_generation(generation_slot: u32) -> Option<u64> {
    CONN_GENERATIONS
        .get_ptr(generation_slot)
        // SAFETY: a live array element; a torn read is impossible for an aligned u64.
        .map(|generation| unsafe { core::ptr::read_volatile(generation) })
}

#[inline(always)]
fn current_epoch() -> u32 {
    // SAFETY: a volatile read of an aligned u32 that only userspace writes (whole).
    unsafe { core::ptr::read_volatile(&raw const EPOCH) & 1 }
}

/// The kernel's [`OpenConnections`]: the `SERVICE_OPEN` map, every writer atomic.
struct ServiceOpen;

impl OpenConnections for ServiceOpen {
    #[inline(always)]
    fn open(&mut self, service: &ServiceKey) -> Opened {
        let value = match SERVICE_OPEN.get_ptr_mut(service) {
            Some(value) => value,
            // Inserted empty and counted below like any other: a non-zero constant would have
            // LLVM keep it in a `.rodata.cst16` section, a map the object contract does not allow.
            None => match SERVICE_OPEN.insert(service, OpenValue::default(), BPF_NOEXIST as u64) {
                // Another CPU may have created it a moment ago (-EEXIST): found either way.
                Ok(()) | Err(_) => match SERVICE_OPEN.get_ptr_mut(service) {
                    Some(value) => value,
                    None => return Opened::default(),
                },
            },
        };
        // SAFETY: a live element for this program run; every writer uses atomics.
        let open = unsafe { &raw mut (*value).open };
        // BPF's fetching add needs `-mcpu=v3`, which the object is not built for: a
        // compare-and-swap tells the count before; when it keeps losing, a plain atomic add still
        // counts the connection, only its accept goes without an open count.
        // SAFETY: as above.
        let before = match unsafe { update_word(open, |open| open + 1) } {
            Some(before) => Some(before.min(u64::from(u32::MAX)) as u32),
            None => {
                // SAFETY: as above.
                unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(open, 1) };
                None
            }
        };
        // SAFETY: as above.
        let ended_down = unsafe { service_down::end(&raw mut (*value).down) };
        Opened { before, ended_down }
    }

    #[inline(always)]
    fn close(&mut self, service: &ServiceKey) {
        if let Some(value) = SERVICE_OPEN.get_ptr_mut(service) {
            // SAFETY: as in `open`. Never below 0; a dropped update (see `update_word`) leaves
            // one connection too many counted.
            unsafe { update_word(&raw mut (*value).open, |open| open.saturating_sub(1)) };
        }
    }

    #[inline(always)]
    fn turn_away(&mut self, service: &ServiceKey, closes: bool) -> TurnAway {
        let Some(value) = SERVICE_OPEN.get_ptr_mut(service) else {
            return TurnAway::default();
        };
        // SAFETY: as in `open`.
        let open = unsafe { &raw mut (*value).open };
        if closes {
            // SAFETY: as in `close`.
            unsafe { update_word(open, |open| open.saturating_sub(1)) };
        }
        // SAFETY: as in `open`; an aligned u64 is never torn.
        let open = unsafe { core::ptr::read_volatile(open) }.min(u64::from(u32::MAX)) as u32;
        if open != 0 {
            return TurnAway { open, down: 0 };
        }
        // SAFETY: as in `open`.
        TurnAway { open, down: unsafe { service_down::turned_away(&raw mut (*value).down) } }
    }

    #[inline(always)]
    fn open_now(&mut self, service: &ServiceKey) -> u32 {
        match SERVICE_OPEN.get_ptr(service) {
            Some(value) => {
                // SAFETY: as in `open`; an aligned u64 is never torn.
                unsafe { core::ptr::read_volatile(&raw const (*value).open) }.min(u64::from(u32::MAX)) as u32
            }
            None => 0,
        }
    }
}

/// Tries a bounded number of times to replace the word at `word` with `next` of it, with
/// BPF_CMPXCHG, and returns the word it replaced (or found already as wanted). Every CPU writing
/// the word comes through here (or adds atomically), so a try fails only when another CPU
/// changed the word in between; after four such failures the update is dropped (`None`; see
/// `count_service` for what that costs).
///
/// # Safety
/// `word` points into a live map element every writer of which uses atomics.
#[inline(always)]
pub(crate) unsafe fn update_word(word: *mut u64, next: impl Fn(u64) -> u64) -> Option<u64> {
    // SAFETY: the caller's pointer; an aligned u64 is never torn.
    let mut current = unsafe { core::ptr::read_volatile(word) };
    for _ in 0..CAS_TRIES {
        let wanted = next(current);
        if wanted == current {
            return Some(current);
        }
        // SAFETY: as above.
        let (seen, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(word, current, wanted)
        };
        if swapped {
            return Some(current);
        }
        current = seen;
    }
    None
}

const CAS_TRIES: u32 = 4;

/// Applies a tracked change to `SERVICE_OPEN` and counts it in the interval's service table.
#[inline(always)]
fn record_service<const ATOMIC: bool>(change: &ServiceChange) {
    if let Some(counts) = service_counts(&mut ServiceOpen, change) {
        count_service::<ATOMIC>(&change.service, counts);
    }
}

/// Adds `counts` to the service's entry of the interval: the counts with atomic adds, the
/// open-connection extremes and the TTL with [`update_word`] on their two 64-bit words (as
/// [`ServiceValue::merge`] folds them on the host). A dropped update (four CPUs changing the same
/// service's word within one try each) can only leave the interval's range too narrow, never
/// wider than what its events recorded: a max lower or a min higher than that one event's
/// count, or an older TTL; `attempts` and `synacks` are always exact.
#[inline(always)]
fn count_service<const ATOMIC: bool>(key: &ServiceKey, counts: ServiceValue) {
    let epoch = current_epoch();
    let table = match epoch {
        0 => &SERVICES_0,
        _ => &SERVICES_1,
    };
    // Looked up first: the entry usually exists (the service's SYN made it this interval), and
    // then one hash walk does. A new entry is inserted empty and counted through the atomics
    // like any other: inserting `counts` itself would have LLVM keep its 32 constant bytes in a
    // `.rodata.cst32` section, a map the object contract does not allow.
    let value = match table.get_ptr_mut(key) {
        Some(value) => Some(value),
        None => match table.insert(key, ServiceValue::default(), BPF_NOEXIST as u64) {
            Ok(()) => table.get_ptr_mut(key),
            // Another CPU made it a moment ago.
            Err(err) if err == -EEXIST => table.get_ptr_mut(key),
            Err(_) => None,
        },
    };
    let Some(value) = value else {
        if let Some(counters) = RESET_COUNTERS.get_ptr_mut(epoch) {
            // SAFETY: this CPU's live slot.
            unsafe { add_local::<ATOMIC>(&raw mut (*counters).service_overflow, 1) };
        }
        return;
    };
    // Each add only where there is something to add: an atomic add of 0 still costs a locked
    // instruction, and a turn-away adds to neither count.
    // SAFETY: a live element for this run; every writer adds atomically.
    unsafe {
        if counts.attempts != 0 {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).attempts, counts.attempts);
        }
        if counts.synacks != 0 {
            atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).synacks, counts.synacks);
        }
    }
    let (accept_open, ttl) = counts.accept_word();
    if accept_open != 0 || ttl != 0 {
        // SAFETY: as above; the word is 8-aligned (asserted in rst-common).
        unsafe {
            update_word((&raw mut (*value).accept_open_max).cast::<u64>(), |bits| {
                accept_bits(merge_accept(accept_from_bits(bits), accept_open, ttl))
            })
        };
    }
    let (min, max) = counts.turnaway_word();
    if max != 0 {
        // SAFETY: as above.
        unsafe {
            update_word((&raw mut (*value).turnaway_open_min).cast::<u64>(), |bits| {
                turnaway_bits(merge_turnaway(turnaway_from_bits(bits), min, max))
            })
        };
    }
    // SAFETY: as above.
    unsafe { service_down::count(value, &counts) };
}

/// Counts an RST. A repeated RST whose verdict the per-CPU cache slot still holds (see
/// [`CacheSlot`]) is one add; anything else goes through the classifier first. Returns the key
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

/// The kernel's flow table: `FLOW_TABLE` with BPF's atomics.
struct FlowTable;

impl SlotArray for FlowTable {
    #[inline(always)]
    fn slot(&self, index: u32) -> Option<*mut FlowSlot> {
        FLOW_TABLE.get_ptr_mut(index)
    }

    #[inline(always)]
    unsafe fn claim(tag: *mut u64) -> bool {
        // SAFETY: the caller passes a live slot's tag; every CPU claims with this CAS.
        unsafe { atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(tag, 0, FlowSlot::BUSY).1 }
    }

    #[inline(always)]
    unsafe fn add(counter: *mut u64, n: u64) {
        // SAFETY: the caller passes a live slot's counter; every writer adds atomically.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(counter, n) };
    }

    #[inline(always)]
    unsafe fn load_tag(tag: *const u64) -> u64 {
        // SAFETY: the caller passes a live slot's tag. A plain load: BPF has load-acquire only
        // from Linux 6.15; what a weakly ordered CPU may then see is covered by `Added::Raced`.
        unsafe { core::ptr::read_volatile(tag) }
    }

    #[inline(always)]
    unsafe fn publish_tag(tag: *mut u64, value: u64) {
        // SAFETY: as in `load_tag` (store-release likewise needs 6.15).
        unsafe { core::ptr::write_volatile(tag, value) }
    }

    #[inline(always)]
    fn mark_block(&self, block: u32) -> bool {
        let Some(word) = FLOW_BLOCKS.get_ptr_mut(block / 64) else {
            return false;
        };
        // SAFETY: a live array element; every writer (the programs, and userspace clearing
        // bits) uses atomic read-modify-writes.
        unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(word, 1 << (block % 64)) };
        true
    }
}

/// Moves `resets` RSTs of `key` from the cache into this CPU's eviction log, or when that is
/// full into the epoch's flow table; what does not fit there goes to the per-source overflow
/// table, and what does not fit there either is only counted.
#[inline(always)]
fn write_back<const ATOMIC: bool>(epoch: u32, key: &FlowKey, resets: u64, counters: &mut ResetCounters) {
    // SAFETY: plain reads of globals the loader may have rewritten before load; volatile so
    // the compiler does not fold in the defaults. The helper has no preconditions.
    let (log_slots, cpu) =
        unsafe { (core::ptr::read_volatile(&raw const EVICTION_LOG_SLOTS), bpf_get_smp_processor_id()) };
    // Appending claims an entry with a plain increment of `logged`: only while programs on one
    // CPU cannot interleave.
    if !ATOMIC && counters.logged < u64::from(log_slots) {
        let index = (cpu * 2 + epoch) * log_slots + counters.logged as u32;
        if let Some(entry) = EVICTION_LOG.get_ptr_mut(index) {
            // SAFETY: this CPU's run of the log for this epoch, written by nothing else (per-CPU
            // use, as in `count_frame`); userspace reads it only after the epoch is flipped and
            // a grace period has passed, and only the first `logged` entries.
            unsafe { *entry = LoggedFlow { key: *key, resets } };
            counters.logged += 1;
            return;
        }
    }
    match add_to_flow_table(&FlowTable, table_bits(), epoch, key, resets) {
        Added::Stored => return,
        Added::Raced => {
            // The collector's only sign that a flow may sit in two slots: atomic, so that not
            // even programs interleaving on one CPU (possible on PREEMPT_RT) can lose it.
            // SAFETY: a live per-CPU slot; every writer of this field adds atomically.
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut counters.table_races, 1) };
            return;
        }
        Added::Full => {}
    }
    // SAFETY: this CPU's live slot.
    unsafe { add_local::<ATOMIC>(&raw mut counters.overflow, resets) };
    let source = SourceKey::of(key);
    let recorded = match epoch {
        0 => add_to_table(&OVERFLOW_SOURCES_0, &source, resets),
        _ => add_to_table(&OVERFLOW_SOURCES_1, &source, resets),
    };
    if !recorded {
        // SAFETY: as above.
        unsafe { add_local::<ATOMIC>(&raw mut counters.source_overflow, resets) };
    }
}

/// Adds `resets` to `key`'s entry, creating it if needed. Returns false when the table is full.
///
/// Insert first: a flow written back from the cache is usually not in this epoch's table yet,
/// so one hash walk does it; an existing entry costs a second walk.
#[inline(always)]
fn add_to_table<K>(table: &HashMap<K, FlowValue>, key: &K, resets: u64) -> bool {
    match table.insert(key, FlowValue { resets }, BPF_NOEXIST as u64) {
        Ok(()) => true,
        // The entry exists (perhaps just created by another CPU): add to it.
        Err(err) if err == -EEXIST => match table.get_ptr_mut(key) {
            Some(value) => {
                add(value, resets);
                true
            }
            None => false,
        },
        Err(_) => false,
    }
}

#[inline(always)]
fn add(value: *mut FlowValue, resets: u64) {
    // SAFETY: `value` points into a live map element for the duration of this program run (the
    // element can only be freed after an RCU grace period); all writers use atomic adds.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).resets, resets) };
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

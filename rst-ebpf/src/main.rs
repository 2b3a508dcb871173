//! rstwatch's kernel side: an XDP program (and the same count on the TC ingress hook) that
//! counts TCP resets per directional 5-tuple.
//!
//! Minimum kernel: 5.18 (XDP multi-buffer, `xdp.frags`); bpf_link attachment needs 5.9.
//! The programs never change a frame: XDP always returns `XDP_PASS`, TC always "next".
#![no_std]
#![no_main]
// The BPF target has no compare-and-swap, so `AtomicU64::fetch_add` does not exist there; the
// intrinsic lowers to BPF's native atomic add.
#![feature(core_intrinsics)]
#![allow(internal_features)]

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::{xdp_action, BPF_NOEXIST},
    macros::{classifier, map, xdp},
    maps::{Array, HashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use rst_common::{
    count, inspect_with,
    wire::{
        CacheSlot, FlowKey, FlowValue, ResetCounters, SourceKey, TrafficCounters,
        DEFAULT_MAX_FLOWS, DEFAULT_MAX_OVERFLOW_SOURCES, FLOW_CACHE_SLOTS,
    },
    Cursor, Header,
};

/// Two flow tables and two reset-counter slots used in turn: the program writes to
/// `FLOWS_<EPOCH>` and `RESET_COUNTERS[EPOCH]` while userspace drains the other pair. Userspace flips `EPOCH` and waits for
/// an RCU grace period before draining, so no program still holds a pointer into what is being
/// drained: no increment is lost, and each interval's flows add up to its counters exactly.
/// Userspace sizes both flow tables with `--max-flows` at load.
#[map]
static FLOWS_0: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);
#[map]
static FLOWS_1: HashMap<FlowKey, FlowValue> = HashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);
/// Per source address, the RSTs that found no room in the flow table of the same epoch, so a
/// scan that floods the flow table cannot hide who sends the resets.
#[map]
static OVERFLOW_SOURCES_0: HashMap<SourceKey, FlowValue> =
    HashMap::with_max_entries(DEFAULT_MAX_OVERFLOW_SOURCES, 0);
#[map]
static OVERFLOW_SOURCES_1: HashMap<SourceKey, FlowValue> =
    HashMap::with_max_entries(DEFAULT_MAX_OVERFLOW_SOURCES, 0);
/// Per-CPU, direct-mapped cache in front of the flow tables; see [`CacheSlot`].
#[map]
static FLOW_CACHE: PerCpuArray<CacheSlot> = PerCpuArray::with_max_entries(2 * FLOW_CACHE_SLOTS, 0);
#[map]
static EPOCH: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static RESET_COUNTERS: PerCpuArray<ResetCounters> = PerCpuArray::with_max_entries(2, 0);
/// Cumulative, never flipped: the common path touches only this.
#[map]
static TRAFFIC: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(1, 0);

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
    count_frame(&Packet { start: ctx.data(), end: ctx.data_end() }, || ctx.ingress_ifindex() as u32);
    xdp_action::XDP_PASS
}

/// The same count on the TC ingress hook (tcx, kernel ≥ 6.6), for interfaces whose XDP hook
/// another program holds. Returns "next": the verdict stays with the other programs and the stack.
#[classifier]
pub fn rstwatch_tc(ctx: TcContext) -> i32 {
    count_frame(&Packet { start: ctx.data(), end: ctx.data_end() }, || {
        // SAFETY: `skb` is the context pointer the kernel passed to this program run.
        unsafe { (*ctx.skb.skb).ifindex }
    });
    TCX_NEXT
}

/// `TCX_NEXT` (include/uapi/linux/bpf.h), the same value as `TC_ACT_UNSPEC` for clsact.
const TCX_NEXT: i32 = -1;

/// The baseline for cost measurements: the cheapest program the same hook can run.
#[xdp(frags)]
pub fn rstwatch_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[inline(always)]
fn count_frame<C: Cursor>(frame: &C, ifindex: impl FnOnce() -> u32) {
    let Some(traffic) = TRAFFIC.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU slot, only touched by programs on this CPU, which do not preempt each
    // other while one runs.
    let traffic = unsafe { &mut *traffic };
    if let Some(key) = count(traffic, &inspect_with(frame, ifindex)) {
        count_reset(key);
    }
}

#[inline(always)]
fn count_reset(key: &FlowKey) {
    let epoch = match EPOCH.get(0) {
        Some(epoch) => *epoch & 1,
        None => 0,
    };
    let Some(counters) = RESET_COUNTERS.get_ptr_mut(epoch) else {
        return;
    };
    // SAFETY: per-CPU slot, as above.
    let counters = unsafe { &mut *counters };
    counters.resets += 1;
    let Some(slot) = FLOW_CACHE.get_ptr_mut(epoch * FLOW_CACHE_SLOTS + key.cache_slot()) else {
        write_back(epoch, key, 1, counters);
        return;
    };
    // SAFETY: per-CPU slot, as above.
    let slot = unsafe { &mut *slot };
    if slot.resets != 0 {
        if slot.key.same_flow(key) {
            slot.resets += 1;
            return;
        }
        write_back(epoch, &slot.key, slot.resets, counters);
    }
    slot.key = *key;
    slot.resets = 1;
}

/// Moves `resets` RSTs of `key` from the cache into the epoch's flow table; what does not fit
/// goes to the per-source overflow table, and what does not fit there either is only counted.
#[inline(always)]
fn write_back(epoch: u32, key: &FlowKey, resets: u64, counters: &mut ResetCounters) {
    let recorded = match epoch {
        0 => add_to_table(&FLOWS_0, key, resets),
        _ => add_to_table(&FLOWS_1, key, resets),
    };
    if recorded {
        return;
    }
    counters.overflow += resets;
    let source = SourceKey::of(key);
    let recorded = match epoch {
        0 => add_to_table(&OVERFLOW_SOURCES_0, &source, resets),
        _ => add_to_table(&OVERFLOW_SOURCES_1, &source, resets),
    };
    if !recorded {
        counters.source_overflow += resets;
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

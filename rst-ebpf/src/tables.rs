//! The kernel's side of the shared tables (see [`rst_common::table`]): the flow table, the
//! connection table, and writing an RST count back to them or to the hash maps behind them.

use core::intrinsics::{atomic_cxchg, atomic_or, atomic_xadd, AtomicOrdering};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_smp_processor_id, maps::HashMap};
use rst_common::{
    table::{add_to_flow_table, conn_lookup, conn_store, Added, ConnSlot, ConnSlots, FlowSlot, SlotArray},
    wire::{ConnKey, ConnState, FlowKey, FlowValue, LoggedFlow, ResetCounters, SourceKey},
    ConnTable,
};

use crate::{
    count::add_local,
    maps::{
        table_bits, CONNECTIONS, CONN_FINGERPRINTS, CONN_GENERATIONS, EVICTION_LOG, EVICTION_LOG_SLOTS, FLOW_BLOCKS,
        FLOW_TABLE, OVERFLOW_SOURCES_0, OVERFLOW_SOURCES_1,
    },
};

pub(crate) const EEXIST: i32 = 17;

/// The kernel's [`ConnTable`]: the `CONNECTIONS` array.
pub(crate) struct Connections;

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
pub(crate) fn conn_generation(generation_slot: u32) -> Option<u64> {
    CONN_GENERATIONS
        .get_ptr(generation_slot)
        // SAFETY: a live array element; a torn read is impossible for an aligned u64.
        .map(|generation| unsafe { core::ptr::read_volatile(generation) })
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
pub(crate) fn write_back<const ATOMIC: bool>(epoch: u32, key: &FlowKey, resets: u64, counters: &mut ResetCounters) {
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
pub(crate) fn add_to_table<K>(table: &HashMap<K, FlowValue>, key: &K, resets: u64) -> bool {
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

/// Inserts `fresh` for `key` as a new entry, or, when another run of the program (on this CPU
/// or another) holds it already, returns that entry to add to; `None` when `fresh` went in, or
/// the table is full (what the caller counts then is lost, as the caller's doc says).
#[inline(always)]
pub(crate) fn insert_or_existing<K, V>(table: &HashMap<K, V>, key: &K, fresh: &V) -> Option<*mut V> {
    match table.insert(key, fresh, BPF_NOEXIST as u64) {
        Err(err) if err == -EEXIST => table.get_ptr_mut(key),
        _ => None,
    }
}

#[inline(always)]
fn add(value: *mut FlowValue, resets: u64) {
    // SAFETY: `value` points into a live map element for the duration of this program run (the
    // element can only be freed after an RCU grace period); all writers use atomic adds.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*value).resets, resets) };
}

//! The maps and the loader-set globals of the counting path, and the two globals every program
//! reads: the epoch and the flow table's size.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use rst_common::{
    table::{conn_fingerprint_words, flow_block_words, flow_table_bits, ConnSlot, FlowSlot},
    wire::{
        CacheSlot, FlowValue, LoggedFlow, OpenValue, ResetCounters, ServiceKey, ServiceValue, SourceKey, StackResetKey,
        TrafficCounters, CONN_GENERATIONS as CONN_GENERATIONS_LEN, DEFAULT_MAX_FLOWS, DEFAULT_MAX_OVERFLOW_SOURCES,
        DEFAULT_MAX_SERVICES, FLOW_CACHE_SLOTS,
    },
};

/// Two flow tables (the halves of one array, see [`rst_common::table`]) and two reset-counter
/// slots used in turn: the program writes to half `EPOCH` and `RESET_COUNTERS[EPOCH]` while
/// userspace drains the other pair. Userspace flips `EPOCH` and waits for an RCU grace period
/// before draining, so no program still writes into what is being drained: no increment is
/// lost, and each interval's flows add up to its counters exactly. Userspace sizes the table
/// from `--max-flows` at load (and sets `FLOW_TABLE_BITS` to match) and maps it to read it.
#[map]
pub(crate) static FLOW_TABLE: Array<FlowSlot> = Array::with_max_entries(2 << DEFAULT_FLOW_TABLE_BITS, BPF_F_MMAPABLE);
/// Which blocks of `FLOW_TABLE` hold a flow (see [`rst_common::table::SLOTS_PER_BLOCK_LOG2`]):
/// set here on every claim, read and cleared by userspace, which drains only marked blocks.
#[map]
pub(crate) static FLOW_BLOCKS: Array<u64> =
    Array::with_max_entries(flow_block_words(DEFAULT_FLOW_TABLE_BITS), BPF_F_MMAPABLE);
/// log2 of one epoch's slots in `FLOW_TABLE`, and of the slots of `CONNECTIONS`; the loader
/// sets it.
#[unsafe(no_mangle)]
pub(crate) static FLOW_TABLE_BITS: u32 = DEFAULT_FLOW_TABLE_BITS;
const DEFAULT_FLOW_TABLE_BITS: u32 = flow_table_bits(DEFAULT_MAX_FLOWS);
/// Per source address, the RSTs that found no room in the flow table of the same epoch, so a
/// scan that floods the flow table cannot hide who sends the resets.
#[map]
pub(crate) static OVERFLOW_SOURCES_0: HashMap<SourceKey, FlowValue> =
    HashMap::with_max_entries(DEFAULT_MAX_OVERFLOW_SOURCES, 0);
#[map]
pub(crate) static OVERFLOW_SOURCES_1: HashMap<SourceKey, FlowValue> =
    HashMap::with_max_entries(DEFAULT_MAX_OVERFLOW_SOURCES, 0);
/// The flows each CPU's cache evicted (see [`LoggedFlow`]): per CPU and epoch, a run of
/// `EVICTION_LOG_SLOTS` entries at `((cpu * 2) + epoch) * EVICTION_LOG_SLOTS`, written only by
/// that CPU. A plain array rather than a per-CPU one so that userspace maps and reads it
/// without a syscall per entry. The loader sizes it for every possible CPU id (a CPU id beyond
/// them would find no entry and write to the table).
#[map]
pub(crate) static EVICTION_LOG: Array<LoggedFlow> =
    Array::with_max_entries(2 * DEFAULT_EVICTION_LOG_SLOTS, BPF_F_MMAPABLE);
#[unsafe(no_mangle)]
pub(crate) static EVICTION_LOG_SLOTS: u32 = DEFAULT_EVICTION_LOG_SLOTS;
const DEFAULT_EVICTION_LOG_SLOTS: u32 = 256;
/// Per-CPU, direct-mapped cache in front of the flow tables; see [`CacheSlot`].
#[map]
pub(crate) static FLOW_CACHE: PerCpuArray<CacheSlot> = PerCpuArray::with_max_entries(2 * FLOW_CACHE_SLOTS, 0);
/// Which half of the flow table, which reset counters, services and stack-reset tables the
/// programs write to (bit 0); userspace flips it. A global rather than a one-entry map: reading
/// it is one load instead of an inlined map lookup (~15 instructions, ~3 ns per RST). It is the
/// object's only zero-initialized global, so its `.bss` map holds it alone and userspace
/// updates that map as a one-entry array of u32 (which fails loudly should that change).
#[unsafe(no_mangle)]
pub(crate) static mut EPOCH: u32 = 0;
/// Per group of connections ([`ConnKey::generation_slot`]), bumped on every change to one of
/// them in `CONNECTIONS`: a flow-cache verdict made before it is not reused.
#[map]
pub(crate) static CONN_GENERATIONS: Array<u64> = Array::with_max_entries(CONN_GENERATIONS_LEN, 0);
#[map]
pub(crate) static RESET_COUNTERS: PerCpuArray<ResetCounters> = PerCpuArray::with_max_entries(2, 0);
/// Cumulative, never flipped, one slot per direction (rx, tx): the common path touches only this.
#[map]
pub(crate) static TRAFFIC: PerCpuArray<TrafficCounters> = PerCpuArray::with_max_entries(2, 0);
/// What SYN, SYN+ACK and FIN segments told about each connection; read by the reset
/// classifier (see [`ConnSlots`]: pairs of slots, the older connection of a pair forgotten
/// first). Losing an entry only turns an observed classification into an inferred one: no
/// count depends on it. Mmap-able only for its page-aligned (so cache-line-aligned) slots.
#[map]
pub(crate) static CONNECTIONS: Array<ConnSlot> = Array::with_max_entries(1 << DEFAULT_FLOW_TABLE_BITS, BPF_F_MMAPABLE);
/// One byte per `CONNECTIONS` slot, eight to an element (see [`ConnSlots::fingerprints`]).
#[map]
pub(crate) static CONN_FINGERPRINTS: Array<u64> =
    Array::with_max_entries(conn_fingerprint_words(DEFAULT_FLOW_TABLE_BITS), 0);
/// Connection attempts and SYN+ACKs per service, flipped and drained like the flow tables.
#[map]
pub(crate) static SERVICES_0: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
#[map]
pub(crate) static SERVICES_1: HashMap<ServiceKey, ServiceValue> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
/// Open connections and the down word per service (see [`rst_common::services`]): lives across
/// intervals, never flipped or drained; only SYN+ACKs, FINs and RSTs of tracked connections
/// touch it. An LRU map: every server a host ever talks to is a service (pod addresses churn),
/// and a plain hash, once full, left every new service without an open count for the rest of
/// the run; here the service longest untouched makes room.
#[map]
pub(crate) static SERVICE_OPEN: LruHashMap<ServiceKey, OpenValue> =
    LruHashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
/// Resets the host's TCP stack sent, per 4-tuple and kernel reason; flipped and drained too.
#[map]
pub(crate) static STACK_RESETS_0: HashMap<StackResetKey, FlowValue> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);
#[map]
pub(crate) static STACK_RESETS_1: HashMap<StackResetKey, FlowValue> =
    HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// `FLOW_TABLE_BITS`, as the loader set it.
#[inline(always)]
pub(crate) fn table_bits() -> u32 {
    // SAFETY: a plain read of a global the loader may have rewritten before load; volatile so
    // the compiler does not fold in the default.
    unsafe { core::ptr::read_volatile(&raw const FLOW_TABLE_BITS) }
}

#[inline(always)]
pub(crate) fn current_epoch() -> u32 {
    // SAFETY: a volatile read of an aligned u32 that only userspace writes (whole).
    unsafe { core::ptr::read_volatile(&raw const EPOCH) & 1 }
}

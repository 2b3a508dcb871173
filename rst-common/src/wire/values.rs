//! Map values: per-flow and per-service counts, connection state, the flow cache's slots and
//! the eviction log's entries.

use super::keys::{word, FlowKey};

/// What the handshake told about a connection (map `CONNECTIONS`, see [`crate::table::ConnSlots`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnState {
    pub client_isn: u32,
    pub server_isn: u32,
    pub client_ttl: u8,
    pub server_ttl: u8,
    /// `CONN_*` bits.
    pub flags: u8,
    pub _pad: u8,
}

/// The client is the `lo` endpoint of the [`ConnKey`].
pub const CONN_CLIENT_IS_LO: u8 = 1 << 0;
pub const CONN_SYN: u8 = 1 << 1;
pub const CONN_SYNACK: u8 = 1 << 2;
pub const CONN_FIN: u8 = 1 << 3;
pub const CONN_RESET: u8 = 1 << 4;

impl ConnState {
    /// Built word-wise (see [`word`]).
    #[inline(always)]
    pub fn new(client_isn: u32, server_isn: u32, client_ttl: u8, server_ttl: u8, flags: u8) -> Self {
        let words = [client_isn, server_isn, word([client_ttl, server_ttl, flags, 0])];
        // SAFETY: ConnState is repr(C), 12 bytes without implicit padding (asserted below).
        unsafe { core::mem::transmute::<[u32; 3], ConnState>(words) }
    }
}

/// Per-service handshake counts for one interval (atomic adds, shared by all CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// SYNs without ACK: connection attempts.
    pub attempts: u64,
    /// SYN+ACKs: the server accepted the handshake.
    pub synacks: u64,
}

/// One slot of the per-CPU flow cache (map `FLOW_CACHE`, `2 * FLOW_CACHE_SLOTS` slots per CPU,
/// the half `epoch * FLOW_CACHE_SLOTS ..` belonging to each epoch). A repeated RST on a cached
/// flow is a per-CPU add: no hashing, no atomics. A slot is written back to the flow table when
/// another flow needs it, and userspace drains what is left at the end of the epoch.
/// `resets == 0` marks a free slot.
///
/// A slot also remembers what its key's classification was made from — the RST's sequence and
/// acknowledgment numbers and ACK flag, and the generation of the connection's group in the
/// connection table, read before the classifier ran. The classifier's only other input is
/// that table, and every change to a connection bumps its group's generation, so an RST that
/// matches all of these would be classified the same: it is counted without the connection
/// lookup. The slot index comes from the unclassified
/// key ([`FlowKey::cache_slot`] of the segment's key), which the RST knows before classifying.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheSlot {
    pub key: FlowKey,
    pub resets: u64,
    /// The generation (63 bits: it cannot come round again within an epoch, and slots are
    /// emptied every epoch) and, in the top bit, whether the RST carried an ACK — the only
    /// flag the classifier reads besides RST.
    pub verdict_tag: u64,
    pub seq: u32,
    pub ack: u32,
}

impl CacheSlot {
    // SAFETY: CacheSlot is repr(C) integers and byte arrays only: all-zero bytes are a valid
    // value, the free slot the kernel starts with.
    pub const EMPTY: CacheSlot = unsafe { core::mem::zeroed() };
}

/// Per-flow counts for one interval.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    /// Updated with atomic adds: one entry is shared by all CPUs.
    pub resets: u64,
}

/// One entry of a CPU's eviction log (map `EVICTION_LOG`, entry `n` of CPU `c` in epoch `e` at
/// `(c * 2 + e) * slots + n`): resets a flow had when the flow cache gave its slot to another flow.
/// Appending here is a few stores to memory this CPU wrote a moment ago; the flow table would
/// take a random line, a cache miss for every new flow. Userspace sums the entries by key with
/// the table's when it drains the epoch; when a CPU's log is full, evicted flows go to the
/// table as before.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoggedFlow {
    pub key: FlowKey,
    pub resets: u64,
}

wire_sizes!(ConnState: 12, ServiceValue: 16, CacheSlot: 72, FlowValue: 8, LoggedFlow: 56);

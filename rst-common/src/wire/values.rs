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
    /// `SIDE_*` bits: which side closed or reset, for the reset's [`super::ResetContext`].
    pub sides: u8,
}

/// The client is the `lo` endpoint of the [`ConnKey`].
pub const CONN_CLIENT_IS_LO: u8 = 1 << 0;
pub const CONN_SYN: u8 = 1 << 1;
pub const CONN_SYNACK: u8 = 1 << 2;
pub const CONN_FIN: u8 = 1 << 3;
pub const CONN_RESET: u8 = 1 << 4;

/// The client sent a FIN ([`ConnState::sides`]).
pub const SIDE_CLIENT_FIN: u8 = 1 << 0;
/// The server sent a FIN.
pub const SIDE_SERVER_FIN: u8 = 1 << 1;
/// The client sent an RST.
pub const SIDE_CLIENT_RST: u8 = 1 << 2;
/// The server sent an RST.
pub const SIDE_SERVER_RST: u8 = 1 << 3;
/// A side that had not closed sent data after the other side's FIN: seen only where data
/// segments are tracked ([`crate::diagnose::track_data`], replay), never in the kernel.
pub const SIDE_LATE_DATA: u8 = 1 << 4;
/// An RST of the connection showed that data had moved (classified `established`), which a
/// later RST without ACK at the sender's ISN + 1 cannot show.
pub const SIDE_DATA_MOVED: u8 = 1 << 5;
// The classifier reads a side's bits by shifting the client's by one for the server.
const _: () = assert!(SIDE_SERVER_FIN == SIDE_CLIENT_FIN << 1 && SIDE_SERVER_RST == SIDE_CLIENT_RST << 1);

impl ConnState {
    /// Built word-wise (see [`word`]).
    #[inline(always)]
    pub fn new(client_isn: u32, server_isn: u32, client_ttl: u8, server_ttl: u8, flags: u8) -> Self {
        let words = [client_isn, server_isn, word([client_ttl, server_ttl, flags, 0])];
        // SAFETY: ConnState is repr(C), 12 bytes without implicit padding (asserted below).
        unsafe { core::mem::transmute::<[u32; 3], ConnState>(words) }
    }
}

/// Per-service handshake counts and open-connection evidence for one interval (shared by all
/// CPUs: atomic adds, and for the two 64-bit words after the counts a bounded compare-and-swap,
/// see `rst-ebpf`'s `count_service`).
///
/// The open-connection fields are "+1-encoded": 0 means "no such event in the interval", `n + 1`
/// means `n` connections were open. Read them through the accessors ([`Self::accept_open_max`]
/// and the like), which decode it. "Open" is what [`crate::services::OpenConnections`] holds
/// for the service: connections whose first SYN+ACK was seen, not yet closed by a FIN or RST.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceValue {
    /// SYNs without ACK: connection attempts.
    pub attempts: u64,
    /// SYN+ACKs: the server accepted the handshake.
    pub synacks: u64,
    /// The most connections open at any counted (first) SYN+ACK of the interval, before it
    /// counted; +1-encoded. One 64-bit word with `synack_ttl`, so one compare-and-swap sets both.
    pub accept_open_max: u32,
    /// The TTL / hop limit of the interval's latest counted SYN+ACK (0: none).
    pub synack_ttl: u8,
    pub _pad: [u8; 3],
    /// The fewest and most connections open at the interval's turn-aways (the server's first
    /// RST of a connection classified `refused` or `handshake`, the connection itself no longer
    /// open); +1-encoded. One 64-bit word, so one compare-and-swap moves both.
    pub turnaway_open_min: u32,
    pub turnaway_open_max: u32,
    /// The service's down word ([`down_after_turnaway`]) after the interval's latest turn-away
    /// made with nothing else open, if any (0: none). Down words only grow over a run, so the
    /// latest is the largest: merged by maximum.
    pub down_latest: u64,
    /// The largest down word (a run in progress) an accept of the interval ended (0: none).
    pub down_ended: u64,
}

impl ServiceValue {
    /// One connection attempt (a SYN without ACK).
    pub const ATTEMPT: ServiceValue = ServiceValue::new(1, 0, 0, 0, 0);

    /// The counts of one first SYN+ACK with `open_before` connections open before it
    /// (`None`: unknown, the open-count store had no room) and TTL `ttl`; `ended_down`: the
    /// down word it ended (0: the service was not turning connections away).
    #[inline(always)]
    pub const fn accepted(open_before: Option<u32>, ttl: u8, ended_down: u64) -> ServiceValue {
        let mut value = ServiceValue::new(0, 1, plus_one(open_before), ttl, 0);
        value.down_ended = ended_down;
        value
    }

    /// One turn-away with `open` connections open; `down`: the service's down word after it
    /// (0 unless nothing was open).
    #[inline(always)]
    pub const fn turned_away(open: u32, down: u64) -> ServiceValue {
        let mut value = ServiceValue::new(0, 0, 0, 0, plus_one(Some(open)));
        value.down_latest = down;
        value
    }

    #[inline(always)]
    const fn new(attempts: u64, synacks: u64, accept_open: u32, synack_ttl: u8, turnaway_open: u32) -> ServiceValue {
        ServiceValue {
            attempts,
            synacks,
            accept_open_max: accept_open,
            synack_ttl,
            _pad: [0; 3],
            turnaway_open_min: turnaway_open,
            turnaway_open_max: turnaway_open,
            down_latest: 0,
            down_ended: 0,
        }
    }

    /// Folds `later` (counts of the same service, made after these) in: sums the counts, keeps
    /// the extremes and the latest TTL. What the kernel does atomically, for the host's tables.
    #[inline(always)]
    pub fn merge(&mut self, later: &ServiceValue) {
        let ServiceValue {
            attempts,
            synacks,
            accept_open_max,
            synack_ttl,
            _pad,
            turnaway_open_min,
            turnaway_open_max,
            down_latest,
            down_ended,
        } = *later;
        self.attempts += attempts;
        self.synacks += synacks;
        let (accept, ttl) = merge_accept(self.accept_word(), accept_open_max, synack_ttl);
        self.accept_open_max = accept;
        self.synack_ttl = ttl;
        let (min, max) = merge_turnaway(self.turnaway_word(), turnaway_open_min, turnaway_open_max);
        self.turnaway_open_min = min;
        self.turnaway_open_max = max;
        self.down_latest = self.down_latest.max(down_latest);
        self.down_ended = self.down_ended.max(down_ended);
    }

    /// The run of turn-aways the service was in at the end of the interval: begun after its
    /// latest accept, each with nothing else open, and not ended by an accept since. `None`
    /// when the interval had no such turn-away or an accept ended the run after it.
    pub fn down(&self) -> Option<DownRun> {
        // Down words only grow over a run (later runs begin later), so the interval's latest
        // run ended exactly when some accept ended a word at least as large.
        (self.down_latest != 0 && self.down_latest > self.down_ended).then(|| DownRun::of(self.down_latest))
    }

    /// The most connections open at the interval's accepts, if it had a counted one whose open
    /// count was known.
    pub fn accept_open_max(&self) -> Option<u64> {
        decode(self.accept_open_max)
    }

    /// The fewest connections open at the interval's turn-aways, if it had one.
    pub fn turnaway_open_min(&self) -> Option<u64> {
        decode(self.turnaway_open_min)
    }

    /// The most connections open at the interval's turn-aways, if it had one.
    pub fn turnaway_open_max(&self) -> Option<u64> {
        decode(self.turnaway_open_max)
    }

    /// The TTL / hop limit of the interval's latest counted SYN+ACK, if it had one.
    pub fn synack_ttl(&self) -> Option<u8> {
        (self.synack_ttl != 0).then_some(self.synack_ttl)
    }

    /// Every count, the +1-encoded ones decoded: what userspace reads.
    pub fn decoded(&self) -> ServiceCounts {
        ServiceCounts {
            attempts: self.attempts,
            synacks: self.synacks,
            accept_open_max: self.accept_open_max(),
            turnaway_open_min: self.turnaway_open_min(),
            turnaway_open_max: self.turnaway_open_max(),
            synack_ttl: self.synack_ttl(),
            down_turnaways: self.down().map(|run| run.turnaways),
        }
    }

    /// `accept_open_max` and `synack_ttl`, as the word the kernel swaps.
    #[inline(always)]
    pub fn accept_word(&self) -> (u32, u8) {
        (self.accept_open_max, self.synack_ttl)
    }

    /// `turnaway_open_min` and `turnaway_open_max`, as the word the kernel swaps.
    #[inline(always)]
    pub fn turnaway_word(&self) -> (u32, u32) {
        (self.turnaway_open_min, self.turnaway_open_max)
    }
}

/// The accept word (`accept_open_max`, `synack_ttl` and the padding after it) as the u64 in
/// memory at `accept_open_max`, and back: for the kernel's compare-and-swap.
#[inline(always)]
pub fn accept_bits((open, ttl): (u32, u8)) -> u64 {
    // SAFETY: two u32s are eight initialized bytes, any of which form a valid u64.
    unsafe { core::mem::transmute::<[u32; 2], u64>([open, word([ttl, 0, 0, 0])]) }
}

#[inline(always)]
pub fn accept_from_bits(bits: u64) -> (u32, u8) {
    // SAFETY: as in `accept_bits`.
    let [open, ttl] = unsafe { core::mem::transmute::<u64, [u32; 2]>(bits) };
    (open, ttl.to_ne_bytes()[0])
}

/// The turn-away word (`turnaway_open_min`, `turnaway_open_max`) as the u64 in memory at
/// `turnaway_open_min`, and back.
#[inline(always)]
pub fn turnaway_bits((min, max): (u32, u32)) -> u64 {
    // SAFETY: as in `accept_bits`.
    unsafe { core::mem::transmute::<[u32; 2], u64>([min, max]) }
}

#[inline(always)]
pub fn turnaway_from_bits(bits: u64) -> (u32, u32) {
    // SAFETY: as in `accept_bits`.
    let [min, max] = unsafe { core::mem::transmute::<u64, [u32; 2]>(bits) };
    (min, max)
}

/// A [`ServiceValue`] decoded (see its accessors): `None` where the interval had no such event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServiceCounts {
    pub attempts: u64,
    pub synacks: u64,
    pub accept_open_max: Option<u64>,
    pub turnaway_open_min: Option<u64>,
    pub turnaway_open_max: Option<u64>,
    pub synack_ttl: Option<u8>,
    /// Turn-aways of the run the service was in at the interval's end ([`ServiceValue::down`];
    /// its start, a time on the tracker's clock, left out: the kernel's and the host's differ).
    pub down_turnaways: Option<u64>,
}

/// Bits of a down word that count its turn-aways; above them one bit marks a run an accept
/// ended, the rest hold the first turn-away's time (ms on the tracker's clock: 43 bits reach
/// past the year 2200 of Unix time).
const DOWN_COUNT_BITS: u32 = 20;
const DOWN_COUNT_MAX: u64 = (1 << DOWN_COUNT_BITS) - 1;
const DOWN_ENDED: u64 = 1 << DOWN_COUNT_BITS;
const DOWN_SINCE_SHIFT: u32 = DOWN_COUNT_BITS + 1;

/// One service's turn-aways since its latest accept, each made while it held no other
/// connection open, packed in one word (the kernel swaps it whole): the time of the first in
/// the high bits, how many (saturating) in the low ones. Each run begins at least 1 ms after the
/// one before (see [`down_after_turnaway`]), so words only grow over a run: the largest is the
/// latest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DownRun {
    /// When the first turn-away of the run was counted: ms on the tracker's clock (the kernel's
    /// monotonic clock, or capture time in replay).
    pub since_ms: u64,
    pub turnaways: u64,
}

impl DownRun {
    pub fn of(word: u64) -> DownRun {
        DownRun { since_ms: word >> DOWN_SINCE_SHIFT, turnaways: word & DOWN_COUNT_MAX }
    }
}

/// The down word after one more turn-away with nothing open, at `now_ms` on the tracker's clock.
/// 0 (never in a run) or a run an accept ended: the turn-away begins a run — 1 ms after the
/// ended one began if the clock has not moved on since, so runs stay ordered by their words
/// (a service that dies twice within one ms has its second run's start 1 ms late).
#[inline(always)]
pub fn down_after_turnaway(word: u64, now_ms: u64) -> u64 {
    if word == 0 {
        return (now_ms << DOWN_SINCE_SHIFT) | 1;
    }
    if word & DOWN_ENDED != 0 {
        let after_ended = (word >> DOWN_SINCE_SHIFT) + 1;
        let since = if now_ms > after_ended { now_ms } else { after_ended };
        return (since << DOWN_SINCE_SHIFT) | 1;
    }
    if word & DOWN_COUNT_MAX == DOWN_COUNT_MAX {
        word
    } else {
        word + 1
    }
}

/// The down word after an accept: a run in progress is marked ended (its start kept, to order
/// the next run after it); anything else stays.
#[inline(always)]
pub fn down_after_accept(word: u64) -> u64 {
    if down_in_run(word) {
        word | DOWN_ENDED
    } else {
        word
    }
}

/// Whether `word` is a run in progress (an accept ends it; [`down_after_accept`]).
#[inline(always)]
pub fn down_in_run(word: u64) -> bool {
    word != 0 && word & DOWN_ENDED == 0
}

/// What the kernel's `SERVICE_OPEN` holds per service across intervals (the host's store the
/// same): open connections, and the down word ([`down_after_turnaway`]; 0: never in a run),
/// whose run each accept ends ([`down_after_accept`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenValue {
    pub open: u64,
    pub down: u64,
}

/// The accept word (`accept_open_max`, `synack_ttl`) after folding in a later accept's.
#[inline(always)]
pub fn merge_accept((open, ttl): (u32, u8), later_open: u32, later_ttl: u8) -> (u32, u8) {
    let open = if later_open > open { later_open } else { open };
    (open, if later_ttl != 0 { later_ttl } else { ttl })
}

/// The turn-away word (`turnaway_open_min`, `turnaway_open_max`, both +1-encoded) after folding
/// in a later one's; 0 (none) is no minimum.
#[inline(always)]
pub fn merge_turnaway((min, max): (u32, u32), later_min: u32, later_max: u32) -> (u32, u32) {
    let min = if min == 0 || (later_min != 0 && later_min < min) { later_min } else { min };
    (min, if later_max > max { later_max } else { max })
}

fn decode(encoded: u32) -> Option<u64> {
    encoded.checked_sub(1).map(u64::from)
}

#[inline(always)]
const fn plus_one(count: Option<u32>) -> u32 {
    match count {
        // Saturating: a count of u32::MAX open connections cannot happen in a u32 store anyway.
        Some(count) => count.saturating_add(1),
        None => 0,
    }
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

wire_sizes!(ConnState: 12, ServiceValue: 48, OpenValue: 16, CacheSlot: 72, FlowValue: 8, LoggedFlow: 56);

// The two words the kernel swaps whole.
const _: () = {
    assert!(core::mem::offset_of!(ServiceValue, accept_open_max) == 16);
    assert!(core::mem::offset_of!(ServiceValue, synack_ttl) == 20);
    assert!(core::mem::offset_of!(ServiceValue, turnaway_open_min) == 24);
    assert!(core::mem::offset_of!(ServiceValue, turnaway_open_max) == 28);
    assert!(core::mem::offset_of!(ServiceValue, down_latest) == 32);
    assert!(core::mem::offset_of!(ServiceValue, down_ended) == 40);
    assert!(core::mem::offset_of!(OpenValue, down) == 8);
};

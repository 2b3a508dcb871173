//! What replay alone can measure, since it sees every segment and its time (the kernel keeps no
//! time per connection, and its plain segments never touch connection state): per connection,
//! when each side closed and how idle it was by then, when it was last active; per client
//! endpoint, the connection it opened. At an RST these give the idle gap before it, the time
//! since its sender's close, and whether its sender answered a lost NAT's untranslated reply.

use rst_common::{
    parse::{TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    wire::{ConnKey, ResetClass, ResetContext, CONN_FIN, CONN_RESET, CONN_SYNACK},
    Activity, ConnTable, FlowKey, TcpEvent,
};

use super::activity::{ActivityTable, ConnHasher, Hash, Seen};
use crate::model::aggregate::FastMap;

/// When one side of a connection sent its first FIN, and how long the connection had then gone
/// without data (`None`: no data seen).
#[derive(Clone, Copy, Debug, Default)]
struct Close {
    at_ms: u64,
    idle_ms: Option<u64>,
}

/// A connection first seen at `now_ms`: mid-stream (its handshake not captured), so it has no
/// pause yet, and its data must go to [`rst_common::track_data`] until the connection table
/// says no side closed (`unsettled`, set for a connection first seen here, and at every FIN and
/// RST: only then can its data be late, so only then is the table asked, saving a second
/// lookup per data segment, a fifth of a replay).
fn begun(now_ms: u64) -> Seen {
    Seen::new(Activity::begun(ticks(now_ms)), true)
}

/// Capture time in [`Activity`]'s wrapping ticks: ms, whose differences hold pauses of up to
/// 24 days.
fn ticks(now_ms: u64) -> u32 {
    now_ms as u32
}

/// A client's end of a connection: address, port, family.
type Endpoint = ([u8; 16], u16, u8);

/// The connection a client endpoint opened and the service it asked for.
#[derive(Clone, Copy, Debug, Default)]
struct Opened {
    conn: ConnKey,
    service: ([u8; 16], u16),
}

/// The per-interval measurements, handed to the model with the interval's sample.
#[derive(Debug, Default)]
pub struct Measured {
    /// Per flow whose RSTs followed their sender's own FIN: the longest time since it, ms.
    pub close_gaps: FastMap<FlowKey, u64>,
    /// Per such flow: how long its connection had gone without data when its sender closed, ms.
    pub idle_before_close: FastMap<FlowKey, u64>,
    /// Per flow: the pause before its first RST of the interval, ms.
    pub pauses: FastMap<FlowKey, u64>,
    /// Per flow whose sender answered a segment from an address it never opened a connection
    /// to, while its endpoint held a live connection to another: that connection's service.
    pub nat_lost: FastMap<FlowKey, ([u8; 16], u16)>,
}

/// The times replay keeps, bounded like its connection table: a full map is forgotten at once.
#[derive(Debug)]
pub struct Timings {
    closes: FastMap<(ConnKey, bool), Close>,
    /// Per connection: its activity (any segment; its pauses as the kernel's `--idle-gaps`
    /// programs keep them, in ms), its latest data, and whether its data must still go to
    /// [`rst_common::track_data`].
    activity: ActivityTable,
    opened: FastMap<Endpoint, Opened>,
    capacity: usize,
    pub measured: Measured,
}

impl Timings {
    pub fn with_capacity(capacity: usize) -> Timings {
        Timings {
            closes: FastMap::default(),
            activity: ActivityTable::with_capacity(capacity),
            opened: FastMap::default(),
            capacity: capacity.max(1),
            measured: Measured::default(),
        }
    }

    /// The hash function of the activity table, for keys hashed ahead of their lookup.
    pub fn hasher(&self) -> ConnHasher {
        self.activity.hasher()
    }

    /// A segment of the connection with `hash` is coming: see [`ActivityTable::prefetch`].
    #[inline(always)]
    pub fn prefetch(&self, hash: Hash) {
        self.activity.prefetch(hash);
    }

    /// A segment without SYN, FIN or RST of connection `conn` (its `hash` from
    /// [`Timings::hasher`]; `sender_is_lo`: sent by the connection's `lo` end), `data`: it
    /// carried payload. Data of a connection that may have closed goes to
    /// [`rst_common::track_data`] in `conns`, which says whether a side has.
    #[inline]
    pub fn segment<T: ConnTable>(
        &mut self,
        conns: &mut T,
        conn: &ConnKey,
        hash: Hash,
        sender_is_lo: bool,
        data: bool,
        now_ms: u64,
    ) {
        let (seen, _) = self.seen_hashed(conn, hash, 0, now_ms);
        if !data {
            return;
        }
        seen.set_last_data_ms(Some(now_ms));
        // Only data of a connection that may have closed can be late.
        if seen.unsettled {
            seen.unsettled = rst_common::track_data(conns, conn, sender_is_lo);
        }
    }

    /// `conn`'s activity after a segment with TCP `flags` at `now_ms` and, for an RST of a
    /// connection seen before, the pause before it (ms). A connection first seen now has no
    /// pause yet; a SYN or SYN+ACK begins a connection anew, its data too.
    fn seen(&mut self, conn: ConnKey, flags: u8, now_ms: u64) -> (&mut Seen, Option<u64>) {
        let hash = self.activity.hasher().hash(&conn);
        self.seen_hashed(&conn, hash, flags, now_ms)
    }

    /// [`Timings::seen`] with the connection's hash already taken.
    #[inline(always)]
    fn seen_hashed(&mut self, conn: &ConnKey, hash: Hash, flags: u8, now_ms: u64) -> (&mut Seen, Option<u64>) {
        let (seen, found) = self.activity.get_or_insert(conn, hash, || begun(now_ms));
        if !found {
            return (seen, None);
        }
        let pause = seen.activity.segment(flags, ticks(now_ms));
        if flags & TCP_SYN != 0 {
            seen.set_last_data_ms(None);
        }
        (seen, pause.map(u64::from))
    }

    /// A SYN, SYN+ACK or FIN (no RST): the connection's activity, a client's SYN, a side's FIN.
    pub fn control(&mut self, event: &TcpEvent, now_ms: u64) {
        let (conn, sender_is_lo) = event.key.connection();
        if event.flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
            let key = &event.key;
            let opened = Opened { conn, service: (key.dst, key.dport) };
            *bounded(&mut self.opened, self.capacity, (key.src, key.sport, key.family)) = opened;
            // A new connection on the 4-tuple: an earlier one's closes and times are not its own
            // (a pause before a refusal would otherwise reach back to the last connection).
            self.closes.remove(&(conn, true));
            self.closes.remove(&(conn, false));
        }
        let (seen, _) = self.seen(conn, event.flags, now_ms);
        seen.unsettled |= event.flags & TCP_FIN != 0;
        let last_data_ms = seen.last_data_ms();
        if event.flags & TCP_FIN != 0 {
            let idle_ms = last_data_ms.map(|data| now_ms.saturating_sub(data));
            if !self.closes.contains_key(&(conn, sender_is_lo)) {
                *bounded(&mut self.closes, self.capacity, (conn, sender_is_lo)) = Close { at_ms: now_ms, idle_ms };
            }
        }
    }

    /// An RST, classified (`key`), before it counts as its connection's activity; `conns`: the
    /// connection table, for whether its sender's other connection is live.
    pub fn reset<T: ConnTable>(&mut self, key: &FlowKey, conns: &mut T, now_ms: u64) {
        let (conn, sender_is_lo) = key.connection();
        let flow = key.flow_id();
        let (seen, pause) = self.seen(conn, TCP_RST, now_ms);
        seen.unsettled = true;
        if let Some(pause) = pause {
            self.measured.pauses.entry(flow).or_insert(pause);
        }
        if ResetContext(key.context).sender_closed() {
            if let Some(close) = self.closes.get(&(conn, sender_is_lo)) {
                let gap = self.measured.close_gaps.entry(flow).or_default();
                *gap = (*gap).max(now_ms.saturating_sub(close.at_ms));
                if let Some(idle) = close.idle_ms {
                    self.measured.idle_before_close.insert(flow, idle);
                }
            }
        }
        if !ResetClass(key.class).side_observed() {
            if let Some(service) = self.other_live_connection(key, conns) {
                self.measured.nat_lost.insert(flow, service);
            }
        }
    }

    /// The service of a live connection (accepted, neither side closed or reset) that the RST's
    /// sender opened from the same endpoint to somewhere other than where the RST goes.
    fn other_live_connection<T: ConnTable>(&self, key: &FlowKey, conns: &mut T) -> Option<([u8; 16], u16)> {
        let opened = self.opened.get(&(key.src, key.sport, key.family))?;
        if opened.service == (key.dst, key.dport) {
            return None;
        }
        let state = conns.get(&opened.conn)?;
        let live = state.flags & CONN_SYNACK != 0 && state.flags & (CONN_FIN | CONN_RESET) == 0;
        live.then_some(opened.service)
    }
}

/// `map`'s entry for `key`, the map emptied first when it is full and `key` is new.
fn bounded<K: std::hash::Hash + Eq, V: Default>(map: &mut FastMap<K, V>, capacity: usize, key: K) -> &mut V {
    make_room(map, capacity, &key);
    map.entry(key).or_default()
}

/// Empties `map` when it is full and `key` is new: a full map is forgotten at once.
fn make_room<K: std::hash::Hash + Eq, V>(map: &mut FastMap<K, V>, capacity: usize, key: &K) {
    if map.len() >= capacity && !map.contains_key(key) {
        map.clear();
    }
}

//! What replay alone can measure, since it sees every segment and its time (the kernel keeps no
//! time per connection, and its plain segments never touch connection state): per connection,
//! when each side closed and how idle it was by then, when it was last active; per client
//! endpoint, the connection it opened. At an RST these give the idle gap before it, the time
//! since its sender's close, and whether its sender answered a lost NAT's untranslated reply.

use rst_common::{
    parse::{TCP_ACK, TCP_FIN, TCP_SYN},
    wire::{ConnKey, ResetClass, ResetContext, CONN_FIN, CONN_RESET, CONN_SYNACK},
    ConnTable, FlowKey, TcpEvent,
};

use crate::model::aggregate::FastMap;

/// When one side of a connection sent its first FIN, and how long the connection had then gone
/// without data (`None`: no data seen).
#[derive(Clone, Copy, Debug, Default)]
struct Close {
    at_ms: u64,
    idle_ms: Option<u64>,
}

/// A connection's latest two moments of activity (any segment) and its latest data, ms.
#[derive(Clone, Copy, Debug, Default)]
struct Activity {
    prev_ms: u64,
    last_ms: u64,
    last_data_ms: Option<u64>,
}

impl Activity {
    fn touch(&mut self, now_ms: u64, data: bool) {
        // A connection first seen now (mid-stream: its handshake not captured) has no pause yet.
        self.prev_ms = if self.last_ms == 0 { now_ms } else { self.last_ms };
        self.last_ms = now_ms;
        if data {
            self.last_data_ms = Some(now_ms);
        }
    }

    /// The pause before an RST at `now_ms`: the longer of the silence before the segment it
    /// answers (the first after the pause, seen just before it) and the silence up to it (when
    /// that segment was not captured).
    fn idle_before(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_ms).max(self.last_ms.saturating_sub(self.prev_ms))
    }
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
    activity: FastMap<ConnKey, Activity>,
    opened: FastMap<Endpoint, Opened>,
    capacity: usize,
    pub measured: Measured,
}

impl Timings {
    pub fn with_capacity(capacity: usize) -> Timings {
        Timings {
            closes: FastMap::default(),
            activity: FastMap::default(),
            opened: FastMap::default(),
            capacity: capacity.max(1),
            measured: Measured::default(),
        }
    }

    /// A segment without SYN, FIN or RST of `key`'s connection; `data`: it carried payload.
    pub fn segment(&mut self, key: &FlowKey, data: bool, now_ms: u64) {
        let (conn, _) = key.connection();
        bounded(&mut self.activity, self.capacity, conn).touch(now_ms, data);
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
            *bounded(&mut self.activity, self.capacity, conn) =
                Activity { prev_ms: now_ms, last_ms: now_ms, last_data_ms: None };
        }
        let activity = *bounded(&mut self.activity, self.capacity, conn);
        if event.flags & TCP_FIN != 0 {
            let idle_ms = activity.last_data_ms.map(|data| now_ms.saturating_sub(data));
            if !self.closes.contains_key(&(conn, sender_is_lo)) {
                *bounded(&mut self.closes, self.capacity, (conn, sender_is_lo)) = Close { at_ms: now_ms, idle_ms };
            }
        }
        bounded(&mut self.activity, self.capacity, conn).touch(now_ms, false);
    }

    /// An RST, classified (`key`), before it counts as its connection's activity; `conns`: the
    /// connection table, for whether its sender's other connection is live.
    pub fn reset<T: ConnTable>(&mut self, key: &FlowKey, conns: &mut T, now_ms: u64) {
        let (conn, sender_is_lo) = key.connection();
        let flow = key.flow_id();
        if let Some(activity) = self.activity.get(&conn) {
            self.measured.pauses.entry(flow).or_insert(activity.idle_before(now_ms));
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
        bounded(&mut self.activity, self.capacity, conn).touch(now_ms, false);
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
    if map.len() >= capacity && !map.contains_key(&key) {
        map.clear();
    }
    map.entry(key).or_default()
}

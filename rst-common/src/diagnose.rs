//! The connection tracker and reset classifier: what kind of reset, sent by which side, first or
//! not, and from which TTL the claimed sender used to speak.
//!
//! Like the header walk, this is the only copy: the kernel programs run it over an array of
//! slot pairs ([`crate::table::ConnSlots`]) and replay and the tests over a host table. Only segments that open or close a connection (SYN,
//! SYN+ACK, FIN) and RSTs get here; plain data and ACK segments never touch connection state,
//! which is what keeps the common path at the cost of the walk.
//!
//! Kinds (see [`ResetKind`]): an RST from the server side after a SYN and before any SYN+ACK,
//! with ACK acknowledging the SYN, is `refused`. After the SYN+ACK an RST whose sequence
//! numbers are still those of the handshake (its seq is its sender's ISN + 1 and its ACK, if
//! set, acknowledges only the peer's SYN) is `handshake`: nothing was sent yet. Any other RST
//! after the SYN+ACK is `established`, and after a FIN `closing`. With no handshake seen (the
//! connection predates rstwatch, or the table forgot it) an RST+ACK with sequence 0 is `refused`
//! (RFC 9293 answers a SYN so) and anything else `established`; the side is then inferred from
//! the ports (the lower port is the server's) and reported as not observed; such a connection is
//! not remembered, so each of its RSTs is reported as the first. Retransmitted SYNs and
//! SYN+ACKs (same initial sequence number) count once. Limitation: an RST without ACK carries no
//! word about what its peer sent, so a server's RST+ISN+1 without ACK after the client sent data
//! reads as `handshake`.
//!
//! What a segment did to its service — an attempt, an accept, a close, a turn-away — comes back
//! with it ([`Tracked`], [`crate::services::ServiceEvent`]); the caller moves the service's open
//! count with [`crate::services::service_counts`]. A turn-away is only reported for a connection
//! whose SYN or SYN+ACK was seen: an inferred refusal says nothing about what the service held.

use crate::{
    parse::{TcpEvent, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    services::{ServiceChange, ServiceEvent},
    wire::{
        CacheSlot, ConnKey, ConnState, FlowKey, ResetClass, ResetContext, ResetKind, ServiceKey, CONN_CLIENT_IS_LO,
        CONN_FIN, CONN_RESET, CONN_SYN, CONN_SYNACK, SIDE_CLIENT_FIN, SIDE_CLIENT_RST, SIDE_DATA_MOVED, SIDE_LATE_DATA,
        SIDE_SERVER_FIN, SIDE_SERVER_RST,
    },
};

/// Where connection state lives: an array of slot pairs in the kernel, a bounded map on the host.
pub trait ConnTable {
    /// The state of `key`, updated in place.
    fn get(&mut self, key: &ConnKey) -> Option<&mut ConnState>;
    /// Sets `key`'s state, replacing any; a full table forgets its oldest connections.
    fn put(&mut self, key: &ConnKey, state: &ConnState);
    /// Called after every change [`track`] makes to `key`'s state, so a verdict remembered
    /// from before (the kernel's flow cache, see [`CacheSlot`]) is not trusted after it.
    fn changed(&mut self, _key: &ConnKey) {}
    /// Whether every data segment of the table's connections goes through [`track_data`], so
    /// a connection without late data had none. Not in the kernel, whose plain segments never
    /// touch connection state.
    fn watches_data(&self) -> bool {
        false
    }
}

impl CacheSlot {
    /// Whether this slot's key is the verdict the classifier would give the RST `event` now,
    /// with its connection group at `generation`: the same segment, the same sequence numbers
    /// and ACK flag, and no change to the group since the slot's verdict was made.
    #[inline(always)]
    pub fn holds_verdict_for(&self, event: &TcpEvent, generation: u64) -> bool {
        self.resets != 0
            && self.verdict_tag == verdict_tag(event, generation)
            && self.seq == event.seq
            && self.ack == event.ack
            && self.key.classifies(&event.key)
    }

    /// Makes the slot count `key`, the verdict on `event` made at `generation` (read before
    /// the classifier ran: a change the classification itself made must not be covered).
    #[inline(always)]
    pub fn hold(&mut self, key: &FlowKey, event: &TcpEvent, generation: u64, resets: u64) {
        self.key = *key;
        self.resets = resets;
        self.remember(event, generation);
    }

    /// Keeps the slot's count and key, with `event` as the segment its verdict was made from.
    #[inline(always)]
    pub fn remember(&mut self, event: &TcpEvent, generation: u64) {
        self.verdict_tag = verdict_tag(event, generation);
        self.seq = event.seq;
        self.ack = event.ack;
    }
}

#[inline(always)]
fn verdict_tag(event: &TcpEvent, generation: u64) -> u64 {
    let ack = u64::from(event.flags & TCP_ACK != 0);
    (generation & (u64::MAX >> 1)) | ack << 63
}

/// What a tracked segment asks the caller to count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tracked {
    Nothing,
    /// A SYN, the first SYN+ACK of a connection, or a first FIN closing an accepted one: see
    /// [`ServiceEvent`] (retransmitted SYNs and SYN+ACKs and later FINs are `Nothing`).
    Service(ServiceChange),
    /// An RST, its key classified, and what it did to its service: a close or a turn-away when
    /// it is the first RST of a connection the tracker saw open or being opened.
    Reset(FlowKey, Option<ServiceChange>),
}

/// The connection had its SYN+ACK and no FIN or RST yet: its service counts it open.
#[inline(always)]
fn holds_open(state: &ConnState) -> bool {
    state.flags & (CONN_SYNACK | CONN_FIN | CONN_RESET) == CONN_SYNACK
}

#[inline(always)]
fn change(service: ServiceKey, event: ServiceEvent) -> ServiceChange {
    ServiceChange::new(service, event)
}

/// Updates connection state with one event from [`crate::count`] and says what to count.
#[inline(always)]
pub fn track<T: ConnTable + ?Sized>(conns: &mut T, event: &TcpEvent) -> Tracked {
    let TcpEvent { key, flags, seq, ack, payload_at: _, payload_len: _ } = *event;
    let (conn, sender_is_lo) = key.connection();
    if flags & TCP_RST != 0 {
        let (key, service) = classify(conns, &conn, sender_is_lo, event);
        return Tracked::Reset(key, service);
    }
    if flags & TCP_SYN != 0 {
        if flags & TCP_ACK == 0 {
            let mut reopens = false;
            if let Some(state) = conns.get(&conn) {
                // A retransmitted SYN is the same attempt: keep what the handshake told.
                let same_client = (state.flags & CONN_CLIENT_IS_LO != 0) == sender_is_lo;
                if state.flags & CONN_SYN != 0 && same_client && state.client_isn == seq {
                    return Tracked::Nothing;
                }
                // The same service's earlier connection, whose close went by unseen.
                reopens = same_client && holds_open(state);
            }
            // A new attempt replaces whatever an earlier connection on this 4-tuple left.
            let state = ConnState::new(seq, 0, key.rst_ttl, 0, CONN_SYN | client_flag(sender_is_lo));
            conns.put(&conn, &state);
            conns.changed(&conn);
            let service = ServiceKey::new(key.dst, key.dport, &key);
            return Tracked::Service(change(service, ServiceEvent::Attempt { reopens }));
        }
        let client_is_lo = !sender_is_lo;
        let mut joined = false;
        let mut reopens = false;
        if let Some(state) = conns.get(&conn) {
            if state.flags & CONN_SYNACK != 0 && state.server_isn == seq {
                // A retransmitted SYN+ACK: the same handshake, counted once.
                return Tracked::Nothing;
            }
            // A second SYN+ACK (another ISN) for a connection still open replaces it.
            reopens = (state.flags & CONN_CLIENT_IS_LO != 0) == client_is_lo && holds_open(state);
            if state.flags & CONN_SYN != 0 && (state.flags & CONN_CLIENT_IS_LO != 0) == client_is_lo {
                state.server_isn = seq;
                state.server_ttl = key.rst_ttl;
                // The handshake went on: an RST before it (forged, or out of the window) ended
                // nothing, and the connection's first real RST is still to come.
                state.flags = (state.flags | CONN_SYNACK) & !CONN_RESET;
                state.sides &= !(SIDE_CLIENT_RST | SIDE_SERVER_RST);
                joined = true;
            }
        }
        if !joined {
            // The SYN went by before rstwatch started (or another path): the SYN+ACK still
            // names both ends and both initial sequence numbers.
            let state =
                ConnState::new(ack.wrapping_sub(1), seq, 0, key.rst_ttl, CONN_SYNACK | client_flag(client_is_lo));
            conns.put(&conn, &state);
        }
        conns.changed(&conn);
        let service = ServiceKey::new(key.src, key.sport, &key);
        return Tracked::Service(change(service, ServiceEvent::Accepted { ttl: key.rst_ttl, reopens }));
    }
    if flags & TCP_FIN != 0 {
        // Only a connection already known: an insert per FIN would let a FIN scan (or every
        // older connection closing) push real handshakes out of the table.
        let mut changed = false;
        let mut closed = None;
        if let Some(state) = conns.get(&conn) {
            let sender_is_client = (state.flags & CONN_CLIENT_IS_LO != 0) == sender_is_lo;
            let side = if sender_is_client { SIDE_CLIENT_FIN } else { SIDE_SERVER_FIN };
            // Each side's first FIN changes what its peer's RSTs mean (teardown or not).
            changed = state.sides & side == 0;
            if holds_open(state) {
                closed = Some(server_of(state, &key, sender_is_lo));
            }
            state.flags |= CONN_FIN;
            state.sides |= side;
        }
        if changed {
            conns.changed(&conn);
        }
        if let Some(service) = closed {
            return Tracked::Service(change(service, ServiceEvent::Closed));
        }
    }
    Tracked::Nothing
}

/// The service (server end) of a known connection, from a segment of it sent by the `lo`
/// endpoint or not.
#[inline(always)]
fn server_of(state: &ConnState, key: &FlowKey, sender_is_lo: bool) -> ServiceKey {
    let sender_is_client = (state.flags & CONN_CLIENT_IS_LO != 0) == sender_is_lo;
    if sender_is_client {
        ServiceKey::new(key.dst, key.dport, key)
    } else {
        ServiceKey::new(key.src, key.sport, key)
    }
}

#[inline(always)]
fn classify<T: ConnTable + ?Sized>(
    conns: &mut T,
    conn: &ConnKey,
    sender_is_lo: bool,
    event: &TcpEvent,
) -> (FlowKey, Option<ServiceChange>) {
    let TcpEvent { key, flags, seq, ack, payload_at: _, payload_len: _ } = *event;
    let ack_set = flags & TCP_ACK != 0;
    let inferred = if ack_set && seq == 0 { ResetKind::Refused } else { ResetKind::Established };
    // The class, the peer's TTL and the context packed in one word: the kernel programs have
    // no stack to spare for three.
    let mut verdict: Option<u32> = None;
    let mut changed = false;
    let mut service = None;
    let watches_data = conns.watches_data();
    if let Some(state) = conns.get(conn) {
        let sender_is_client = (state.flags & CONN_CLIENT_IS_LO != 0) == sender_is_lo;
        let (own_isn, peer_isn) =
            if sender_is_client { (state.client_isn, state.server_isn) } else { (state.server_isn, state.client_isn) };
        let kind = if state.flags & CONN_FIN != 0 {
            ResetKind::Closing
        } else if state.flags & CONN_SYNACK != 0 {
            // An RST without ACK says nothing of what its peer sent: an earlier RST of the
            // connection that showed data moved still holds.
            // At its ISN + 1, or its ISN (a stack that never counted its SYN's number).
            let at_isn = seq.wrapping_sub(own_isn) <= 1;
            let nothing_sent =
                at_isn && (!ack_set || ack == peer_isn.wrapping_add(1)) && state.sides & SIDE_DATA_MOVED == 0;
            if nothing_sent {
                ResetKind::Handshake
            } else {
                ResetKind::Established
            }
        } else if state.flags & CONN_SYN != 0 {
            // A client aborting its own attempt sends its ISN + 1 (after the SYN, as Linux does)
            // or its ISN (a stack that never counted the SYN's sequence number).
            let client_isn = state.client_isn;
            let handshake_seq = seq.wrapping_sub(client_isn) <= 1;
            if !sender_is_client && ack_set && ack == client_isn.wrapping_add(1) {
                ResetKind::Refused
            } else if sender_is_client && !handshake_seq {
                // The client has sent data: the SYN+ACK went by on another path (asymmetric
                // routing) or unseen.
                ResetKind::Established
            } else {
                ResetKind::Handshake
            }
        } else {
            inferred
        };
        let observed = state.flags & (CONN_SYN | CONN_SYNACK) != 0;
        let peer_ttl = if sender_is_client { state.client_ttl } else { state.server_ttl };
        let first = state.flags & CONN_RESET == 0;
        // The sides' bits as they were: the context is read out of them once the table is done
        // with (see `context_of`).
        let sides = state.sides;
        let flip = u8::from(!sender_is_client);
        let moved = u8::from(kind == ResetKind::Established) << SIDE_DATA_MOVED.trailing_zeros();
        let updated = sides | SIDE_CLIENT_RST << flip | moved;
        changed |= updated != sides;
        state.sides = updated;
        let answered = (state.flags >> CONN_SYNACK.trailing_zeros()) & 1;
        let open = holds_open(state);
        let turned_away = !sender_is_client && matches!(kind, ResetKind::Refused | ResetKind::Handshake);
        // What the reset did to its service, said once the table is done with (see `EVENT_*`).
        let event = if !(first && observed) {
            EVENT_NONE
        } else if turned_away {
            EVENT_TURNED_AWAY | (u32::from(open) * EVENT_CLOSES)
        } else if open {
            EVENT_CLOSED
        } else {
            EVENT_NONE
        };
        if first {
            state.flags |= CONN_RESET;
            changed = true;
        }
        let class = ResetClass::new(kind, ack_set, !sender_is_client, observed, first);
        verdict = Some(
            u32::from(class.0)
                | u32::from(peer_ttl) << 8
                | u32::from(sides) << 16
                | (event
                    | (u32::from(sender_is_client) * EVENT_SENT_BY_CLIENT)
                    | (u32::from(answered) * EVENT_ANSWERED))
                    << 24,
        );
    }
    if changed {
        conns.changed(conn);
    }
    // Built after the table's last call: live across it, a service key or the context's bits
    // cost the kernel programs stack they do not have.
    if let Some(verdict) = verdict {
        let bits = verdict >> 24;
        // As the change's word (see `ServiceChange`): an `Option` of the enum has a tag value
        // no variant has, on which LLVM leaves the word unset and the verifier finds it so.
        let event = match bits & EVENT_MASK {
            EVENT_CLOSED => Some(ServiceChange::word_of(ServiceEvent::Closed)),
            EVENT_TURNED_AWAY => {
                Some(ServiceChange::word_of(ServiceEvent::TurnedAway { closes: bits & EVENT_CLOSES != 0 }))
            }
            _ => None,
        };
        if let Some(event) = event {
            let server = if bits & EVENT_SENT_BY_CLIENT != 0 {
                ServiceKey::new(key.dst, key.dport, &key)
            } else {
                ServiceKey::new(key.src, key.sport, &key)
            };
            service = Some(ServiceChange::from_word(server, event));
        }
    }
    let verdict = match verdict {
        Some(found) => {
            let bits = found >> 24;
            let context = context_of(
                (found >> 16) as u8,
                bits & EVENT_SENT_BY_CLIENT != 0,
                bits & EVENT_ANSWERED != 0,
                watches_data,
            );
            found & 0xffff | u32::from(context.0) << 16
        }
        // Not remembered: an insert per RST would make a scan of unknown connections pay for
        // one table write each, exactly when rstwatch must stay cheap. So with no handshake seen,
        // every RST of the connection counts as its first, in no context.
        None => {
            // A refusal comes from the server whatever the ports say.
            let server = inferred == ResetKind::Refused || client_is_lo_by_ports(conn) != sender_is_lo;
            u32::from(ResetClass::new(inferred, ack_set, server, false, true).0)
        }
    };
    (key.classified(verdict as u8, (verdict >> 8) as u8, (verdict >> 16) as u8), service)
}

/// A segment carrying `payload_len` bytes of data (no SYN, FIN or RST: those go to [`track`]),
/// seen where data segments are affordable: replay, never the kernel programs, whose plain
/// segments do not touch connection state ([`ConnTable::watches_data`]). Marks a connection
/// that one side closed and the other then wrote to: the evidence that tells a keep-alive race
/// from a teardown.
///
/// The segment is of connection `conn` ([`FlowKey::connection`]); `sender_is_lo`: its sender is
/// the connection's `lo` endpoint.
///
/// Returns whether either side of the connection has sent a FIN: until one has, no data can be
/// late, and a caller that tracks FINs itself may skip the lookup.
pub fn track_data<T: ConnTable + ?Sized>(conns: &mut T, conn: &ConnKey, sender_is_lo: bool) -> bool {
    let Some(state) = conns.get(conn) else { return false };
    let sender_is_client = (state.flags & CONN_CLIENT_IS_LO != 0) == sender_is_lo;
    let (own_fin, peer_fin) =
        if sender_is_client { (SIDE_CLIENT_FIN, SIDE_SERVER_FIN) } else { (SIDE_SERVER_FIN, SIDE_CLIENT_FIN) };
    let closing = state.sides & (SIDE_CLIENT_FIN | SIDE_SERVER_FIN) != 0;
    if state.sides & (own_fin | peer_fin | SIDE_LATE_DATA) == peer_fin {
        state.sides |= SIDE_LATE_DATA;
        conns.changed(conn);
    }
    closing
}

/// What a connection whose sides had seen `sides` ([`ConnState::sides`]) says about an RST from
/// its client (`sent_by_client`) or server, `answered`: its SYN+ACK was seen. By shifts rather
/// than branches, which on an RST multiply the states the verifier walks: a server's bits sit
/// one above the client's.
#[inline(always)]
fn context_of(sides: u8, sent_by_client: bool, answered: bool, watches_data: bool) -> ResetContext {
    let flip = u8::from(!sent_by_client);
    let own_fin = (sides >> (SIDE_CLIENT_FIN.trailing_zeros() as u8 + flip)) & 1;
    let peer_fin = (sides >> (SIDE_CLIENT_FIN.trailing_zeros() as u8 + (flip ^ 1))) & 1;
    let own_rst = (sides >> (SIDE_CLIENT_RST.trailing_zeros() as u8 + flip)) & 1;
    // Late data is the peer's only when the sender is the side that closed.
    let late = (sides >> SIDE_LATE_DATA.trailing_zeros()) & own_fin & (peer_fin ^ 1) & 1;
    ResetContext::from_bits(u8::from(answered), own_fin, peer_fin, own_rst, late, u8::from(watches_data))
}

/// A classified RST's effect on its service, packed beside its verdict in [`classify`].
const EVENT_NONE: u32 = 0;
const EVENT_CLOSED: u32 = 1;
const EVENT_TURNED_AWAY: u32 = 2;
const EVENT_MASK: u32 = 0b11;
/// With [`EVENT_TURNED_AWAY`]: the connection had its SYN+ACK, and the reset closes it.
const EVENT_CLOSES: u32 = 1 << 2;
/// The reset's sender is the connection's client: its service is the destination.
const EVENT_SENT_BY_CLIENT: u32 = 1 << 3;
/// The connection's SYN+ACK was seen.
const EVENT_ANSWERED: u32 = 1 << 4;

#[inline(always)]
fn client_flag(client_is_lo: bool) -> u8 {
    if client_is_lo {
        CONN_CLIENT_IS_LO
    } else {
        0
    }
}

/// Without a handshake, the well-known (lower) port is the server's.
#[inline(always)]
fn client_is_lo_by_ports(conn: &ConnKey) -> bool {
    conn.lo_port > conn.hi_port
}

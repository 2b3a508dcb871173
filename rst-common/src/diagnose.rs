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

use crate::{
    parse::{TcpEvent, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    wire::{
        CacheSlot, ConnKey, ConnState, FlowKey, ResetClass, ResetKind, ServiceKey, CONN_CLIENT_IS_LO, CONN_FIN,
        CONN_RESET, CONN_SYN, CONN_SYNACK,
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
    /// A SYN without ACK: an attempt to connect to this service.
    Attempt(ServiceKey),
    /// A SYN+ACK: the service accepted a handshake.
    SynAck(ServiceKey),
    /// An RST, its key classified.
    Reset(FlowKey),
}

/// Updates connection state with one event from [`crate::count`] and says what to count.
#[inline(always)]
pub fn track<T: ConnTable + ?Sized>(conns: &mut T, event: &TcpEvent) -> Tracked {
    let TcpEvent { key, flags, seq, ack } = *event;
    let (conn, sender_is_lo) = key.connection();
    if flags & TCP_RST != 0 {
        return Tracked::Reset(classify(conns, &conn, sender_is_lo, event));
    }
    if flags & TCP_SYN != 0 {
        if flags & TCP_ACK == 0 {
            if let Some(state) = conns.get(&conn) {
                // A retransmitted SYN is the same attempt: keep what the handshake told.
                let same_client = (state.flags & CONN_CLIENT_IS_LO != 0) == sender_is_lo;
                if state.flags & CONN_SYN != 0 && same_client && state.client_isn == seq {
                    return Tracked::Nothing;
                }
            }
            // A new attempt replaces whatever an earlier connection on this 4-tuple left.
            let state = ConnState::new(seq, 0, key.rst_ttl, 0, CONN_SYN | client_flag(sender_is_lo));
            conns.put(&conn, &state);
            conns.changed(&conn);
            return Tracked::Attempt(ServiceKey::new(key.dst, key.dport, &key));
        }
        let client_is_lo = !sender_is_lo;
        let mut joined = false;
        if let Some(state) = conns.get(&conn) {
            if state.flags & CONN_SYNACK != 0 && state.server_isn == seq {
                // A retransmitted SYN+ACK: the same handshake, counted once.
                return Tracked::Nothing;
            }
            if state.flags & CONN_SYN != 0 && (state.flags & CONN_CLIENT_IS_LO != 0) == client_is_lo {
                state.server_isn = seq;
                state.server_ttl = key.rst_ttl;
                state.flags |= CONN_SYNACK;
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
        return Tracked::SynAck(ServiceKey::new(key.src, key.sport, &key));
    }
    if flags & TCP_FIN != 0 {
        // Only a connection already known: an insert per FIN would let a FIN scan (or every
        // older connection closing) push real handshakes out of the table.
        let mut changed = false;
        if let Some(state) = conns.get(&conn) {
            changed = state.flags & CONN_FIN == 0;
            state.flags |= CONN_FIN;
        }
        if changed {
            conns.changed(&conn);
        }
    }
    Tracked::Nothing
}

#[inline(always)]
fn classify<T: ConnTable + ?Sized>(conns: &mut T, conn: &ConnKey, sender_is_lo: bool, event: &TcpEvent) -> FlowKey {
    let TcpEvent { key, flags, seq, ack } = *event;
    let ack_set = flags & TCP_ACK != 0;
    let inferred = if ack_set && seq == 0 { ResetKind::Refused } else { ResetKind::Established };
    let mut class = None;
    let mut changed = false;
    if let Some(state) = conns.get(conn) {
        let sender_is_client = (state.flags & CONN_CLIENT_IS_LO != 0) == sender_is_lo;
        let (own_isn, peer_isn) =
            if sender_is_client { (state.client_isn, state.server_isn) } else { (state.server_isn, state.client_isn) };
        let kind = if state.flags & CONN_FIN != 0 {
            ResetKind::Closing
        } else if state.flags & CONN_SYNACK != 0 {
            let nothing_sent = seq == own_isn.wrapping_add(1) && (!ack_set || ack == peer_isn.wrapping_add(1));
            if nothing_sent {
                ResetKind::Handshake
            } else {
                ResetKind::Established
            }
        } else if state.flags & CONN_SYN != 0 {
            if !sender_is_client && ack_set && ack == state.client_isn.wrapping_add(1) {
                ResetKind::Refused
            } else if sender_is_client && seq != state.client_isn.wrapping_add(1) {
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
        if first {
            state.flags |= CONN_RESET;
            changed = true;
        }
        class = Some((ResetClass::new(kind, ack_set, !sender_is_client, observed, first), peer_ttl));
    }
    if changed {
        conns.changed(conn);
    }
    let (class, peer_ttl) = match class {
        Some(found) => found,
        // Not remembered: an insert per RST would make a scan of unknown connections pay for
        // one table write each, exactly when rstwatch must stay cheap. So with no handshake seen,
        // every RST of the connection counts as its first.
        None => {
            // A refusal comes from the server whatever the ports say.
            let server = inferred == ResetKind::Refused || client_is_lo_by_ports(conn) != sender_is_lo;
            (ResetClass::new(inferred, ack_set, server, false, true), 0)
        }
    };
    key.classified(class.0, peer_ttl)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    use crate::{
        craft::{tcp_v4, FrameBuilder},
        wire::{ConnState, FLOW_CACHE_SLOTS},
    };

    #[derive(Default)]
    struct Table {
        entries: Vec<(ConnKey, ConnState)>,
        changes: u32,
        changed_groups: Vec<u32>,
    }

    impl ConnTable for Table {
        fn get(&mut self, key: &ConnKey) -> Option<&mut ConnState> {
            self.entries.iter_mut().find(|(k, _)| k == key).map(|(_, state)| state)
        }
        fn put(&mut self, key: &ConnKey, state: &ConnState) {
            self.entries.retain(|(k, _)| k != key);
            self.entries.push((*key, *state));
        }
        fn changed(&mut self, key: &ConnKey) {
            self.changes += 1;
            self.changed_groups.push(key.generation_slot());
        }
    }

    fn verdict(table: &mut Table, event: &TcpEvent) -> FlowKey {
        match track(table, event) {
            Tracked::Reset(key) => key,
            other => panic!("an RST tracked as {other:?}"),
        }
    }

    #[test]
    fn every_change_to_the_table_is_announced_and_nothing_else() {
        let mut table = Table::default();
        let syn = tcp_v4().ports(40000, 80).flags(TCP_SYN).seq_ack(10, 0).event(1);
        let synack = tcp_v4().ports(80, 40000).flags(TCP_SYN | TCP_ACK).seq_ack(70, 11).event(1);
        let fin = tcp_v4().ports(40000, 80).flags(TCP_FIN | TCP_ACK).seq_ack(11, 71).event(1);
        let rst = tcp_v4().ports(80, 40000).flags(TCP_RST).seq_ack(71, 0).event(1);
        let mut changes = Vec::new();
        for event in [&syn, &syn, &synack, &synack, &fin, &fin, &rst, &rst] {
            let _ = track(&mut table, event);
            changes.push(table.changes);
        }
        // Retransmissions, a second FIN and a second RST leave the table as it was.
        assert_eq!(changes, [1, 1, 2, 2, 3, 3, 4, 4]);
        // Every change lands in the group the RST (either direction) reads its generation from.
        assert_eq!(table.changed_groups, [rst.key.generation_slot(); 4]);
        assert_eq!(syn.key.generation_slot(), rst.key.generation_slot());
    }

    #[test]
    fn a_connection_group_is_the_same_from_both_ends_and_spreads_connections() {
        let mut groups = std::collections::BTreeSet::new();
        for port in 40000..41000u16 {
            let there = FrameBuilder::ipv4([10, 0, 0, 1], [10, 0, 9, 9]).ports(port, 443).flags(TCP_RST).event(2).key;
            let back = FrameBuilder::ipv4([10, 0, 9, 9], [10, 0, 0, 1]).ports(443, port).flags(TCP_RST).event(2).key;
            assert_ne!(there.src, back.src);
            let (conn, _) = there.connection();
            assert_eq!(there.generation_slot(), conn.generation_slot());
            assert_eq!(back.generation_slot(), conn.generation_slot());
            groups.insert(conn.generation_slot());
        }
        assert!(groups.len() > 500, "1000 connections in only {} groups", groups.len());
    }

    #[test]
    fn cache_slots_spread_flows_and_keep_the_two_directions_apart() {
        const V6_A: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        const V6_B: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 9];
        let (mut slots, mut apart) = (std::collections::BTreeSet::new(), 0);
        for port in 40000..41000u16 {
            let there = FrameBuilder::ipv6(V6_A, V6_B).ports(port, 443).flags(TCP_RST).event(2).key;
            let back = FrameBuilder::ipv6(V6_B, V6_A).ports(443, port).flags(TCP_RST).event(2).key;
            // The slot is a fold of every word of the key, the group one of the connection's.
            let fold = there.words().iter().fold(0u32, |fold, word| fold ^ word);
            let expected = fold.wrapping_mul(0x9e37_79b1) >> (32 - FLOW_CACHE_SLOTS.trailing_zeros());
            assert_eq!(there.cache_and_generation_slots(), (expected, there.connection().0.generation_slot()));
            assert_eq!(there.generation_slot(), back.generation_slot());
            apart += usize::from(there.cache_slot() != back.cache_slot());
            slots.insert(there.cache_slot());
        }
        assert!(apart > 990, "only {apart} of 1000 connections have their directions in two slots");
        assert!(slots.len() > 500, "1000 flows in only {} slots", slots.len());
    }

    #[test]
    fn a_slot_holds_a_verdict_only_for_the_same_segment_at_the_same_generation() {
        let mut table = Table::default();
        let rst = tcp_v4().ports(80, 40000).flags(TCP_RST | TCP_ACK).seq_ack(500, 9).event(1);
        let key = verdict(&mut table, &rst);
        assert_ne!(key.class, 0, "the verdict is in the key");
        let mut slot = CacheSlot::EMPTY;
        assert!(!slot.holds_verdict_for(&rst, 0), "an empty slot holds nothing");
        slot.hold(&key, &rst, 7, 1);
        assert!(slot.holds_verdict_for(&rst, 7));
        assert!(!slot.holds_verdict_for(&rst, 8), "the table changed since");
        let other_seq = TcpEvent { seq: 501, ..rst };
        let other_ack = TcpEvent { ack: 10, ..rst };
        let other_flags = TcpEvent { flags: TCP_RST, ..rst };
        let same_but_psh = TcpEvent { flags: TCP_RST | TCP_ACK | 0x08, ..rst };
        let other_ttl = TcpEvent { key: FlowKey { rst_ttl: rst.key.rst_ttl - 1, ..rst.key }, ..rst };
        let other_port = TcpEvent { key: FlowKey { dport: 40001, ..rst.key }, ..rst };
        for other in [other_seq, other_ack, other_flags, other_ttl, other_port] {
            assert!(!slot.holds_verdict_for(&other, 7), "{other:?}");
        }
        // The classifier reads no flag but ACK (and RST).
        assert!(slot.holds_verdict_for(&same_but_psh, 7));
        // Only the verdict bytes are ignored: a key differing elsewhere is another segment.
        assert!(key.classifies(&rst.key));
        assert!(!FlowKey { _pad: [1, 0], ..key }.classifies(&rst.key));
    }
}

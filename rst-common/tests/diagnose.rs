//! The connection tracker and reset classifier on a host table (moved out of `src/diagnose.rs`:
//! they build their segments with rst-craft, which a unit test of rst-common cannot use without
//! linking a second copy of rst-common's types).

#![allow(clippy::panic)] // test helpers: a panic is the failure report

use rst_common::{
    diagnose::{track, ConnTable, Tracked},
    parse::{TcpEvent, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    wire::{CacheSlot, ConnKey, ConnState, FlowKey, FLOW_CACHE_SLOTS},
};
use rst_craft::{tcp_v4, FrameBuilder};

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
        Tracked::Reset(key, _) => key,
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
    assert!(!FlowKey { outer_swapped: 1, ..key }.classifies(&rst.key));
}

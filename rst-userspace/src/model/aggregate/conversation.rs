//! Conversations: flows that differ only in the client's port, folded into one line.
//!
//! The usual reset storm is many connections reset once each: a refused or aborted connect per
//! ephemeral port. Listed flow by flow that is ten lines of "1" that say one thing; folded by the
//! server's address and port and the client's host it is one line with the count of connections.

use std::collections::BTreeMap;

use rst_common::FlowKey;

use super::{
    model::{Conversation, Direction, Endpoint, KindCounts, Side},
    FlowStats,
};

/// The table folds flows once at least this share of them carried a single RST.
const SINGLE_RESET_SHARE: f64 = 0.5;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct ConversationKey {
    ifindex: u32,
    direction: Direction,
    side: Side,
    sender: Endpoint,
    receiver: Endpoint,
}

#[derive(Default)]
struct Tally {
    connections: u64,
    resets: u64,
    kinds: KindCounts,
    first: u64,
}

/// The conversations behind `flows`, most resets first; `None` when folding would not make the
/// list shorter or most flows carried more than one RST (then the flows themselves say more).
pub fn conversations<'a>(
    flows: impl Iterator<Item = (&'a FlowKey, &'a FlowStats)>,
    iface_name: impl Fn(u32) -> String,
) -> Option<Vec<Conversation>> {
    let mut tallies: BTreeMap<ConversationKey, Tally> = BTreeMap::new();
    let (mut flow_count, mut single) = (0u64, 0u64);
    for (key, stats) in flows {
        flow_count += 1;
        single += u64::from(stats.resets == 1);
        let side = stats.side();
        // The server's end keeps its port (the service); the client's end is its host.
        let (sender, receiver) = match side {
            Side::Server => (Endpoint::service(key.src_ip(), key.sport), Endpoint::host(key.dst_ip())),
            Side::Client => (Endpoint::host(key.src_ip()), Endpoint::service(key.dst_ip(), key.dport)),
        };
        let tally = tallies
            .entry(ConversationKey { ifindex: key.ifindex, direction: Direction::of(key), side, sender, receiver })
            .or_default();
        tally.connections += 1;
        tally.resets += stats.resets;
        tally.kinds.merge(&stats.kinds);
        tally.first += u64::from(stats.first);
    }
    let folds = (tallies.len() as u64) < flow_count;
    if !folds || (single as f64) < SINGLE_RESET_SHARE * flow_count as f64 {
        return None;
    }
    let mut list: Vec<Conversation> = tallies
        .into_iter()
        .map(|(key, tally)| Conversation {
            iface: iface_name(key.ifindex),
            direction: key.direction,
            side: key.side,
            sender: key.sender,
            receiver: key.receiver,
            connections: tally.connections,
            resets: tally.resets,
            kinds: tally.kinds,
            first: tally.first,
        })
        .collect();
    // Stable among equals: the BTreeMap's order.
    list.sort_by(|a, b| b.resets.cmp(&a.resets).then_with(|| b.connections.cmp(&a.connections)));
    Some(list)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use rst_common::wire::{ResetClass, ResetKind, DIRECTION_RX, FAMILY_IPV4, IPPROTO_TCP};

    use super::*;

    fn flow(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, kind: ResetKind, server: bool) -> FlowKey {
        let mut key = FlowKey {
            ifindex: 7,
            sport,
            dport,
            family: FAMILY_IPV4,
            protocol: IPPROTO_TCP,
            direction: DIRECTION_RX,
            class: ResetClass::new(kind, true, server, true, true).0,
            ..FlowKey::default()
        };
        key.src[..4].copy_from_slice(&src);
        key.dst[..4].copy_from_slice(&dst);
        key
    }

    fn fold(flows: &[(FlowKey, u64)]) -> Option<Vec<Conversation>> {
        let stats: Vec<(FlowKey, FlowStats)> = flows
            .iter()
            .map(|(key, resets)| {
                let mut stats = FlowStats::default();
                stats.add(key, *resets, None);
                (*key, stats)
            })
            .collect();
        conversations(stats.iter().map(|(k, s)| (k, s)), |ifindex| format!("if{ifindex}"))
    }

    #[test]
    fn refusals_to_many_client_ports_fold_into_one_line_per_client_host() {
        let mut flows: Vec<(FlowKey, u64)> = (0..10)
            .map(|i| (flow([10, 0, 0, 1], 443, [10, 0, 0, 9], 40_000 + i, ResetKind::Refused, true), 1))
            .collect();
        flows.push((flow([10, 0, 0, 1], 443, [10, 0, 0, 8], 50_000, ResetKind::Refused, true), 1));
        let list = fold(&flows).expect("most flows have one RST");
        assert_eq!(list.len(), 2);
        let top = &list[0];
        assert_eq!((top.connections, top.resets), (10, 10));
        assert_eq!(top.sender, Endpoint::service(Ipv4Addr::new(10, 0, 0, 1).into(), 443));
        assert_eq!(top.receiver, Endpoint::host(Ipv4Addr::new(10, 0, 0, 9).into()));
        assert_eq!(top.kinds.get(ResetKind::Refused), 10);
        assert_eq!((list[1].connections, list[1].resets), (1, 1));
    }

    #[test]
    fn client_aborts_fold_by_the_service_they_were_sent_to() {
        let flows: Vec<(FlowKey, u64)> = (0..4)
            .map(|i| (flow([10, 0, 0, 9], 40_000 + i, [10, 0, 0, 1], 80, ResetKind::Established, false), 1))
            .collect();
        let list = fold(&flows).expect("folds");
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].side, Side::Client);
        assert_eq!(list[0].sender, Endpoint::host(Ipv4Addr::new(10, 0, 0, 9).into()));
        assert_eq!(list[0].receiver, Endpoint::service(Ipv4Addr::new(10, 0, 0, 1).into(), 80));
    }

    #[test]
    fn flows_with_many_resets_each_stay_flows() {
        let flows: Vec<(FlowKey, u64)> = (0..4)
            .map(|i| (flow([10, 0, 0, 1], 443, [10, 0, 0, 9], 40_000 + i, ResetKind::Refused, true), 5))
            .collect();
        assert!(fold(&flows).is_none());
    }

    #[test]
    fn distinct_conversations_that_would_not_fold_stay_flows() {
        let flows = [
            (flow([10, 0, 0, 1], 443, [10, 0, 0, 9], 40_000, ResetKind::Refused, true), 1),
            (flow([10, 0, 0, 2], 443, [10, 0, 0, 9], 40_001, ResetKind::Refused, true), 1),
        ];
        assert!(fold(&flows).is_none());
    }
}

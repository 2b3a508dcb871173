//! Flow records and verdicts read the same evidence: a reset the verdicts call forged is forged
//! in its flow record too.

use std::time::{Duration, SystemTime};

use rst_common::{
    wire::{ResetClass, ResetKind, ServiceKey, ServiceValue, DIRECTION_RX, FAMILY_IPV4},
    Cause, Counters, FlowKey,
};

use super::{model::Middlebox, Aggregator};
use crate::collect::Sample;

const SERVER: [u8; 4] = [10, 0, 2, 16];
const CLIENT: [u8; 4] = [10, 0, 1, 2];

/// A refusal claiming to come from `SERVER:port`, arriving with `rst_ttl`, in a connection
/// whose SYN was seen and no SYN+ACK (so no TTL of the server's own from the connection).
fn refusal(port: u16, client_port: u16, rst_ttl: u8) -> FlowKey {
    let mut key = FlowKey {
        ifindex: 3,
        sport: port,
        dport: client_port,
        family: FAMILY_IPV4,
        protocol: 6,
        direction: DIRECTION_RX,
        class: ResetClass::new(ResetKind::Refused, true, true, true, true).0,
        rst_ttl,
        ..FlowKey::default()
    };
    key.src[..4].copy_from_slice(&SERVER);
    key.dst[..4].copy_from_slice(&CLIENT);
    key
}

#[test]
fn a_refusal_forged_by_the_hosts_own_ttl_is_a_middlebox_in_its_flow_record_too() {
    let mut aggregator = Aggregator::new(Vec::new(), 10);
    // The server answered another port's handshake with TTL 63: its own packets' TTL here.
    let mut served = ServiceKey::default();
    served.addr[..4].copy_from_slice(&SERVER);
    (served.ifindex, served.port, served.family) = (3, 80, FAMILY_IPV4);
    let accepted = ServiceValue::accepted(Some(0), 63, 0);
    let forged = refusal(7105, 40_000, 64);
    let genuine = refusal(7106, 40_001, 63);
    let sample = Sample {
        flows: vec![(forged, 1), (genuine, 1)],
        services: vec![(served, accepted)],
        counters: Counters { resets: 2, ..Counters::default() },
        ..Sample::default()
    };
    aggregator.fold(&sample, Duration::from_secs(1), SystemTime::now());
    let run = aggregator.summary();
    let middlebox_of = |port: u16| run.flows.iter().find(|f| f.sport == port).expect("flow").middlebox;
    assert_eq!(middlebox_of(7105), Some(Middlebox { rst_ttl: 64, peer_ttl: 63, resets: 1 }));
    assert_eq!(middlebox_of(7106), None);
    let causes: Vec<(Cause, u16)> = aggregator.verdicts().iter().map(|v| (v.cause(), v.service.port)).collect();
    assert!(causes.contains(&(Cause::Middlebox, 7105)), "{causes:?}");
}

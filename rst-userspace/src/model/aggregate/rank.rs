//! Rankings: flows grouped by the address that sent the RSTs, by the address they were sent
//! to, and by service; largest first, ties in a stable, readable order.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use rst_common::{
    wire::{ResetKind, ServiceKey, ServiceValue, SourceKey},
    FlowKey,
};

use super::{
    model::{per_second, percent, Destination, KindCounts, Pauses, Service, Source},
    FlowStats,
};

/// How many destinations / ports / senders a ranked row lists.
pub const ROW_DETAIL: usize = 3;

#[derive(Default)]
struct SourceTally {
    resets: u64,
    flows: u64,
    overflow: u64,
    middlebox: u64,
    kinds: KindCounts,
    ports: BTreeMap<u16, u64>,
    destinations: BTreeMap<IpAddr, u64>,
}

/// Groups flows (and the resets that overflowed the flow table) by the address that sent the
/// RSTs, largest first.
pub fn sources<'a>(
    flows: impl Iterator<Item = (&'a FlowKey, &'a FlowStats)>,
    overflow_sources: impl Iterator<Item = (&'a SourceKey, u64)>,
    elapsed: Duration,
) -> Vec<Source> {
    let mut tallies: BTreeMap<IpAddr, SourceTally> = BTreeMap::new();
    let mut all = 0u64;
    for (key, stats) in flows {
        let resets = stats.resets;
        all += resets;
        let tally = tallies.entry(key.src_ip()).or_default();
        tally.resets += resets;
        tally.flows += 1;
        tally.middlebox += stats.middlebox.map_or(0, |m| m.resets);
        tally.kinds.merge(&stats.kinds);
        *tally.ports.entry(key.sport).or_default() += resets;
        *tally.destinations.entry(key.dst_ip()).or_default() += resets;
    }
    for (key, resets) in overflow_sources {
        all += resets;
        let tally = tallies.entry(key.src_ip()).or_default();
        tally.resets += resets;
        tally.overflow += resets;
    }
    let mut sources: Vec<Source> = tallies
        .into_iter()
        .map(|(src, tally)| Source {
            src,
            resets: tally.resets,
            rate: per_second(tally.resets, elapsed),
            share: percent(tally.resets, all),
            flows: tally.flows,
            overflow: tally.overflow,
            ports: top_n(tally.ports, ROW_DETAIL),
            destinations: top_n(tally.destinations, ROW_DETAIL),
            middlebox: tally.middlebox,
            kinds: tally.kinds,
        })
        .collect();
    sources.sort_by(|a, b| b.resets.cmp(&a.resets).then_with(|| a.src.cmp(&b.src)));
    sources
}

/// Groups flows by the address their RSTs were sent to, largest first.
pub fn destinations<'a>(flows: impl Iterator<Item = (&'a FlowKey, &'a FlowStats)>) -> Vec<Destination> {
    #[derive(Default)]
    struct Tally {
        resets: u64,
        flows: u64,
        senders: BTreeMap<IpAddr, u64>,
    }
    let mut tallies: BTreeMap<IpAddr, Tally> = BTreeMap::new();
    let mut all = 0;
    for (key, stats) in flows {
        all += stats.resets;
        let tally = tallies.entry(key.dst_ip()).or_default();
        tally.resets += stats.resets;
        tally.flows += 1;
        *tally.senders.entry(key.src_ip()).or_default() += stats.resets;
    }
    let mut records: Vec<Destination> = tallies
        .into_iter()
        .map(|(dst, tally)| Destination {
            dst,
            resets: tally.resets,
            share: percent(tally.resets, all),
            flows: tally.flows,
            senders: top_n(tally.senders, ROW_DETAIL),
        })
        .collect();
    records.sort_by(|a, b| b.resets.cmp(&a.resets).then_with(|| a.dst.cmp(&b.dst)));
    records
}

/// Services from the handshakes counted in the kernel, with the resets of their flows: a
/// flow's RSTs from the server side belong to its source's service, the others to its
/// destination's. Largest by resets, then attempts.
pub fn services<'a>(
    handshakes: impl Iterator<Item = (&'a ServiceKey, &'a ServiceValue)>,
    flows: impl Iterator<Item = (&'a FlowKey, &'a FlowStats)>,
    iface_name: impl Fn(u32) -> String,
) -> Vec<Service> {
    #[derive(Default)]
    struct Tally {
        handshakes: ServiceValue,
        resets: u64,
        kinds: KindCounts,
        pauses: Pauses,
    }
    let mut tallies: BTreeMap<ServiceKey, Tally> = BTreeMap::new();
    for (key, value) in handshakes {
        tallies.entry(*key).or_default().handshakes = *value;
    }
    for (key, stats) in flows {
        let from_client = stats.resets - stats.from_server;
        if stats.from_server > 0 {
            let tally = tallies.entry(ServiceKey::new(key.src, key.sport, key)).or_default();
            tally.resets += stats.from_server;
            // Refusals always come from the server side.
            tally.kinds.add(ResetKind::Refused, stats.kinds.get(ResetKind::Refused));
        }
        if from_client > 0 {
            let tally = tallies.entry(ServiceKey::new(key.dst, key.dport, key)).or_default();
            tally.resets += from_client;
        }
        // Kinds other than refused are charged to the side that sent most.
        let service = if stats.server_side() {
            ServiceKey::new(key.src, key.sport, key)
        } else {
            ServiceKey::new(key.dst, key.dport, key)
        };
        let tally = tallies.entry(service).or_default();
        tally.pauses.merge(&stats.pauses);
        for kind in ResetKind::ALL.into_iter().filter(|kind| *kind != ResetKind::Refused) {
            tally.kinds.add(kind, stats.kinds.get(kind));
        }
    }
    let mut records: Vec<Service> = tallies
        .into_iter()
        .map(|(key, tally)| {
            let refused = tally.kinds.get(ResetKind::Refused);
            Service {
                iface: iface_name(key.ifindex),
                ifindex: key.ifindex,
                addr: key.ip(),
                port: key.port,
                attempts: tally.handshakes.attempts,
                synacks: tally.handshakes.synacks,
                resets: tally.resets,
                refused,
                // A share of attempts: refusals beyond them (one attempt refused again) stop at all.
                refused_share: percent(refused.min(tally.handshakes.attempts), tally.handshakes.attempts),
                kinds: tally.kinds,
                pauses: tally.pauses,
                // Set by the aggregator, which knows the tunnels.
                tunnel: None,
            }
        })
        .collect();
    records.sort_by(|a, b| {
        b.resets
            .cmp(&a.resets)
            .then_with(|| b.attempts.cmp(&a.attempts))
            .then_with(|| (a.addr, a.port).cmp(&(b.addr, b.port)))
    });
    records
}

/// The `n` largest counts, largest first, ties by key.
pub fn top_n<K: Ord + Copy>(counts: BTreeMap<K, u64>, n: usize) -> Vec<(K, u64)> {
    let mut counts: Vec<(K, u64)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts.truncate(n);
    counts
}

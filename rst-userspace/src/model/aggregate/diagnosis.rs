//! The forum's questions ("is it a lot, from whom, who resets first, why"), answered in
//! sentences from the run's own numbers.

use std::{collections::BTreeMap, net::IpAddr};

use rst_common::wire::ResetKind;

use super::model::{endpoint, percent, service_endpoint, Direction, Flow, Origin, Run, Side};
use crate::model::kernel_reason::KernelReason;

/// Workloads the summary names in words at most.
const WORKLOAD_SENTENCES: usize = 3;

/// The run's diagnosis, most telling first; empty without resets.
pub fn sentences(run: &Run) -> Vec<String> {
    let Run { totals, sources, services, flows, kernel_events, .. } = run;
    let mut lines = Vec::new();
    if totals.resets == 0 {
        return lines;
    }
    if let Some(service) = services
        .iter()
        .filter(|s| s.attempts > 0 && s.refused > 0)
        .max_by(|a, b| a.refused_share.total_cmp(&b.refused_share).then_with(|| a.refused.cmp(&b.refused)))
    {
        // Retransmitted SYNs are one attempt; a refusal is counted per RST, and an attempt
        // begun before the run has none: the two are said apart when they do not add up.
        let counts = if service.refused <= service.attempts {
            format!("{} of {}", service.refused, service.attempts)
        } else {
            format!(
                "{} refusals for {} {}, some refused more than once or begun before the run",
                service.refused,
                service.attempts,
                if service.attempts == 1 { "attempt" } else { "attempts" }
            )
        };
        lines.push(format!(
            "{:.0}% of connection attempts to {} were refused ({counts})",
            service.refused_share,
            service_endpoint(service.addr, service.port, service.tunnel.as_ref()),
        ));
    }
    // Accepted, then reset: a balancer or server shedding load after the handshake.
    if let Some(service) = services
        .iter()
        .filter(|s| s.synacks > 0 && s.resets > s.refused)
        .max_by(|a, b| (a.resets - a.refused).cmp(&(b.resets - b.refused)))
    {
        let reset = service.resets - service.refused;
        let (kind, _) = ResetKind::ALL
            .iter()
            .filter(|kind| **kind != ResetKind::Refused)
            .map(|kind| (kind.name(), service.kinds.get(*kind)))
            .max_by_key(|(_, count)| *count)
            .unwrap_or(("established", 0));
        lines.push(format!(
            "{:.0}% of accepted connections to {} were reset, mostly {kind} ({reset} resets, {} SYN+ACKs)",
            percent(reset, service.synacks),
            service_endpoint(service.addr, service.port, service.tunnel.as_ref()),
            service.synacks
        ));
    }
    if let Some(top) = sources.first() {
        lines.push(format!("{:.0}% of resets come from {} ({} of {})", top.share, top.src, top.resets, totals.resets));
    }
    let firsts: Vec<&Flow> = flows.iter().filter(|f| f.first).collect();
    if !firsts.is_empty() {
        let server = firsts.iter().filter(|f| f.side == Side::Server).count();
        let (side, count) =
            if server * 2 >= firsts.len() { (Side::Server, server) } else { (Side::Client, firsts.len() - server) };
        let observed = firsts.iter().filter(|f| f.side_observed).count();
        lines.push(format!(
            "the {} side resets first in {count} of {} connections{}",
            side.name(),
            firsts.len(),
            if observed == firsts.len() {
                String::new()
            } else {
                format!(" ({} inferred from ports)", firsts.len() - observed)
            }
        ));
    }
    let mut injected: BTreeMap<IpAddr, (u64, u8, u8)> = BTreeMap::new();
    for flow in flows {
        if let Some(middlebox) = &flow.middlebox {
            let entry = injected.entry(flow.src).or_insert((0, middlebox.rst_ttl, middlebox.peer_ttl));
            entry.0 += middlebox.resets;
        }
    }
    for (src, (resets, rst_ttl, peer_ttl)) in &injected {
        lines.push(format!(
            "TTL says a middlebox sent {resets} resets claiming to be {src} (TTL {rst_ttl}; {src}'s handshake had {peer_ttl})"
        ));
    }
    let mut reasons: BTreeMap<&KernelReason, u64> = BTreeMap::new();
    let mut unexplained = 0;
    for flow in flows {
        for (reason, count) in &flow.reasons {
            *reasons.entry(reason).or_default() += count;
        }
        unexplained += flow.no_kernel_event.unwrap_or(0);
    }
    if !reasons.is_empty() {
        let mut by_count: Vec<(&KernelReason, u64)> = reasons.into_iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let listed: Vec<String> = by_count.iter().map(|(reason, count)| format!("{reason} {count}")).collect();
        lines.push(format!("this host's TCP stack sent resets because: {}", listed.join(", ")));
    }
    if unexplained > 0 {
        lines.push(format!(
            "{unexplained} resets left this host with no TCP stack event: made by something else here (netfilter REJECT, a proxy) or forwarded through it"
        ));
    }
    lines.extend(workload_sentences(run));
    if let Some(why) = kernel_events.availability.why_not() {
        if flows.iter().any(|f| f.direction == Direction::Tx) {
            lines.push(format!("no kernel reasons: {why}"));
        }
    }
    lines
}

/// Who the resets belonged to on this host: "cart-7d9f (shop) received 4 refusals from
/// 10.77.0.100:81", "nginx.service sent 3 resets to 10.0.0.2:443", and what the kernel sent
/// for no socket.
fn workload_sentences(run: &Run) -> Vec<String> {
    let mut lines = Vec::new();
    for resets in run.workloads.iter().take(WORKLOAD_SENTENCES) {
        let name = resets.workload.describe();
        let mine = |direction: Direction| {
            run.flows.iter().filter(move |f| f.direction == direction && f.workload.as_ref() == Some(&resets.workload))
        };
        if resets.received > 0 {
            // The peer that sent it the most, by address and port.
            let mut peers: BTreeMap<(IpAddr, u16), (u64, u64)> = BTreeMap::new();
            for flow in mine(Direction::Rx) {
                let peer = peers.entry((flow.src, flow.sport)).or_default();
                peer.0 += flow.resets;
                peer.1 += flow.kinds.get(ResetKind::Refused);
            }
            if let Some((&(addr, port), &(count, refused))) = peers.iter().max_by_key(|(_, (count, _))| *count) {
                let what = match (refused == count, count == 1) {
                    (true, true) => "refusal",
                    (true, false) => "refusals",
                    (false, true) => "reset",
                    (false, false) => "resets",
                };
                let rest = resets.received - count;
                let more = if rest > 0 { format!(" (and {rest} from others)") } else { String::new() };
                lines.push(format!("{name} received {count} {what} from {}{more}", endpoint(addr, port)));
            }
        }
        if resets.sent > 0 {
            let mut peers: BTreeMap<(IpAddr, u16), u64> = BTreeMap::new();
            for flow in mine(Direction::Tx) {
                *peers.entry((flow.dst, flow.dport)).or_default() += flow.resets;
            }
            if let Some((&(addr, port), &count)) = peers.iter().max_by_key(|(_, count)| **count) {
                let rest = resets.sent - count;
                let more = if rest > 0 { format!(" (and {rest} to others)") } else { String::new() };
                let what = if count == 1 { "reset" } else { "resets" };
                lines.push(format!("{name} sent {count} {what} to {}{more}", endpoint(addr, port)));
            }
        }
    }
    let by_kernel: u64 = run.flows.iter().filter(|f| f.origin == Some(Origin::Kernel)).map(|f| f.resets).sum();
    if by_kernel > 0 {
        lines.push(format!(
            "this host's kernel sent {by_kernel} resets for no socket (a closed port, an unknown connection): no application asked for them"
        ));
    }
    lines
}

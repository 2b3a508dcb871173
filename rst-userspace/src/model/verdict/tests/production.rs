//! The causes production hits most: idle timeouts, keep-alive races, lost NAT state.

use rst_common::wire::{ResetClass, ResetKind};

use super::*;
use crate::model::{
    kernel_reason::ReasonNames,
    verdict::{rst_tuple, RstTuple},
};

/// Stateless resets by the server (RST without ACK mid-stream), one per connection, each after
/// the idle gap given.
fn after_idle(gaps_ms: &[u64], ttls: (u8, u8)) -> Vec<Verdict> {
    idle_evidence(gaps_ms, ttls).verdicts()
}

/// The evidence of [`after_idle`], before its verdicts.
fn idle_evidence(gaps_ms: &[u64], ttls: (u8, u8)) -> Evidence {
    let flows: Vec<FlowKey> =
        (0..gaps_ms.len() as u16).map(|i| rst(ResetKind::Established, true, false, 443, 40_000 + i, ttls)).collect();
    let gaps: Vec<(RstTuple, u64)> = flows.iter().zip(gaps_ms).map(|(key, gap)| (rst_tuple(key), *gap)).collect();
    let mut evidence = Evidence::new(64);
    evidence.timings(FlowTimings { pauses: &gaps, ..FlowTimings::default() });
    feed(&mut evidence, 0, &[], &flows);
    evidence
}

#[test]
fn resets_after_gaps_near_one_value_are_an_idle_timeout() {
    let verdicts = after_idle(&[5_000, 5_100, 4_900], (64, 64));
    assert_eq!(causes(&verdicts), [(Cause::IdleTimeout, 443, 3)], "and no state_lost beside it");
    assert_eq!(verdicts[0].finding, Finding::IdleTimeout { idle_ms: 5_000, forged: None, hook: None });
    assert_eq!(verdicts[0].side, Some(super::super::Side::Server));
    assert!(verdicts[0].text().contains("after ~5.0 s idle"), "{}", verdicts[0].text());
}

#[test]
fn gaps_spread_over_an_order_of_magnitude_or_a_single_late_reset_are_no_timeout() {
    assert_eq!(causes(&after_idle(&[1_000, 3_000, 10_000], (64, 64))), [(Cause::StateLost, 443, 3)]);
    assert_eq!(causes(&after_idle(&[350_000], (64, 64))), [(Cause::StateLost, 443, 1)]);
    // Short pauses are traffic, not idleness.
    assert_eq!(causes(&after_idle(&[200, 210, 190], (64, 64))), [(Cause::StateLost, 443, 3)]);
}

#[test]
fn a_device_forging_resets_after_its_idle_timeout_is_named_with_its_ttl() {
    let verdicts = after_idle(&[350_000, 351_000, 349_500, 350_500], (63, 61));
    assert_eq!(causes(&verdicts), [(Cause::IdleTimeout, 443, 4)], "not a middlebox beside it");
    assert_eq!(verdicts[0].finding, Finding::IdleTimeout { idle_ms: 350_500, forged: Some((63, 61)), hook: None });
    assert_eq!(verdicts[0].side, None);
}

#[test]
fn an_idle_timeout_this_hosts_firewall_forged_names_its_hook_and_counts_once() {
    use super::super::NetfilterHook;
    // A router whose conntrack forgot idle connections: its own RSTs (TTL 64, the server's
    // forwarded packets 63), and its firewall's rejections of the same service.
    let mut evidence = idle_evidence(&[5_000, 5_050, 4_950], (64, 63));
    evidence.local_firewall(service(443), NetfilterHook::Forward, 3);
    let verdicts = evidence.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::IdleTimeout, 443, 3)], "no local_firewall counting them again");
    let hook = Some(NetfilterHook::Forward);
    assert_eq!(verdicts[0].finding, Finding::IdleTimeout { idle_ms: 5_000, forged: Some((64, 63)), hook });
    assert!(verdicts[0].text().contains("this host's firewall (at the forward hook"), "{}", verdicts[0].text());
    // Rejections beyond the timeout's resets stay the firewall's own.
    let mut evidence = idle_evidence(&[5_000, 5_050, 4_950], (64, 63));
    evidence.local_firewall(service(443), NetfilterHook::Forward, 5);
    let mut found = causes(&evidence.verdicts());
    found.sort();
    assert_eq!(found, [(Cause::IdleTimeout, 443, 3), (Cause::LocalFirewall, 443, 2)]);
    // The firewall of a host whose resets were not forged is not the timeout's sender.
    let mut evidence = idle_evidence(&[5_000, 5_050, 4_950], (64, 64));
    evidence.local_firewall(service(443), NetfilterHook::Input, 3);
    let verdicts = evidence.verdicts();
    assert!(verdicts.iter().any(|v| v.finding == Finding::IdleTimeout { idle_ms: 5_000, forged: None, hook: None }));
    assert!(verdicts.iter().any(|v| v.finding == Finding::LocalFirewall { hook: NetfilterHook::Input }));
}

#[test]
fn the_cluster_takes_only_its_own_resets() {
    // Two quick aborts beside three after ~4 s idle.
    let verdicts = after_idle(&[4_000, 4_100, 3_950, 20, 30], (64, 64));
    assert_eq!(causes(&verdicts), [(Cause::StateLost, 443, 2), (Cause::IdleTimeout, 443, 3)]);
}

#[test]
fn a_keepalive_race_says_how_idle_the_connection_was_when_its_closer_closed() {
    let late_data = seen(true, true, false, false, true, true);
    let flows = [closing(true, false, 40_000, late_data), closing(true, false, 40_001, late_data)];
    let idle: Vec<(FlowKey, u64)> = flows.iter().map(|key| (key.flow_id(), 2_000)).collect();
    let mut evidence = Evidence::new(64);
    evidence.timings(FlowTimings { idle_before_close: &idle, ..FlowTimings::default() });
    feed(&mut evidence, 0, &[], &flows);
    let verdicts = evidence.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::KeepaliveRace, 443, 2)]);
    assert_eq!(verdicts[0].finding, Finding::KeepaliveRace { idle_ms: Some(2_000) });
    assert!(verdicts[0].text().contains("closed by the server after 2.0 s idle"), "{}", verdicts[0].text());
    // A closer that closed right after its last word (an FTP client after QUIT) did not race:
    // the reply it resets is no reuse.
    let quick: Vec<(FlowKey, u64)> = flows.iter().map(|key| (key.flow_id(), 40)).collect();
    let mut evidence = Evidence::new(64);
    evidence.timings(FlowTimings { idle_before_close: &quick, ..FlowTimings::default() });
    feed(&mut evidence, 0, &[], &flows);
    assert_eq!(causes(&evidence.verdicts()), []);
}

#[test]
fn live_the_closers_pause_before_its_reset_tells_the_keepalive_race() {
    // Data not watched: the closing server's RST alone says nothing...
    let unwatched = closing(true, false, 40_000, seen(true, true, false, false, false, false));
    assert_eq!(causes(&verdicts_of(&[unwatched])), []);
    // ...nor a pause before it alone (keep-alive probes after the close, answered once the
    // closed socket is gone, are a teardown's)...
    let idle = [(rst_tuple(&unwatched), 2_000)];
    let mut probes = Evidence::new(64);
    probes.timings(FlowTimings { pauses: &idle, ..FlowTimings::default() });
    feed(&mut probes, 0, &[], &[unwatched]);
    assert_eq!(causes(&probes.verdicts()), []);
    // ...the pause and a kernel saying data came after the close do: the client used the
    // connection after 2 s.
    let late = [rst_tuple(&unwatched)];
    let mut evidence = Evidence::new(64);
    evidence.timings(FlowTimings { pauses: &idle, late_data: &late, ..FlowTimings::default() });
    feed(&mut evidence, 0, &[], &[unwatched]);
    let names =
        ReasonNames::new(["NOT_SPECIFIED", "TCP_ABORT_ON_DATA", "TCP_TIMEWAIT_SOCKET"].map(String::from).into());
    evidence.stack_resets(&unwatched.flow_id(), true, ResetKind::Closing, false, &names.reason(2), 1);
    let verdicts = evidence.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::KeepaliveRace, 443, 1)]);
    assert_eq!(verdicts[0].side, Some(super::super::Side::Server));
    assert_eq!(
        verdicts[0].kernel_reason.as_ref().map(ToString::to_string).as_deref(),
        Some("TCP_TIMEWAIT_SOCKET"),
        "the server's time-wait socket answered the data"
    );
    // A closer that reset right after its last word (no pause) did not race.
    let quick = [(rst_tuple(&unwatched), 30)];
    let mut evidence = Evidence::new(64);
    evidence.timings(FlowTimings { pauses: &quick, late_data: &late, ..FlowTimings::default() });
    feed(&mut evidence, 0, &[], &[unwatched]);
    assert_eq!(causes(&evidence.verdicts()), []);
}

#[test]
fn a_clients_resets_of_untranslated_replies_name_the_lost_nat() {
    // The client's RST to the backend's address: no handshake of its own seen.
    let mut lone = rst(ResetKind::Established, false, false, 8080, 40_000, (64, 0));
    lone.class = ResetClass::new(ResetKind::Established, false, false, false, true).0;
    lone.dst[..4].copy_from_slice(&[10, 0, 3, 7]);
    let vip = ([10, 0, 2, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 80);
    let mut evidence = Evidence::new(64);
    evidence.timings(FlowTimings { nat_lost: &[(lone.flow_id(), vip)], ..FlowTimings::default() });
    feed(&mut evidence, 0, &[], &[lone]);
    let verdicts = evidence.verdicts();
    assert_eq!(verdicts.len(), 1, "{verdicts:?}");
    assert_eq!(verdicts[0].cause(), Cause::NatLost);
    assert_eq!(verdicts[0].service, ServiceAddr::on_link(ip([10, 0, 2, 20]), 80));
    assert_eq!(verdicts[0].finding, Finding::NatLost { backend: ServiceAddr::on_link(ip([10, 0, 3, 7]), 8080) });
    assert!(verdicts[0].text().contains("arrived untranslated from 10.0.3.7:8080"), "{}", verdicts[0].text());
    // Without the live connection elsewhere, the same lone reset names nothing.
    assert_eq!(causes(&verdicts_of(&[lone])), []);
}

#[test]
fn a_full_accept_queue_is_a_listen_overflow_and_not_a_limit_or_a_refusal() {
    // The listener reset two connections its queue had no room for: the flows show them as
    // the server's resets inside the handshake, which alone would read as turn-aways.
    let flows = [
        rst(ResetKind::Handshake, true, true, 7101, 40_000, (64, 64)),
        rst(ResetKind::Handshake, true, true, 7101, 40_001, (64, 64)),
    ];
    let mut evidence = Evidence::new(64);
    feed(&mut evidence, 0, &[handshakes(7101, 4, 4)], &flows);
    evidence.listen_overflow(service(7101), 2, 1);
    let verdicts = evidence.interval_verdicts();
    assert_eq!(causes(&verdicts), [(Cause::ListenOverflow, 7101, 2)]);
    assert_eq!(verdicts[0].finding, Finding::ListenOverflow { limit: 1 });
    assert!(verdicts[0].text().contains("accept queue was full (1)"), "{}", verdicts[0].text());
    assert_eq!(causes(&evidence.verdicts()), [(Cause::ListenOverflow, 7101, 2)]);
}

#[test]
fn this_hosts_firewall_rejecting_a_port_is_a_local_firewall_and_no_closed_port() {
    let flows: Vec<FlowKey> = (0..3).map(|i| refusal(7777, 40_000 + i)).collect();
    let mut evidence = Evidence::new(64);
    feed(&mut evidence, 0, &[handshakes(7777, 3, 0)], &flows);
    evidence.local_firewall(service(7777), super::super::NetfilterHook::Input, 3);
    let verdicts = evidence.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::LocalFirewall, 7777, 3)], "and no no_listener beside it");
    assert_eq!(verdicts[0].finding, Finding::LocalFirewall { hook: super::super::NetfilterHook::Input });
    assert!(verdicts[0].text().contains("at the input hook"), "{}", verdicts[0].text());
    // Without the reject path's event the same refusals are a closed port's.
    assert_eq!(causes(&verdicts_of(&flows)), [(Cause::NoListener, 7777, 3)]);
}

#[test]
fn the_order_the_table_is_read_in_changes_no_verdict() {
    // One client port: a refused attempt, then an accepted connection the server aborted, and
    // the server's further RST answering what the client still sent.
    let refused = refusal(443, 40_000);
    let abort = rst(ResetKind::Established, true, true, 443, 40_000, (64, 64));
    let again =
        rst_in(ResetKind::Established, true, true, 443, 40_000, (64, 64), seen(true, false, false, true, false, false));
    let verdicts = |flows: &[FlowKey]| {
        let mut evidence = Evidence::new(64);
        feed(&mut evidence, 0, &[handshakes(443, 2, 1)], flows);
        evidence.verdicts()
    };
    assert_eq!(verdicts(&[refused, abort, again]), verdicts(&[abort, refused, again]));
    assert_eq!(verdicts(&[again, abort, refused]), verdicts(&[refused, again, abort]));
}

#[test]
fn a_clients_own_resets_after_a_slow_reply_are_no_idle_timeout() {
    // The backend took its time; the client (whose NAT lost the connection) reset the reply.
    let flows: Vec<FlowKey> =
        (0..3).map(|i| rst(ResetKind::Established, false, false, 8081, 40_000 + i, (64, 64))).collect();
    let gaps: Vec<(RstTuple, u64)> = flows.iter().map(|key| (rst_tuple(key), 1_000)).collect();
    let mut evidence = Evidence::new(64);
    evidence.timings(FlowTimings { pauses: &gaps, ..FlowTimings::default() });
    feed(&mut evidence, 0, &[], &flows);
    assert_eq!(causes(&evidence.verdicts()), [(Cause::StateLost, 8081, 3)]);
}

#[test]
fn an_overflows_resets_without_ack_are_not_lost_state_too() {
    // What the listener really sends: no ACK, answering the client's first data.
    let flows = [
        rst(ResetKind::Handshake, true, false, 7101, 40_000, (64, 64)),
        rst(ResetKind::Handshake, true, false, 7101, 40_001, (64, 64)),
    ];
    let mut evidence = Evidence::new(64);
    feed(&mut evidence, 0, &[handshakes(7101, 4, 4)], &flows);
    evidence.listen_overflow(service(7101), 2, 1);
    assert_eq!(causes(&evidence.verdicts()), [(Cause::ListenOverflow, 7101, 2)]);
    // Without the kernel's account, the wire says lost state.
    assert_eq!(causes(&verdicts_of(&flows)), [(Cause::StateLost, 7101, 2)]);
}

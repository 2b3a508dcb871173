//! The rules' edges, one cause at a time, from flow entries as the tracker counts them.

use std::net::{IpAddr, Ipv4Addr};

use rst_common::wire::{DownRun, FlowKey, ResetClass, ResetContext, ResetKind, DIRECTION_RX, FAMILY_IPV4, IPPROTO_TCP};

use super::{Cause, Evidence, Finding, FlowTimings, ServiceAddr, ServiceSample, Verdict};
use crate::model::{aggregate::tunnels::KnownTunnels, kernel_reason::ReasonNames};

const IFINDEX: u32 = 7;
const CLIENT: [u8; 4] = [10, 0, 1, 5];
const SERVER: [u8; 4] = [10, 0, 2, 10];

fn ip(octets: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(octets))
}

fn service(port: u16) -> ServiceAddr {
    ServiceAddr::on_link(ip(SERVER), port)
}

/// An RST entry: `server` sent it (else the client), from the service's port to an ephemeral one,
/// in a connection whose handshake was seen whole (a refusal's had no SYN+ACK) and that neither
/// side had closed or reset.
fn rst(kind: ResetKind, server: bool, ack: bool, port: u16, client_port: u16, ttls: (u8, u8)) -> FlowKey {
    let answered = kind != ResetKind::Refused;
    rst_in(kind, server, ack, port, client_port, ttls, ResetContext::new(answered, false, false, false, false, false))
}

/// [`rst`] in a connection that had seen `context`.
fn rst_in(
    kind: ResetKind,
    server: bool,
    ack: bool,
    port: u16,
    client_port: u16,
    ttls: (u8, u8),
    context: ResetContext,
) -> FlowKey {
    let (src, dst, sport, dport) =
        if server { (SERVER, CLIENT, port, client_port) } else { (CLIENT, SERVER, client_port, port) };
    let mut key = FlowKey {
        ifindex: IFINDEX,
        sport,
        dport,
        family: FAMILY_IPV4,
        protocol: IPPROTO_TCP,
        direction: DIRECTION_RX,
        class: ResetClass::new(kind, ack, server, true, true).0,
        rst_ttl: ttls.0,
        peer_ttl: ttls.1,
        context: context.0,
        ..FlowKey::default()
    };
    key.src[..4].copy_from_slice(&src);
    key.dst[..4].copy_from_slice(&dst);
    key
}

fn refusal(port: u16, client_port: u16) -> FlowKey {
    rst(ResetKind::Refused, true, true, port, client_port, (64, 0))
}

fn handshakes(port: u16, attempts: u64, synacks: u64) -> ServiceSample {
    ServiceSample {
        service: service(port),
        ifindex: IFINDEX,
        attempts,
        synacks,
        open_at_accept: None,
        open_at_turnaway: None,
        synack_ttl: None,
        down: None,
    }
}

fn feed(evidence: &mut Evidence, start_ms: u64, services: &[ServiceSample], flows: &[FlowKey]) {
    evidence.interval(start_ms, services, flows.iter().map(|key| (key, 1)), &KnownTunnels::default());
}

/// The verdicts of one interval with these flow entries and no handshakes.
fn verdicts_of(flows: &[FlowKey]) -> Vec<Verdict> {
    let mut evidence = Evidence::new(64);
    feed(&mut evidence, 0, &[], flows);
    evidence.verdicts()
}

fn causes(verdicts: &[Verdict]) -> Vec<(Cause, u16, u64)> {
    let mut causes: Vec<_> = verdicts.iter().map(|v| (v.cause(), v.service.port, v.resets)).collect();
    causes.sort();
    causes
}

#[test]
fn a_closed_port_has_no_listener_and_nothing_else() {
    let mut evidence = Evidence::new(64);
    let flows: Vec<FlowKey> = (0..3).map(|i| refusal(81, 40_000 + i)).collect();
    feed(&mut evidence, 0, &[handshakes(81, 3, 0)], &flows);
    let verdicts = evidence.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::NoListener, 81, 3)]);
    assert_eq!(verdicts[0].connections, 3);
    assert!(!verdicts[0].benign());
    assert!(verdicts[0].text().contains("nothing listens on 10.0.2.10:81"), "{}", verdicts[0].text());
}

#[test]
fn a_service_that_accepted_then_refuses_with_nothing_open_went_down() {
    let mut evidence = Evidence::new(64);
    let up = ServiceSample { open_at_accept: Some(1), ..handshakes(443, 5, 5) };
    feed(&mut evidence, 0, &[up], &[]);
    let flows: Vec<FlowKey> = (0..4).map(|i| refusal(443, 41_000 + i)).collect();
    let down = ServiceSample { open_at_turnaway: Some((0, 0)), ..handshakes(443, 6, 0) };
    feed(&mut evidence, 1_000, &[down], &flows);
    let verdicts = evidence.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::WentDown, 443, 4)]);
    assert_eq!(verdicts[0].finding, Finding::WentDown { since_ms: 1_000, unanswered: 2 }, "six attempts, four refused");
    assert!(verdicts[0].text().contains("went down 1.0 s into the run"), "{}", verdicts[0].text());
}

/// An interval in which the service accepted (`accepts`, none left open) and turned away
/// `refused` connections with nothing open; `run`: what the tracker says it ended in.
fn died_in_interval(accepts: u64, refused: u16, run: Option<DownRun>) -> (ServiceSample, Vec<FlowKey>) {
    let sample = ServiceSample {
        open_at_accept: Some(0),
        open_at_turnaway: Some((0, 0)),
        down: run,
        ..handshakes(443, accepts + u64::from(refused), accepts)
    };
    (sample, (0..refused).map(|i| refusal(443, 43_000 + i)).collect())
}

#[test]
fn a_service_that_dies_after_its_last_accept_within_the_interval_went_down_then() {
    let run = DownRun { since_ms: 730, turnaways: 3 };
    let (sample, flows) = died_in_interval(2, 3, Some(run));
    let mut evidence = Evidence::new(64);
    feed(&mut evidence, 0, &[sample], &flows);
    for verdicts in [evidence.verdicts(), evidence.interval_verdicts()] {
        assert_eq!(causes(&verdicts), [(Cause::WentDown, 443, 3)]);
        assert_eq!(verdicts[0].connections, 3);
        assert_eq!(verdicts[0].finding, Finding::WentDown { since_ms: 730, unanswered: 0 }, "the tracker's time");
    }
    // It stays down: the next interval's refusals add to it, since the same first refusal.
    let still = DownRun { since_ms: 730, turnaways: 5 };
    let down = ServiceSample { open_at_turnaway: Some((0, 0)), down: Some(still), ..handshakes(443, 2, 0) };
    feed(&mut evidence, 1_000, &[down], &[refusal(443, 44_000), refusal(443, 44_001)]);
    let verdicts = evidence.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::WentDown, 443, 5)]);
    assert_eq!(verdicts[0].finding, Finding::WentDown { since_ms: 730, unanswered: 0 });
    assert_eq!(causes(&evidence.interval_verdicts()), [(Cause::WentDown, 443, 2)]);
}

#[test]
fn without_the_trackers_order_an_interval_with_accepts_and_refusals_gets_no_down_verdict() {
    // The same counts with no run: the accepts may have come after the refusals (it came back).
    let (sample, flows) = died_in_interval(2, 3, None);
    let mut evidence = Evidence::new(64);
    feed(&mut evidence, 0, &[sample], &flows);
    assert_eq!(causes(&evidence.verdicts()), [], "no guess");
}

#[test]
fn a_single_refusal_after_the_last_accept_went_down_and_earlier_ones_are_not_counted() {
    let mut evidence = Evidence::new(64);
    let (sample, flows) = died_in_interval(1, 1, Some(DownRun { since_ms: 10, turnaways: 1 }));
    feed(&mut evidence, 0, &[sample], &flows);
    assert_eq!(causes(&evidence.verdicts()), [(Cause::WentDown, 443, 1)]);
    // Three refused in the interval, only the last after its last accept: one is the run's.
    let mut evidence = Evidence::new(64);
    let (sample, flows) = died_in_interval(2, 3, Some(DownRun { since_ms: 20, turnaways: 1 }));
    feed(&mut evidence, 0, &[sample], &flows);
    let verdicts = evidence.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::WentDown, 443, 1)]);
    assert_eq!((verdicts[0].connections, verdicts[0].finding), (1, Finding::WentDown { since_ms: 20, unanswered: 0 }));
}

#[test]
fn a_refusal_run_across_intervals_is_dated_by_the_tracker_and_ends_when_the_service_returns() {
    let mut evidence = Evidence::new(64);
    feed(&mut evidence, 0, &[handshakes(443, 2, 2)], &[]);
    let run = DownRun { since_ms: 1_234, turnaways: 1 };
    let down = ServiceSample { open_at_turnaway: Some((0, 0)), down: Some(run), ..handshakes(443, 1, 0) };
    feed(&mut evidence, 1_000, &[down], &[refusal(443, 41_000)]);
    let verdicts = evidence.verdicts();
    assert_eq!(verdicts[0].finding, Finding::WentDown { since_ms: 1_234, unanswered: 0 }, "not the interval's start");
    // Back within the next interval, after one more refusal: the run ended, no verdict.
    let (back, flows) = died_in_interval(1, 1, None);
    feed(&mut evidence, 2_000, &[back], &flows);
    assert_eq!(causes(&evidence.verdicts()), []);
}

#[test]
fn interfaces_that_disagree_on_whether_the_service_ended_down_give_no_verdict() {
    let mut evidence = Evidence::new(64);
    let (died, flows) = died_in_interval(1, 2, Some(DownRun { since_ms: 5, turnaways: 2 }));
    let other = ServiceSample { ifindex: IFINDEX + 1, down: None, ..died };
    feed(&mut evidence, 0, &[died, other], &flows);
    assert_eq!(causes(&evidence.verdicts()), []);
}

#[test]
fn a_limit_is_not_a_service_gone_down() {
    // Turn-aways while connections are held start no run: the tracker says nothing.
    let mut evidence = Evidence::new(64);
    let full = ServiceSample { open_at_accept: Some(3), open_at_turnaway: Some((4, 4)), ..handshakes(443, 6, 4) };
    feed(&mut evidence, 0, &[full], &[refusal(443, 42_000), refusal(443, 42_001)]);
    assert_eq!(causes(&evidence.verdicts()), [(Cause::ConnectionLimit, 443, 2)]);
}

#[test]
fn a_service_that_comes_back_is_not_down() {
    let mut evidence = Evidence::new(64);
    feed(&mut evidence, 0, &[handshakes(443, 2, 2)], &[]);
    let down = ServiceSample { open_at_turnaway: Some((0, 0)), ..handshakes(443, 1, 0) };
    feed(&mut evidence, 1_000, &[down], &[refusal(443, 41_000)]);
    assert_eq!(causes(&evidence.verdicts()), [(Cause::WentDown, 443, 1)]);
    feed(&mut evidence, 2_000, &[handshakes(443, 3, 3)], &[]);
    assert_eq!(causes(&evidence.verdicts()), []);
}

#[test]
fn a_service_that_stops_answering_went_down_without_resets() {
    let mut evidence = Evidence::new(64);
    feed(&mut evidence, 0, &[handshakes(443, 2, 2)], &[]);
    feed(&mut evidence, 1_000, &[handshakes(443, 3, 0)], &[]);
    let verdicts = evidence.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::WentDown, 443, 0)]);
    assert_eq!(verdicts[0].finding, Finding::WentDown { since_ms: 1_000, unanswered: 3 });
}

#[test]
fn turn_aways_while_connections_are_held_are_a_limit() {
    let mut evidence = Evidence::new(64);
    let full = ServiceSample { open_at_accept: Some(3), open_at_turnaway: Some((4, 4)), ..handshakes(443, 6, 4) };
    feed(&mut evidence, 0, &[full], &[refusal(443, 42_000), refusal(443, 42_001)]);
    let still_full = ServiceSample { open_at_turnaway: Some((4, 4)), ..handshakes(443, 1, 0) };
    feed(&mut evidence, 1_000, &[still_full], &[refusal(443, 42_002)]);
    let verdicts = evidence.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::ConnectionLimit, 443, 3)], "held connections: not down");
    assert_eq!(verdicts[0].finding, Finding::ConnectionLimit { open: 4 });
    assert!(verdicts[0].text().contains("turns connections away at ~4 open (3 turned away)"), "{}", verdicts[0].text());
}

/// A balancer that accepts every handshake and resets the ones over its limit: the turned-away
/// connection's own accept happened with the held ones open, at the same count as its reset.
#[test]
fn resets_right_after_accepts_at_the_held_count_are_a_limit() {
    let mut evidence = Evidence::new(64);
    let full = ServiceSample { open_at_accept: Some(6), open_at_turnaway: Some((6, 6)), ..handshakes(443, 9, 9) };
    let reset = |client_port| rst(ResetKind::Handshake, true, true, 443, client_port, (64, 64));
    feed(&mut evidence, 0, &[full], &[reset(42_000), reset(42_001), reset(42_002)]);
    let verdicts = evidence.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::ConnectionLimit, 443, 3)]);
    assert_eq!(verdicts[0].finding, Finding::ConnectionLimit { open: 6 });
    // Refused at the SYN, the same counts mean an accept with six open: no limit of six.
    let mut evidence = Evidence::new(64);
    feed(&mut evidence, 0, &[full], &[refusal(443, 42_000), refusal(443, 42_001)]);
    assert_eq!(causes(&evidence.verdicts()), []);
    // One accept above the resets' count contradicts it whatever the kind.
    let mut evidence = Evidence::new(64);
    let above = ServiceSample { open_at_accept: Some(7), ..full };
    feed(&mut evidence, 0, &[above], &[reset(42_000)]);
    assert_eq!(causes(&evidence.verdicts()), []);
}

#[test]
fn a_limit_that_moves_reports_the_latest() {
    let mut evidence = Evidence::new(64);
    let at_four = ServiceSample { open_at_accept: Some(3), open_at_turnaway: Some((4, 4)), ..handshakes(443, 5, 4) };
    feed(&mut evidence, 0, &[at_four], &[refusal(443, 42_000)]);
    let at_six = ServiceSample { open_at_accept: Some(5), open_at_turnaway: Some((6, 6)), ..handshakes(443, 3, 2) };
    feed(&mut evidence, 1_000, &[at_six], &[refusal(443, 42_001)]);
    let verdicts = evidence.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::ConnectionLimit, 443, 2)]);
    assert_eq!(verdicts[0].finding, Finding::ConnectionLimit { open: 6 });
}

#[test]
fn an_accept_above_a_turn_away_is_no_limit() {
    let mut evidence = Evidence::new(64);
    let mixed = ServiceSample { open_at_accept: Some(7), open_at_turnaway: Some((4, 4)), ..handshakes(443, 5, 4) };
    feed(&mut evidence, 0, &[mixed], &[refusal(443, 42_000)]);
    assert_eq!(causes(&evidence.verdicts()), []);
}

#[test]
fn without_open_counts_neither_down_nor_limit_is_claimed() {
    let mut evidence = Evidence::new(64);
    feed(&mut evidence, 0, &[handshakes(443, 4, 4)], &[]);
    feed(&mut evidence, 1_000, &[handshakes(443, 2, 0)], &[refusal(443, 42_000), refusal(443, 42_001)]);
    assert_eq!(causes(&evidence.verdicts()), []);
}

#[test]
fn an_rst_without_ack_mid_stream_is_lost_state() {
    let lost = rst(ResetKind::Established, true, false, 443, 43_000, (64, 64));
    assert_eq!(causes(&verdicts_of(&[lost])), [(Cause::StateLost, 443, 1)]);
}

#[test]
fn a_single_abort_after_data_is_an_app_abort() {
    let verdicts = verdicts_of(&[rst(ResetKind::Established, true, true, 443, 43_000, (64, 64))]);
    assert_eq!(causes(&verdicts), [(Cause::AppAbort, 443, 1)]);
    assert!(verdicts[0].text().contains("1 connection to 10.0.2.10:443 aborted"), "{}", verdicts[0].text());
}

#[test]
fn a_reset_whose_ttl_is_not_its_senders_is_forged() {
    let verdicts = verdicts_of(&[rst(ResetKind::Established, true, true, 443, 43_000, (250, 60))]);
    assert_eq!(causes(&verdicts), [(Cause::Middlebox, 443, 1)], "not an abort as well");
    assert_eq!(verdicts[0].finding, Finding::Middlebox { rst_ttl: 250, peer_ttl: 60, claimed_client: None });
}

#[test]
fn refusals_forged_for_a_host_are_caught_by_its_own_ttl() {
    let mut evidence = Evidence::new(64);
    // The host answers on 443 with TTL 127 (its SYN+ACKs); "refusals" for 444 arrive with 64:
    // a firewall answered the SYNs, which never reached the host.
    let open = ServiceSample { synack_ttl: Some(127), ..handshakes(443, 2, 2) };
    feed(
        &mut evidence,
        0,
        &[open, handshakes(444, 3, 0)],
        &[refusal(444, 44_000), refusal(444, 44_001), refusal(444, 44_002)],
    );
    let verdicts = evidence.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::Middlebox, 444, 3)], "no listener would be a wrong verdict");
    assert_eq!(verdicts[0].finding, Finding::Middlebox { rst_ttl: 64, peer_ttl: 127, claimed_client: None });
    assert!(
        verdicts[0]
            .text()
            .contains("forged 3 resets claiming to be 10.0.2.10:444 (TTL 64; the host's own packets arrive with 127)"),
        "{}",
        verdicts[0].text()
    );
}

fn check(client_port: u16) -> FlowKey {
    rst(ResetKind::Handshake, false, true, 8080, client_port, (64, 64))
}

#[test]
fn steady_resets_after_the_handshake_are_a_health_check() {
    for every in [1u64, 2, 3] {
        let mut evidence = Evidence::new(64);
        for i in 0..10u64 {
            let flows: Vec<FlowKey> = if i % every == 0 { vec![check(45_000 + i as u16)] } else { vec![] };
            feed(&mut evidence, i * 1_000, &[handshakes(8080, flows.len() as u64, flows.len() as u64)], &flows);
        }
        let verdicts = evidence.verdicts();
        assert_eq!(verdicts.len(), 1, "every {every}: {verdicts:?}");
        assert_eq!(verdicts[0].cause(), Cause::HealthCheck);
        assert!(verdicts[0].benign());
        assert_eq!(verdicts[0].finding, Finding::HealthCheck { client: ip(CLIENT) });
    }
}

#[test]
fn checks_faster_than_the_interval_are_steady_though_the_run_ends_mid_interval() {
    let run = |per_interval: &[u16]| {
        let mut evidence = Evidence::new(64);
        let mut port = 45_000;
        for (i, &n) in per_interval.iter().enumerate() {
            let flows: Vec<FlowKey> = (0..n).map(|k| check(port + k)).collect();
            port += n;
            feed(&mut evidence, i as u64 * 1_000, &[], &flows);
        }
        causes(&evidence.verdicts())
    };
    assert_eq!(run(&[4, 4, 1]), [(Cause::HealthCheck, 8080, 9)], "a short last interval");
    assert_eq!(run(&[1, 4, 4, 4]), [(Cause::HealthCheck, 8080, 13)], "checks began mid-interval");
    assert_eq!(run(&[4, 1, 4, 4]), [], "a gap inside the run is no steady pace");
    assert_eq!(run(&[4, 4, 12]), [], "a burst is no steady pace");
}

#[test]
fn irregular_or_few_resets_after_the_handshake_are_no_health_check() {
    // Every interval is fed, quiet ones too, as a run does.
    let run = |with_checks: &[u64]| {
        let mut evidence = Evidence::new(64);
        for i in 0..=with_checks.iter().copied().max().unwrap_or(0) {
            let flows = if with_checks.contains(&i) { vec![check(45_000 + i as u16)] } else { vec![] };
            feed(&mut evidence, i * 1_000, &[], &flows);
        }
        causes(&evidence.verdicts())
    };
    assert_eq!(run(&[0, 1, 7, 8, 20]), [], "irregular gaps");
    assert_eq!(run(&[0, 2]), [], "two are not a pattern");
    assert_eq!(run(&[0, 2, 4, 6]), [(Cause::HealthCheck, 8080, 4)], "the same pattern, steady, is one");
}

#[test]
fn an_interval_carries_only_its_own_resets() {
    let mut evidence = Evidence::new(64);
    feed(&mut evidence, 0, &[handshakes(81, 2, 0)], &[refusal(81, 40_000), refusal(81, 40_001)]);
    feed(&mut evidence, 1_000, &[handshakes(81, 1, 0)], &[refusal(81, 40_002)]);
    assert_eq!(causes(&evidence.interval_verdicts()), [(Cause::NoListener, 81, 1)]);
    assert_eq!(causes(&evidence.verdicts()), [(Cause::NoListener, 81, 3)]);
    feed(&mut evidence, 2_000, &[], &[]);
    assert_eq!(causes(&evidence.interval_verdicts()), [], "a quiet interval has no verdict");
}

#[test]
fn evidence_stays_within_its_bound() {
    let mut evidence = Evidence::new(2);
    // Four closed ports: one short of a scan.
    let flows: Vec<FlowKey> = (0..4).map(|port| refusal(100 + port, 40_000)).collect();
    feed(&mut evidence, 0, &[], &flows);
    assert_eq!(evidence.verdicts().len(), 2);
}

#[test]
fn cause_names_are_the_contract() {
    let names: Vec<&str> = Cause::ALL.iter().map(|c| c.name()).collect();
    assert_eq!(
        names,
        [
            "no_listener",
            "went_down",
            "connection_limit",
            "state_lost",
            "middlebox",
            "app_abort",
            "health_check",
            "teardown",
            "scan",
            "idle_timeout",
            "keepalive_race",
            "nat_lost",
            "listen_overflow",
            "local_firewall"
        ]
    );
    assert_eq!(Cause::ALL.iter().filter(|c| c.benign()).collect::<Vec<_>>(), [&Cause::HealthCheck, &Cause::Teardown]);
}

#[test]
fn the_kernels_reason_corroborates_only_the_cause_of_the_resets_it_sent() {
    let mut evidence = Evidence::new(64);
    let refusals: Vec<FlowKey> = (0..3).map(|i| refusal(81, 40_000 + i)).collect();
    let aborts: Vec<FlowKey> =
        (0..2).map(|i| rst(ResetKind::Established, true, true, 82, 45_000 + i, (64, 64))).collect();
    let flows: Vec<FlowKey> = refusals.iter().chain(&aborts).copied().collect();
    feed(&mut evidence, 0, &[handshakes(81, 3, 0), handshakes(82, 2, 2)], &flows);
    // This host's stack sent the refusals (two NO_SOCKET, one other) and one of the aborts.
    let refused = refusals[0].flow_id();
    let names =
        ReasonNames::new(["NOT_SPECIFIED", "NO_SOCKET", "TCP_FLAGS", "TCP_ABORT_ON_CLOSE"].map(String::from).into());
    let (no_socket, flags, on_close) = (names.reason(1), names.reason(2), names.reason(3));
    evidence.stack_resets(&refused, true, ResetKind::Refused, true, &no_socket, 2);
    evidence.stack_resets(&refused, true, ResetKind::Refused, true, &flags, 1);
    evidence.stack_resets(&aborts[0].flow_id(), true, ResetKind::Established, true, &on_close, 1);
    // A client's RST to a SYN it did not send names no cause, so no reason either.
    evidence.stack_resets(&refused, false, ResetKind::Refused, true, &no_socket, 1);
    let verdicts = evidence.verdicts();
    let reason = |port: u16| {
        verdicts.iter().find(|v| v.service.port == port).and_then(|v| v.kernel_reason.as_ref().map(ToString::to_string))
    };
    assert_eq!(causes(&verdicts), [(Cause::NoListener, 81, 3), (Cause::AppAbort, 82, 2)]);
    assert_eq!(reason(81).as_deref(), Some("NO_SOCKET"), "the most common");
    assert_eq!(reason(82).as_deref(), Some("TCP_ABORT_ON_CLOSE"));
    assert!(verdicts[0].text().ends_with("(this host's kernel: NO_SOCKET)"), "{}", verdicts[0].text());
    // Without the stack's events (resets received, not sent), no reason.
    let mut received = Evidence::new(64);
    feed(&mut received, 0, &[handshakes(81, 3, 0)], &refusals);
    assert_eq!(received.verdicts()[0].kernel_reason, None);
}

/// What a connection had seen: (SYN+ACK seen, sender closed, peer closed, sender had reset,
/// peer wrote after the sender's FIN, data watched).
fn seen(
    answered: bool,
    sender_fin: bool,
    peer_fin: bool,
    sender_reset: bool,
    late_data: bool,
    watched: bool,
) -> ResetContext {
    ResetContext::new(answered, sender_fin, peer_fin, sender_reset, late_data, watched)
}

fn closing(server: bool, ack: bool, client_port: u16, context: ResetContext) -> FlowKey {
    rst_in(ResetKind::Closing, server, ack, 443, client_port, (64, 64), context)
}

#[test]
fn resets_after_the_peers_fin_are_teardown_with_or_without_ack() {
    let after_client_fin = seen(true, false, true, false, false, false);
    let flows = [closing(true, false, 40_000, after_client_fin), closing(true, true, 40_001, after_client_fin)];
    let verdicts = verdicts_of(&flows);
    assert_eq!(causes(&verdicts), [(Cause::Teardown, 443, 2)]);
    assert!(verdicts[0].benign());
    assert_eq!(verdicts[0].side, Some(super::Side::Server));
    assert_eq!(verdicts[0].finding, Finding::Teardown { after_peer_fin: 2, after_own_fin: 0, gap_ms: None });
    assert!(verdicts[0].text().contains("ordinary teardown"), "{}", verdicts[0].text());
}

#[test]
fn a_reset_after_its_senders_own_fin_is_teardown_only_without_late_data() {
    // The client's late ACK or keep-alive probe, watched: no data came after the server's FIN.
    let quiet = seen(true, true, false, false, false, true);
    let verdicts = verdicts_of(&[closing(true, false, 40_000, quiet)]);
    assert_eq!(causes(&verdicts), [(Cause::Teardown, 443, 1)]);
    assert_eq!(verdicts[0].finding, Finding::Teardown { after_peer_fin: 0, after_own_fin: 1, gap_ms: None });
    // The client wrote to the connection the server had closed: not a teardown (a keep-alive
    // race where the server had been idle when it closed: see production.rs).
    assert_eq!(causes(&verdicts_of(&[closing(true, false, 40_001, seen(true, true, false, false, true, true))])), []);
    // Where data is not watched (the kernel), its absence says nothing.
    assert_eq!(causes(&verdicts_of(&[closing(true, false, 40_002, seen(true, true, false, false, false, false))])), []);
}

#[test]
fn a_forged_reset_while_closing_is_still_a_middlebox() {
    let after_client_fin = seen(true, false, true, false, false, false);
    let forged = rst_in(ResetKind::Closing, true, true, 443, 40_000, (50, 64), after_client_fin);
    assert_eq!(causes(&verdicts_of(&[forged])), [(Cause::Middlebox, 443, 1)]);
}

#[test]
fn a_lone_reset_and_an_abandoned_attempt_name_nothing() {
    let lone = FlowKey { class: ResetClass::new(ResetKind::Established, false, false, false, true).0, ..check(40_000) };
    assert_eq!(causes(&verdicts_of(&[lone])), [], "no handshake seen");
    let abandoned = rst_in(ResetKind::Handshake, false, false, 8080, 40_001, (64, 64), ResetContext::default());
    assert_eq!(causes(&verdicts_of(&[abandoned])), [], "the client gave up its own unanswered SYN");
}

#[test]
fn an_accepted_connection_reset_without_ack_lost_its_state_data_or_not() {
    let idle = rst(ResetKind::Handshake, true, false, 443, 40_000, (64, 64));
    let busy = rst(ResetKind::Established, true, false, 443, 40_001, (64, 64));
    let verdicts = verdicts_of(&[idle, busy]);
    assert_eq!(causes(&verdicts), [(Cause::StateLost, 443, 2)]);
    assert_eq!(verdicts[0].side, Some(super::Side::Server));
    // With ACK inside the handshake: the service turned it away.
    let turned = rst(ResetKind::Handshake, true, true, 443, 40_002, (64, 64));
    assert!(!causes(&verdicts_of(&[turned])).iter().any(|(cause, _, _)| *cause == Cause::StateLost));
}

#[test]
fn an_abort_says_which_side_aborted() {
    let by_client = rst(ResetKind::Established, false, true, 80, 40_000, (64, 64));
    let verdicts = verdicts_of(&[by_client]);
    assert_eq!(causes(&verdicts), [(Cause::AppAbort, 80, 1)]);
    assert_eq!(verdicts[0].side, Some(super::Side::Client));
    assert!(verdicts[0].text().contains("by its client"), "{}", verdicts[0].text());
}

#[test]
fn a_sides_further_resets_go_with_its_first() {
    let first = rst(ResetKind::Established, true, true, 80, 40_000, (64, 64));
    // The client's data still in flight meets the server's stack, which no longer knows it.
    let answers =
        rst_in(ResetKind::Established, true, false, 80, 40_000, (64, 64), seen(true, false, false, true, false, false));
    let answers = FlowKey { class: ResetClass::new(ResetKind::Established, false, true, true, false).0, ..answers };
    let mut evidence = Evidence::new(64);
    evidence.interval(0, &[], [(&answers, 3), (&first, 1)].into_iter(), &KnownTunnels::default());
    let verdicts = evidence.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::AppAbort, 80, 4)], "not state_lost");
    assert_eq!(verdicts[0].connections, 1);
}

/// A client of `SERVER`'s ports: `closed` ports refuse it, `open` ones it resets right after
/// their SYN+ACK; `silent` more ports on the same host get attempts and no answer.
fn probing(evidence: &mut Evidence, closed: u16, open: u16, silent: u16) {
    let mut flows: Vec<FlowKey> = (0..closed).map(|i| refusal(1_000 + i, 50_000 + i)).collect();
    flows.extend((0..open).map(|i| check_of(2_000 + i, 51_000 + i)));
    let mut samples: Vec<ServiceSample> = (0..closed).map(|i| handshakes(1_000 + i, 1, 0)).collect();
    samples.extend((0..open).map(|i| handshakes(2_000 + i, 1, 1)));
    samples.extend((0..silent).map(|i| handshakes(3_000 + i, 1, 0)));
    feed(evidence, 0, &samples, &flows);
}

fn check_of(port: u16, client_port: u16) -> FlowKey {
    rst(ResetKind::Handshake, false, false, port, client_port, (64, 64))
}

#[test]
fn a_scan_is_one_verdict_for_the_scanner_from_five_targets() {
    let mut evidence = Evidence::new(4096);
    probing(&mut evidence, 4, 0, 996);
    let verdicts = evidence.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::Scan, 0, 4)], "four closed of 1000 probed: one scan, no no_listener");
    let Finding::Scan(counts) = verdicts[0].finding else { panic!("{:?}", verdicts[0].finding) };
    assert_eq!(
        (counts.client, counts.ports, counts.hosts, counts.refused, counts.silent),
        (ip(CLIENT), 1000, 1, 4, 996)
    );
    assert!(verdicts[0].text().contains("10.0.1.5 scanned 1000 ports on 1 host"), "{}", verdicts[0].text());

    let mut edge = Evidence::new(4096);
    probing(&mut edge, 3, 2, 0);
    assert_eq!(causes(&edge.verdicts()), [(Cause::Scan, 0, 5)], "five targets, three closed");
}

#[test]
fn below_the_scan_thresholds_the_services_keep_their_verdicts() {
    let mut four = Evidence::new(4096);
    probing(&mut four, 4, 0, 0);
    assert_eq!(causes(&four.verdicts()).len(), 4, "four targets: four closed ports");
    assert!(causes(&four.verdicts()).iter().all(|(cause, _, _)| *cause == Cause::NoListener));

    let mut mostly_open = Evidence::new(4096);
    probing(&mut mostly_open, 2, 3, 0);
    assert!(!causes(&mostly_open.verdicts()).iter().any(|(cause, _, _)| *cause == Cause::Scan), "two closed of five");

    // One closed port retried many times is one target.
    let mut retries = Evidence::new(4096);
    let flows: Vec<FlowKey> = (0..20).map(|i| refusal(81, 40_000 + i)).collect();
    feed(&mut retries, 0, &[handshakes(81, 20, 0)], &flows);
    assert_eq!(causes(&retries.verdicts()), [(Cause::NoListener, 81, 20)]);
}

#[test]
fn a_client_whose_connections_mostly_completed_is_no_scan() {
    let mut evidence = Evidence::new(4096);
    probing(&mut evidence, 5, 0, 0);
    let aborted: Vec<FlowKey> =
        (0..30).map(|i| rst(ResetKind::Established, true, true, 80, 52_000 + i, (64, 64))).collect();
    feed(&mut evidence, 1_000, &[], &aborted);
    assert!(!causes(&evidence.verdicts()).iter().any(|(cause, _, _)| *cause == Cause::Scan));
}

#[test]
fn a_client_that_comes_back_to_a_few_broken_services_is_no_scan() {
    // Five closed ports, each tried three times: a client of broken services, not a scanner.
    let mut evidence = Evidence::new(4096);
    let flows: Vec<FlowKey> = (0..15).map(|i| refusal(1_000 + i / 3, 50_000 + i)).collect();
    let samples: Vec<ServiceSample> = (0..5).map(|i| handshakes(1_000 + i, 3, 0)).collect();
    feed(&mut evidence, 0, &samples, &flows);
    let verdicts = causes(&evidence.verdicts());
    assert_eq!(verdicts.len(), 5, "{verdicts:?}");
    assert!(verdicts.iter().all(|(cause, _, _)| *cause == Cause::NoListener), "{verdicts:?}");
    // Twice each (a probe and its retry) is still a scan.
    let mut retried = Evidence::new(4096);
    let flows: Vec<FlowKey> = (0..10).map(|i| refusal(1_000 + i / 2, 50_000 + i)).collect();
    let samples: Vec<ServiceSample> = (0..5).map(|i| handshakes(1_000 + i, 2, 0)).collect();
    feed(&mut retried, 0, &samples, &flows);
    assert_eq!(causes(&retried.verdicts()), [(Cause::Scan, 0, 10)]);
}

#[test]
fn a_service_that_accepts_and_resets_across_an_interval_edge_did_not_go_down() {
    let mut evidence = Evidence::new(64);
    let accepted = ServiceSample { open_at_accept: Some(0), ..handshakes(9000, 1, 1) };
    feed(&mut evidence, 0, &[accepted], &[]);
    // The RST+ACK right after that accept lands in the next interval, nothing else open.
    let reset = rst(ResetKind::Handshake, true, true, 9000, 40_000, (64, 64));
    let after = ServiceSample { open_at_turnaway: Some((0, 0)), ..handshakes(9000, 0, 0) };
    feed(&mut evidence, 1_000, &[after], &[reset]);
    assert!(!causes(&evidence.verdicts()).iter().any(|(cause, _, _)| *cause == Cause::WentDown));
}

#[test]
fn a_reset_forged_in_a_clients_name_names_the_service_and_the_client() {
    let forged = rst(ResetKind::Established, false, true, 8080, 59_921, (244, 116));
    let verdicts = verdicts_of(&[forged]);
    assert_eq!(causes(&verdicts), [(Cause::Middlebox, 8080, 1)]);
    assert_eq!(verdicts[0].service, service(8080));
    assert_eq!(
        verdicts[0].finding,
        Finding::Middlebox { rst_ttl: 244, peer_ttl: 116, claimed_client: Some(ip(CLIENT)) }
    );
    assert!(
        verdicts[0].text().contains("claiming to be 10.0.1.5, a client of 10.0.2.10:8080"),
        "{}",
        verdicts[0].text()
    );
}

#[test]
fn a_reset_one_hop_below_its_senders_ttl_is_its_own_seen_again() {
    // `tcpdump -i any` on a router: the server's RST as it arrived (64) and as it left (63).
    let flows = [
        rst(ResetKind::Established, true, true, 8554, 52_470, (64, 64)),
        rst(ResetKind::Established, true, true, 8554, 52_470, (63, 64)),
    ];
    assert_eq!(causes(&verdicts_of(&flows)), [(Cause::AppAbort, 8554, 2)]);
    assert!(super::forged(65, 64) && super::forged(62, 64) && !super::forged(63, 64) && !super::forged(64, 64));
}

#[test]
fn closed_ports_answering_fin_null_or_xmas_probes_count_for_a_scan_and_name_nothing_alone() {
    // RST+ACK with sequence 0 to segments that opened nothing here: only the ports say who.
    let unseen = |port: u16| FlowKey {
        class: ResetClass::new(ResetKind::Refused, true, true, false, true).0,
        ..refusal(port, 50_000)
    };
    assert_eq!(causes(&verdicts_of(&[unseen(3390)])), [], "a lone closed-port answer");
    let probes: Vec<FlowKey> = (0..5).map(|i| unseen(3390 + i)).collect();
    assert_eq!(causes(&verdicts_of(&probes)), [(Cause::Scan, 0, 5)]);
}

#[test]
fn a_teardown_says_how_long_after_its_close_the_late_segment_came_where_that_is_seen() {
    let quiet = seen(true, true, false, false, false, true);
    let late = closing(true, false, 40_000, quiet);
    let mut evidence = Evidence::new(64);
    evidence.timings(FlowTimings { close_gaps: &[(late.flow_id(), 45_200)], ..FlowTimings::default() });
    feed(&mut evidence, 0, &[], &[late]);
    let verdicts = evidence.verdicts();
    assert_eq!(verdicts[0].finding, Finding::Teardown { after_peer_fin: 0, after_own_fin: 1, gap_ms: Some(45_200) });
    assert!(
        verdicts[0].text().contains(
            "10.0.2.10:443 reset 1 connection it had closed itself, answering late segments without data (ACKs, FINs, keep-alive probes) up to 45 s after its close: ordinary teardown"
        ),
        "{}",
        verdicts[0].text()
    );
}

mod production;
mod tunnels;

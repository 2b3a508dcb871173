//! What the tracker reports about services, and how those reports move open counts and fill an
//! interval's [`ServiceValue`]: the host's side of what the kernel counts (the kernel's is in
//! rst-userspace/tests/kernel/, against the same frames).

use std::collections::HashMap;

use rst_common::{
    diagnose::{track, ConnTable, Tracked},
    parse::{TcpEvent, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    service_counts,
    wire::{
        down_after_accept, down_after_turnaway, down_in_run, ConnKey, ConnState, DownRun, OpenValue, ServiceCounts,
        ServiceKey, ServiceValue,
    },
    OpenConnections, Opened, ServiceChange,
    ServiceEvent::{self, Accepted, Attempt, Closed, TurnedAway},
    TurnAway,
};
use rst_craft::FrameBuilder;

#[derive(Default)]
struct Table(HashMap<ConnKey, ConnState>);

impl ConnTable for Table {
    fn get(&mut self, key: &ConnKey) -> Option<&mut ConnState> {
        self.0.get_mut(key)
    }
    fn put(&mut self, key: &ConnKey, state: &ConnState) {
        self.0.insert(*key, *state);
    }
}

/// A store of its own (not the host's, whose code this would only repeat), with a clock the
/// test moves.
#[derive(Default)]
struct Open(HashMap<ServiceKey, OpenValue>, u64);

impl OpenConnections for Open {
    fn open(&mut self, service: &ServiceKey) -> Opened {
        let value = self.0.entry(*service).or_default();
        value.open += 1;
        let ended_down = if down_in_run(value.down) { value.down } else { 0 };
        value.down = down_after_accept(value.down);
        Opened { before: Some(value.open as u32 - 1), ended_down }
    }
    fn close(&mut self, service: &ServiceKey) {
        if let Some(value) = self.0.get_mut(service) {
            value.open = value.open.saturating_sub(1);
        }
    }
    fn turn_away(&mut self, service: &ServiceKey, closes: bool) -> TurnAway {
        if closes {
            self.close(service);
        }
        let now_ms = self.1;
        let Some(value) = self.0.get_mut(service) else { return TurnAway::default() };
        if value.open != 0 {
            return TurnAway { open: value.open as u32, down: 0 };
        }
        value.down = down_after_turnaway(value.down, now_ms);
        TurnAway { open: 0, down: value.down }
    }
    fn open_now(&mut self, service: &ServiceKey) -> u32 {
        self.0.get(service).map_or(0, |value| value.open as u32)
    }
}

const CLIENT: [u8; 4] = [10, 0, 0, 1];
const SERVER: [u8; 4] = [10, 0, 0, 2];

fn c2s(port: u16, flags: u8, seq: u32, ack: u32) -> TcpEvent {
    FrameBuilder::ipv4(CLIENT, SERVER).ports(port, 443).flags(flags).seq_ack(seq, ack).ttl(64).event(3)
}

fn s2c(port: u16, flags: u8, seq: u32, ack: u32) -> TcpEvent {
    FrameBuilder::ipv4(SERVER, CLIENT).ports(443, port).flags(flags).seq_ack(seq, ack).ttl(61).event(3)
}

/// What `track` says about the service of each event: `None` for no service change.
fn service_events(events: &[TcpEvent]) -> Vec<Option<ServiceEvent>> {
    let mut table = Table::default();
    let service = ServiceKey::new(s2c(1, 0, 0, 0).key.src, 443, &s2c(1, 0, 0, 0).key);
    events
        .iter()
        .map(|event| match track(&mut table, event) {
            Tracked::Service(change) | Tracked::Reset(_, Some(change)) => {
                assert_eq!(change.service, service, "every change is the server's, 10.0.0.2:443 on ifindex 3");
                Some(change.event())
            }
            Tracked::Reset(_, None) | Tracked::Nothing => None,
        })
        .collect()
}

#[test]
fn an_accept_counts_once_and_its_first_close_once() {
    let events = [
        c2s(1, TCP_SYN, 100, 0),
        c2s(1, TCP_SYN, 100, 0),
        s2c(1, TCP_SYN | TCP_ACK, 900, 101),
        s2c(1, TCP_SYN | TCP_ACK, 900, 101),
        c2s(1, TCP_FIN | TCP_ACK, 150, 901),
        s2c(1, TCP_FIN | TCP_ACK, 901, 151),
        s2c(1, TCP_RST, 902, 0),
    ];
    assert_eq!(
        service_events(&events),
        [
            Some(Attempt { reopens: false }),
            None,
            Some(Accepted { ttl: 61, reopens: false }),
            None,
            Some(Closed),
            None,
            None,
        ]
    );
}

#[test]
fn a_reset_closes_an_open_connection_once_from_either_side() {
    let from_client = [
        c2s(2, TCP_SYN, 200, 0),
        s2c(2, TCP_SYN | TCP_ACK, 800, 201),
        c2s(2, TCP_RST | TCP_ACK, 260, 801),
        c2s(2, TCP_RST | TCP_ACK, 260, 801),
        s2c(2, TCP_FIN | TCP_ACK, 801, 261),
    ];
    let closed =
        [Some(Attempt { reopens: false }), Some(Accepted { ttl: 61, reopens: false }), Some(Closed), None, None];
    assert_eq!(service_events(&from_client), closed);
    let from_server =
        [c2s(2, TCP_SYN, 200, 0), s2c(2, TCP_SYN | TCP_ACK, 800, 201), s2c(2, TCP_RST | TCP_ACK, 850, 260)];
    assert_eq!(service_events(&from_server), closed[..3]);
}

#[test]
fn only_the_servers_first_refusal_or_handshake_reset_is_a_turn_away() {
    // Refused: no SYN+ACK, so nothing to close; a repeat is not a second turn-away.
    let refused = [c2s(3, TCP_SYN, 300, 0), s2c(3, TCP_RST | TCP_ACK, 0, 301), s2c(3, TCP_RST | TCP_ACK, 0, 301)];
    assert_eq!(service_events(&refused), [Some(Attempt { reopens: false }), Some(TurnedAway { closes: false }), None]);
    // Reset right after the SYN+ACK: the accepted connection is closed by it.
    let handshake = [c2s(4, TCP_SYN, 400, 0), s2c(4, TCP_SYN | TCP_ACK, 700, 401), s2c(4, TCP_RST, 701, 0)];
    assert_eq!(
        service_events(&handshake),
        [
            Some(Attempt { reopens: false }),
            Some(Accepted { ttl: 61, reopens: false }),
            Some(TurnedAway { closes: true })
        ]
    );
    // The client's reset in the handshake is a close, not the service turning it away.
    let by_client = [c2s(5, TCP_SYN, 500, 0), s2c(5, TCP_SYN | TCP_ACK, 600, 501), c2s(5, TCP_RST, 501, 0)];
    assert_eq!(service_events(&by_client)[2], Some(Closed));
    // With no handshake seen, a refusal says nothing about what the service held.
    assert_eq!(service_events(&[s2c(6, TCP_RST | TCP_ACK, 0, 601)]), [None]);
}

#[test]
fn a_new_handshake_over_a_connection_still_open_replaces_it() {
    let events = [
        c2s(7, TCP_SYN, 700, 0),
        s2c(7, TCP_SYN | TCP_ACK, 100, 701),
        // Its close went by unseen; the client's port comes round again.
        c2s(7, TCP_SYN, 9000, 0),
        s2c(7, TCP_SYN | TCP_ACK, 5000, 9001),
        // A SYN+ACK with another ISN for the same, still open connection.
        s2c(7, TCP_SYN | TCP_ACK, 5100, 9001),
    ];
    assert_eq!(
        service_events(&events),
        [
            Some(Attempt { reopens: false }),
            Some(Accepted { ttl: 61, reopens: false }),
            Some(Attempt { reopens: true }),
            Some(Accepted { ttl: 61, reopens: false }),
            Some(Accepted { ttl: 61, reopens: true }),
        ]
    );
}

/// The counts `changes` add to one service's interval, from a store with `open` connections.
fn interval(open: &mut Open, changes: &[ServiceEvent]) -> ServiceValue {
    let service = ServiceKey::default();
    let mut value = ServiceValue::default();
    for &event in changes {
        if let Some(counts) = service_counts(open, &ServiceChange::new(service, event)) {
            value.merge(&counts);
        }
    }
    value
}

/// The decoded counts expected: attempts, SYN+ACKs, most open at an accept, fewest and most at
/// a turn-away, the TTL.
fn counts(
    (attempts, synacks): (u64, u64),
    accept_open_max: Option<u64>,
    (turnaway_open_min, turnaway_open_max): (Option<u64>, Option<u64>),
    synack_ttl: Option<u8>,
) -> ServiceCounts {
    ServiceCounts {
        attempts,
        synacks,
        accept_open_max,
        turnaway_open_min,
        turnaway_open_max,
        synack_ttl,
        down_turnaways: None,
    }
}

#[test]
fn accepts_and_turn_aways_record_the_open_count_and_a_limit_that_moves() {
    let mut open = Open::default();
    let accept = |ttl| Accepted { ttl, reopens: false };
    let first = interval(
        &mut open,
        &[Attempt { reopens: false }, accept(60), accept(61), accept(62), TurnedAway { closes: false }, Closed],
    );
    assert_eq!(first.decoded(), counts((1, 3), Some(2), (Some(3), Some(3)), Some(62)));
    // Two open carried over; the limit moves down: turned away at 2, then at 1 after a close.
    let second = interval(&mut open, &[TurnedAway { closes: false }, Closed, TurnedAway { closes: true }]);
    // The last, closing the only one left, is a turn-away with nothing else open: a run of one.
    let down = ServiceCounts { down_turnaways: Some(1), ..counts((0, 0), None, (Some(0), Some(2)), None) };
    assert_eq!(second.decoded(), down);
    // Nothing left open; more closes than opens never go below 0.
    let third = interval(&mut open, &[Closed, Closed, accept(64), Attempt { reopens: true }]);
    assert_eq!(third.decoded(), counts((1, 1), Some(0), (None, None), Some(64)));
    assert_eq!(open.open_now(&ServiceKey::default()), 0, "the reopening attempt closed the one accepted");
}

#[test]
fn merging_keeps_sums_extremes_and_the_latest_ttl() {
    let mut value = ServiceValue::accepted(Some(4), 60, 0);
    value.merge(&ServiceValue::turned_away(7, 0));
    value.merge(&ServiceValue::accepted(None, 0, 0));
    value.merge(&ServiceValue::turned_away(3, 0));
    value.merge(&ServiceValue::accepted(Some(1), 59, 0));
    value.merge(&ServiceValue::ATTEMPT);
    assert_eq!(value.decoded(), counts((1, 3), Some(4), (Some(3), Some(7)), Some(59)));
    assert_eq!(ServiceValue::default().decoded(), ServiceCounts::default());
}

#[test]
fn an_interval_ends_in_a_run_only_if_no_accept_came_after_its_idle_turn_aways() {
    let mut open = Open::default();
    let accept = Accepted { ttl: 64, reopens: false };
    let refused = TurnedAway { closes: false };
    // Never accepted in the run: refusals start no run (a closed port is not a service gone down).
    let closed = interval(&mut open, &[Attempt { reopens: false }, refused]);
    assert_eq!(closed.down(), None);
    // Accepts, a close, then refusals with nothing open: down since the first of them, at 1 000 ms.
    open.1 = 900;
    let mut died = interval(&mut open, &[accept, accept, Closed, refused]);
    assert_eq!(died.down(), None, "one still open: a turn-away of a limit, not of a service gone");
    open.1 = 1_000;
    died.merge(&interval(&mut open, &[Closed, refused, refused]));
    assert_eq!(died.down(), Some(DownRun { since_ms: 1_000, turnaways: 2 }));
    assert_eq!(died.decoded().down_turnaways, Some(2));
    // Still down the next interval: the run keeps its start.
    open.1 = 2_000;
    let still = interval(&mut open, &[refused]);
    assert_eq!(still.down(), Some(DownRun { since_ms: 1_000, turnaways: 3 }));
    // It comes back: an accept after the refusals ends the run, within the interval too.
    let back = interval(&mut open, &[refused, accept]);
    assert_eq!(back.down(), None, "the accept came last");
    assert_eq!(DownRun::of(back.down_ended), DownRun { since_ms: 1_000, turnaways: 4 });
    // Back and down again inside one interval, the clock unmoved: a new run, 1 ms later.
    let again = interval(&mut open, &[Closed, refused, accept, Closed, refused]);
    assert_eq!(again.down(), Some(DownRun { since_ms: 2_001, turnaways: 1 }));
    // A single refusal after an accept is a run of one; a reset in the handshake that closes
    // the only open connection is one too.
    let handshake = interval(&mut open, &[accept, TurnedAway { closes: true }]);
    assert_eq!(handshake.down().map(|run| run.turnaways), Some(1));
}

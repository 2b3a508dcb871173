//! What the verdict lab says it did: per service, the one cause it made resets for, every
//! connection with its outcome, and the RSTs each watched veth must carry. This is the account
//! rstwatch's verdicts are checked against, and the JSON `cargo xtask verdict-lab` prints.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{json, Value};

use crate::diag_lab::{End, Resetter, Rst, DEFAULT_TTL};

/// Why a service's connections were reset: the cause rstwatch must name (its own list, shared).
pub use rst_common::Cause;

/// What the lab needs to know of each cause to account for its RSTs.
pub trait CauseOnTheWire {
    /// Who puts this cause's RSTs on the wire.
    fn resetter(self) -> Resetter;
    /// Whether the cause's RSTs carry ACK.
    fn rst_has_ack(self) -> bool;
}

impl CauseOnTheWire for Cause {
    fn resetter(self) -> Resetter {
        match self {
            // The device that forgot an idle connection answers for the server.
            Cause::Middlebox | Cause::IdleTimeout => Resetter::Router,
            // A lost NAT's replies are reset by the client they reach untranslated.
            Cause::HealthCheck | Cause::Scan | Cause::NatLost => Resetter::Client,
            Cause::NoListener
            | Cause::WentDown
            | Cause::ConnectionLimit
            | Cause::StateLost
            | Cause::AppAbort
            | Cause::Teardown
            | Cause::KeepaliveRace
            | Cause::ListenOverflow
            | Cause::LocalFirewall => Resetter::Server,
        }
    }

    /// Whether the cause's RSTs carry ACK. Only the standby answering a segment of a connection
    /// it never saw does not: it takes the segment's acknowledgement number as its sequence
    /// number instead (RFC 9293 3.10.7.1).
    fn rst_has_ack(self) -> bool {
        self != Cause::StateLost
    }
}

/// How one connection attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// Completed and closed with FINs both ways: no RST.
    Closed,
    /// The SYN was answered with RST+ACK (by the host, or forged by the router).
    Refused,
    /// Established, then reset once, as the cause says.
    Reset,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::Refused => "refused",
            Outcome::Reset => "reset",
        }
    }
}

/// One connection attempt of a scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnRecord {
    pub client: SocketAddr,
    /// Where the client connected (for `state_lost` the VIP, for `middlebox` the guarded port).
    pub server: SocketAddr,
    pub outcome: Outcome,
    /// When the attempt ended (refused, reset, or its clean close began), since the lab started.
    pub at_ms: u64,
}

/// What only some causes have to say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Details {
    None,
    WentDown {
        last_accept_ms: u64,
        killed_ms: u64,
        /// What rstwatch's `since_ms` is about: the first refusal after the last accept.
        first_refusal_ms: u64,
    },
    Limit {
        /// Connections the balancer's nftables rule holds before it resets new ones.
        limit: u32,
    },
    StateLost {
        primary: IpAddr,
        standby: IpAddr,
        moved_ms: u64,
    },
    Middlebox {
        /// TTL of the forged RSTs on the client's veth (the router sends them).
        rst_ttl: u8,
        /// TTL of the guarded host's own packets on the client's veth.
        peer_ttl: u8,
        /// The port the guarded host serves normally (its SYN+ACKs carry `peer_ttl`).
        served_port: u16,
    },
    HealthCheck {
        checker: IpAddr,
        interval_ms: u64,
    },
}

/// One service and the single cause it resets for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub cause: Cause,
    /// The service (for `middlebox` the address and port the forged RSTs claim).
    pub service: SocketAddr,
    pub conns: Vec<ConnRecord>,
    pub details: Details,
}

impl Account {
    pub fn new(cause: Cause, service: SocketAddr) -> Account {
        Account { cause, service, conns: Vec::new(), details: Details::None }
    }

    /// Connections of the service proper (for `middlebox` without the ones to the served port).
    pub fn service_conns(&self) -> impl Iterator<Item = &ConnRecord> {
        self.conns.iter().filter(move |c| c.server == self.service)
    }

    pub fn count(&self, outcome: Outcome) -> usize {
        self.service_conns().filter(|c| c.outcome == outcome).count()
    }

    /// The RSTs of this scenario crossing `end`'s veth (the server end is the veth of the host
    /// the client reached: for `state_lost` the standby's), with the TTL they carry there.
    pub fn rsts_at(&self, end: End) -> Vec<Rst> {
        let resetter = self.cause.resetter();
        let ttl = match (end, resetter) {
            (End::Server, Resetter::Router) => return Vec::new(),
            (End::Client, Resetter::Router | Resetter::Client) | (End::Server, Resetter::Server) => DEFAULT_TTL,
            (End::Client, Resetter::Server) | (End::Server, Resetter::Client) => DEFAULT_TTL - 1,
        };
        self.conns
            .iter()
            .filter(|c| c.outcome != Outcome::Closed)
            .map(|c| {
                let (src, dst) = if resetter == Resetter::Client { (c.client, c.server) } else { (c.server, c.client) };
                Rst { src, dst, ack: self.cause.rst_has_ack(), ttl }
            })
            .collect()
    }

    /// The lab's account in one sentence, as the demo prints it next to rstwatch's verdicts.
    pub fn text(&self) -> String {
        let svc = self.service;
        let refused = self.count(Outcome::Refused);
        let reset = self.count(Outcome::Reset);
        let closed = self.count(Outcome::Closed);
        match self.details {
            Details::WentDown { killed_ms, first_refusal_ms, .. } => format!(
                "{svc} served {closed} requests, its process was killed at {killed_ms} ms, and it refused \
                 {refused} connections from {first_refusal_ms} ms on: it went down"
            ),
            Details::Limit { limit } => format!(
                "{svc} holds {limit} connections (nftables ct count): {refused} more were reset in the handshake: \
                 a connection limit"
            ),
            Details::StateLost { primary, standby, moved_ms } => format!(
                "{svc} moved from {primary} to {standby} at {moved_ms} ms: the standby reset the {reset} connections \
                 it never saw: state lost"
            ),
            Details::Middlebox { rst_ttl, peer_ttl, .. } => format!(
                "the router forged {refused} resets claiming to be {svc} (TTL {rst_ttl}; the host's own packets \
                 arrive with {peer_ttl}): a middlebox"
            ),
            Details::HealthCheck { checker, interval_ms } => format!(
                "HAProxy on {checker} checked {svc} {reset} times, every {interval_ms} ms, resetting each check \
                 right after the handshake: health checks (benign)"
            ),
            Details::None => match self.cause {
                Cause::NoListener => {
                    format!("nothing listens on {svc}: its kernel refused all {refused} connections: no listener")
                }
                Cause::AppAbort => {
                    format!("{svc} answered and then aborted {reset} connections (SO_LINGER 0): the application")
                }
                other => format!("{svc}: {} ({} connections)", other.name(), self.conns.len()),
            },
        }
    }

    pub fn to_json(&self, clock: &Clock) -> Value {
        let resets = self.rsts_at(End::Client).len();
        let mut v = json!({
            "cause": self.cause.name(),
            "addr": self.service.ip().to_string(),
            "port": self.service.port(),
            "benign": self.cause.benign(),
            "text": self.text(),
            "sender": match self.cause.resetter() {
                Resetter::Client => "client",
                Resetter::Router => "router",
                Resetter::Server => "server",
            },
            "resets": resets,
            "resets_server_veth": self.rsts_at(End::Server).len(),
            "connections": self.service_conns().count(),
            "accepted": self.service_conns().filter(|c| c.outcome != Outcome::Refused).count(),
            "refused": self.count(Outcome::Refused),
            "conns": self.conns.iter().map(|c| json!({
                "client": c.client.to_string(),
                "server": c.server.to_string(),
                "outcome": c.outcome.name(),
                "at_ms": c.at_ms,
            })).collect::<Vec<_>>(),
        });
        let fields = match self.details {
            Details::None => json!({}),
            Details::WentDown { last_accept_ms, killed_ms, first_refusal_ms } => json!({
                "since_ms": first_refusal_ms,
                "since_unix_ms": clock.unix_ms(first_refusal_ms),
                "last_accept_ms": last_accept_ms,
                "killed_ms": killed_ms,
            }),
            Details::Limit { limit } => json!({ "limit": limit }),
            Details::StateLost { primary, standby, moved_ms } => json!({
                "primary": primary.to_string(),
                "standby": standby.to_string(),
                "moved_ms": moved_ms,
            }),
            Details::Middlebox { rst_ttl, peer_ttl, served_port } => json!({
                "rst_ttl": rst_ttl,
                "peer_ttl": peer_ttl,
                "served_port": served_port,
            }),
            Details::HealthCheck { checker, interval_ms } => json!({
                "checker": checker.to_string(),
                "interval_ms": interval_ms,
            }),
        };
        if let (Some(obj), Some(extra)) = (v.as_object_mut(), fields.as_object()) {
            obj.extend(extra.clone());
        }
        v
    }
}

/// The lab's clock: milliseconds since it started, and the wall time that start was, so times
/// in the account can be matched to a capture's timestamps or rstwatch's run start.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    start_unix_ms: u64,
}

impl Clock {
    pub fn start() -> Clock {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Clock { start: Instant::now(), start_unix_ms: u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX) }
    }

    pub fn ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub fn start_unix_ms(&self) -> u64 {
        self.start_unix_ms
    }

    pub fn unix_ms(&self, ms: u64) -> u64 {
        self.start_unix_ms.saturating_add(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(outcome: Outcome, server: &str) -> ConnRecord {
        ConnRecord {
            client: "10.89.1.2:40000".parse().expect("addr"),
            server: server.parse().expect("addr"),
            outcome,
            at_ms: 1,
        }
    }

    #[test]
    fn resets_at_each_end_follow_who_sent_them() {
        let mut mb = Account::new(Cause::Middlebox, "10.89.2.16:7105".parse().expect("addr"));
        mb.conns = vec![record(Outcome::Closed, "10.89.2.16:7115"), record(Outcome::Refused, "10.89.2.16:7105")];
        assert!(mb.rsts_at(End::Server).is_empty(), "the router's RSTs never reach the host");
        let at_client = mb.rsts_at(End::Client);
        assert_eq!(at_client.len(), 1);
        assert_eq!((at_client[0].ttl, at_client[0].ack), (DEFAULT_TTL, true));
        assert_eq!(mb.service_conns().count(), 1, "the served port's connections are not the service's");

        let mut hc = Account::new(Cause::HealthCheck, "10.89.2.18:7107".parse().expect("addr"));
        hc.conns = vec![record(Outcome::Reset, "10.89.2.18:7107")];
        let rst = hc.rsts_at(End::Server)[0];
        assert_eq!((rst.src, rst.ttl), (hc.conns[0].client, DEFAULT_TTL - 1));

        let mut sl = Account::new(Cause::StateLost, "10.89.2.20:7104".parse().expect("addr"));
        sl.conns = vec![record(Outcome::Reset, "10.89.2.20:7104"), record(Outcome::Reset, "10.89.2.20:7104")];
        assert!(sl.rsts_at(End::Client).iter().all(|r| !r.ack && r.ttl == DEFAULT_TTL - 1));
        assert_eq!(sl.to_json(&Clock::start())["resets"], 2);
    }
}

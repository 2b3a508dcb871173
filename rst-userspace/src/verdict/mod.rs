//! Verdicts: what is causing a service's resets, named from the evidence the traffic leaves.
//!
//! The one place that turns counts into causes. Live runs and replay feed the same
//! [`Evidence`] with the same per-interval records (the flow entries the kernel or the host
//! tracker counted, and each service's handshake counts), so both give the same verdicts.
//!
//! A service gets a cause only when its evidence is clear; otherwise it gets none, never a
//! guess. Health checks are found first and their resets kept out of every other cause.

mod evidence;
mod text;

use std::net::IpAddr;

pub use evidence::{Evidence, ServiceSample};
/// The causes and their contract names live in rst-common, shared with the verdict lab.
pub use rst_common::Cause;

/// A server address and port: what a verdict is about. For [`Cause::Middlebox`], the address
/// and port the forged RST claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceAddr {
    pub addr: IpAddr,
    pub port: u16,
}

/// One cause for one service, with the evidence behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub cause: Cause,
    pub service: ServiceAddr,
    /// Resets this cause explains.
    pub resets: u64,
    /// Connections those resets ended (or turned away).
    pub connections: u64,
    /// [`Cause::ConnectionLimit`]: the open connections at which the service turns attempts away.
    pub limit: Option<u64>,
    /// [`Cause::WentDown`]: ms since the run started of the interval of the first refusal (or
    /// unanswered attempt) after the last accepted connection.
    pub since_ms: Option<u64>,
    /// [`Cause::Middlebox`]: the TTL the forged resets carry and the one the host's own do.
    pub rst_ttl: Option<u8>,
    pub peer_ttl: Option<u8>,
    /// [`Cause::WentDown`]: attempts after the last accept that got no answer at all.
    pub unanswered: u64,
    /// [`Cause::HealthCheck`]: the client that checks.
    pub client: Option<IpAddr>,
}

impl Verdict {
    fn new(cause: Cause, service: ServiceAddr) -> Self {
        Verdict {
            cause,
            service,
            resets: 0,
            connections: 0,
            limit: None,
            since_ms: None,
            rst_ttl: None,
            peer_ttl: None,
            unanswered: 0,
            client: None,
        }
    }

    pub fn benign(&self) -> bool {
        self.cause.benign()
    }

    /// The verdict in words an on-call person reads at a glance.
    pub fn text(&self) -> String {
        text::sentence(self)
    }
}

/// Most resets first; ties by service and cause, so the order is stable.
pub fn sort(verdicts: &mut [Verdict]) {
    verdicts.sort_by(|a, b| b.resets.cmp(&a.resets).then(a.service.cmp(&b.service)).then(a.cause.cmp(&b.cause)));
}

#[cfg(test)]
mod tests;

//! Verdicts: what is causing a service's resets, named from the evidence the traffic leaves.
//!
//! The one place that turns counts into causes. Live runs and replay feed the same
//! [`Evidence`] with the same per-interval records (the flow entries the kernel or the host
//! tracker counted, and each service's handshake counts), so both give the same verdicts.
//!
//! A service gets a cause only when its evidence is clear; otherwise it gets none, never a
//! guess. Health checks are found first and their resets kept out of every other cause.

mod evidence;
mod scan;
mod text;

use std::net::IpAddr;

pub use evidence::{forged, Evidence, ServiceSample};
pub use scan::{
    ScanCounts, SCAN_MAX_COMPLETED_PERCENT, SCAN_MAX_PROBES_PER_TARGET, SCAN_MIN_CLOSED_PERCENT, SCAN_MIN_TARGETS,
};

pub use crate::aggregate::model::Side;
/// The causes and their contract names live in rst-common, shared with the verdict lab.
pub use rst_common::Cause;

/// A server address and port: what a verdict is about. For [`Cause::Middlebox`], the address
/// and port the forged RST claims, or the service whose client it claims to be; for
/// [`Cause::Scan`], the host probed most, port 0.
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
    pub detail: Detail,
    /// Which side of the connections sent the resets, where the cause depends on it (an abort,
    /// a lost connection, a teardown); `None` where the cause says it (a refusal is the
    /// server's, a health check or scan its client's).
    pub side: Option<Side>,
    /// Where this host's own TCP stack sent the resets (`tcp:tcp_send_reset`): the reason the
    /// kernel gave for most of them (`NO_SOCKET`, `TCP_STATE`, …), corroborating the cause.
    pub kernel_reason: Option<String>,
}

/// What a cause adds to its counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    None,
    /// [`Cause::ConnectionLimit`]: the open connections at which the service turns attempts away.
    Limit {
        open: u64,
    },
    /// [`Cause::WentDown`]: ms since the run started of the interval of the first refusal (or
    /// unanswered attempt) after the last accepted connection, and the attempts after it that
    /// got no answer at all.
    Down {
        since_ms: u64,
        unanswered: u64,
    },
    /// [`Cause::Middlebox`]: the TTL the forged resets carry and the one the host's own do.
    Forged {
        rst_ttl: u8,
        peer_ttl: u8,
        /// The resets claimed to come from this client of the service (else from the service).
        claimed_client: Option<IpAddr>,
    },
    /// [`Cause::HealthCheck`]: the client that checks.
    Checker {
        client: IpAddr,
    },
    /// [`Cause::Teardown`]: the connections reset after the peer's FIN, and those whose
    /// resetter had closed them itself and answered the peer's late segments.
    Teardown {
        after_peer_fin: u64,
        after_own_fin: u64,
        /// The longest time between a resetter's own FIN and its reset of a late segment, ms:
        /// where it is seen (replay).
        gap_ms: Option<u64>,
    },
    /// [`Cause::Scan`]: the scanner and what its probes met.
    Scan(ScanCounts),
}

impl Verdict {
    fn new(cause: Cause, service: ServiceAddr, (resets, connections): (u64, u64), detail: Detail) -> Self {
        Verdict { cause, service, resets, connections, detail, side: None, kernel_reason: None }
    }

    fn by(self, side: Side) -> Self {
        Verdict { side: Some(side), ..self }
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

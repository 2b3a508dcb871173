//! Verdicts: what is causing a service's resets, named from the evidence the traffic leaves.
//!
//! The one place that turns counts into causes. Live runs and replay feed the same
//! [`Evidence`] with the same per-interval records (the flow entries the kernel or the host
//! tracker counted, and each service's handshake counts), so both give the same verdicts.
//!
//! A service gets a cause only when its evidence is clear; otherwise it gets none, never a
//! guess. Health checks are found first and their resets kept out of every other cause.

mod act;
mod check;
mod evidence;
mod idle;
mod scan;
mod text;

use std::net::IpAddr;

use crate::model::kernel_reason::KernelReason;

pub use evidence::{forged, rst_tuple, Evidence, FlowTimings, RstTuple, ServiceSample};
pub use idle::{IDLE_MIN_CLUSTER_PERCENT, IDLE_MIN_CONNECTIONS, IDLE_MIN_MS, IDLE_SPREAD_PERCENT};
pub use scan::{
    ScanCounts, SCAN_MAX_COMPLETED_PERCENT, SCAN_MAX_PROBES_PER_TARGET, SCAN_MIN_CLOSED_PERCENT, SCAN_MIN_TARGETS,
};

pub use crate::model::aggregate::model::{ServiceTunnel, Side};
/// The causes and their contract names live in rst-common, shared with the verdict lab.
pub use rst_common::Cause;

/// A server address and port: what a verdict is about. For [`Cause::Middlebox`], the address
/// and port the forged RST claims, or the service whose client it claims to be; for
/// [`Cause::Scan`], the host probed most, port 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceAddr {
    pub addr: IpAddr,
    pub port: u16,
    /// The tunnel (type and VNI or key) the service was reached through, its address the
    /// inner one: two tenants' services at one inner address are two services, whose evidence
    /// never mixes. Tunnels that differ only in their outer addresses (one tenant reached from
    /// several hosts) are one.
    pub tunnel: Option<ServiceTunnel>,
}

impl ServiceAddr {
    /// A service on the link itself, outside any tunnel.
    pub const fn on_link(addr: IpAddr, port: u16) -> Self {
        ServiceAddr { addr, port, tunnel: None }
    }
}

/// One cause for one service, with the evidence behind it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The cause and what it adds to the counts.
    pub finding: Finding,
    pub service: ServiceAddr,
    /// Resets this cause explains.
    pub resets: u64,
    /// Connections those resets ended (or turned away).
    pub connections: u64,
    /// Which side of the connections sent the resets, where the cause depends on it (an abort,
    /// a lost connection, a teardown); `None` where the cause says it (a refusal is the
    /// server's, a health check or scan its client's).
    pub side: Option<Side>,
    /// Where this host's own TCP stack sent the resets (`tcp:tcp_send_reset`): the reason the
    /// kernel gave for most of them (`NO_SOCKET`, `TCP_STATE`, …), corroborating the cause.
    pub kernel_reason: Option<KernelReason>,
}

/// A cause with what it adds to its counts: one variant per [`Cause`], so a cause cannot come
/// with another's details.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    NoListener,
    /// ms since the run started of the interval of the first refusal (or unanswered attempt)
    /// after the last accepted connection, and the attempts after it that got no answer at all.
    WentDown {
        since_ms: u64,
        unanswered: u64,
    },
    /// The open connections at which the service turns attempts away.
    ConnectionLimit {
        open: u64,
    },
    StateLost,
    /// The TTL the forged resets carry and the one the host's own do.
    Middlebox {
        rst_ttl: u8,
        peer_ttl: u8,
        /// The resets claimed to come from this client of the service (else from the service).
        claimed_client: Option<IpAddr>,
    },
    AppAbort,
    /// The client that checks.
    HealthCheck {
        client: IpAddr,
    },
    /// The connections reset after the peer's FIN, and those whose resetter had closed them
    /// itself and answered the peer's late segments.
    Teardown {
        after_peer_fin: u64,
        after_own_fin: u64,
        /// The longest time between a resetter's own FIN and its reset of a late segment, ms:
        /// where it is seen (replay).
        gap_ms: Option<u64>,
    },
    /// The scanner and what its probes met.
    Scan(ScanCounts),
    /// The typical idle gap before the resets (the median of those that cluster), ms, and the
    /// TTL the resets carry with the one their claimed sender's own packets do, when a device
    /// in between forged them; `hook` when that device was this host's own firewall (a router
    /// whose conntrack forgot the connections and rejected what followed).
    IdleTimeout {
        idle_ms: u64,
        forged: Option<(u8, u8)>,
        hook: Option<NetfilterHook>,
    },
    /// How long the closing side's connections had been idle (from their last data to its FIN),
    /// ms, where seen.
    KeepaliveRace {
        idle_ms: Option<u64>,
    },
    /// The address and port the untranslated replies came from (the backend behind the NAT);
    /// the verdict's service is the one the client talked to.
    NatLost {
        backend: ServiceAddr,
    },
    /// The accept queue's length when the listener overflowed.
    ListenOverflow {
        limit: u64,
    },
    /// Where netfilter rejected the segments.
    LocalFirewall {
        hook: NetfilterHook,
    },
}

/// A netfilter hook, where this host's firewall rejected a segment with a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NetfilterHook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl NetfilterHook {
    pub const ALL: [NetfilterHook; 5] = [
        NetfilterHook::Prerouting,
        NetfilterHook::Input,
        NetfilterHook::Forward,
        NetfilterHook::Output,
        NetfilterHook::Postrouting,
    ];

    /// The kernel's `enum nf_inet_hooks` value.
    pub fn of_code(code: u32) -> Option<NetfilterHook> {
        Self::ALL.get(code as usize).copied()
    }

    /// The name the JSON and the text use (the nftables hook names).
    pub const fn name(self) -> &'static str {
        match self {
            NetfilterHook::Prerouting => "prerouting",
            NetfilterHook::Input => "input",
            NetfilterHook::Forward => "forward",
            NetfilterHook::Output => "output",
            NetfilterHook::Postrouting => "postrouting",
        }
    }
}

impl Finding {
    pub const fn cause(&self) -> Cause {
        match self {
            Finding::NoListener => Cause::NoListener,
            Finding::WentDown { .. } => Cause::WentDown,
            Finding::ConnectionLimit { .. } => Cause::ConnectionLimit,
            Finding::StateLost => Cause::StateLost,
            Finding::Middlebox { .. } => Cause::Middlebox,
            Finding::AppAbort => Cause::AppAbort,
            Finding::HealthCheck { .. } => Cause::HealthCheck,
            Finding::Teardown { .. } => Cause::Teardown,
            Finding::Scan(_) => Cause::Scan,
            Finding::IdleTimeout { .. } => Cause::IdleTimeout,
            Finding::KeepaliveRace { .. } => Cause::KeepaliveRace,
            Finding::NatLost { .. } => Cause::NatLost,
            Finding::ListenOverflow { .. } => Cause::ListenOverflow,
            Finding::LocalFirewall { .. } => Cause::LocalFirewall,
        }
    }
}

impl Verdict {
    fn new(finding: Finding, service: ServiceAddr, (resets, connections): (u64, u64)) -> Self {
        Verdict { finding, service, resets, connections, side: None, kernel_reason: None }
    }

    fn by(self, side: Side) -> Self {
        Verdict { side: Some(side), ..self }
    }

    pub const fn cause(&self) -> Cause {
        self.finding.cause()
    }

    pub fn benign(&self) -> bool {
        self.cause().benign()
    }

    /// The verdict in words an on-call person reads at a glance.
    pub fn text(&self) -> String {
        text::sentence(self)
    }
}

/// Most resets first; ties by service and cause, so the order is stable.
pub fn sort(verdicts: &mut [Verdict]) {
    verdicts.sort_by(|a, b| b.resets.cmp(&a.resets).then(a.service.cmp(&b.service)).then(a.cause().cmp(&b.cause())));
}

#[cfg(test)]
mod tests;

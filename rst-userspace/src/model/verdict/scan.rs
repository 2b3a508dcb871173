//! The scan rule: one client probing many ports or hosts, almost all of them closed or silent,
//! named once for the client instead of a `no_listener` per port it found closed.
//!
//! A probe is a connection attempt that a service turned away or whose SYN+ACK the client
//! reset at once (a SYN scan's open port, a version probe); a completed connection is one that
//! went past its handshake. A scan tries each target about once: a client that comes back to a
//! few services (a health checker, a client of broken services) is not one. Attempts that got no answer at all are counted per service, not per
//! client (the kernel counts SYNs by service): a silent port is the client's only on a host
//! that answered the client's other probes, and only when that client is the sole one turned
//! away there.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::{evidence::Tally, ServiceAddr};

/// Distinct ports and hosts (refused, open or silent) a client must have probed to be a scan.
pub const SCAN_MIN_TARGETS: u64 = 5;
/// At least this share, in percent, of its probed targets closed (refused) or silent: a monitor
/// connecting to many open services is not a scan.
pub const SCAN_MIN_CLOSED_PERCENT: u64 = 50;
/// At most this share, in percent, of the client's connections (probes and completed ones)
/// completed.
pub const SCAN_MAX_COMPLETED_PERCENT: u64 = 20;
/// At most this many connections per target on average: a scan tries each port once (and a
/// retry); a client of a few services, broken or not, comes back to each.
pub const SCAN_MAX_PROBES_PER_TARGET: u64 = 2;
/// Targets remembered per client; beyond them probes still count, their services' refusals are
/// then not kept out of the services' own verdicts.
const MAX_TARGETS: usize = 4096;

/// What a probe met.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The service turned the attempt away.
    Refused,
    /// The service accepted; the client reset its SYN+ACK at once.
    Open,
    /// An RST+ACK with sequence 0 (RFC 9293's answer of a closed port) to a segment rstwatch
    /// did not see open a connection: a FIN, NULL or Xmas probe, or a SYN gone by unseen.
    ClosedUnseen,
}

/// One client's probes over the run.
#[derive(Clone, Debug, Default)]
pub struct Probes {
    /// Services that turned the client away: the run's tally and the latest interval's.
    refused: BTreeMap<ServiceAddr, (Tally, Tally)>,
    /// Services whose SYN+ACK the client reset at once.
    open: BTreeMap<ServiceAddr, (Tally, Tally)>,
    /// Closed ports that answered what rstwatch did not see open a connection.
    closed_unseen: BTreeMap<ServiceAddr, (Tally, Tally)>,
    /// Probes of targets beyond [`MAX_TARGETS`].
    untracked: u64,
    /// The client's connections that went past the handshake and were reset.
    pub completed: u64,
    /// The latest interval brought probes.
    lately: bool,
}

impl Probes {
    /// Whether the latest interval brought probes of this client.
    pub fn probed_lately(&self) -> bool {
        self.lately
    }

    pub fn new_interval(&mut self) {
        self.lately = false;
        for (_, latest) in
            self.refused.values_mut().chain(self.open.values_mut()).chain(self.closed_unseen.values_mut())
        {
            *latest = Tally::default();
        }
    }

    pub fn add(&mut self, service: ServiceAddr, tally: Tally, answer: Answer) {
        self.lately = true;
        let room = self.refused.len() + self.open.len() + self.closed_unseen.len() < MAX_TARGETS;
        let targets = match answer {
            Answer::Refused => &mut self.refused,
            Answer::Open => &mut self.open,
            Answer::ClosedUnseen => &mut self.closed_unseen,
        };
        match targets.get_mut(&service) {
            Some((run, latest)) => {
                run.add(tally);
                latest.add(tally);
            }
            None if room => {
                targets.insert(service, (tally, tally));
            }
            None => self.untracked += tally.connections,
        }
    }

    /// Whether the client probed enough targets to be weighed as a scan at all (a cheap first
    /// filter: most clients meet one or two services).
    pub fn may_be_scan(&self) -> bool {
        !self.refused.is_empty() || !self.closed_unseen.is_empty()
    }

    /// The hosts this client's probes reached.
    pub fn hosts(&self) -> BTreeSet<IpAddr> {
        self.targets().map(|service| service.addr).collect()
    }

    fn targets(&self) -> impl Iterator<Item = &ServiceAddr> {
        self.refused.keys().chain(self.open.keys()).chain(self.closed_unseen.keys())
    }
}

/// What a scan verdict says: how many targets the client probed and how they answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScanCounts {
    pub client: IpAddr,
    /// Distinct ports and hosts probed.
    pub ports: u64,
    pub hosts: u64,
    /// Targets that refused, that answered (the client reset their SYN+ACK), that stayed silent.
    pub refused: u64,
    pub open: u64,
    pub silent: u64,
    /// The client's connections that completed a handshake and carried on.
    pub completed: u64,
}

/// A scan found: its counts, the most probed host, the resets it explains, and the services'
/// turn-aways it takes out of their own verdicts.
#[derive(Clone, Debug)]
pub struct Scan {
    pub counts: ScanCounts,
    pub host: IpAddr,
    pub tally: Tally,
    pub turned_away: Vec<(ServiceAddr, Tally)>,
}

/// Whether `probes` is a scan and what it says; `whole_run`: the run's counts, else the latest
/// interval's (`None` when that interval added nothing). `silent_on(host)`: the ports of a host
/// the client probed that got attempts and never an answer, where this client is the only one
/// the host turned away or answered (empty elsewhere).
pub fn scan<'a>(
    client: IpAddr,
    probes: &Probes,
    silent_on: impl Fn(&IpAddr) -> &'a [ServiceAddr],
    whole_run: bool,
) -> Option<Scan> {
    let hosts = probes.hosts();
    let silent: BTreeSet<ServiceAddr> = hosts.iter().flat_map(|host| silent_on(host).iter().copied()).collect();
    let refusing: BTreeSet<&ServiceAddr> = probes.refused.keys().chain(probes.closed_unseen.keys()).collect();
    let refused = refusing.len() as u64;
    let open = probes.open.keys().filter(|service| !refusing.contains(service)).count() as u64;
    let targets = refused + open + silent.len() as u64 + probes.untracked;
    let connections: u64 = probes
        .refused
        .values()
        .chain(probes.open.values())
        .chain(probes.closed_unseen.values())
        .map(|(run, _)| run.connections)
        .sum();
    let closed = refused + silent.len() as u64;
    let is_scan = targets >= SCAN_MIN_TARGETS
        && connections <= targets * SCAN_MAX_PROBES_PER_TARGET
        && closed * 100 >= targets * SCAN_MIN_CLOSED_PERCENT
        && probes.completed * 100 <= (connections + probes.completed) * SCAN_MAX_COMPLETED_PERCENT;
    if !is_scan {
        return None;
    }
    let pick = |(run, latest): &(Tally, Tally)| if whole_run { *run } else { *latest };
    let mut tally = Tally::default();
    let mut per_host: BTreeMap<IpAddr, u64> = BTreeMap::new();
    let mut turned_away = Vec::new();
    for (service, tallies) in &probes.refused {
        let counted = pick(tallies);
        tally.add(counted);
        *per_host.entry(service.addr).or_default() += tallies.0.connections.max(1);
        turned_away.push((*service, counted));
    }
    for (service, tallies) in probes.open.iter().chain(&probes.closed_unseen) {
        tally.add(pick(tallies));
        *per_host.entry(service.addr).or_default() += tallies.0.connections.max(1);
    }
    for service in &silent {
        *per_host.entry(service.addr).or_default() += 1;
    }
    if tally.resets == 0 {
        return None;
    }
    let all: BTreeSet<ServiceAddr> = probes.targets().chain(silent.iter()).copied().collect();
    let ports = all.iter().map(|service| service.port).collect::<BTreeSet<_>>().len() as u64;
    let host =
        per_host.iter().max_by_key(|(addr, count)| (**count, std::cmp::Reverse(**addr))).map(|(addr, _)| *addr)?;
    Some(Scan {
        counts: ScanCounts {
            client,
            ports,
            hosts: hosts.len() as u64,
            refused,
            open,
            silent: silent.len() as u64,
            completed: probes.completed,
        },
        host,
        tally,
        turned_away,
    })
}

//! The verdict lab: a client, a router and a server LAN where each service resets its
//! connections for exactly one known reason, made by real stacks and tools (issue 18).
//!
//! ```text
//!  client ns                 router ns                          server LAN (bridge in the router)
//!  10.89.1.2/24 ── veth ── 10.89.1.1 | lan 10.89.2.1/24 ─┬─ veth ── closed    10.89.2.11
//!  (HAProxy runs here)      nftables: forged RSTs         ├─ veth ── down      10.89.2.12 (python3 http.server)
//!                                                         ├─ veth ── balancer  10.89.2.13 (nft ct count)
//!                                                         ├─ veth ── primary   10.89.2.14 (+ VIP 10.89.2.20)
//!                                                         ├─ veth ── standby   10.89.2.15 (VIP after failover)
//!                                                         ├─ veth ── guarded   10.89.2.16
//!                                                         ├─ veth ── aborter   10.89.2.17
//!                                                         └─ veth ── backend   10.89.2.18 (HAProxy's checks)
//! ```
//!
//! IPv6 (fd89:1::/64, fd89:2::/64, hosts fd89:2::11 ...) carries the scenarios of
//! [`IPV6_CAUSES`] a second time.
//!
//! Every server host is one hop from the client: its own segments reach the client's veth with
//! TTL 63, the router's forged RSTs with 64. Each scenario (see `scenarios`) returns its
//! [`Account`]; every RST it accounts for is the only one of its connection, so captures on the
//! client's veth and on each host's veth can be compared with the account exactly.

mod account;
mod haproxy;
mod scenarios;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex,
    },
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use serde_json::{json, Value};
use socket2::Socket;

pub use account::{Account, Cause, Clock, ConnRecord, Details, Outcome};
pub use haproxy::HealthChecks;

use crate::{
    diag_lab::{nft, ping, sysctl, Capture, Family},
    lab::{Iface, Lab, Netns},
};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 89, 1, 2);
pub const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 89, 1, 1);
pub const ROUTER_LAN: Ipv4Addr = Ipv4Addr::new(10, 89, 2, 1);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd89, 1, 0, 0, 0, 0, 0, 2);
pub const ROUTER6_CLIENT_SIDE: Ipv6Addr = Ipv6Addr::new(0xfd89, 1, 0, 0, 0, 0, 0, 1);
pub const ROUTER6_LAN: Ipv6Addr = Ipv6Addr::new(0xfd89, 2, 0, 0, 0, 0, 0, 1);
/// The scenarios that also run over IPv6 (on the same hosts, ports and counts).
pub const IPV6_CAUSES: [Cause; 2] = [Cause::NoListener, Cause::AppAbort];
/// The causes the lab makes, one host each: the forum thread's suspects, [`Cause::ALL`] up to
/// the two it ends with. `teardown` and `scan` are checked on real captures and on labs of their
/// own (`rst-e2e/tests/real_stacks/`); [`host_of`] refuses them, so its test notices if the
/// contract's order changes.
pub const LAB_CAUSES: [Cause; 7] = match Cause::ALL.first_chunk() {
    Some(lab) => *lab,
    None => panic!("Cause::ALL has fewer causes than the lab makes"),
};
/// The address that moves from the primary to the standby.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 89, 2, 20);

/// Ports, one per scenario (on different hosts anyway, so a verdict is never about two).
pub const NO_LISTENER_PORT: u16 = 7101;
pub const WENT_DOWN_PORT: u16 = 7102;
pub const LIMIT_PORT: u16 = 7103;
pub const VIP_PORT: u16 = 7104;
/// The router forges RSTs for SYNs to this port of the guarded host ...
pub const FORGED_PORT: u16 = 7105;
/// ... which serves this one normally, so its own TTL is known.
pub const SERVED_PORT: u16 = 7115;
pub const ABORT_PORT: u16 = 7106;
pub const CHECKED_PORT: u16 = 7107;

/// The server hosts of the LAN, one role each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Closed,
    Down,
    Balancer,
    Primary,
    Standby,
    Guarded,
    Aborter,
    Backend,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Closed,
        Role::Down,
        Role::Balancer,
        Role::Primary,
        Role::Standby,
        Role::Guarded,
        Role::Aborter,
        Role::Backend,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Closed => "closed",
            Role::Down => "down",
            Role::Balancer => "balancer",
            Role::Primary => "primary",
            Role::Standby => "standby",
            Role::Guarded => "guarded",
            Role::Aborter => "aborter",
            Role::Backend => "backend",
        }
    }

    pub fn addr(self) -> Ipv4Addr {
        let host = match self {
            Role::Closed => 11,
            Role::Down => 12,
            Role::Balancer => 13,
            Role::Primary => 14,
            Role::Standby => 15,
            Role::Guarded => 16,
            Role::Aborter => 17,
            Role::Backend => 18,
        };
        Ipv4Addr::new(10, 89, 2, host)
    }

    /// The IPv6 address: the same last digits, fd89:2::11 for 10.89.2.11.
    pub fn addr6(self) -> Ipv6Addr {
        let [.., last] = self.addr().octets();
        let hex = u16::from(last / 10) << 4 | u16::from(last % 10);
        Ipv6Addr::new(0xfd89, 2, 0, 0, 0, 0, 0, hex)
    }

    pub fn addr_in(self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.addr().into(),
            Family::V6 => self.addr6().into(),
        }
    }
}

/// The client's address of the family of `server`.
pub fn client_for(server: &IpAddr) -> IpAddr {
    match Family::of(server) {
        Family::V4 => CLIENT.into(),
        Family::V6 => CLIENT6.into(),
    }
}

/// The host whose veth carries each of [`LAB_CAUSES`]' server side: for `state_lost` the
/// standby, which sends the RSTs (the primary's veth carries the connections' start).
///
/// # Panics
/// For a cause the lab does not make (not in [`LAB_CAUSES`]): a scenario bug.
pub fn host_of(cause: Cause) -> Role {
    match cause {
        Cause::NoListener => Role::Closed,
        Cause::WentDown => Role::Down,
        Cause::ConnectionLimit => Role::Balancer,
        Cause::StateLost => Role::Standby,
        Cause::Middlebox => Role::Guarded,
        Cause::AppAbort => Role::Aborter,
        Cause::HealthCheck => Role::Backend,
        Cause::Teardown
        | Cause::Scan
        | Cause::IdleTimeout
        | Cause::KeepaliveRace
        | Cause::NatLost
        | Cause::ListenOverflow
        | Cause::LocalFirewall => panic!("the verdict lab makes no {} scenario", cause.name()),
    }
}

/// One server host: its namespace and its end of the veth to the router's bridge.
pub struct Host {
    pub role: Role,
    pub ns: Netns,
    pub iface: Iface,
    /// The router's end of that veth (a port of the LAN bridge): the server side of the lab,
    /// watched from one namespace.
    pub port: Iface,
}

/// What one run of every scenario accounts for.
pub struct Run {
    pub clock: Clock,
    pub accounts: Vec<Account>,
}

impl Run {
    pub fn account(&self, cause: Cause) -> Option<&Account> {
        self.accounts.iter().find(|a| a.cause == cause)
    }

    pub fn to_json(&self, lab: &VerdictLab) -> Value {
        json!({
            "lab": "verdict-lab",
            "started_unix_ms": self.clock.start_unix_ms(),
            "client": CLIENT.to_string(),
            "client6": CLIENT6.to_string(),
            "client_if": lab.client_if.name,
            "router": ROUTER_CLIENT_SIDE.to_string(),
            "router_client_if": lab.router_client_if.name,
            "services": self.accounts.iter().map(|a| {
                let host = lab.host(host_of(a.cause));
                let mut v = a.to_json(&self.clock);
                // Where the server side of the service is watched: the host that sends (or, for
                // the router's forgeries, never sees) its RSTs.
                v["host"] = json!(host.role.name());
                v["host_addr"] = json!(host.role.addr_in(Family::of(&a.service.ip())).to_string());
                v["host_if"] = json!(host.iface.name);
                v
            }).collect::<Vec<_>>(),
        })
    }
}

/// The namespaces, veths, bridge, routes and the router's forging rule. Torn down on drop.
pub struct VerdictLab {
    pub client: Netns,
    pub router: Netns,
    /// The client's end of the client—router veth: the vantage point of the committed capture.
    pub client_if: Iface,
    pub router_client_if: Iface,
    pub hosts: Vec<Host>,
    /// Sockets that must send nothing until nobody watches: the primary's side of connections
    /// that moved (closing them would try a FIN from an address the host no longer has).
    held: Mutex<Vec<Socket>>,
    pub lab: Lab,
}

impl VerdictLab {
    pub fn new() -> Result<VerdictLab> {
        let mut lab = Lab::new()?;
        let client = lab.add_ns("client")?;
        let router = lab.add_ns("router")?;
        no_dad(&client)?;
        no_dad(&router)?;
        let (client_if, router_client_if) = lab.add_veth(&client, &router)?;
        client_if.add_addr(CLIENT.into(), 24)?;
        client_if.add_addr(CLIENT6.into(), 64)?;
        router_client_if.add_addr(ROUTER_CLIENT_SIDE.into(), 24)?;
        router_client_if.add_addr(ROUTER6_CLIENT_SIDE.into(), 64)?;
        client.ip(["route", "add", "default", "via", &ROUTER_CLIENT_SIDE.to_string()])?;
        client.ip(["-6", "route", "add", "default", "via", &ROUTER6_CLIENT_SIDE.to_string()])?;
        // The bridge lives inside the router's namespace: its name only has to be unique there.
        router.ip(["link", "add", "lan", "type", "bridge"])?;
        router.ip(["link", "set", "lan", "up"])?;
        router.ip(["addr", "add", &format!("{ROUTER_LAN}/24"), "dev", "lan"])?;
        router.ip(["-6", "addr", "add", &format!("{ROUTER6_LAN}/64"), "dev", "lan", "nodad"])?;
        let mut hosts = Vec::new();
        for role in Role::ALL {
            let ns = lab.add_ns(role.name())?;
            no_dad(&ns)?;
            let (port, iface) = lab.add_veth(&router, &ns)?;
            router.ip(["link", "set", &port.name, "master", "lan"])?;
            iface.add_addr(role.addr().into(), 24)?;
            iface.add_addr(role.addr6().into(), 64)?;
            ns.ip(["route", "add", "default", "via", &ROUTER_LAN.to_string()])?;
            ns.ip(["-6", "route", "add", "default", "via", &ROUTER6_LAN.to_string()])?;
            hosts.push(Host { role, ns, iface, port });
        }
        sysctl(&router, "net.ipv4.ip_forward=1")?;
        sysctl(&router, "net.ipv6.conf.all.forwarding=1")?;
        nft(&router, &forging_ruleset())?;
        let vlab = VerdictLab { client, router, client_if, router_client_if, hosts, held: Mutex::new(Vec::new()), lab };
        for host in &vlab.hosts {
            ping(&vlab.client, host.role.addr().into())?;
        }
        for cause in IPV6_CAUSES {
            ping(&vlab.client, host_of(cause).addr6().into())?;
        }
        Ok(vlab)
    }

    pub fn host(&self, role: Role) -> &Host {
        // `new` made one host per role, in `Role::ALL` order.
        &self.hosts[Role::ALL.iter().position(|&r| r == role).unwrap_or(0)]
    }

    fn hold(&self, socks: Vec<Socket>) -> Result<()> {
        self.held.lock().map_err(|_| anyhow::anyhow!("held sockets poisoned"))?.extend(socks);
        Ok(())
    }

    /// Every scenario, one after the other, with HAProxy checking the backend throughout; runs
    /// at least `at_least` in all (the health checks need time to show their interval).
    pub fn run_all(&self, at_least: Duration) -> Result<Run> {
        self.run_announced(at_least, |_| {})
    }

    /// `run_all`, calling `announce` with each cause as its scenario begins (the demo's
    /// narration; HAProxy's checks begin first and end last).
    pub fn run_announced(&self, at_least: Duration, mut announce: impl FnMut(Cause)) -> Result<Run> {
        let clock = Clock::start();
        announce(Cause::HealthCheck);
        let checks = HealthChecks::start(self)?;
        let mut accounts = Vec::new();
        for cause in LAB_CAUSES.into_iter().filter(|&c| c != Cause::HealthCheck) {
            announce(cause);
            let account = match cause {
                Cause::NoListener => self.no_listener(Family::V4, &clock),
                Cause::WentDown => self.went_down(&clock),
                Cause::ConnectionLimit => self.connection_limit(&clock),
                Cause::StateLost => self.state_lost(&clock),
                Cause::Middlebox => self.middlebox(&clock),
                Cause::AppAbort => self.app_abort(Family::V4, &clock),
                Cause::HealthCheck
                | Cause::Teardown
                | Cause::Scan
                | Cause::IdleTimeout
                | Cause::KeepaliveRace
                | Cause::NatLost
                | Cause::ListenOverflow
                | Cause::LocalFirewall => continue,
            };
            accounts.push(account.context(cause.name())?);
        }
        accounts.push(self.no_listener(Family::V6, &clock).context("no_listener over IPv6")?);
        accounts.push(self.app_abort(Family::V6, &clock).context("app_abort over IPv6")?);
        std::thread::sleep(at_least.saturating_sub(Duration::from_millis(clock.ms())));
        accounts.push(checks.stop(&clock).context(Cause::HealthCheck.name())?);
        Ok(Run { clock, accounts })
    }

    /// `run_all` with tcpdump on the client's veth writing `capture` (a pcap that stays).
    pub fn run_all_captured(&self, at_least: Duration, capture: Option<&Path>) -> Result<Run> {
        let Some(path) = capture else {
            return self.run_all(at_least);
        };
        let cap = Capture::to_file(&self.client_if, path)?;
        let run = self.run_all(at_least)?;
        // Past any delayed ACK, so the capture ends quiet.
        std::thread::sleep(Duration::from_millis(300));
        let segments = cap.stop()?;
        ensure!(!segments.is_empty(), "the capture at {} is empty", path.display());
        Ok(run)
    }
}

/// `cargo xtask verdict-lab`: a fresh lab, every scenario, the account as JSON.
pub fn run_command(at_least: Duration, capture: Option<&Path>) -> Result<Value> {
    for name in crate::lab::sweep_stale()? {
        eprintln!("rst-lab: removed stale lab namespace {name}");
    }
    let lab = VerdictLab::new()?;
    let run = lab.run_all_captured(at_least, capture)?;
    Ok(run.to_json(&lab))
}

/// The router's firewall: SYNs to [`FORGED_PORT`] of the guarded host never reach it; the router
/// answers them itself with a RST+ACK in the host's name.
pub fn forging_ruleset() -> String {
    let guarded = Role::Guarded.addr();
    format!(
        "table ip rstwatch_verdict {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip daddr {guarded} tcp dport {FORGED_PORT} tcp flags & (syn | ack) == syn reject with tcp reset\n\
         \t}}\n\
         }}\n"
    )
}

/// The balancer's rule: past `limit` connections to [`LIMIT_PORT`], new ones are reset.
pub fn limit_ruleset(limit: u32) -> String {
    format!(
        "table ip rstwatch_limit {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\ttcp dport {LIMIT_PORT} ct state new ct count over {limit} reject with tcp reset\n\
         \t}}\n\
         }}\n"
    )
}

/// `addr:port` of a role's host.
pub fn service(role: Role, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(role.addr()), port)
}

/// Tells apart the temporary directories of one process (HAProxy's config, http.server's site).
fn next_tag() -> u32 {
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Before the veths exist, so their link-local addresses skip duplicate address detection too
/// (global ones get `nodad`): nothing stays "tentative".
fn no_dad(ns: &Netns) -> Result<()> {
    sysctl(ns, "net.ipv6.conf.all.accept_dad=0")?;
    sysctl(ns, "net.ipv6.conf.default.accept_dad=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_have_their_own_addresses_in_both_families() {
        assert_eq!(Role::Closed.addr6().to_string(), "fd89:2::11");
        assert_eq!(Role::Backend.addr6().to_string(), "fd89:2::18");
        let mut v4: Vec<Ipv4Addr> = Role::ALL.iter().map(|r| r.addr()).collect();
        v4.push(VIP);
        v4.sort_unstable();
        v4.dedup();
        assert_eq!(v4.len(), Role::ALL.len() + 1, "the VIP is no host's own address");
        assert_eq!(client_for(&IpAddr::from(Role::Aborter.addr6())), IpAddr::from(CLIENT6));
    }

    #[test]
    fn every_cause_has_a_host_and_the_rules_name_their_ports() {
        let mut hosts: Vec<Role> = LAB_CAUSES.iter().map(|&c| host_of(c)).collect();
        hosts.sort_unstable();
        hosts.dedup();
        assert_eq!(hosts.len(), LAB_CAUSES.len(), "one host per cause");
        assert!(forging_ruleset().contains(&format!("ip daddr {} tcp dport {FORGED_PORT}", Role::Guarded.addr())));
        assert!(limit_ruleset(3).contains(&format!("tcp dport {LIMIT_PORT} ct state new ct count over 3")));
    }
}

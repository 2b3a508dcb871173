//! The diagnosis lab: client — router — server, over IPv4 and IPv6, and five ways real Linux TCP
//! stacks (and one middlebox) reset a connection.
//!
//! ```text
//!  client ns                    router ns                         server ns
//!  10.88.1.2/24  ── veth ──  10.88.1.1 | 10.88.2.1  ── veth ──  10.88.2.2/24
//!  fd88:1::2/64              fd88:1::1 | fd88:2::1              fd88:2::2/64
//! ```
//!
//! The router forwards both families and holds one nftables rule that plays a middlebox: for
//! [`MIDDLEBOX_PORT`] it lets the handshake through but rejects the client's data segments (PSH)
//! with a RST forged in the server's name. The server's own segments reach the client with
//! TTL / hop limit 63 (one hop), the forged RST with 64 (sent by the router itself).
//!
//! Every scenario ([`Scenario`]) makes exactly one RST and nothing else that could make another:
//! each side waits until it has seen what it is accounted for (the reset, the peer's ACK of its
//! data, the data having arrived) before it acts, so no ACK, retransmission or FIN is ever left
//! in flight towards a socket that is gone. The middlebox scenario keeps the server's socket open
//! (held by the lab) until [`DiagLab::release_held`] or the lab's drop: closing it sends a FIN
//! that the client's stack, whose connection was reset, answers with a RST of its own.
//!
//! [`Capture`] (tcpdump) and [`ResetTrace`] (the kernel's `tcp:tcp_send_reset` tracepoint, in a
//! tracefs instance of our own) are independent witnesses of what happened.
//!
//! By concern: this module is the topology; `scenario` what each scenario does and accounts for;
//! `witness` the captures and the tracepoint; `net` the socket, sysctl, nftables and ping plumbing
//! the verdict lab shares.

mod net;
mod scenario;
mod witness;

pub use net::*;
pub use scenario::*;
pub use witness::*;

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{mpsc, Mutex},
    thread,
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _, Result};
use socket2::{Domain, Socket};

use crate::{
    lab::{Iface, Lab, Netns},
    traffic::in_netns,
};

pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 88, 1, 2);
pub const ROUTER4_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 88, 1, 1);
pub const ROUTER4_SERVER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 88, 2, 1);
pub const SERVER4: Ipv4Addr = Ipv4Addr::new(10, 88, 2, 2);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd88, 1, 0, 0, 0, 0, 0, 2);
pub const ROUTER6_CLIENT_SIDE: Ipv6Addr = Ipv6Addr::new(0xfd88, 1, 0, 0, 0, 0, 0, 1);
pub const ROUTER6_SERVER_SIDE: Ipv6Addr = Ipv6Addr::new(0xfd88, 2, 0, 0, 0, 0, 0, 1);
pub const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd88, 2, 0, 0, 0, 0, 0, 2);

/// The port whose client→server data the router rejects with a forged RST.
pub const MIDDLEBOX_PORT: u16 = 7004;
/// The TTL / hop limit Linux sends with (`net.ipv4.ip_default_ttl`, `net.ipv6.conf.*.hop_limit`).
pub const DEFAULT_TTL: u8 = 64;
/// What the client sends in every scenario that sends something.
pub const REQUEST_LEN: usize = 100;
/// What the middlebox scenario's server says first.
pub const BANNER: &[u8] = b"220 diag lab\r\n";

/// Generous: on a veth every exchange takes microseconds, but CI machines stall.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(15);
const CAPTURE_START_TIMEOUT: Duration = Duration::from_secs(30);
const CAPTURE_EXIT_TIMEOUT: Duration = Duration::from_secs(30);

pub const TRACEFS: &str = "/sys/kernel/tracing";

/// TCP header flags.
pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// As rstwatch's JSON names it.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    pub fn of(addr: &IpAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }

    pub fn client(self) -> IpAddr {
        match self {
            Family::V4 => CLIENT4.into(),
            Family::V6 => CLIENT6.into(),
        }
    }

    pub fn server(self) -> IpAddr {
        match self {
            Family::V4 => SERVER4.into(),
            Family::V6 => SERVER6.into(),
        }
    }

    fn router_client_side(self) -> IpAddr {
        match self {
            Family::V4 => ROUTER4_CLIENT_SIDE.into(),
            Family::V6 => ROUTER6_CLIENT_SIDE.into(),
        }
    }

    fn router_server_side(self) -> IpAddr {
        match self {
            Family::V4 => ROUTER4_SERVER_SIDE.into(),
            Family::V6 => ROUTER6_SERVER_SIDE.into(),
        }
    }

    fn prefix(self) -> u8 {
        match self {
            Family::V4 => 24,
            Family::V6 => 64,
        }
    }

    fn domain(self) -> Domain {
        match self {
            Family::V4 => Domain::IPV4,
            Family::V6 => Domain::IPV6,
        }
    }
}

/// Who actually put the RST on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resetter {
    Client,
    Router,
    Server,
}

/// A role in a TCP connection: the client sent the SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    Client,
    Server,
}

impl Side {
    /// As rstwatch's JSON names it.
    pub fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// One end of the lab where traffic is watched: the client's veth or the server's veth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum End {
    Client,
    Server,
}

/// The three namespaces, the two veth pairs, the router's forwarding and nftables rule.
pub struct DiagLab {
    pub client: Netns,
    pub router: Netns,
    pub server: Netns,
    /// The client's end of the client—router veth.
    pub client_if: Iface,
    pub router_client_if: Iface,
    pub router_server_if: Iface,
    /// The server's end of the router—server veth.
    pub server_if: Iface,
    /// Server sockets of middlebox connections, kept open so they send nothing (see the module
    /// documentation). Dropped before `lab`.
    held: Mutex<Vec<Socket>>,
    pub lab: Lab,
}

impl DiagLab {
    /// Builds the lab and returns once every host reaches every other over both families.
    pub fn new() -> Result<DiagLab> {
        let mut lab = Lab::new()?;
        let client = lab.add_ns("client")?;
        let router = lab.add_ns("router")?;
        let server = lab.add_ns("server")?;
        // Before the veths exist, so their link-local addresses skip DAD too (global ones get
        // `nodad` from `Iface::add_addr`): nothing stays "tentative".
        for ns in [&client, &router, &server] {
            sysctl(ns, "net.ipv6.conf.all.accept_dad=0")?;
            sysctl(ns, "net.ipv6.conf.default.accept_dad=0")?;
        }
        let (client_if, router_client_if) = lab.add_veth(&client, &router)?;
        let (router_server_if, server_if) = lab.add_veth(&router, &server)?;
        for family in Family::ALL {
            let prefix = family.prefix();
            client_if.add_addr(family.client(), prefix)?;
            router_client_if.add_addr(family.router_client_side(), prefix)?;
            router_server_if.add_addr(family.router_server_side(), prefix)?;
            server_if.add_addr(family.server(), prefix)?;
            let v = if family == Family::V4 { "-4" } else { "-6" };
            let via_client = family.router_client_side().to_string();
            let via_server = family.router_server_side().to_string();
            client.ip([v, "route", "add", "default", "via", &via_client, "dev", &client_if.name])?;
            server.ip([v, "route", "add", "default", "via", &via_server, "dev", &server_if.name])?;
        }
        sysctl(&router, "net.ipv4.ip_forward=1")?;
        sysctl(&router, "net.ipv6.conf.all.forwarding=1")?;
        nft(&router, &middlebox_ruleset())?;
        let diag = DiagLab {
            client,
            router,
            server,
            client_if,
            router_client_if,
            router_server_if,
            server_if,
            held: Mutex::new(Vec::new()),
            lab,
        };
        for family in Family::ALL {
            ping(&diag.client, family.server())?;
            ping(&diag.server, family.client())?;
        }
        Ok(diag)
    }

    /// Runs one scenario to its end; an error says what went differently.
    pub fn run(&self, scenario: Scenario, family: Family) -> Result<Conn> {
        let server = SocketAddr::new(family.server(), scenario.port());
        let client_ip = family.client();
        let client = match scenario {
            Scenario::Refused => in_netns(&self.client, || refused_client(client_ip, server)),
            _ => self.exchange(scenario, client_ip, server),
        }
        .with_context(|| format!("scenario {} over {}", scenario.name(), family.name()))?;
        Ok(Conn { scenario, family, client, server })
    }

    /// Every scenario over IPv4, then over IPv6.
    pub fn run_all(&self) -> Result<Vec<Conn>> {
        let mut conns = Vec::new();
        for family in Family::ALL {
            for scenario in Scenario::ALL {
                conns.push(self.run(scenario, family)?);
            }
        }
        Ok(conns)
    }

    /// Closes the server sockets the middlebox scenarios left open. Each sends a FIN that the
    /// client's stack answers with a RST (its connection is gone): do it only once nobody
    /// watches any more.
    pub fn release_held(&self) {
        if let Ok(mut held) = self.held.lock() {
            held.clear();
        }
    }

    /// Server and client of one connection, each on a thread in its namespace, talking through
    /// channels so each acts only once the other has seen what it must.
    fn exchange(&self, scenario: Scenario, client_ip: IpAddr, server: SocketAddr) -> Result<SocketAddr> {
        let (listening_tx, listening_rx) = mpsc::channel::<()>();
        let (to_client_tx, to_client_rx) = mpsc::channel::<()>();
        let (to_server_tx, to_server_rx) = mpsc::channel::<()>();
        let (client_res, server_res) = thread::scope(|scope| {
            let srv = scope.spawn(move || -> Result<Option<Socket>> {
                self.server.enter_current_thread()?;
                let listener = listener(server)?;
                // The client may have given up already; then accept times out below.
                let _ = listening_tx.send(());
                let conn = accept(&listener).with_context(|| format!("accepting on {server}"))?;
                drop(listener);
                server_side(scenario, conn, &to_client_tx, &to_server_rx).context("server side")
            });
            let cli = scope.spawn(move || -> Result<SocketAddr> {
                self.client.enter_current_thread()?;
                listening_rx.recv_timeout(IO_TIMEOUT).map_err(|e| anyhow!("the server never listened: {e}"))?;
                client_side(scenario, client_ip, server, &to_client_rx, &to_server_tx).context("client side")
            });
            (joined(cli.join(), "client"), joined(srv.join(), "server"))
        });
        match (client_res, server_res) {
            (Ok(client), Ok(keep)) => {
                if let Some(sock) = keep {
                    self.held.lock().map_err(|_| anyhow!("held sockets poisoned"))?.push(sock);
                }
                Ok(client)
            }
            (Err(c), Err(s)) => bail!("{c:#}; {s:#}"),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => Err(e),
        }
    }
}

fn joined<T>(r: thread::Result<Result<T>>, who: &str) -> Result<T> {
    r.unwrap_or_else(|_| Err(anyhow!("the {who} thread panicked")))
}

/// The router's middlebox: client→server data (PSH) to [`MIDDLEBOX_PORT`] is dropped and
/// answered with a RST in the server's name. The handshake and bare ACKs pass.
pub fn middlebox_ruleset() -> String {
    format!(
        "table inet rstwatch_diag {{\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\ttcp dport {MIDDLEBOX_PORT} tcp flags & psh == psh reject with tcp reset\n\
         \t}}\n\
         }}\n"
    )
}

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

use std::{
    fmt,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    cmd,
    lab::{Iface, Lab, Netns, Proc},
    traffic::{in_netns, readable},
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

/// The five ways a connection ends in a reset here. Each makes exactly one RST.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// Connect to a port nobody listens on: the server's kernel answers the SYN with RST+ACK.
    Refused,
    /// The server reads the client's whole request, then closes with SO_LINGER {on, 0}.
    ServerAbort,
    /// The client's request has arrived; the server closes (no linger) without reading it.
    UnreadData,
    /// After the server's banner, the client's data (PSH) meets the router's nftables rule,
    /// which drops it and answers with a RST in the server's name.
    Middlebox,
    /// The server has read the client's request; the client closes with SO_LINGER {on, 0}.
    ClientAbort,
}

impl Scenario {
    pub const ALL: [Scenario; 5] =
        [Scenario::Refused, Scenario::ServerAbort, Scenario::UnreadData, Scenario::Middlebox, Scenario::ClientAbort];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Refused => "refused",
            Scenario::ServerAbort => "server_abort",
            Scenario::UnreadData => "unread_data",
            Scenario::Middlebox => "middlebox",
            Scenario::ClientAbort => "client_abort",
        }
    }

    /// The server port of the scenario (the same for both families: the addresses differ).
    pub fn port(self) -> u16 {
        match self {
            Scenario::Refused => 7001,
            Scenario::ServerAbort => 7002,
            Scenario::UnreadData => 7003,
            Scenario::Middlebox => MIDDLEBOX_PORT,
            Scenario::ClientAbort => 7005,
        }
    }

    pub fn resetter(self) -> Resetter {
        match self {
            Scenario::Refused | Scenario::ServerAbort | Scenario::UnreadData => Resetter::Server,
            Scenario::Middlebox => Resetter::Router,
            Scenario::ClientAbort => Resetter::Client,
        }
    }

    /// The role of the RST's source address (the router's RST claims to be the server).
    pub fn claimed_side(self) -> Side {
        match self.resetter() {
            Resetter::Client => Side::Client,
            Resetter::Router | Resetter::Server => Side::Server,
        }
    }

    /// Whether the server answers the SYN with a SYN+ACK.
    pub fn handshake_completes(self) -> bool {
        self != Scenario::Refused
    }

    /// Where in its life the RST hits the connection, as rstwatch's `kinds` names it.
    pub fn kind(self) -> &'static str {
        match self {
            Scenario::Refused => "refused",
            _ => "established",
        }
    }

    /// Whether the RST carries ACK: the kernel's answer to a SYN and its active resets do; the
    /// nftables reject of a segment that had ACK set does not (it takes that segment's ack number
    /// as its sequence number instead, RFC 9293 3.10.7.1).
    pub fn rst_has_ack(self) -> bool {
        self != Scenario::Middlebox
    }

    /// The reason the sender's kernel gives in `tcp:tcp_send_reset`; `None` when no TCP stack
    /// made the RST (netfilter did). Checked against the tracepoint by
    /// `xtask/tests/diagnosis.rs`; on Linux 6.18 (and `nstat` in the namespaces agrees):
    /// - `tcp_close()` with unread data: reason `TCP_ABORT_ON_CLOSE`, MIB `TCPAbortOnClose`;
    /// - SO_LINGER {on, 0} goes through `tcp_disconnect()`: reason `TCP_STATE`, and the MIB it
    ///   bumps is `TCPAbortOnData` — no reset here carries the reason `TCP_ABORT_ON_DATA`.
    pub fn kernel_reason(self) -> Option<&'static str> {
        match self {
            Scenario::Refused => Some("NO_SOCKET"),
            Scenario::ServerAbort | Scenario::ClientAbort => Some("TCP_STATE"),
            Scenario::UnreadData => Some("TCP_ABORT_ON_CLOSE"),
            Scenario::Middlebox => None,
        }
    }
}

/// One connection a scenario made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conn {
    pub scenario: Scenario,
    pub family: Family,
    pub client: SocketAddr,
    pub server: SocketAddr,
}

impl Conn {
    /// The RST's (source, destination): the server's address for server and router resets.
    pub fn rst_src_dst(&self) -> (SocketAddr, SocketAddr) {
        match self.scenario.claimed_side() {
            Side::Server => (self.server, self.client),
            Side::Client => (self.client, self.server),
        }
    }

    /// Whether `end`'s host sent the RST itself (it leaves through that end's veth).
    pub fn sent_from(&self, end: End) -> bool {
        matches!((end, self.scenario.resetter()), (End::Client, Resetter::Client) | (End::Server, Resetter::Server))
    }

    /// The RSTs of this connection that cross `end`'s veth, with the TTL / hop limit they carry
    /// there: sent by that end's host or by the router next to the client, 64; from across the
    /// router, 63. The router's RST never reaches the server.
    pub fn rsts_at(&self, end: End) -> Vec<Rst> {
        let (src, dst) = self.rst_src_dst();
        let ttl = match (end, self.scenario.resetter()) {
            (End::Server, Resetter::Router) => return Vec::new(),
            (End::Client, Resetter::Router) => DEFAULT_TTL,
            _ if self.sent_from(end) => DEFAULT_TTL,
            _ => DEFAULT_TTL - 1,
        };
        vec![Rst { src, dst, ack: self.scenario.rst_has_ack(), ttl }]
    }
}

impl fmt::Display for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} -> {}", self.scenario.name(), self.client, self.server)
    }
}

/// A RST as seen on a wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rst {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ack: bool,
    pub ttl: u8,
}

impl fmt::Display for Rst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = if self.ack { "R." } else { "R" };
        write!(f, "{} > {} [{flags}] ttl {}", self.src, self.dst, self.ttl)
    }
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

fn sysctl(ns: &Netns, setting: &str) -> Result<()> {
    let mut c = ns.exec("sysctl");
    c.args(["-q", "-w", setting]);
    cmd::output(&mut c)?;
    Ok(())
}

/// `nft -f -` inside `ns`, the ruleset on stdin.
fn nft(ns: &Netns, ruleset: &str) -> Result<()> {
    let mut c = ns.exec("nft");
    c.args(["-f", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let what = cmd::describe(&c);
    let mut child = c.spawn().with_context(|| format!("cannot start `{what}`"))?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(ruleset.as_bytes())
        .with_context(|| format!("writing the ruleset to `{what}`"))?;
    let out = child.wait_with_output().with_context(|| format!("waiting for `{what}`"))?;
    ensure!(
        out.status.success(),
        "`{what}` failed ({}): {}\nruleset:\n{ruleset}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn tcp_socket(family: Family) -> Result<Socket> {
    let sock = Socket::new(family.domain(), Type::STREAM, Some(Protocol::TCP))?;
    if family == Family::V6 {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    Ok(sock)
}

fn listener(addr: SocketAddr) -> Result<Socket> {
    let sock = tcp_socket(Family::of(&addr.ip()))?;
    sock.bind(&addr.into()).with_context(|| format!("binding {addr}"))?;
    sock.listen(16)?;
    Ok(sock)
}

fn accept(listener: &Socket) -> Result<Socket> {
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "no connection within {IO_TIMEOUT:?}");
        if readable(listener, left.min(Duration::from_millis(100)))? {
            let (conn, _) = listener.accept()?;
            return Ok(conn);
        }
    }
}

/// Polls `done` every millisecond until it is true or `IO_TIMEOUT` passes.
fn wait_until(what: &str, mut done: impl FnMut() -> io::Result<bool>) -> Result<()> {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !done().with_context(|| format!("waiting until {what}"))? {
        ensure!(Instant::now() < deadline, "not {what} within {IO_TIMEOUT:?}");
        thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

/// Segments sent and not yet acknowledged (`tcpi_unacked`).
fn unacked(sock: &Socket) -> io::Result<u32> {
    // SAFETY: tcp_info is plain data; all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::tcp_info>()).unwrap_or(libc::socklen_t::MAX);
    // SAFETY: `info` and `len` are valid for writes of the sizes given for the whole call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            std::ptr::addr_of_mut!(info).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(info.tcpi_unacked)
}

/// Bytes received and not yet read (`FIONREAD`).
fn queued(sock: &Socket) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::FIONREAD, &mut n) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Closes with SO_LINGER {on, 0}: a RST instead of a FIN.
fn abort(sock: Socket) -> Result<()> {
    sock.set_linger(Some(Duration::ZERO)).context("SO_LINGER {on, 0}")?;
    drop(sock);
    Ok(())
}

fn send_request(mut sock: &Socket) -> Result<()> {
    sock.write_all(&[b'q'; REQUEST_LEN]).context("sending the request")
}

fn read_request(mut sock: &Socket) -> Result<()> {
    let mut buf = [0u8; REQUEST_LEN];
    sock.read_exact(&mut buf).context("reading the request")
}

/// The next read must report the peer's (or the middlebox's) RST.
fn expect_reset(mut sock: &Socket) -> Result<()> {
    let mut buf = [0u8; 64];
    match sock.read(&mut buf) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(()),
        Ok(0) => bail!("got a FIN where a RST was due"),
        Ok(n) => bail!("got {n} bytes where a RST was due"),
        Err(e) => bail!("waiting for a RST: {e}"),
    }
}

fn recv_signal(rx: &mpsc::Receiver<()>, what: &str) -> Result<()> {
    rx.recv_timeout(IO_TIMEOUT).map_err(|e| anyhow!("waiting for the peer thread ({what}): {e}"))
}

fn send_signal(tx: &mpsc::Sender<()>, what: &str) -> Result<()> {
    tx.send(()).map_err(|_| anyhow!("the peer thread is gone ({what})"))
}

fn bound_client(client_ip: IpAddr) -> Result<(Socket, SocketAddr)> {
    let sock = tcp_socket(Family::of(&client_ip))?;
    sock.bind(&SocketAddr::new(client_ip, 0).into()).with_context(|| format!("binding to {client_ip}"))?;
    let local = sock.local_addr()?.as_socket().context("the client socket has no IP address")?;
    Ok((sock, local))
}

fn refused_client(client_ip: IpAddr, server: SocketAddr) -> Result<SocketAddr> {
    let (sock, local) = bound_client(client_ip)?;
    match sock.connect_timeout(&server.into(), IO_TIMEOUT) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(local),
        Err(e) => bail!("{local}: expected a refusal from {server}, got {e}"),
        Ok(()) => bail!("{local}: connected to {server}, which should be closed"),
    }
}

fn client_side(
    scenario: Scenario,
    client_ip: IpAddr,
    server: SocketAddr,
    from_server: &mpsc::Receiver<()>,
    to_server: &mpsc::Sender<()>,
) -> Result<SocketAddr> {
    let (sock, local) = bound_client(client_ip)?;
    sock.connect_timeout(&server.into(), IO_TIMEOUT).with_context(|| format!("{local}: connecting to {server}"))?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    sock.set_write_timeout(Some(IO_TIMEOUT))?;
    match scenario {
        Scenario::Refused => bail!("the refused scenario has no server side"),
        Scenario::ServerAbort | Scenario::UnreadData => {
            send_request(&sock)?;
            expect_reset(&sock)?;
        }
        Scenario::Middlebox => {
            let mut banner = vec![0u8; BANNER.len()];
            (&sock).read_exact(&mut banner).context("reading the banner")?;
            ensure!(banner == BANNER, "unexpected banner {:?}", String::from_utf8_lossy(&banner));
            // Only once the server knows its banner was acknowledged: an ACK riding on our data
            // would be rejected with it, and the server's retransmission would then meet our
            // closed socket and draw a second RST.
            recv_signal(from_server, "banner acknowledged")?;
            send_request(&sock)?;
            expect_reset(&sock)?;
            // In CLOSE now: dropping it sends nothing.
            drop(sock);
            send_signal(to_server, "client was reset")?;
        }
        Scenario::ClientAbort => {
            send_request(&sock)?;
            recv_signal(from_server, "request read")?;
            // The server's ACK must be in before we vanish, or it would arrive at a closed socket
            // and draw a second RST (NO_SOCKET) from our stack.
            wait_until("the server acknowledged the request", || Ok(unacked(&sock)? == 0))?;
            abort(sock)?;
        }
    }
    Ok(local)
}

fn server_side(
    scenario: Scenario,
    conn: Socket,
    to_client: &mpsc::Sender<()>,
    from_client: &mpsc::Receiver<()>,
) -> Result<Option<Socket>> {
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    match scenario {
        Scenario::Refused => bail!("the refused scenario has no server"),
        Scenario::ServerAbort => {
            read_request(&conn)?;
            abort(conn)?;
            Ok(None)
        }
        Scenario::UnreadData => {
            wait_until("the whole request arrived", || Ok(queued(&conn)? >= REQUEST_LEN))?;
            // Closing with unread data: the kernel resets instead of sending a FIN.
            drop(conn);
            Ok(None)
        }
        Scenario::Middlebox => {
            (&conn).write_all(BANNER).context("sending the banner")?;
            wait_until("the client acknowledged the banner", || Ok(unacked(&conn)? == 0))?;
            send_signal(to_client, "banner acknowledged")?;
            recv_signal(from_client, "client was reset")?;
            let arrived = queued(&conn)?;
            ensure!(
                arrived == 0,
                "{arrived} bytes of the client's data reached the server: the router did not reject them"
            );
            Ok(Some(conn))
        }
        Scenario::ClientAbort => {
            read_request(&conn)?;
            send_signal(to_client, "request read")?;
            expect_reset(&conn)?;
            Ok(None)
        }
    }
}

static PING_ID: AtomicU32 = AtomicU32::new(0);

/// ICMP echo from inside `ns` to `dst` until one is answered (no `ping` binary needed: a raw
/// socket, as root). Fails after `PING_TIMEOUT`.
pub fn ping(ns: &Netns, dst: IpAddr) -> Result<()> {
    let id = u16::try_from((std::process::id() ^ PING_ID.fetch_add(1, Ordering::Relaxed)) & 0xffff).unwrap_or(0);
    in_netns(ns, || {
        let family = Family::of(&dst);
        let (domain, proto) = match family {
            Family::V4 => (Domain::IPV4, Protocol::ICMPV4),
            Family::V6 => (Domain::IPV6, Protocol::ICMPV6),
        };
        let sock = Socket::new(domain, Type::RAW, Some(proto)).context("raw ICMP socket")?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))?;
        let deadline = Instant::now() + PING_TIMEOUT;
        let mut seq: u16 = 0;
        let mut last_err = String::from("no reply");
        while Instant::now() < deadline {
            seq = seq.wrapping_add(1);
            let request = echo_request(family, id, seq);
            if let Err(e) = sock.send_to(&request, &SocketAddr::new(dst, 0).into()) {
                // Unreachable for a moment while routes and neighbours settle.
                last_err = e.to_string();
                thread::sleep(Duration::from_millis(100));
                continue;
            }
            let until = Instant::now() + Duration::from_millis(500);
            while Instant::now() < until {
                let mut buf = [0u8; 1500];
                let n = match (&sock).read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        last_err = e.to_string();
                        break;
                    }
                };
                if is_echo_reply(family, &buf[..n], id, seq) {
                    return Ok(());
                }
            }
        }
        bail!("{dst} does not answer pings from {} within {PING_TIMEOUT:?}: {last_err}", ns.name())
    })
}

fn echo_request(family: Family, id: u16, seq: u16) -> Vec<u8> {
    let kind = match family {
        Family::V4 => 8,
        Family::V6 => 128,
    };
    let mut p = vec![kind, 0, 0, 0];
    p.extend(id.to_be_bytes());
    p.extend(seq.to_be_bytes());
    p.extend(b"rstwatch diag lab");
    // The kernel fills in the ICMPv6 checksum (it covers a pseudo header); ICMPv4's is ours.
    if family == Family::V4 {
        let sum = internet_checksum(&p);
        p[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    p
}

fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 =
        bytes.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(0xffff)
}

/// A raw ICMPv4 socket reads the IP header too; an ICMPv6 one does not.
fn is_echo_reply(family: Family, packet: &[u8], id: u16, seq: u16) -> bool {
    let (icmp, reply) = match family {
        Family::V4 => {
            let Some(&first) = packet.first() else { return false };
            (packet.get(usize::from(first & 0x0f) * 4..), 0)
        }
        Family::V6 => (Some(packet), 129),
    };
    icmp.is_some_and(|m| m.len() >= 8 && m[0] == reply && m[4..6] == id.to_be_bytes() && m[6..8] == seq.to_be_bytes())
}

/// A TCP segment from a capture.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub flags: u8,
    /// TTL (IPv4) or hop limit (IPv6).
    pub ttl: u8,
    pub payload: usize,
}

impl Segment {
    pub fn has(&self, flags: u8) -> bool {
        self.flags & flags == flags
    }

    pub fn as_rst(&self) -> Option<Rst> {
        self.has(RST).then_some(Rst { src: self.src, dst: self.dst, ack: self.has(ACK), ttl: self.ttl })
    }
}

impl fmt::Display for Segment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut flags = String::new();
        for (bit, c) in [(SYN, 'S'), (FIN, 'F'), (RST, 'R'), (PSH, 'P'), (ACK, '.')] {
            if self.has(bit) {
                flags.push(c);
            }
        }
        write!(f, "{} > {} [{flags}] ttl {} len {}", self.src, self.dst, self.ttl, self.payload)
    }
}

/// The TCP segments of a pcap file (Ethernet; IPv4, or IPv6 without extension headers), in order.
pub fn tcp_segments(bytes: &[u8]) -> Result<Vec<Segment>> {
    ensure!(bytes.len() >= 24, "pcap too short");
    let le = match bytes[..4] {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => bail!("not a pcap file"),
    };
    let u32_at = |at: usize| {
        let w = [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    ensure!(u32_at(20) == 1, "link type {} is not Ethernet", u32_at(20));
    let be16 = |b: &[u8], i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
    let mut segments = Vec::new();
    let mut at = 24;
    while at + 16 <= bytes.len() {
        let len = usize::try_from(u32_at(at + 8))?;
        let frame = bytes.get(at + 16..at + 16 + len).context("truncated pcap record")?;
        at += 16 + len;
        if frame.len() < 14 {
            continue;
        }
        let ip = &frame[14..];
        let (src, dst, ttl, tcp) = match be16(frame, 12) {
            0x0800 if ip.len() >= 20 && ip[9] == 6 => {
                let ihl = usize::from(ip[0] & 0x0f) * 4;
                let total = usize::from(be16(ip, 2)).min(ip.len());
                let a = |i: usize| IpAddr::from([ip[i], ip[i + 1], ip[i + 2], ip[i + 3]]);
                (a(12), a(16), ip[8], ip.get(ihl..total))
            }
            0x86dd if ip.len() >= 40 && ip[6] == 6 => {
                let total = (40 + usize::from(be16(ip, 4))).min(ip.len());
                let a = |i: usize| -> Result<IpAddr> { Ok(IpAddr::from(<[u8; 16]>::try_from(&ip[i..i + 16])?)) };
                (a(8)?, a(24)?, ip[7], ip.get(40..total))
            }
            _ => continue,
        };
        let Some(tcp) = tcp.filter(|t| t.len() >= 20) else {
            continue;
        };
        let offset = usize::from(tcp[12] >> 4) * 4;
        segments.push(Segment {
            src: SocketAddr::new(src, be16(tcp, 0)),
            dst: SocketAddr::new(dst, be16(tcp, 2)),
            flags: tcp[13],
            ttl,
            payload: tcp.len().saturating_sub(offset),
        });
    }
    Ok(segments)
}

static CAPTURES: AtomicU32 = AtomicU32::new(0);

/// tcpdump on one lab interface, every TCP segment to a file of its own (removed on drop).
pub struct Capture {
    proc: Option<Proc>,
    path: PathBuf,
}

impl Capture {
    pub fn start(iface: &Iface) -> Result<Capture> {
        let n = CAPTURES.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rstwatch-diag-{}-{n}.pcap", std::process::id()));
        let mut cmd = iface.ns.exec("tcpdump");
        cmd.args(["-i", &iface.name, "-nn", "-U", "-Z", "root", "-w"]).arg(&path).arg("tcp");
        let mut proc = Proc::spawn(&mut cmd)?;
        proc.wait_for_stderr("listening on", CAPTURE_START_TIMEOUT)?;
        Ok(Capture { proc: Some(proc), path })
    }

    /// Stops tcpdump and returns what it captured.
    pub fn stop(mut self) -> Result<Vec<Segment>> {
        let proc = self.proc.take().context("capture already stopped")?;
        proc.signal(libc::SIGINT)?;
        let fin = proc.finish(CAPTURE_EXIT_TIMEOUT)?;
        ensure!(fin.status.success(), "tcpdump failed ({}): {}", fin.status, fin.stderr);
        let bytes = std::fs::read(&self.path).with_context(|| format!("reading {}", self.path.display()))?;
        tcp_segments(&bytes).with_context(|| format!("parsing {}", self.path.display()))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        drop(self.proc.take());
        // Never written if tcpdump failed to start.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Mounts tracefs at /sys/kernel/tracing unless it is there (rstwatch and [`ResetTrace`] need
/// the tcp tracepoints).
pub fn ensure_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").is_dir() {
        return Ok(());
    }
    cmd::output(&mut cmd::command("mount", ["-t", "tracefs", "nodev", TRACEFS]))?;
    ensure!(
        Path::new(TRACEFS).join("events/tcp/tcp_send_reset").is_dir(),
        "{TRACEFS} has no tcp:tcp_send_reset tracepoint"
    );
    Ok(())
}

/// One `tcp:tcp_send_reset` event: a RST a TCP stack sent (addresses are the RST's own).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelReset {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub state: String,
    pub reason: String,
}

static TRACES: AtomicU32 = AtomicU32::new(0);
const TRACE_PREFIX: &str = "rstwatch-diag-";

/// Disables and removes the instances of processes that no longer exist (killed before their
/// `ResetTrace` was dropped), so no event stays enabled for nobody.
fn sweep_stale_instances(instances: &Path) {
    let Ok(entries) = std::fs::read_dir(instances) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(TRACE_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        // Another process may be sweeping the same leftover: losing that race is fine.
        let _ = std::fs::write(entry.path().join("events/tcp/tcp_send_reset/enable"), "0");
        let _ = std::fs::remove_dir(entry.path());
    }
}

/// `tcp:tcp_send_reset` recorded in a tracefs instance of our own, so the global trace buffer
/// and other tracers are left alone. The event is machine-wide: filter by address and port.
/// Disabled and removed on drop.
pub struct ResetTrace {
    dir: PathBuf,
    enabled: bool,
}

impl ResetTrace {
    pub fn start() -> Result<ResetTrace> {
        ensure_tracefs()?;
        let instances = Path::new(TRACEFS).join("instances");
        sweep_stale_instances(&instances);
        let n = TRACES.fetch_add(1, Ordering::Relaxed);
        let dir = instances.join(format!("{TRACE_PREFIX}{}-{n}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("creating tracefs instance {}", dir.display()))?;
        let mut trace = ResetTrace { dir, enabled: false };
        trace.set_enabled(true)?;
        Ok(trace)
    }

    fn set_enabled(&mut self, on: bool) -> Result<()> {
        let enable = self.dir.join("events/tcp/tcp_send_reset/enable");
        std::fs::write(&enable, if on { "1" } else { "0" }).with_context(|| format!("writing {}", enable.display()))?;
        self.enabled = on;
        Ok(())
    }

    /// Stops recording and returns every event (from every namespace on the machine).
    pub fn stop(mut self) -> Result<Vec<KernelReset>> {
        self.set_enabled(false)?;
        let path = self.dir.join("trace");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        Ok(text.lines().filter_map(parse_send_reset).collect())
    }
}

impl Drop for ResetTrace {
    fn drop(&mut self) {
        if self.enabled {
            let _ = self.set_enabled(false);
        }
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            eprintln!("xtask: removing tracefs instance {}: {e}", self.dir.display());
        }
    }
}

/// `... tcp_send_reset: skbaddr=.. skaddr=.. src=10.88.2.2:7001 dest=10.88.1.2:40000 state=.. reason=..`
/// (IPv6 addresses in brackets).
pub fn parse_send_reset(line: &str) -> Option<KernelReset> {
    let (_, fields) = line.split_once("tcp_send_reset: ")?;
    let field =
        |key: &str| fields.split_whitespace().find_map(|f| f.strip_prefix(key).and_then(|v| v.strip_prefix('=')));
    Some(KernelReset {
        src: field("src")?.parse().ok()?,
        dst: field("dest")?.parse().ok()?,
        state: field("state")?.to_owned(),
        reason: field("reason")?.to_owned(),
    })
}

/// `nsenter --net=/run/netns/NS prog`: like `Netns::exec`, but keeps the host's /sys (and so
/// tracefs), which `ip netns exec` replaces with a fresh sysfs mount.
pub fn nsenter(ns: &Netns, prog: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", ns.name())).arg(prog);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_reset_lines_parse_for_both_families() {
        let v4 = "          <idle>-0       [003] ..s2.   12.345678: tcp_send_reset: skbaddr=000000001 \
                  skaddr=0000000000000000 src=10.88.2.2:7001 dest=10.88.1.2:41000 state=UNKNOWN reason=NO_SOCKET";
        let r = parse_send_reset(v4).expect("v4 line");
        assert_eq!(r.src, "10.88.2.2:7001".parse::<SocketAddr>().expect("addr"));
        assert_eq!(r.dst.port(), 41000);
        assert_eq!((r.state.as_str(), r.reason.as_str()), ("UNKNOWN", "NO_SOCKET"));
        let v6 = "x-1 [000] ..... 1.0: tcp_send_reset: skbaddr=0 skaddr=1 src=[fd88:1::2]:40000 \
                  dest=[fd88:2::2]:7005 state=TCP_ESTABLISHED reason=TCP_STATE";
        let r = parse_send_reset(v6).expect("v6 line");
        assert_eq!(r.dst, "[fd88:2::2]:7005".parse::<SocketAddr>().expect("addr"));
        assert!(parse_send_reset("x: tcp_receive_reset: src=1").is_none());
    }

    #[test]
    fn icmp_checksum_matches_rfc1071_example() {
        // RFC 1071's example words sum to 0xddf2; the checksum is its complement.
        assert_eq!(internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
        let req = echo_request(Family::V4, 7, 9);
        assert_eq!(internet_checksum(&req), 0, "a packet with its checksum sums to zero");
    }

    #[test]
    fn every_scenario_has_its_own_port_and_one_reset() {
        let mut ports: Vec<u16> = Scenario::ALL.iter().map(|s| s.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), Scenario::ALL.len());
        let conn = |scenario| Conn {
            scenario,
            family: Family::V4,
            client: "10.88.1.2:40000".parse().expect("addr"),
            server: SocketAddr::new(SERVER4.into(), Scenario::port(scenario)),
        };
        let mb = conn(Scenario::Middlebox);
        assert!(mb.rsts_at(End::Server).is_empty());
        assert_eq!(mb.rsts_at(End::Client)[0].ttl, DEFAULT_TTL);
        assert!(!mb.rsts_at(End::Client)[0].ack);
        let ca = conn(Scenario::ClientAbort);
        assert_eq!(ca.rsts_at(End::Client)[0].ttl, DEFAULT_TTL);
        assert_eq!(ca.rsts_at(End::Server)[0].ttl, DEFAULT_TTL - 1);
        assert_eq!(ca.rst_src_dst().0, ca.client);
        let rf = conn(Scenario::Refused);
        assert_eq!(rf.rsts_at(End::Client)[0].ttl, DEFAULT_TTL - 1);
        assert_eq!(rf.rsts_at(End::Server)[0].ttl, DEFAULT_TTL);
    }
}

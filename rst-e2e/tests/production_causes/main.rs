//! The production causes made by real software in a client — router — server lab, watched by
//! rstwatch live from the client's veth and from the server's, and replayed from tcpdump
//! captures of the same two veths:
//!
//! ```text
//!  client ns                 router ns                              server ns
//!  10.93.1.2/24 ── veth ── 10.93.1.1 | 10.93.2.1 ── veth ── 10.93.2.2/24
//!                           nftables: conntrack, DNAT          nginx :8080 (keepalive_timeout 2s)
//!                           VIP 10.93.9.9:80 → 10.93.2.2:8081   nginx :8090 (keepalive_timeout 60s)
//!                           :8090's ct state invalid → RST      python3 backend :8081 (answers after 1 s)
//!                                                               python3 listener :7204 (backlog 1, never accepts)
//!                                                               python3 listener :7205 (nft rejects its SYNs)
//! ```
//!
//! - `keepalive_race`: nginx closes an idle keep-alive connection after 2 s (FIN); the client
//!   reuses it after 2.5 s; nginx's orphaned socket answers the request with an RST (the
//!   kernel's TCP_ABORT_ON_DATA).
//! - `idle_timeout`: the router's conntrack forgets established connections after 3 s
//!   (`nf_conntrack_tcp_timeout_established`, `nf_conntrack_tcp_loose=0`) and rejects what it no
//!   longer knows with a forged RST; clients reuse their nginx connections after 5 s idle. Also
//!   watched from the router's veth to the client with `--idle-gaps`: no socket of the
//!   connections is there, and its own firewall forged the resets.
//! - `nat_lost`: the router's conntrack is flushed while the DNAT'ed backend still owes its
//!   reply; the reply reaches the client untranslated and the client's stack resets it.
//! - `listen_overflow`: a listener with backlog 1 and TCP_DEFER_ACCEPT that never accepts,
//!   `tcp_abort_on_overflow=1`: the clients' data finds the queue full.
//! - `local_firewall`: the server's own nftables rejects the SYNs to one port with an RST.
//!
//! Each test checks the capture first (the lab did what it claims), then the verdicts of the
//! lab's services on each vantage, live and replayed: the cause, its counts and fields, and no
//! other cause. listen_overflow and local_firewall are told by the server's kernel alone: the
//! wire shows only refusals, so replay cannot name them.
//!
//! The `live_*` tests hold the whole expectation of each live vantage. The client's captures of
//! three runs are committed (`rst-userspace/tests/data/production-causes/`) and replayed without
//! root.
//!
//! Needs root (namespaces, BPF, nftables, tracefs), nginx, python3 and conntrack (`cargo xtask
//! setup` installs them); without them a test is skipped, except under CI=true.

#[allow(dead_code)] // the real-stack labs' helpers, of which these tests use some
#[path = "../real_stacks/support.rs"]
mod support;

use std::{
    io::{self, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use rst_lab::{
    diag_lab::{listing, nft, ping, sysctl, KernelReset, ResetTrace, Segment, ACK, FIN, RST, SYN},
    lab::{Iface, Lab, Netns, Proc},
    traffic::in_netns,
};
use serde_json::Value;
use socket2::Socket;

use support::*;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 93, 1, 2);
const ROUTER_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(10, 93, 1, 1);
const ROUTER_SERVER_SIDE: Ipv4Addr = Ipv4Addr::new(10, 93, 2, 1);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 93, 2, 2);
/// The router's DNAT address: no host has it.
const VIP: Ipv4Addr = Ipv4Addr::new(10, 93, 9, 9);
const VIP_PORT: u16 = 80;

const RACE_PORT: u16 = 8080;
const IDLE_PORT: u16 = 8090;
const BACKEND_PORT: u16 = 8081;
const OVERFLOW_PORT: u16 = 7204;
const FIREWALL_PORT: u16 = 7205;

/// nginx's keep-alive timeout on [`RACE_PORT`], and how long the client waits to reuse.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
const REUSE_AFTER: Duration = Duration::from_millis(2500);
/// The router's conntrack timeout for established connections, and the clients' idle gap.
const CT_ESTABLISHED_S: u32 = 3;
const IDLE_GAP: Duration = Duration::from_secs(5);
/// How long the backend takes to answer, and when (after the requests) conntrack is flushed.
const BACKEND_DELAY: Duration = Duration::from_secs(1);
const FLUSH_AFTER: Duration = Duration::from_millis(300);
const BACKLOG: u32 = 1;
/// Connections per scenario (the idle timeout needs at least three to cluster).
const CONNS: usize = 3;
const OVERFLOW_CONNS: usize = 4;
/// TTLs on the client's veth: the server's segments are forwarded once, the router's own not.
const SERVER_TTL_AT_CLIENT: u8 = 63;
const ROUTER_TTL: u8 = 64;

const REQUEST: &[u8] = b"GET /hello HTTP/1.1\r\nHost: lab\r\n\r\n";
const HELLO: &[u8] = b"\r\n\r\nhello\n";
/// `tcpi_state`: SYN_SENT, ESTABLISHED.
const TCP_ESTABLISHED: u8 = 1;

// ---------------------------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------------------------

/// Client, router and server namespaces, the router's firewall and NAT, and the server's
/// software (started by each test as it needs). Torn down on drop, processes and all.
struct ProdLab {
    client: Netns,
    router: Netns,
    server: Netns,
    client_if: Iface,
    /// The router's veth to the client: a vantage with no socket of the connections.
    router_if: Iface,
    server_if: Iface,
    // Last: its drop kills what runs in the namespaces and deletes them.
    _lab: Lab,
}

impl ProdLab {
    fn new() -> Result<ProdLab> {
        let mut lab = Lab::new()?;
        let client = lab.add_ns("pcli")?;
        let router = lab.add_ns("prtr")?;
        let server = lab.add_ns("psrv")?;
        let (client_if, router_client_if) = lab.add_veth(&client, &router)?;
        let (router_server_if, server_if) = lab.add_veth(&router, &server)?;
        client_if.add_addr(CLIENT.into(), 24)?;
        router_client_if.add_addr(ROUTER_CLIENT_SIDE.into(), 24)?;
        router_server_if.add_addr(ROUTER_SERVER_SIDE.into(), 24)?;
        server_if.add_addr(SERVER.into(), 24)?;
        client.ip(["route", "add", "default", "via", &ROUTER_CLIENT_SIDE.to_string()])?;
        server.ip(["route", "add", "default", "via", &ROUTER_SERVER_SIDE.to_string()])?;
        sysctl(&router, "net.ipv4.ip_forward=1")?;
        // The ruleset first: it loads conntrack, whose sysctls exist only then.
        nft(&router, &router_ruleset())?;
        sysctl(&router, &format!("net.netfilter.nf_conntrack_tcp_timeout_established={CT_ESTABLISHED_S}"))?;
        // A connection conntrack no longer knows is not picked up mid-stream: its next segment is
        // invalid.
        sysctl(&router, "net.netfilter.nf_conntrack_tcp_loose=0")?;
        sysctl(&server, "net.ipv4.tcp_abort_on_overflow=1")?;
        nft(&server, &server_ruleset())?;
        ping(&client, SERVER.into())?;
        Ok(ProdLab { client, router, server, client_if, router_if: router_client_if, server_if, _lab: lab })
    }
}

/// The router: DNAT of the VIP to the backend; the idle service's connections conntrack forgot
/// are answered with an RST in the server's name. Only that port's: the lost NAT's untranslated
/// replies, invalid too, must pass.
fn router_ruleset() -> String {
    format!(
        "table ip rw_prod_router {{\n\
         \tchain prerouting {{\n\
         \t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tip daddr {VIP} tcp dport {VIP_PORT} dnat to {SERVER}:{BACKEND_PORT}\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tip daddr {SERVER} tcp dport {IDLE_PORT} ct state invalid reject with tcp reset\n\
         \t}}\n\
         }}\n"
    )
}

/// The server host's own firewall: SYNs to [`FIREWALL_PORT`] are rejected, though a listener is
/// there.
fn server_ruleset() -> String {
    format!(
        "table inet rw_prod_server {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\ttcp dport {FIREWALL_PORT} reject with tcp reset\n\
         \t}}\n\
         }}\n"
    )
}

/// nginx on the server: `/hello` on [`RACE_PORT`] (keep-alive 2 s) and [`IDLE_PORT`] (60 s).
fn nginx(ns: &Netns, dir: &Path) -> Result<Proc> {
    let server = |port: u16, keepalive: &str| {
        format!(
            "\tserver {{\n\
             \t\tlisten {SERVER}:{port};\n\
             \t\tkeepalive_timeout {keepalive};\n\
             \t\tlocation = /hello {{ return 200 \"hello\\n\"; }}\n\
             \t}}\n"
        )
    };
    let http = server(RACE_PORT, &format!("{}s", KEEPALIVE_TIMEOUT.as_secs())) + &server(IDLE_PORT, "60s");
    support::nginx_serving(ns, &dir.join("nginx"), &http, &[RACE_PORT, IDLE_PORT])
}

/// A python3 TCP server on the server host: `delay_s` after each request it answers with a
/// small HTTP response and keeps the connection; `backlog` and `defer_accept` set its listener,
/// `accepting: false` never accepts.
fn python_server(
    ns: &Netns,
    port: u16,
    backlog: u32,
    defer_accept: bool,
    accepting: bool,
    delay_s: f64,
) -> Result<Proc> {
    let script = format!(
        "import socket, threading, time\n\
         s = socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         if {defer}:\n\
         \x20   s.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)\n\
         s.bind(('{SERVER}', {port}))\n\
         s.listen({backlog})\n\
         def serve(c):\n\
         \x20   try:\n\
         \x20       c.recv(4096)\n\
         \x20       time.sleep({delay_s})\n\
         \x20       c.sendall(b'HTTP/1.1 200 OK\\r\\nContent-Length: 6\\r\\n\\r\\nhello\\n')\n\
         \x20   except OSError as e:\n\
         \x20       print('serve:', e, flush=True)\n\
         \x20   time.sleep(3600)\n\
         while {accepting}:\n\
         \x20   c, _ = s.accept()\n\
         \x20   threading.Thread(target=serve, args=(c,), daemon=True).start()\n\
         time.sleep(3600)\n",
        defer = if defer_accept { "True" } else { "False" },
        accepting = if accepting { "True" } else { "False" },
    );
    let mut cmd = ns.exec("python3");
    cmd.args(["-c", &script]);
    let mut proc = Proc::spawn(&mut cmd)?;
    listening(ns, &mut proc, "python3", port)?;
    Ok(proc)
}

fn listening(ns: &Netns, proc: &mut Proc, what: &str, port: u16) -> Result<()> {
    wait_until(&format!("{what} listens on {port}"), START_TIMEOUT, || {
        if let Some(status) = proc.try_wait()? {
            bail!("{what} exited ({status}): {}", proc.stderr().trim());
        }
        has_socket(ns, "listening", port)
    })
}

/// [`CONNS`] keep-alive connections from the client to `web`, each served one request.
fn served_connections(web: SocketAddr) -> Result<Vec<Socket>> {
    (0..CONNS)
        .map(|_| {
            let (sock, _) = connect(CLIENT.into(), web)?;
            (&sock).write_all(REQUEST)?;
            read_until(&sock, HELLO)?;
            Ok(sock)
        })
        .collect()
}

fn local(sock: &Socket) -> Result<SocketAddr> {
    sock.local_addr()?.as_socket().context("a socket without an IP address")
}

/// Reads until the socket was reset (or closed), so its RST has arrived.
fn read_until_reset(sock: &Socket) -> Result<io::ErrorKind> {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + IO_TIMEOUT;
    loop {
        ensure!(Instant::now() < deadline, "{}: no reset within {IO_TIMEOUT:?}", local(sock)?);
        match (&*sock).read(&mut buf) {
            Ok(0) => {
                // A FIN before the RST: the RST is the next thing to come.
                if tcp_state(sock)? == TCP_CLOSE {
                    return Ok(io::ErrorKind::UnexpectedEof);
                }
                thread::sleep(Duration::from_millis(10));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Ok(e.kind()),
            Err(e) => return Err(e).context("reading after the reuse"),
        }
    }
}

/// The lab, watched from the client's veth and the server's; `scenario` runs in between.
fn watched(
    dir: &Path,
    scenario: impl FnOnce(&ProdLab) -> Result<Vec<SocketAddr>>,
) -> Result<(Vec<SocketAddr>, Vec<Seen>)> {
    watched_from(dir, false, scenario)
}

/// [`watched`], and with `router` from the router's veth to the client too, live with
/// `--idle-gaps` (no socket of the connections is there: only the per-connection timing sees
/// their pauses).
fn watched_from(
    dir: &Path,
    router: bool,
    scenario: impl FnOnce(&ProdLab) -> Result<Vec<SocketAddr>>,
) -> Result<(Vec<SocketAddr>, Vec<Seen>)> {
    let lab = ProdLab::new()?;
    let mut ends: Vec<(&'static str, &Iface, &[&str])> =
        vec![("client", &lab.client_if, &[]), ("server", &lab.server_if, &[])];
    if router {
        ends.push(("router", &lab.router_if, &["--idle-gaps"]));
    }
    let vantages = watch_with(dir, &ends)?;
    let clients = scenario(&lab)?;
    let seen = stop(dir, vantages)?;
    Ok((clients, seen))
}

// ---------------------------------------------------------------------------------------------
// Verdicts
// ---------------------------------------------------------------------------------------------

/// Whether a verdict is about this lab's hosts (the tracepoints are machine-wide: another
/// test's listener could show in any rstwatch).
fn ours(v: &Value) -> bool {
    v["addr"].as_str().and_then(|a| a.parse::<Ipv4Addr>().ok()).is_some_and(|a| a.octets()[..2] == [10, 93])
}

/// One verdict a vantage must name, with the fields its cause carries.
struct Expect {
    cause: &'static str,
    addr: Ipv4Addr,
    port: u16,
    side: Option<&'static str>,
    resets: u64,
    /// `idle_ms` within ±25 % of this, or null.
    idle_ms: Option<u64>,
    /// The other fields that must hold as given (`limit`, `backend`, `rst_ttl`, ...).
    fields: Vec<(&'static str, Value)>,
}

impl Expect {
    fn new(cause: &'static str, addr: Ipv4Addr, port: u16, side: Option<&'static str>, resets: u64) -> Expect {
        Expect { cause, addr, port, side, resets, idle_ms: None, fields: Vec::new() }
    }

    fn idle(mut self, ms: u64) -> Expect {
        self.idle_ms = Some(ms);
        self
    }

    fn field(mut self, name: &'static str, value: Value) -> Expect {
        self.fields.push((name, value));
        self
    }
}

/// How a vantage's verdicts must match the expected ones.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Match {
    /// Exactly these, nothing else.
    Exactly,
    /// Each one present; others may be beside it (a stray the lead is to fix, asserted
    /// exactly in an ignored test).
    Includes,
    /// Nothing but these, each possibly missing (what live cannot see yet).
    AtMost,
}

fn matches(v: &Value, w: &Expect) -> bool {
    v["cause"] == w.cause && v["addr"] == w.addr.to_string() && v["port"] == w.port && v["side"].as_str() == w.side
}

/// The lab's verdicts in `summary` against `want` (see [`Match`]), with their counts and fields.
fn expect(what: &str, summary: &Value, how: Match, want: &[Expect]) -> Result<()> {
    let got: Vec<Value> = verdicts(summary)?.into_iter().filter(ours).collect();
    eprintln!("{what}:{}", show(&got));
    for w in want {
        let Some(v) = got.iter().find(|v| matches(v, w)) else {
            if how == Match::AtMost {
                continue;
            }
            bail!("{what}: no {} verdict for {}:{} (side {:?})\n  got:{}", w.cause, w.addr, w.port, w.side, show(&got));
        };
        ensure!(
            v["resets"] == w.resets && v["connections"] == w.resets,
            "{what}: {} resets / {} connections, want {} each: {v}",
            v["resets"],
            v["connections"],
            w.resets
        );
        match w.idle_ms {
            Some(ms) => {
                let idle = v["idle_ms"].as_u64().with_context(|| format!("{what}: no idle_ms: {v}"))?;
                ensure!(idle.abs_diff(ms) * 4 <= ms, "{what}: idle_ms {idle}, want {ms} ± 25 %: {v}");
            }
            None => ensure!(v["idle_ms"].is_null(), "{what}: idle_ms where none is measured: {v}"),
        }
        for (name, value) in &w.fields {
            ensure!(v[*name] == *value, "{what}: {name} {}, want {value}: {v}", v[*name]);
        }
        ensure!(v["text"].as_str().is_some_and(|t| !t.is_empty()), "{what}: a verdict without its sentence: {v}");
    }
    if how != Match::Includes {
        let stray: Vec<Value> = got.iter().filter(|v| !want.iter().any(|w| matches(v, w))).cloned().collect();
        ensure!(stray.is_empty(), "{what}: stray verdicts:{}", show(&stray));
    }
    Ok(())
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

fn rsts(segments: &[Segment]) -> Vec<&Segment> {
    segments.iter().filter(|s| s.has(RST)).collect()
}

/// Segments of the connection `a` ↔ `b`, either direction.
fn conn(segments: &[Segment], a: SocketAddr, b: SocketAddr) -> Vec<&Segment> {
    segments.iter().filter(|s| (s.src, s.dst) == (a, b) || (s.src, s.dst) == (b, a)).collect()
}

/// Each client's connection to `server` on `seen`'s capture ends in exactly one RST, sent by
/// `from` (`None`: the client), and `check` holds for it and the segments before it.
fn one_rst_each(
    seen: &Seen,
    clients: &[SocketAddr],
    server: SocketAddr,
    from: Option<SocketAddr>,
    mut check: impl FnMut(&Segment, &[&Segment]) -> Result<()>,
) -> Result<()> {
    let all = rsts(&seen.segments);
    ensure!(all.len() == clients.len(), "{}: {} RSTs, want {}:{}", seen.name, all.len(), clients.len(), listing(all));
    for &client in clients {
        let segs = conn(&seen.segments, client, server);
        let at = segs.iter().position(|s| s.has(RST));
        let at =
            at.with_context(|| format!("{}: no RST on {client} ↔ {server}:{}", seen.name, listing(segs.clone())))?;
        let reset = segs[at];
        let from = from.unwrap_or(client);
        ensure!(reset.src == from, "{}: {reset} is not from {from}", seen.name);
        check(reset, &segs[..at]).with_context(|| format!("{}: {client}:{}", seen.name, listing(segs.clone())))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. keepalive_race: nginx's idle close meets the client's reuse
// ---------------------------------------------------------------------------------------------

/// nginx closes each of [`CONNS`] keep-alive connections after 2 s idle (FIN, which the
/// client's stack ACKs); the client reuses it after 2.5 s and nginx's side answers with an RST
/// without ACK. Also returns the kernel's `tcp_send_reset` events for them.
fn keepalive_race(dir: &Path) -> Result<(Vec<Seen>, Vec<KernelReset>)> {
    let web = SocketAddr::new(SERVER.into(), RACE_PORT);
    let trace = ResetTrace::start()?;
    let (clients, seen) = watched(dir, |lab| {
        let _nginx = nginx(&lab.server, dir)?;
        in_netns(&lab.client, || {
            let socks = served_connections(web)?;
            thread::sleep(REUSE_AFTER);
            for sock in &socks {
                ensure!(tcp_state(sock)? == TCP_CLOSE_WAIT, "{}: nginx had not closed it", local(sock)?);
                (&*sock).write_all(REQUEST).context("reusing the connection")?;
            }
            for sock in &socks {
                read_until_reset(sock)?;
            }
            socks.iter().map(local).collect()
        })
    })?;
    let kernel: Vec<KernelReset> = trace.stop()?.into_iter().filter(|k| k.src == web).collect();
    for k in &kernel {
        eprintln!("kernel: {} > {} state {} reason {}", k.src, k.dst, k.state, k.reason);
    }
    ensure!(kernel.len() == CONNS, "want {CONNS} tcp_send_reset events from nginx's port: {kernel:?}");
    for s in &seen {
        one_rst_each(s, &clients, web, Some(web), |reset, before| {
            let fin = before.iter().find(|b| b.src == web && b.has(FIN)).context("no FIN from nginx")?;
            let last_data = before.iter().rev().find(|b| b.payload > 0 && b.time_us < fin.time_us);
            let idle = fin.time_us - last_data.context("no data before nginx's FIN")?.time_us;
            let timeout_us = ms(KEEPALIVE_TIMEOUT) * 1000;
            ensure!(idle.abs_diff(timeout_us) * 4 <= timeout_us, "nginx closed after {idle} µs idle");
            ensure!(
                before.iter().any(|b| b.src == reset.dst && b.payload == 0 && b.time_us > fin.time_us),
                "the client's stack did not ACK nginx's FIN before reusing"
            );
            let late = before.last().context("nothing before the RST")?;
            ensure!(late.src == reset.dst && late.payload > 0, "{reset} does not answer the client's request");
            ensure!(!reset.has(ACK) && reset.seq == late.ack, "{reset} is not the answer to {late}");
            Ok(())
        })?;
    }
    Ok((seen, kernel))
}

fn race() -> Expect {
    Expect::new("keepalive_race", SERVER, RACE_PORT, Some("server"), CONNS as u64)
}

/// Replay sees the request after nginx's FIN and times the close; live may not name it yet
/// (below), but names nothing else.
#[test]
fn nginx_closing_an_idle_keepalive_connection_as_the_client_reuses_it_is_a_keepalive_race() -> Result<()> {
    let test = "nginx_closing_an_idle_keepalive_connection_as_the_client_reuses_it_is_a_keepalive_race";
    run_test(test, &["nginx"], |dir| {
        let (seen, _) = keepalive_race(dir)?;
        for s in &seen {
            expect(
                &format!("{}'s veth, replay", s.name),
                &s.replay,
                Match::Exactly,
                &[race().idle(ms(KEEPALIVE_TIMEOUT))],
            )?;
            expect(&format!("{}'s veth, live", s.name), &s.live, Match::AtMost, &[race()])?;
        }
        Ok(())
    })
}

/// Live, the server's kernel is to name the race (the flows do not watch data). It answers the
/// request on nginx's closed connection from the FIN_WAIT2 time-wait socket the orphan became
/// once the client ACKed the FIN: reason TCP_TIMEWAIT_SOCKET, where the live rule waits for
/// TCP_ABORT_ON_DATA (a full socket's).
#[test]
fn live_the_servers_kernel_names_nginxs_keepalive_race() -> Result<()> {
    run_test("live_the_servers_kernel_names_nginxs_keepalive_race", &["nginx"], |dir| {
        let (seen, _) = keepalive_race(dir)?;
        let server = vantage(&seen, "server")?;
        expect("server's veth, live", &server.live, Match::Exactly, &[race()])
    })
}

// ---------------------------------------------------------------------------------------------
// 2. idle_timeout: the router's conntrack forgets idle connections
// ---------------------------------------------------------------------------------------------

#[test]
fn a_routers_conntrack_forgetting_idle_connections_is_an_idle_timeout() -> Result<()> {
    let test = "a_routers_conntrack_forgetting_idle_connections_is_an_idle_timeout";
    run_test(test, &["nginx"], |dir| {
        let web = SocketAddr::new(SERVER.into(), IDLE_PORT);
        let mut gaps = Vec::new();
        let mut nginx_proc = None;
        let (clients, seen) = watched_from(dir, true, |lab| {
            nginx_proc = Some(nginx(&lab.server, dir)?);
            in_netns(&lab.client, || {
                let socks = served_connections(web)?;
                let quiet = Instant::now();
                thread::sleep(IDLE_GAP);
                for sock in &socks {
                    ensure!(tcp_state(sock)? == TCP_ESTABLISHED, "{}: nginx closed it", local(sock)?);
                    (&*sock).write_all(REQUEST).context("reusing the connection")?;
                }
                gaps.push(quiet.elapsed());
                for sock in &socks {
                    let how = read_until_reset(sock)?;
                    ensure!(how == io::ErrorKind::ConnectionReset, "{}: not reset ({how:?})", local(sock)?);
                }
                socks.iter().map(local).collect()
            })
        })?;
        // nginx still held its side (the router never told it): its FIN would have drawn more
        // resets, so it went only after the watching.
        drop(nginx_proc);
        let client = vantage(&seen, "client")?;
        let server = vantage(&seen, "server")?;
        one_rst_each(client, &clients, web, Some(web), |reset, before| {
            ensure!(reset.ttl == ROUTER_TTL, "{reset}: the router's own TTL is {ROUTER_TTL}");
            let late = before.last().context("nothing before the RST")?;
            ensure!(
                late.src == reset.dst && late.payload > 0 && reset.seq == late.ack,
                "{reset} does not answer {late}"
            );
            let earlier = before[..before.len() - 1].last().context("no segment before the reuse")?;
            let gap = late.time_us - earlier.time_us;
            ensure!(gap >= ms(IDLE_GAP) * 1000 * 9 / 10, "only {gap} µs idle before the reuse");
            ensure!(before.iter().all(|b| b.src != web || b.ttl == SERVER_TTL_AT_CLIENT), "server TTLs");
            Ok(())
        })?;
        ensure!(rsts(&server.segments).is_empty(), "the server saw RSTs:{}", listing(rsts(&server.segments)));
        ensure!(
            server.segments.iter().filter(|s| s.dst == web && s.payload > 0).count() == CONNS,
            "the reuses must never reach nginx:{}",
            listing(&server.segments)
        );
        let gap = ms(*gaps.first().context("no gap measured")?);
        let idle = || {
            Expect::new("idle_timeout", SERVER, IDLE_PORT, None, CONNS as u64)
                .idle(gap)
                .field("rst_ttl", ROUTER_TTL.into())
                .field("peer_ttl", SERVER_TTL_AT_CLIENT.into())
        };
        expect("client's veth, live", &client.live, Match::Exactly, &[idle()])?;
        expect("client's veth, replay", &client.replay, Match::Exactly, &[idle()])?;
        let router = vantage(&seen, "router")?;
        // Its own firewall forged the resets: the idle timeout names the hook, and no
        // local_firewall verdict counts them again.
        expect("router's veth, live", &router.live, Match::Exactly, &[idle().field("hook", "forward".into())])?;
        expect("router's veth, replay", &router.replay, Match::Exactly, &[idle()])?;
        // The server never learns: nothing to name there.
        expect("server's veth, live", &server.live, Match::Exactly, &[])?;
        expect("server's veth, replay", &server.replay, Match::Exactly, &[])?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// 3. nat_lost: the router's conntrack flushed while the backend owes its reply
// ---------------------------------------------------------------------------------------------

/// [`CONNS`] requests to the VIP; conntrack flushed 0.3 s later; the backend answers after 1 s
/// from its own address, and each client's stack resets the reply (NO_SOCKET).
fn nat_lost(dir: &Path) -> Result<Vec<Seen>> {
    let vip = SocketAddr::new(VIP.into(), VIP_PORT);
    let backend = SocketAddr::new(SERVER.into(), BACKEND_PORT);
    let mut held = Vec::new();
    let (clients, seen) = watched(dir, |lab| {
        let _backend = python_server(&lab.server, BACKEND_PORT, 16, false, true, BACKEND_DELAY.as_secs_f64())?;
        let socks = in_netns(&lab.client, || {
            (0..CONNS)
                .map(|_| {
                    let (sock, _) = connect(CLIENT.into(), vip)?;
                    (&sock).write_all(REQUEST)?;
                    Ok(sock)
                })
                .collect::<Result<Vec<Socket>>>()
        })?;
        thread::sleep(FLUSH_AFTER);
        let mut flush = lab.router.exec("conntrack");
        flush.args(["-F"]);
        rst_lab::cmd::output(&mut flush)?;
        // The replies come, untranslated, and are reset; the clients' own connections to the VIP
        // stay open, unanswered (held until the watching is over).
        thread::sleep(BACKEND_DELAY + Duration::from_millis(500));
        let clients = socks.iter().map(local).collect::<Result<Vec<_>>>()?;
        held = socks;
        Ok(clients)
    })?;
    drop(held);
    for s in &seen {
        one_rst_each(s, &clients, backend, None, |reset, before| {
            let reply = before.last().context("nothing before the RST")?;
            ensure!(reply.src == backend && reply.payload > 0, "{reset} does not answer a reply");
            ensure!(!reset.has(ACK) && reset.seq == reply.ack, "{reset} is no answer to {reply}");
            Ok(())
        })?;
    }
    let client = vantage(&seen, "client")?;
    ensure!(
        !client.segments.iter().any(|x| x.src == vip && x.payload > 0),
        "a reply came translated:{}",
        listing(&client.segments)
    );
    Ok(seen)
}

fn nat() -> Expect {
    Expect::new("nat_lost", VIP, VIP_PORT, None, CONNS as u64)
        .field("backend", serde_json::json!({"addr": SERVER.to_string(), "port": BACKEND_PORT}))
}

#[test]
fn a_flushed_dnat_sends_the_backends_reply_untranslated_and_the_client_resets_it_nat_lost() -> Result<()> {
    let test = "a_flushed_dnat_sends_the_backends_reply_untranslated_and_the_client_resets_it_nat_lost";
    run_test(test, &["python3", "conntrack"], |dir| {
        let seen = nat_lost(dir)?;
        let client = vantage(&seen, "client")?;
        expect("client's veth, replay", &client.replay, Match::Exactly, &[nat()])?;
        expect("client's veth, live", &client.live, Match::AtMost, &[nat()])
    })
}

/// Live, the client's interface is to name the lost NAT too: its stack's NO_SOCKET resets of
/// replies from an address it never opened a connection to, while that port's connection to
/// the VIP is open. The backend's side sees its connections reset mid-stream by the client
/// (RST without ACK): a lost state, not an idle timeout (the 1 s before the reply was the
/// backend's own work, the client waiting).
#[test]
fn live_the_client_names_the_lost_nat_and_the_backend_no_idle_timeout() -> Result<()> {
    let test = "live_the_client_names_the_lost_nat_and_the_backend_no_idle_timeout";
    run_test(test, &["python3", "conntrack"], |dir| {
        let seen = nat_lost(dir)?;
        let client = vantage(&seen, "client")?;
        let server = vantage(&seen, "server")?;
        let lost = || Expect::new("state_lost", SERVER, BACKEND_PORT, Some("client"), CONNS as u64);
        expect("server's veth, live", &server.live, Match::Exactly, &[lost()])?;
        expect("server's veth, replay", &server.replay, Match::Exactly, &[lost()])?;
        expect("client's veth, live", &client.live, Match::Exactly, &[nat()])
    })
}

// ---------------------------------------------------------------------------------------------
// 4. listen_overflow: a full accept queue under tcp_abort_on_overflow
// ---------------------------------------------------------------------------------------------

/// A python3 listener (backlog 1, TCP_DEFER_ACCEPT) that never accepts; the clients' handshakes
/// complete while it defers them, then their data arrives last-connected first
/// (rst-userspace/tests/listen_idle.rs): the queue is full for the earlier ones, which the
/// kernel resets (RST without ACK, answering the data). Returns the resets seen.
fn listen_overflow(dir: &Path) -> Result<(Vec<Seen>, u64)> {
    let listener = SocketAddr::new(SERVER.into(), OVERFLOW_PORT);
    let mut held = Vec::new();
    let mut proc = None;
    let (clients, seen) = watched(dir, |lab| {
        proc = Some(python_server(&lab.server, OVERFLOW_PORT, BACKLOG, true, false, 0.0)?);
        let socks = in_netns(&lab.client, || {
            let socks: Vec<Socket> = (0..OVERFLOW_CONNS)
                .filter_map(|_| {
                    let (sock, _) = rst_lab::diag_lab::bound_client(CLIENT.into()).ok()?;
                    sock.connect_timeout(&listener.into(), Duration::from_secs(2)).ok().map(|()| sock)
                })
                .collect();
            ensure!(socks.len() >= 3, "only {} clients connected", socks.len());
            for sock in socks.iter().rev() {
                let _ = (&*sock).write_all(b"hello");
                thread::sleep(Duration::from_millis(50));
            }
            Ok(socks)
        })?;
        thread::sleep(Duration::from_millis(300));
        let clients = socks.iter().map(local).collect::<Result<Vec<_>>>()?;
        // The queued connections are reset when the listener closes: after the watching.
        held = socks;
        Ok(clients)
    })?;
    drop((held, proc));
    let server = vantage(&seen, "server")?;
    let resets = rsts(&server.segments).len() as u64;
    ensure!(resets > 0, "no listener resets:{}", listing(&server.segments));
    for s in &seen {
        ensure!(rsts(&s.segments).len() as u64 == resets, "{}: not the same resets as the server's veth", s.name);
        for r in rsts(&s.segments) {
            ensure!(r.src == listener && clients.contains(&r.dst), "{}: {r} is not the listener's", s.name);
            let before = conn(&s.segments, r.dst, listener);
            ensure!(
                before.iter().any(|b| b.src == listener && b.has(SYN | ACK)),
                "{}: {r} without a handshake",
                s.name
            );
            let data = before.iter().rev().find(|b| b.src == r.dst && b.payload > 0);
            let data = data.with_context(|| format!("{}: {r} answers no data", s.name))?;
            ensure!(!r.has(ACK) && r.seq == data.ack, "{}: {r} is no answer to {data}", s.name);
        }
    }
    Ok((seen, resets))
}

fn overflow(resets: u64) -> Expect {
    Expect::new("listen_overflow", SERVER, OVERFLOW_PORT, None, resets).field("limit", BACKLOG.into())
}

/// Live-only: the wire shows resets after handshakes; the listener's kernel says its queue was
/// full. The tracepoint is the machine's, so the client's rstwatch hears of it too, for the
/// same resets on its own wire.
#[test]
fn a_listener_that_never_accepts_overflows_its_queue_and_resets_listen_overflow() -> Result<()> {
    let test = "a_listener_that_never_accepts_overflows_its_queue_and_resets_listen_overflow";
    run_test(test, &["python3"], |dir| {
        let (seen, resets) = listen_overflow(dir)?;
        for s in &seen {
            expect(&format!("{}'s veth, live", s.name), &s.live, Match::Includes, &[overflow(resets)])?;
            let replay = verdicts(&s.replay)?;
            ensure!(
                !replay.iter().any(|v| v["cause"] == "listen_overflow"),
                "{}: replay cannot know the queue",
                s.name
            );
            eprintln!("{}'s veth, replay (live-only cause):{}", s.name, show(&replay));
        }
        Ok(())
    })
}

#[test]
fn live_a_listen_overflow_is_named_alone() -> Result<()> {
    run_test("live_a_listen_overflow_is_named_alone", &["python3"], |dir| {
        let (seen, resets) = listen_overflow(dir)?;
        for s in &seen {
            expect(&format!("{}'s veth, live", s.name), &s.live, Match::Exactly, &[overflow(resets)])?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// 5. local_firewall: the server's own nftables rejects a port
// ---------------------------------------------------------------------------------------------

/// [`CONNS`] connection attempts to a port a python3 listener holds and the server's nftables
/// rejects (`reject with tcp reset`, hook input): each SYN answered by an RST+ACK.
fn local_firewall(dir: &Path) -> Result<Vec<Seen>> {
    let guarded = SocketAddr::new(SERVER.into(), FIREWALL_PORT);
    let mut proc = None;
    let (clients, seen) = watched(dir, |lab| {
        proc = Some(python_server(&lab.server, FIREWALL_PORT, 16, false, true, 0.0)?);
        in_netns(&lab.client, || {
            (0..CONNS)
                .map(|_| {
                    let (sock, local) = rst_lab::diag_lab::bound_client(CLIENT.into())?;
                    match sock.connect_timeout(&guarded.into(), IO_TIMEOUT) {
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(local),
                        other => bail!("{local}: the firewall should have refused, got {other:?}"),
                    }
                })
                .collect()
        })
    })?;
    drop(proc);
    for s in &seen {
        one_rst_each(s, &clients, guarded, Some(guarded), |reset, before| {
            let syn = before.last().context("nothing before the RST")?;
            ensure!(syn.has(SYN) && !syn.has(ACK), "{reset} does not answer a SYN");
            ensure!(reset.has(ACK) && reset.ack == syn.seq.wrapping_add(1), "{reset} is no answer to {syn}");
            Ok(())
        })?;
    }
    Ok(seen)
}

fn firewall() -> Expect {
    Expect::new("local_firewall", SERVER, FIREWALL_PORT, None, CONNS as u64).field("hook", "input".into())
}

/// Live-only: on the wire a firewall's refusal is a closed port's. This branch has no firewall
/// evidence yet; what holds: nothing beyond the refusals of that one port is named.
#[test]
fn the_servers_own_firewall_rejecting_a_port_is_a_local_firewall() -> Result<()> {
    let test = "the_servers_own_firewall_rejecting_a_port_is_a_local_firewall";
    run_test(test, &["python3"], |dir| {
        let seen = local_firewall(dir)?;
        let refused = || Expect::new("no_listener", SERVER, FIREWALL_PORT, None, CONNS as u64);
        for s in &seen {
            expect(&format!("{}'s veth, live", s.name), &s.live, Match::AtMost, &[firewall(), refused()])?;
            expect(&format!("{}'s veth, replay", s.name), &s.replay, Match::AtMost, &[refused()])?;
        }
        Ok(())
    })
}

#[test]
fn live_the_servers_firewall_is_named_not_a_missing_listener() -> Result<()> {
    run_test("live_the_servers_firewall_is_named_not_a_missing_listener", &["python3"], |dir| {
        let seen = local_firewall(dir)?;
        let server = vantage(&seen, "server")?;
        expect("server's veth, live", &server.live, Match::Exactly, &[firewall()])
    })
}

// ---------------------------------------------------------------------------------------------
// The committed captures (no root)
// ---------------------------------------------------------------------------------------------

/// `rstwatch replay` of the client's captures of three of the lab's runs, committed in
/// `rst-userspace/tests/data/production-causes/`: each names its cause, with its fields, and
/// nothing else. (listen_overflow and local_firewall are live-only.)
#[test]
fn replay_of_the_committed_lab_captures_names_each_cause() -> Result<()> {
    let release = rst_lab::paths::rstwatch_release();
    rst_lab::require!(rst_lab::Need::File(&release, "`cargo xtask build` makes it, or set RSTWATCH_BIN"));
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rst-userspace/tests/data/production-causes");
    let cases = [
        ("keepalive-race.client.pcap", race().idle(ms(KEEPALIVE_TIMEOUT))),
        (
            "idle-timeout.client.pcap",
            Expect::new("idle_timeout", SERVER, IDLE_PORT, None, CONNS as u64)
                .idle(ms(IDLE_GAP))
                .field("rst_ttl", ROUTER_TTL.into())
                .field("peer_ttl", SERVER_TTL_AT_CLIENT.into()),
        ),
        ("nat-lost.client.pcap", nat()),
    ];
    for (file, want) in cases {
        let output = std::process::Command::new(rst_lab::paths::rstwatch_for_tests())
            .args(["replay", "--format", "json"])
            .arg(data.join(file))
            .output()
            .context("running rstwatch replay")?;
        ensure!(output.status.success(), "{file}: replay failed: {}", String::from_utf8_lossy(&output.stderr));
        let summary = rst_lab::lab::summary_line(&String::from_utf8_lossy(&output.stdout))?;
        expect(file, &summary, Match::Exactly, &[want])?;
    }
    Ok(())
}

//! Labs with real stacks: resets that real software makes in the course of its normal (or
//! failing-over) life, watched by rstwatch live from both ends of the wire and replayed from
//! tcpdump captures of the same wires.
//!
//! - idle connections across a VIP failover: the standby, which holds the VIP but none of the
//!   connections, answers the client's first data with an RST without ACK (`state_lost`);
//! - nmap's SYN scan of a host with a few closed ports, two open ones and the rest dropped by
//!   nftables: one `scan` verdict naming the scanner, no `no_listener` for the closed ports;
//! - a client closing a connection with the server's response unread, after the server's FIN
//!   (nginx, HTTP/1.0): `teardown` by the client;
//! - nginx closing idle keep-alive connections (`keepalive_timeout 1s`), its orphaned socket gone
//!   (`tcp_fin_timeout` 1 s in the server's namespace) when the client closes its side: the
//!   server's RST answers the client's FIN, `teardown` by the server; and the same connections
//!   probed by the client's TCP keep-alive instead: the RST answers a probe after the server's
//!   own FIN, which only replay can tell (the kernel programs do not watch data segments, so
//!   live names nothing there, by design: docs/verdicts.md, "Why: what each reset is").
//!
//! Each test runs rstwatch live on the client's veth and on the server's veth (one process per
//! namespace), tcpdump on both, then `rstwatch replay` on each capture. The captures are checked
//! first (the lab did what it claims: the RSTs, their flags and what they answer), then each
//! vantage's verdicts, live and in replay, against the expected ones, then live against replay.
//!
//! Needs root (namespaces, BPF, nftables), nmap and nginx (`cargo xtask setup` installs them):
//! without them a test is skipped with a message, except under CI=true where that is a failure.
//! Namespaces, veths and every process started in them go with the lab, also on a failure or a
//! panic; captures and rstwatch's output are kept (and their directory named) when a test fails.

mod support;
/// Resets inside VXLAN, and inside tunnels encapsulated in userspace.
mod tunnels;
/// TUN devices and pumps that encapsulate as tunnel drivers do.
mod userspace_tunnel;

use std::{
    collections::BTreeSet,
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    thread,
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use rst_lab::{
    diag_lab::{accept, ensure_rsts, listener, listing, nft, ping, queued, sysctl, Rst, Segment, ACK, FIN, RST, SYN},
    lab::{Lab, Netns, Proc, TwoHosts},
    traffic::in_netns,
};
use serde_json::Value;
use socket2::{Socket, TcpKeepalive};

use support::*;

// ---------------------------------------------------------------------------------------------
// 1. Idle connections across a VIP failover
// ---------------------------------------------------------------------------------------------

const VIP_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const VIP_PRIMARY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 11);
const VIP_STANDBY: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 12);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
const VIP_PORT: u16 = 7300;
const VIP_CONNS: usize = 3;

/// ```text
///  client 10.77.0.2 ── veth ──┐
///  primary 10.77.0.11 (+ VIP) ─ veth ── bridge (switch ns)
///  standby 10.77.0.12 ── veth ┘
/// ```
/// The client opens connections to the VIP on the primary and sends nothing; the VIP moves to
/// the standby (address deleted and added, the client's neighbour entry flushed as a
/// gratuitous ARP would), which listens on the port but never saw the connections; the
/// client's first data draws the standby's RST without ACK.
#[test]
fn idle_connections_across_a_vip_failover_are_state_lost() -> Result<()> {
    run_test("idle_connections_across_a_vip_failover_are_state_lost", &[], |dir| {
        let mut lab = Lab::new()?;
        let client = lab.add_ns("cli")?;
        let switch = lab.add_ns("sw")?;
        let primary = lab.add_ns("pri")?;
        let standby = lab.add_ns("sby")?;
        switch.ip(["link", "add", "br0", "type", "bridge"])?;
        switch.ip(["link", "set", "br0", "up"])?;
        let (client_if, sw_client) = lab.add_veth(&client, &switch)?;
        let (primary_if, sw_primary) = lab.add_veth(&primary, &switch)?;
        let (standby_if, sw_standby) = lab.add_veth(&standby, &switch)?;
        for port in [&sw_client, &sw_primary, &sw_standby] {
            switch.ip(["link", "set", &port.name, "master", "br0"])?;
        }
        client_if.add_addr(VIP_CLIENT.into(), 24)?;
        primary_if.add_addr(VIP_PRIMARY.into(), 24)?;
        standby_if.add_addr(VIP_STANDBY.into(), 24)?;
        ping(&client, VIP_PRIMARY.into())?;
        ping(&client, VIP_STANDBY.into())?;
        let vip = SocketAddr::new(VIP.into(), VIP_PORT);
        let vip32 = format!("{VIP}/32");
        primary.ip(["addr", "add", &vip32, "dev", &primary_if.name])?;
        let on_primary = in_netns(&primary, || listener(vip))?;

        let vantages = watch(dir, &[("client", &client_if), ("standby", &standby_if)])?;
        let conns: Vec<(Socket, SocketAddr)> =
            in_netns(&client, || (0..VIP_CONNS).map(|_| connect(VIP_CLIENT.into(), vip)).collect())?;
        // Accepted: each handshake's last ACK reached the primary before the move.
        let accepted: Vec<Socket> = (0..VIP_CONNS).map(|_| accept(&on_primary)).collect::<Result<_>>()?;
        thread::sleep(Duration::from_millis(300));
        primary.ip(["addr", "del", &vip32, "dev", &primary_if.name])?;
        standby.ip(["addr", "add", &vip32, "dev", &standby_if.name])?;
        let on_standby = in_netns(&standby, || listener(vip))?;
        client.ip(["neigh", "flush", "to", &VIP.to_string()])?;
        for (sock, local) in &conns {
            (&*sock).write_all(b"hello after the failover\n").with_context(|| format!("{local}: writing"))?;
            let mut buf = [0u8; 64];
            match (&*sock).read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                other => bail!("{local}: the standby should have reset the connection, got {other:?}"),
            }
        }
        on_standby.set_nonblocking(true)?;
        match on_standby.accept() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => bail!("the standby accepted a connection ({other:?}): it must know none of them"),
        }
        let seen = stop(dir, vantages)?;
        // The primary's sockets stay open until the watching is over: closing them sends FINs
        // from the VIP that the client would answer with RSTs.
        drop((accepted, on_primary, on_standby));

        let clients: Vec<SocketAddr> = conns.iter().map(|(_, local)| *local).collect();
        for s in &seen {
            let want: Vec<Rst> = clients.iter().map(|&c| rst(vip, c, false)).collect();
            ensure_rsts(&format!("the {}'s veth", s.name), want, &s.segments)?;
            for (reset, before) in rsts_with_history(&s.segments) {
                let data = before.iter().rev().find(|b| b.src == reset.dst && b.payload > 0);
                let data = data.with_context(|| format!("{}: no client data before {reset}", s.name))?;
                ensure!(reset.seq == data.ack, "{}: {reset} (seq {}) does not answer {data}", s.name, reset.seq);
                ensure!(
                    !before.iter().any(|b| b.src == vip && b.payload > 0),
                    "{}: the VIP sent data: the connections were to be idle:{}",
                    s.name,
                    listing(before)
                );
            }
        }
        let client_seen = vantage(&seen, "client")?;
        ensure!(
            client_seen.segments.iter().filter(|s| s.has(SYN | ACK) && s.src == vip).count() == VIP_CONNS,
            "the client's veth: want {VIP_CONNS} SYN+ACKs from the VIP:{}",
            listing(&client_seen.segments)
        );
        let standby_seen = vantage(&seen, "standby")?;
        ensure!(
            !standby_seen.segments.iter().any(|s| s.has(SYN)),
            "the standby's veth saw a handshake:{}",
            listing(&standby_seen.segments)
        );

        // The client saw each connection accepted, idle, then reset without ACK by the server
        // side: the server lost it.
        let want = [Want {
            cause: "state_lost",
            addr: VIP.into(),
            port: VIP_PORT,
            side: Some("server"),
            resets: VIP_CONNS as u64,
        }];
        expect_verdicts("client's veth, live", &client_seen.live, &want)?;
        expect_verdicts("client's veth, replay", &client_seen.replay, &want)?;
        // The standby never saw the connections open: its resets are lone ones, which name no
        // cause (docs/verdicts.md's rule), rather than a guess.
        expect_verdicts("standby's veth, live", &standby_seen.live, &[])?;
        expect_verdicts("standby's veth, replay", &standby_seen.replay, &[])?;
        for s in &seen {
            same_live_and_replay(s)?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// 2. nmap's SYN scan
// ---------------------------------------------------------------------------------------------

const SCANNER: Ipv4Addr = Ipv4Addr::new(10, 78, 1, 2);
const TARGET: Ipv4Addr = Ipv4Addr::new(10, 78, 2, 2);
/// Let through to the target's stack with nothing listening: refused.
const CLOSED_PORTS: [u16; 6] = [21, 23, 25, 110, 143, 445];
/// Listening.
const OPEN_PORTS: [u16; 2] = [80, 443];
const SCANNED: u16 = 1000;

/// The target drops every TCP segment to ports 1–1000 but the closed and open ones.
fn target_ruleset() -> String {
    let allowed: Vec<String> = CLOSED_PORTS.iter().chain(&OPEN_PORTS).map(u16::to_string).collect();
    format!(
        "table inet rs_real_stacks {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\ttcp dport {{ {} }} accept\n\
         \t\ttcp dport 1-{SCANNED} drop\n\
         \t}}\n\
         }}\n",
        allowed.join(", ")
    )
}

/// The ports nmap's greppable output (`-oG -`) reports in `state`.
fn nmap_ports(grepable: &str, state: &str) -> BTreeSet<u16> {
    grepable
        .lines()
        .filter_map(|l| l.split_once("Ports: ").map(|(_, ports)| ports))
        .flat_map(|ports| ports.split(", "))
        .filter_map(|entry| {
            let mut fields = entry.split('/');
            let port = fields.next()?.trim().parse().ok()?;
            (fields.next()? == state).then_some(port)
        })
        .collect()
}

#[test]
fn an_nmap_syn_scan_is_one_scan_verdict_not_a_no_listener_per_closed_port() -> Result<()> {
    run_test("an_nmap_syn_scan_is_one_scan_verdict_not_a_no_listener_per_closed_port", &["nmap"], |dir| {
        let hosts = TwoHosts::new(&[SCANNER.into()], &[TARGET.into()])?;
        nft(&hosts.server, &target_ruleset())?;
        let _listening: Vec<Socket> = in_netns(&hosts.server, || {
            OPEN_PORTS.iter().map(|&p| listener(SocketAddr::new(TARGET.into(), p))).collect()
        })?;
        ping(&hosts.client, TARGET.into())?;
        let vantages = watch(dir, &[("client", &hosts.client_if), ("server", &hosts.server_if)])?;
        let mut cmd = hosts.client.exec("nmap");
        cmd.args(["-sS", "-Pn", "-n", "-T4", "--max-retries", "0", "--min-rate", "1000"]);
        cmd.args(["--max-rtt-timeout", "500ms", "--host-timeout", "25s", "-oG", "-"]);
        cmd.args(["-p", &format!("1-{SCANNED}"), &TARGET.to_string()]);
        let scanned = Proc::spawn(&mut cmd)?.finish(Duration::from_secs(40))?;
        std::fs::write(dir.join("nmap.txt"), &scanned.stdout)?;
        ensure!(scanned.status.success(), "nmap failed ({}): {}", scanned.status, scanned.stderr.trim());
        let seen = stop(dir, vantages)?;

        // nmap found what the lab is.
        let want_open: BTreeSet<u16> = OPEN_PORTS.into();
        let want_closed: BTreeSet<u16> = CLOSED_PORTS.into();
        ensure!(nmap_ports(&scanned.stdout, "open") == want_open, "nmap's open ports:\n{}", scanned.stdout);
        ensure!(nmap_ports(&scanned.stdout, "closed") == want_closed, "nmap's closed ports:\n{}", scanned.stdout);
        let filtered = usize::from(SCANNED) - CLOSED_PORTS.len() - OPEN_PORTS.len();
        ensure!(
            scanned.stdout.contains(&format!("Ignored State: filtered ({filtered})")),
            "nmap did not find {filtered} filtered ports:\n{}",
            scanned.stdout
        );
        let target = IpAddr::from(TARGET);
        for s in &seen {
            let place = format!("the {}'s veth", s.name);
            // One SYN for every port (no retries), and exactly these RSTs: the target's RST+ACK
            // from each closed port, the scanner's stack's RST answering each open port's
            // SYN+ACK.
            let syn_ports: BTreeSet<u16> =
                s.segments.iter().filter(|x| x.has(SYN) && !x.has(ACK)).map(|x| x.dst.port()).collect();
            ensure!(syn_ports.len() == usize::from(SCANNED), "{place}: SYNs to {} ports", syn_ports.len());
            let rsts: Vec<&Segment> = s.segments.iter().filter(|x| x.has(RST)).collect();
            let refused: BTreeSet<u16> =
                rsts.iter().filter(|r| r.src.ip() == target && r.has(ACK)).map(|r| r.src.port()).collect();
            let answered: BTreeSet<u16> =
                rsts.iter().filter(|r| r.dst.ip() == target && !r.has(ACK)).map(|r| r.dst.port()).collect();
            ensure!(
                refused == want_closed && answered == want_open && rsts.len() == CLOSED_PORTS.len() + OPEN_PORTS.len(),
                "{place}: unexpected RSTs:{}",
                listing(rsts.iter().copied())
            );
        }

        for s in &seen {
            for (how, summary) in [("live", &s.live), ("replay", &s.replay)] {
                let what = format!("{}'s veth, {how} {}", s.name, s.pcap_hint());
                let all = verdicts(summary)?;
                ensure!(
                    !all.iter().any(|v| v["cause"] == "no_listener"),
                    "{what}: a no_listener verdict for a scanned port:{}",
                    show(&all)
                );
                let scans: Vec<&Value> = all.iter().filter(|v| v["cause"] == "scan").collect();
                ensure!(scans.len() == 1 && all.len() == 1, "{what}: want exactly one scan verdict:{}", show(&all));
                let v = scans[0];
                ensure!(v["client"] == SCANNER.to_string(), "{what}: the scanner is not the client: {v}");
                ensure!(v["addr"] == TARGET.to_string() && v["port"] == 0, "{what}: the scanned host: {v}");
                ensure!(v["benign"] == false, "{what}: a scan is not benign: {v}");
                let probed = CLOSED_PORTS.len() + OPEN_PORTS.len();
                ensure!(v["resets"] == probed && v["connections"] == probed, "{what}: resets: {v}");
                let scan = &v["scan"];
                let counts = [
                    ("refused", CLOSED_PORTS.len()),
                    ("open", OPEN_PORTS.len()),
                    ("silent", filtered),
                    ("ports", usize::from(SCANNED)),
                    ("hosts", 1),
                    ("completed", 0),
                ];
                for (field, want) in counts {
                    ensure!(scan[field] == want, "{what}: scan.{field} {}, want {want}: {v}", scan[field]);
                }
            }
            same_live_and_replay(s)?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// 3. A client closing with the response unread
// ---------------------------------------------------------------------------------------------

const UNREAD_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 80, 1, 2);
const UNREAD_SERVER: Ipv4Addr = Ipv4Addr::new(10, 80, 2, 2);
const TEARDOWN_CONNS: usize = 3;

/// nginx answers an HTTP/1.0 request with `BIG_LEN` bytes and closes (FIN); the client reads
/// the first 100 bytes, waits for the FIN (CLOSE_WAIT) and closes with the rest unread: its
/// stack resets (RST+ACK) instead of closing.
#[test]
fn a_client_closing_with_the_response_unread_after_the_servers_fin_is_a_teardown() -> Result<()> {
    run_test("a_client_closing_with_the_response_unread_after_the_servers_fin_is_a_teardown", &["nginx"], |dir| {
        let hosts = TwoHosts::new(&[UNREAD_CLIENT.into()], &[UNREAD_SERVER.into()])?;
        let server = SocketAddr::new(UNREAD_SERVER.into(), HTTP_PORT);
        let _nginx = nginx(&hosts.server, dir, server)?;
        ping(&hosts.client, server.ip())?;
        let vantages = watch(dir, &[("client", &hosts.client_if), ("server", &hosts.server_if)])?;
        let conns: Vec<(Socket, SocketAddr)> = in_netns(&hosts.client, || {
            (0..TEARDOWN_CONNS)
                .map(|_| {
                    let (sock, local) = connect(UNREAD_CLIENT.into(), server)?;
                    (&sock).write_all(b"GET /big.bin HTTP/1.0\r\nHost: lab\r\n\r\n")?;
                    let mut first = [0u8; 100];
                    (&sock).read_exact(&mut first).context("reading the response's start")?;
                    ensure!(first.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first));
                    Ok((sock, local))
                })
                .collect()
        })?;
        for (sock, local) in &conns {
            wait_until(
                &format!("{local} got the server's FIN"),
                IO_TIMEOUT,
                || Ok(tcp_state(sock)? == TCP_CLOSE_WAIT),
            )?;
            ensure!(queued(sock)? > 0, "{local}: nothing left unread");
        }
        let clients: Vec<SocketAddr> = conns.iter().map(|(_, local)| *local).collect();
        drop(conns);
        let seen = stop(dir, vantages)?;

        let want: Vec<Rst> = clients.iter().map(|&c| rst(c, server, true)).collect();
        expect_resets(&seen, &want, "follow the server's FIN, and no FIN of the client's", |reset, before| {
            before.iter().any(|b| b.src == server && b.has(FIN))
                && !before.iter().any(|b| b.src == reset.src && b.has(FIN))
        })?;
        expect_teardowns(&seen, server, "client", |what, name, how, v| {
            // Live on the client's veth the resets are its own stack's, which says why: a
            // close with data unread. Received ones (the server's veth) and replay carry none.
            let reason = if (name, how) == ("client", "live") { "TCP_ABORT_ON_CLOSE".into() } else { Value::Null };
            ensure!(v["kernel_reason"] == reason, "{what}: kernel_reason, want {reason}: {v}");
            Ok(())
        })
    })
}

/// On every vantage's capture: exactly the resets `want`, each of which should `answer` what came
/// before it on its connection (`answers`: the reset and that history, oldest first).
fn expect_resets(
    seen: &[Seen],
    want: &[Rst],
    answer: &str,
    answers: impl Fn(&Segment, &[&Segment]) -> bool,
) -> Result<()> {
    for s in seen {
        ensure_rsts(&format!("the {}'s veth", s.name), want.to_vec(), &s.segments)?;
        for (reset, before) in rsts_with_history(&s.segments) {
            ensure!(answers(reset, &before), "{}: {reset} should {answer}:{}", s.name, listing(before));
        }
    }
    Ok(())
}

/// On every vantage, live and replayed: one benign `teardown` of `server` by `side`, all
/// [`TEARDOWN_CONNS`] connections reset after the peer's FIN; `more` checks what else the
/// vantage (`what`, its name, "live" or "replay") says of the verdict.
fn expect_teardowns(
    seen: &[Seen],
    server: SocketAddr,
    side: &'static str,
    more: impl Fn(&str, &str, &str, &Value) -> Result<()>,
) -> Result<()> {
    let want = [Want {
        cause: "teardown",
        addr: server.ip(),
        port: HTTP_PORT,
        side: Some(side),
        resets: TEARDOWN_CONNS as u64,
    }];
    for s in seen {
        for (how, summary) in [("live", &s.live), ("replay", &s.replay)] {
            let what = format!("{}'s veth, {how} {}", s.name, s.pcap_hint());
            expect_verdicts(&what, summary, &want)?;
            let v = &verdicts(summary)?[0];
            ensure!(v["benign"] == true && !alarming(v), "{what}: a teardown is benign: {v}");
            ensure!(v["after_peer_fin"] == TEARDOWN_CONNS && v["after_own_fin"] == 0, "{what}: {v}");
            more(&what, s.name, how, v)?;
        }
        same_live_and_replay(s)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. nginx closing idle keep-alive connections
// ---------------------------------------------------------------------------------------------

const IDLE_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 81, 1, 2);
const IDLE_SERVER: Ipv4Addr = Ipv4Addr::new(10, 81, 2, 2);
const PROBED_CLIENT: Ipv4Addr = Ipv4Addr::new(10, 82, 1, 2);
const PROBED_SERVER: Ipv4Addr = Ipv4Addr::new(10, 82, 2, 2);
const HELLO: &[u8] = b"\r\n\r\nhello\n";

/// Two hosts with nginx on the server, whose orphaned sockets (FIN_WAIT2 after closing an idle
/// connection) last about a second instead of a minute.
fn keepalive_lab(dir: &Path, client_ip: Ipv4Addr, server_ip: Ipv4Addr) -> Result<(TwoHosts, Proc, SocketAddr)> {
    let hosts = TwoHosts::new(&[client_ip.into()], &[server_ip.into()])?;
    sysctl(&hosts.server, "net.ipv4.tcp_fin_timeout=1")?;
    let server = SocketAddr::new(server_ip.into(), HTTP_PORT);
    let proc = nginx(&hosts.server, dir, server)?;
    ping(&hosts.client, server.ip())?;
    Ok((hosts, proc, server))
}

/// Keep-alive requests for `/hello`, each answered in full; `keepalive`: with TCP keep-alive
/// probing every second after a second idle.
fn keepalive_requests(ns: &Netns, client_ip: Ipv4Addr, server: SocketAddr, keepalive: bool) -> Result<Vec<Socket>> {
    in_netns(ns, || {
        (0..TEARDOWN_CONNS)
            .map(|_| {
                let (sock, _) = connect(client_ip.into(), server)?;
                if keepalive {
                    let probes = TcpKeepalive::new()
                        .with_time(Duration::from_secs(1))
                        .with_interval(Duration::from_secs(1))
                        .with_retries(10);
                    sock.set_tcp_keepalive(&probes)?;
                }
                (&sock).write_all(b"GET /hello HTTP/1.1\r\nHost: lab\r\n\r\n")?;
                read_until(&sock, HELLO)?;
                Ok(sock)
            })
            .collect()
    })
}

fn local(sock: &Socket) -> Result<SocketAddr> {
    sock.local_addr()?.as_socket().context("a socket without an IP address")
}

/// Waits until every socket is in TCP `state`, `what` the wait is for.
fn wait_for_state(socks: &[Socket], state: u8, what: &str, timeout: Duration) -> Result<()> {
    for sock in socks {
        wait_until(what, timeout, || Ok(tcp_state(sock)? == state))?;
    }
    Ok(())
}

/// [`keepalive_requests`] in a [`keepalive_lab`], watched from both ends until `closed` has seen
/// the connections end: the server, the clients' addresses and what each vantage saw. The
/// clients' sockets are closed before the watch stops.
fn keepalive_watched(
    dir: &Path,
    client_ip: Ipv4Addr,
    server_ip: Ipv4Addr,
    keepalive: bool,
    closed: impl FnOnce(&TwoHosts, &[Socket]) -> Result<()>,
) -> Result<(SocketAddr, Vec<SocketAddr>, Vec<Seen>)> {
    let (hosts, _nginx, server) = keepalive_lab(dir, client_ip, server_ip)?;
    let vantages = watch(dir, &[("client", &hosts.client_if), ("server", &hosts.server_if)])?;
    let socks = keepalive_requests(&hosts.client, client_ip, server, keepalive)?;
    closed(&hosts, &socks)?;
    let clients: Vec<SocketAddr> = socks.iter().map(local).collect::<Result<_>>()?;
    drop(socks);
    let seen = stop(dir, vantages)?;
    Ok((server, clients, seen))
}

/// nginx closes each idle connection after its keepalive_timeout (FIN); once its orphaned
/// socket is gone, the client closes too (FIN), which the server's stack answers with an RST
/// without ACK: a teardown by the server, after the client's FIN.
#[test]
fn nginx_closing_idle_keepalive_connections_then_the_clients_fin_is_a_teardown_by_the_server() -> Result<()> {
    let test = "nginx_closing_idle_keepalive_connections_then_the_clients_fin_is_a_teardown_by_the_server";
    run_test(test, &["nginx"], |dir| {
        let (server, clients, seen) = keepalive_watched(dir, IDLE_CLIENT, IDLE_SERVER, false, |hosts, socks| {
            wait_for_state(socks, TCP_CLOSE_WAIT, "nginx closed the idle connection", IO_TIMEOUT)?;
            wait_until("the server's orphaned sockets are gone", IO_TIMEOUT, || {
                Ok(!has_socket(&hosts.server, "connected", HTTP_PORT)?)
            })
        })?;

        let want: Vec<Rst> = clients.iter().map(|&c| rst(server, c, false)).collect();
        expect_resets(&seen, &want, "answer the client's FIN, after the server's", |reset, before| {
            before.iter().any(|b| b.src == server && b.has(FIN))
                && before.last().is_some_and(|last| last.src == reset.dst && last.has(FIN) && reset.seq == last.ack)
        })?;
        expect_teardowns(&seen, server, "server", |_, _, _, _| Ok(()))
    })
}

/// The same idle connections, but the client never closes: its TCP keep-alive probes (bare ACKs
/// below the window) reach the server once nginx's socket is gone, and the server's stack
/// answers one with an RST without ACK. The RST follows the server's own FIN and answers a
/// segment without data: a teardown, which replay names; live, whose programs do not watch
/// data segments, names nothing for it (by design) and never an alarming cause.
#[test]
fn keepalive_probes_after_nginx_closed_are_a_teardown_in_replay_and_nothing_alarming_live() -> Result<()> {
    let test = "keepalive_probes_after_nginx_closed_are_a_teardown_in_replay_and_nothing_alarming_live";
    run_test(test, &["nginx"], |dir| {
        let (server, clients, seen) = keepalive_watched(dir, PROBED_CLIENT, PROBED_SERVER, true, |_, socks| {
            wait_for_state(socks, TCP_CLOSE, "a keep-alive probe drew the server's reset", Duration::from_secs(15))
        })?;

        let want: Vec<Rst> = clients.iter().map(|&c| rst(server, c, false)).collect();
        expect_resets(&seen, &want, "answer a keep-alive probe after the server's FIN", |reset, before| {
            before.iter().any(|b| b.src == server && b.has(FIN))
                && !before.iter().any(|b| b.src == reset.dst && (b.has(FIN) || b.has(RST)))
                && before.last().is_some_and(|last| last.src == reset.dst && last.payload == 0 && reset.seq == last.ack)
        })?;
        let want = [Want {
            cause: "teardown",
            addr: server.ip(),
            port: HTTP_PORT,
            side: Some("server"),
            resets: TEARDOWN_CONNS as u64,
        }];
        for s in &seen {
            let what = format!("{}'s veth, replay {}", s.name, s.pcap_hint());
            expect_verdicts(&what, &s.replay, &want)?;
            let v = &verdicts(&s.replay)?[0];
            ensure!(v["after_own_fin"] == TEARDOWN_CONNS && v["after_peer_fin"] == 0, "{what}: {v}");
            let what = format!("{}'s veth, live {}", s.name, s.pcap_hint());
            let live = verdicts(&s.live)?;
            ensure!(
                live.iter().all(|v| key(v) == want[0].key()),
                "{what}: only a teardown by the server, or nothing, may be named:{}",
                show(&live)
            );
            ensure!(!live.iter().any(alarming), "{what}: an alarming cause:{}", show(&live));
            same_live_and_replay(s)?;
        }
        Ok(())
    })
}

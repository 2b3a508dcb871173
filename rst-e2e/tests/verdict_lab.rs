//! The verdict lab against independent witnesses: tcpdump on the client's veth and on every
//! server host's veth, and the kernel's `tcp:tcp_send_reset` tracepoint. Each service must have
//! produced exactly the RSTs its account says, with the properties its cause means, and no
//! service any RST it should not have; then rstwatch, live on the client's veth, live on the
//! server side (the router's ends of the server hosts' veths, one rstwatch on all eight) and in
//! replay of the committed capture, must name each service by its cause and no other.
//!
//! From the server side every cause shows but `middlebox` and `state_lost`: the router forges its
//! resets in its forward path and sends them back to the client, and the SYNs they answer never
//! reach the guarded host, so nothing of that service crosses a server's veth; and the standby's
//! resets cross the standby's veth, where none of those connections' handshakes did (they went
//! to the primary, on its own veth): lone resets, which name nothing. rstwatch must then name no
//! cause for either there rather than a wrong one.
//!
//! The lab test needs root (namespaces, nftables, tracefs); the committed capture's test does not.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use anyhow::{bail, ensure, Context as _, Result};
use rst_lab::Need;
use rst_lab::{
    diag_lab::{
        self, ensure_rsts, listing, tcp_segments, Capture, End, ResetTrace, Segment, ACK, DEFAULT_TTL, FIN, RST, SYN,
    },
    verdict_lab::{
        host_of, Account, Cause, Details, Outcome, Role, Run, VerdictLab, CLIENT, CLIENT6, IPV6_CAUSES, LAB_CAUSES,
        SERVED_PORT, VIP,
    },
};
use serde_json::{json, Value};

/// Past any delayed ACK or first retransmission timeout, so a stray segment would show.
/// How a missing release binary is made.
const RELEASE: &str = "`cargo xtask build` makes it, or set RSTWATCH_BIN";
const SETTLE: Duration = Duration::from_millis(700);
const RUN: Duration = Duration::from_secs(3);
/// HAProxy's `inter`, and how far apart two checks may be from it on a loaded CI machine.
const CHECK_INTERVAL_MS: u64 = 250;
const INTERVAL_SLACK_MS: u64 = 60;

/// Whether `s` belongs to a connection with `service` (either direction).
fn with(s: &Segment, service: SocketAddr) -> bool {
    s.src == service || s.dst == service
}

/// The segments of one connection, identified by its client address.
fn conn_of(segments: &[Segment], client: SocketAddr, server: SocketAddr) -> Vec<&Segment> {
    segments.iter().filter(|s| (s.src, s.dst) == (client, server) || (s.src, s.dst) == (server, client)).collect()
}

fn ms_of(s: &Segment, run: &Run) -> u64 {
    (s.time_us / 1000).saturating_sub(run.clock.start_unix_ms())
}

/// The RSTs on one veth are exactly what the accounts whose connections cross it say.
fn check_rsts(name: &str, accounts: &[&Account], end: End, segments: &[Segment]) -> Result<()> {
    ensure_rsts(name, accounts.iter().flat_map(|a| a.rsts_at(end)).collect(), segments)
}

/// Each refusal is a RST+ACK answering the SYN of its connection, with no SYN+ACK before it.
fn check_refusals(account: &Account, segments: &[Segment]) -> Result<()> {
    for c in account.service_conns().filter(|c| c.outcome == Outcome::Refused) {
        let conn = conn_of(segments, c.client, c.server);
        let syn = conn.iter().find(|s| s.src == c.client && s.has(SYN) && !s.has(ACK));
        let rst = conn.iter().find(|s| s.has(RST));
        let (Some(syn), Some(rst)) = (syn, rst) else {
            anyhow::bail!("{}: refusal of {} without SYN and RST:{}", account.cause.name(), c.client, listing(conn));
        };
        ensure!(
            rst.has(ACK) && rst.ack == syn.seq.wrapping_add(1) && rst.src == c.server,
            "{}: {} is not the answer to {}",
            account.cause.name(),
            rst,
            syn
        );
        ensure!(
            !conn.iter().any(|s| s.has(SYN | ACK)),
            "{}: a refused connection had a SYN+ACK:{}",
            account.cause.name(),
            listing(conn)
        );
    }
    Ok(())
}

/// Connections accounted as closed end with FINs both ways and no RST.
fn check_closed(account: &Account, segments: &[Segment]) -> Result<()> {
    for c in account.conns.iter().filter(|c| c.outcome == Outcome::Closed) {
        let conn = conn_of(segments, c.client, c.server);
        let fins = [c.client, c.server].map(|from| conn.iter().any(|s| s.src == from && s.has(FIN)));
        ensure!(
            fins == [true, true] && !conn.iter().any(|s| s.has(RST)),
            "{}: {} should have closed with FINs both ways:{}",
            account.cause.name(),
            c.client,
            listing(conn)
        );
    }
    Ok(())
}

fn check_went_down(account: &Account, run: &Run, segments: &[Segment]) -> Result<()> {
    let Details::WentDown { last_accept_ms, killed_ms, first_refusal_ms } = account.details else {
        anyhow::bail!("went_down without its details");
    };
    ensure!(last_accept_ms < killed_ms && killed_ms <= first_refusal_ms, "{:?}", account.details);
    let mine: Vec<&Segment> = segments.iter().filter(|s| with(s, account.service)).collect();
    let last_synack = mine.iter().filter(|s| s.has(SYN | ACK)).map(|s| ms_of(s, run)).max().unwrap_or(0);
    let first_rst = mine.iter().filter(|s| s.has(RST)).map(|s| ms_of(s, run)).min().unwrap_or(0);
    // Wall-clock milliseconds on both sides: allow for rounding.
    ensure!(
        last_synack <= killed_ms + 1 && first_rst + 1 >= killed_ms,
        "went_down: last SYN+ACK at {last_synack} ms, first RST at {first_rst} ms, killed at {killed_ms} ms"
    );
    Ok(())
}

/// At each turn-away, exactly `limit` connections are open (handshake seen, no FIN or RST yet).
fn check_limit(account: &Account, segments: &[Segment]) -> Result<()> {
    let Details::Limit { limit } = account.details else {
        anyhow::bail!("connection_limit without its limit");
    };
    let mut open: BTreeMap<SocketAddr, bool> = BTreeMap::new();
    let mut turned_away = 0;
    for s in segments.iter().filter(|s| with(s, account.service)) {
        let client = if s.src == account.service { s.dst } else { s.src };
        if s.has(SYN | ACK) {
            open.insert(client, true);
        } else if s.has(FIN) {
            open.insert(client, false);
        } else if s.has(RST) {
            let holding = open.values().filter(|&&o| o).count();
            ensure!(
                holding == usize::try_from(limit)?,
                "a turn-away while {holding} connections were open, want {limit}"
            );
            turned_away += 1;
        }
    }
    ensure!(turned_away == account.count(Outcome::Refused), "{turned_away} turn-aways on the wire");
    Ok(())
}

/// The standby's RSTs carry no ACK, and their sequence number is the acknowledgement number of
/// the client's data segment they answer.
fn check_state_lost(account: &Account, segments: &[Segment]) -> Result<()> {
    for c in &account.conns {
        let conn = conn_of(segments, c.client, c.server);
        let rst_at = conn.iter().position(|s| s.has(RST)).context("state_lost: no RST")?;
        let rst = conn[rst_at];
        let data = conn[..rst_at].iter().rev().find(|s| s.src == c.client && s.payload > 0);
        let data = data.context("state_lost: no client data before the RST")?;
        ensure!(
            !rst.has(ACK) && rst.seq == data.ack,
            "state_lost: {rst} (seq {}) does not answer {data} (ack {})",
            rst.seq,
            data.ack
        );
    }
    Ok(())
}

/// The forged RSTs carry the router's TTL, the guarded host's own SYN+ACKs one less.
fn check_middlebox(account: &Account, segments: &[Segment]) -> Result<()> {
    let Details::Middlebox { rst_ttl, peer_ttl, served_port } = account.details else {
        anyhow::bail!("middlebox without its TTLs");
    };
    let host = account.service.ip();
    let own: Vec<&Segment> =
        segments.iter().filter(|s| s.src.ip() == host && s.src.port() == served_port && s.has(SYN | ACK)).collect();
    ensure!(!own.is_empty() && own.iter().all(|s| s.ttl == peer_ttl), "the host's SYN+ACKs:{}", listing(own));
    let forged: Vec<&Segment> = segments.iter().filter(|s| s.src == account.service && s.has(RST)).collect();
    ensure!(forged.iter().all(|s| s.ttl == rst_ttl && rst_ttl != peer_ttl), "forged RSTs:{}", listing(forged));
    Ok(())
}

/// The aborts are RST+ACK after data both ways, in the window: at the server's next sequence
/// number.
fn check_app_abort(account: &Account, segments: &[Segment]) -> Result<()> {
    for c in &account.conns {
        let conn = conn_of(segments, c.client, c.server);
        let rst_at = conn.iter().position(|s| s.has(RST)).context("app_abort: no RST")?;
        let before = &conn[..rst_at];
        let last_server_data = before.iter().rev().find(|s| s.src == c.server && s.payload > 0);
        let last_server_data = last_server_data.context("app_abort: the server sent no data")?;
        ensure!(before.iter().any(|s| s.src == c.client && s.payload > 0), "app_abort: the client sent no data");
        let next = last_server_data.seq.wrapping_add(u32::try_from(last_server_data.payload)?);
        let rst = conn[rst_at];
        ensure!(rst.has(ACK) && rst.seq == next, "app_abort: {rst} (seq {}) is not at {next}", rst.seq);
    }
    Ok(())
}

/// Each check: SYN, SYN+ACK, the client's RST+ACK, nothing else; at HAProxy's interval.
fn check_health_checks(account: &Account, segments: &[Segment]) -> Result<()> {
    let mut times = Vec::new();
    for c in &account.conns {
        let conn = conn_of(segments, c.client, c.server);
        let shape: Vec<(u8, usize)> = conn.iter().map(|s| (s.flags & (SYN | ACK | RST | FIN), s.payload)).collect();
        ensure!(
            shape == [(SYN, 0), (SYN | ACK, 0), (RST | ACK, 0)] && conn[2].src == c.client,
            "a check that is not SYN, SYN+ACK, RST+ACK:{}",
            listing(conn)
        );
        times.push(conn[2].time_us / 1000);
    }
    ensure!(times.len() >= 5, "only {} checks", times.len());
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        ensure!(
            gap.abs_diff(CHECK_INTERVAL_MS) <= INTERVAL_SLACK_MS,
            "checks {gap} ms apart, want {CHECK_INTERVAL_MS} ms ± {INTERVAL_SLACK_MS}"
        );
    }
    Ok(())
}

/// What the account itself claims, scenario by scenario.
fn check_counts(run: &Run) -> Result<()> {
    let count = |cause, outcome| run.account(cause).map_or(0, |a| a.count(outcome));
    ensure!(count(Cause::NoListener, Outcome::Refused) == 3);
    ensure!(count(Cause::WentDown, Outcome::Closed) == 3 && count(Cause::WentDown, Outcome::Refused) == 3);
    ensure!(
        count(Cause::ConnectionLimit, Outcome::Closed) == 3 && count(Cause::ConnectionLimit, Outcome::Refused) == 2
    );
    ensure!(count(Cause::StateLost, Outcome::Reset) == 3);
    ensure!(count(Cause::Middlebox, Outcome::Refused) == 3);
    ensure!(count(Cause::AppAbort, Outcome::Reset) == 3);
    let v4 = LAB_CAUSES.iter().filter(|&&c| c != Cause::HealthCheck);
    let order: Vec<Cause> = v4.chain(&IPV6_CAUSES).chain([&Cause::HealthCheck]).copied().collect();
    ensure!(run.accounts.iter().map(|a| a.cause).collect::<Vec<_>>() == order);
    let v6: Vec<Cause> = run.accounts.iter().filter(|a| a.service.is_ipv6()).map(|a| a.cause).collect();
    ensure!(v6 == IPV6_CAUSES, "IPv6 accounts: {v6:?}");
    for cause in IPV6_CAUSES {
        let both: Vec<&Account> = run.accounts.iter().filter(|a| a.cause == cause).collect();
        ensure!(both.len() == 2 && both[0].conns.len() == both[1].conns.len(), "{}: v4 and v6 differ", cause.name());
    }
    Ok(())
}

/// Kernel reasons where a TCP stack sent the RST; none where netfilter did. The standby answers
/// from its listener, so the tracepoint names the listening socket (`dest=0.0.0.0:0`), in
/// TCP_LISTEN, with reason TCP_FLAGS: an ACK where a listener wants a SYN.
fn check_kernel_reasons(run: &Run, events: &[diag_lab::KernelReset]) -> Result<()> {
    for account in &run.accounts {
        let reason = match account.cause {
            Cause::NoListener | Cause::WentDown => Some("NO_SOCKET"),
            Cause::AppAbort | Cause::HealthCheck => Some("TCP_STATE"),
            Cause::StateLost => Some("TCP_FLAGS"),
            Cause::ConnectionLimit | Cause::Middlebox => None,
            Cause::Teardown
            | Cause::Scan
            | Cause::IdleTimeout
            | Cause::KeepaliveRace
            | Cause::NatLost
            | Cause::ListenOverflow
            | Cause::LocalFirewall => bail!("the verdict lab made a {} account", account.cause.name()),
        };
        let mut want: Vec<_> = account
            .rsts_at(End::Client)
            .into_iter()
            .filter_map(|rst| {
                let dst = if account.cause == Cause::StateLost { "0.0.0.0:0".parse().ok()? } else { rst.dst };
                reason.map(|r| (rst.src, dst, r.to_owned()))
            })
            .collect();
        let ends = |e: &&diag_lab::KernelReset| {
            account.conns.iter().any(|c| [(c.client, c.server), (c.server, c.client)].contains(&(e.src, e.dst)))
                || (account.cause == Cause::StateLost && e.src == account.service)
        };
        let mut got: Vec<_> = events.iter().filter(ends).map(|e| (e.src, e.dst, e.reason.clone())).collect();
        want.sort();
        got.sort();
        ensure!(got == want, "{}: tcp_send_reset events\n  want: {want:?}\n  got:  {got:?}", account.cause.name());
    }
    Ok(())
}

#[test]
fn every_service_resets_for_its_one_cause_only_and_rstwatch_names_it() -> Result<()> {
    rst_lab::require!(
        Need::Root("namespaces, nftables, tracefs"),
        Need::Tool("ip"),
        Need::Tool("nft"),
        Need::Tool("tcpdump"),
        Need::Tool("haproxy"),
        Need::Tool("python3")
    );
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "this test needs root (namespaces, nftables, tracefs)");
    rst_lab::lab::sweep_stale()?;
    diag_lab::ensure_tracefs()?;
    let lab = VerdictLab::new()?;
    let client_cap = Capture::start(&lab.client_if)?;
    let host_caps: Vec<(Role, Capture)> =
        lab.hosts.iter().map(|h| Ok((h.role, Capture::start(&h.iface)?))).collect::<Result<_>>()?;
    let trace = ResetTrace::start()?;
    // rstwatch watches the client's veth through the same run: its verdicts are checked against
    // the account last, once the witnesses have shown the lab did what the account says. (One
    // lab per test process at a time: the tracepoint sees every namespace's resets.)
    let mut watch = diag_lab::nsenter(&lab.client_if.ns, rst_lab::paths::rstwatch_for_tests());
    watch.args(["-i", &lab.client_if.name, "--format", "json", "--interval", "1s"]);
    let mut rstwatch = rst_lab::lab::Proc::spawn(&mut watch)?;
    rstwatch.wait_for_stderr(&format!("attached to {}", lab.client_if.name), Duration::from_secs(30))?;
    // And a second on the server side: every server host's veth, at the router's end.
    let mut server_watch = diag_lab::nsenter(&lab.router, rst_lab::paths::rstwatch_for_tests());
    for host in &lab.hosts {
        server_watch.args(["-i", &host.port.name]);
    }
    server_watch.args(["--format", "json", "--interval", "1s"]);
    let mut server_side = rst_lab::lab::Proc::spawn(&mut server_watch)?;
    let last_port = &lab.hosts.last().context("no hosts")?.port.name;
    server_side.wait_for_stderr(&format!("attached to {last_port}"), Duration::from_secs(30))?;
    // And a third on the server that goes down, on its own veth: its kernel sends the refusals,
    // so the verdict carries the reason it gave.
    let down_host = lab.host(Role::Down);
    let mut own_watch = diag_lab::nsenter(&down_host.ns, rst_lab::paths::rstwatch_for_tests());
    own_watch.args(["-i", &down_host.iface.name, "--format", "json", "--interval", "1s"]);
    let mut on_the_server = rst_lab::lab::Proc::spawn(&mut own_watch)?;
    on_the_server.wait_for_stderr(&format!("attached to {}", down_host.iface.name), Duration::from_secs(30))?;
    let run = lab.run_all(RUN)?;
    std::thread::sleep(SETTLE);
    rstwatch.signal(libc::SIGINT)?;
    server_side.signal(libc::SIGINT)?;
    on_the_server.signal(libc::SIGINT)?;
    let watched = rstwatch.finish(Duration::from_secs(30))?;
    let server_watched = server_side.finish(Duration::from_secs(30))?;
    let own_watched = on_the_server.finish(Duration::from_secs(30))?;
    let events = trace.stop()?;
    let client_segs = client_cap.stop()?;
    let host_segs: BTreeMap<Role, Vec<Segment>> =
        host_caps.into_iter().map(|(r, c)| Ok((r, c.stop()?))).collect::<Result<_>>()?;
    eprintln!("segments on the client's veth:{}", listing(&client_segs));
    eprintln!("account: {:#}", run.to_json(&lab));

    check_counts(&run)?;
    let all: Vec<&Account> = run.accounts.iter().collect();
    check_rsts("the client's veth", &all, End::Client, &client_segs)?;
    for (role, segs) in &host_segs {
        let here: Vec<&Account> = run.accounts.iter().filter(|a| host_of(a.cause) == *role).collect();
        check_rsts(&format!("the {} host's veth", role.name()), &here, End::Server, segs)?;
    }
    for account in &run.accounts {
        let server_segs = &host_segs[&host_of(account.cause)];
        check_refusals(account, &client_segs)?;
        // The router's forged refusals never reach the guarded host.
        if account.cause != Cause::Middlebox {
            check_refusals(account, server_segs)?;
        }
        check_closed(account, &client_segs)?;
        check_closed(account, server_segs)?;
        match account.cause {
            Cause::NoListener | Cause::Middlebox => {}
            Cause::Teardown
            | Cause::Scan
            | Cause::IdleTimeout
            | Cause::KeepaliveRace
            | Cause::NatLost
            | Cause::ListenOverflow
            | Cause::LocalFirewall => bail!("the verdict lab made a {} account", account.cause.name()),
            Cause::WentDown => check_went_down(account, &run, &client_segs)?,
            Cause::ConnectionLimit => check_limit(account, &client_segs)?,
            Cause::StateLost => {
                check_state_lost(account, &client_segs)?;
                check_state_lost(account, server_segs)?;
            }
            Cause::AppAbort => check_app_abort(account, &client_segs)?,
            Cause::HealthCheck => {
                check_health_checks(account, &client_segs)?;
                check_health_checks(account, server_segs)?;
            }
        }
        if account.cause == Cause::Middlebox {
            check_middlebox(account, &client_segs)?;
            ensure!(
                !server_segs.iter().any(|s| s.dst == account.service),
                "a segment to the guarded port reached the host:{}",
                listing(server_segs)
            );
            ensure!(server_segs.iter().any(|s| s.src.port() == SERVED_PORT), "the served port saw no traffic");
        }
    }
    // The primary's veth saw the moved connections start, and nothing of them after the move.
    let state_lost = run.account(Cause::StateLost).context("no state_lost account")?;
    let Details::StateLost { moved_ms, .. } = state_lost.details else {
        anyhow::bail!("state_lost without its details");
    };
    let primary = &host_segs[&Role::Primary];
    ensure!(primary.iter().any(|s| s.dst.ip() == IpAddr::from(VIP)), "the primary never saw the VIP's connections");
    let late: Vec<&Segment> = primary.iter().filter(|s| ms_of(s, &run) > moved_ms + 1).collect();
    ensure!(late.is_empty(), "the primary saw segments after the move:{}", listing(late));
    ensure!(
        !host_segs[&Role::Standby].iter().any(|s| s.has(SYN)),
        "the standby saw a handshake: it must know none of the connections"
    );
    check_kernel_reasons(&run, &events)?;
    let ours = [IpAddr::from(CLIENT), IpAddr::from(CLIENT6)];
    ensure!(client_segs.iter().all(|s| ours.contains(&s.src.ip()) || ours.contains(&s.dst.ip())));
    ensure!(client_segs.iter().filter_map(Segment::as_rst).all(|r| r.ttl == DEFAULT_TTL || r.ttl == DEFAULT_TTL - 1));
    ensure!(watched.status.success(), "rstwatch failed ({}): {}", watched.status, watched.stderr);
    let account = run.to_json(&lab);
    let summary = rst_lab::lab::summary_line(&watched.stdout)?;
    let started = live_start_unix_ms(&watched.stdout)?;
    check_verdicts("live, the client's veth", &summary, &account, started, LIVE_SLACK_MS, &[])?;
    // Of the resets seen there, the client's kernel sent only HAProxy's (a socket closed in a
    // state that resets); every other verdict's resets it received.
    for verdict in summary["verdicts"].as_array().context("verdicts")? {
        let want = if verdict["cause"] == Cause::HealthCheck.name() { json!("TCP_STATE") } else { Value::Null };
        ensure!(verdict["kernel_reason"] == want, "client's veth: kernel_reason of {verdict:#}");
    }
    ensure!(
        server_watched.status.success(),
        "rstwatch on the server side failed ({}): {}",
        server_watched.status,
        server_watched.stderr
    );
    let summary = rst_lab::lab::summary_line(&server_watched.stdout)?;
    let started = live_start_unix_ms(&server_watched.stdout)?;
    check_verdicts("live, the server side", &summary, &account, started, LIVE_SLACK_MS, &NOT_ON_THE_SERVER_SIDE)?;
    ensure!(own_watched.status.success(), "rstwatch on the down host failed: {}", own_watched.stderr);
    check_own_refusals(&own_watched.stdout, &account)
}

/// rstwatch on the down host's own veth: of the lab's services only that one crosses it, and
/// its refusals are its own kernel's, which says why: no socket (the listener is gone).
fn check_own_refusals(stdout: &str, account: &Value) -> Result<()> {
    let what = "live, the down host's own veth";
    let summary = rst_lab::lab::summary_line(stdout)?;
    let down = account["services"]
        .as_array()
        .context("account.services")?
        .iter()
        .find(|s| s["cause"] == Cause::WentDown.name())
        .context("no went_down account")?;
    let only = json!({ "services": [down] });
    // Any verdict besides its own is a cause no service has here.
    check_verdicts(what, &summary, &only, live_start_unix_ms(stdout)?, LIVE_SLACK_MS, &[])?;
    let verdict = &summary["verdicts"][0];
    ensure!(verdict["kernel_reason"] == "NO_SOCKET", "{what}: kernel_reason {}", verdict["kernel_reason"]);
    let text = verdict["text"].as_str().unwrap_or_default();
    ensure!(text.contains("NO_SOCKET"), "{what}: the sentence does not name the kernel's reason: {text}");
    Ok(())
}

/// Causes whose resets never cross a server's veth (see the module's comment).
const NOT_ON_THE_SERVER_SIDE: [Cause; 2] = [Cause::Middlebox, Cause::StateLost];

/// How far rstwatch's `since_ms` may be from the account's first refusal, live: the account
/// times the attempt, rstwatch the refusal's arrival, each on its own clock, and the run's
/// start is read back from the first interval's end (ms) less its length.
const LIVE_SLACK_MS: u64 = 30;
/// The same in replay: both from the capture's timestamps (the account's attempt is timed just
/// before its SYN), so only rounding to ms and the attempt's own latency.
const REPLAY_SLACK_MS: u64 = 5;

/// When a live run started (Unix ms): its first interval's end less its length.
fn live_start_unix_ms(stdout: &str) -> Result<u64> {
    let first: Value = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|v| v["type"] == "interval")
        .context("no interval record")?;
    let ended = first["time"].as_str().context("interval.time")?;
    let ended = humantime::parse_rfc3339(ended).with_context(|| format!("interval.time {ended}"))?;
    let ended_ms = u64::try_from(ended.duration_since(std::time::UNIX_EPOCH)?.as_millis())?;
    let elapsed_ms = first["elapsed_ms"].as_f64().context("interval.elapsed_ms")?;
    Ok(ended_ms - elapsed_ms.round() as u64)
}

/// The capture committed for replay tests still matches the account committed with it: per
/// service, the RSTs the account's connections make, and no others.
#[test]
fn committed_capture_matches_its_account() -> Result<()> {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rst-userspace/tests/data");
    let pcap = std::fs::read(data.join("verdict-lab.cap")).context("reading verdict-lab.cap")?;
    let account: Value = serde_json::from_slice(&std::fs::read(data.join("verdict-lab.account.json"))?)?;
    let segments = tcp_segments(&pcap)?;
    let mut want: Vec<(SocketAddr, SocketAddr)> = Vec::new();
    let services = account["services"].as_array().context("no services")?;
    ensure!(services.len() == LAB_CAUSES.len() + IPV6_CAUSES.len(), "{} services", services.len());
    for service in services {
        let from_client = service["sender"] == "client";
        let mut resets = 0;
        for conn in service["conns"].as_array().context("no conns")? {
            if conn["outcome"] == "closed" {
                continue;
            }
            let client: SocketAddr = conn["client"].as_str().context("client")?.parse()?;
            let server: SocketAddr = conn["server"].as_str().context("server")?.parse()?;
            want.push(if from_client { (client, server) } else { (server, client) });
            resets += 1;
        }
        ensure!(
            service["resets"] == resets,
            "{}: resets {} but {resets} reset conns",
            service["cause"],
            service["resets"]
        );
    }
    let mut got: Vec<(SocketAddr, SocketAddr)> =
        segments.iter().filter_map(Segment::as_rst).map(|r| (r.src, r.dst)).collect();
    want.sort();
    got.sort();
    ensure!(got == want, "the committed capture's RSTs differ from its account\n  want: {want:?}\n  got:  {got:?}");
    Ok(())
}

/// (cause, addr, port) of a verdict or an account entry.
fn identity(entry: &Value) -> (String, String, u64) {
    (
        entry["cause"].as_str().unwrap_or("?").to_owned(),
        entry["addr"].as_str().unwrap_or("?").to_owned(),
        entry["port"].as_u64().unwrap_or(0),
    )
}

/// rstwatch's summary names every service of the lab's `account` by its own cause, with the
/// account's counts and fields, and no service by a cause it does not have; services of the
/// `unseen` causes (not visible from this vantage) get no verdict at all. `started_unix_ms`:
/// when rstwatch's run began, to check `since_ms` against the account's first refusal within
/// `slack_ms`.
fn check_verdicts(
    what: &str,
    summary: &Value,
    account: &Value,
    started_unix_ms: u64,
    slack_ms: u64,
    unseen: &[Cause],
) -> Result<()> {
    let verdicts = summary["verdicts"].as_array().with_context(|| format!("{what}: no summary.verdicts"))?;
    let services = account["services"].as_array().context("account.services")?;
    let (hidden, services): (Vec<&Value>, Vec<&Value>) =
        services.iter().partition(|s| unseen.iter().any(|c| s["cause"] == c.name()));
    for service in &hidden {
        let named: Vec<&Value> =
            verdicts.iter().filter(|v| v["addr"] == service["addr"] && v["port"] == service["port"]).collect();
        ensure!(named.is_empty(), "{what}: a verdict for a service this vantage cannot see: {named:#?}");
    }
    let expected: BTreeSet<_> = services.iter().copied().map(identity).collect();
    let named: BTreeSet<_> = verdicts.iter().map(identity).collect();
    let wrong: Vec<_> = named.difference(&expected).collect();
    ensure!(wrong.is_empty(), "{what}: causes a service does not have: {wrong:?}\nverdicts: {verdicts:#?}");
    let missed: Vec<_> = expected.difference(&named).collect();
    ensure!(missed.is_empty(), "{what}: causes not named: {missed:?}\nverdicts: {verdicts:#?}");
    for service in services {
        let id = identity(service);
        let verdict = verdicts.iter().find(|v| identity(v) == id).context("named above")?;
        ensure!(
            verdict["resets"] == service["resets"],
            "{what}: {id:?} resets {} ≠ {}",
            verdict["resets"],
            service["resets"]
        );
        ensure!(verdict["benign"] == service["benign"], "{what}: {id:?} benign");
        for field in ["limit", "rst_ttl", "peer_ttl"] {
            ensure!(
                service[field].is_null() || verdict[field] == service[field],
                "{what}: {id:?} {field} {} ≠ {}",
                verdict[field],
                service[field]
            );
        }
        if let Some(first_refusal) = service["since_unix_ms"].as_u64() {
            let since = verdict["since_ms"].as_u64().with_context(|| format!("{what}: {id:?} has no since_ms"))?;
            let at = started_unix_ms + since;
            ensure!(
                at.abs_diff(first_refusal) <= slack_ms,
                "{what}: {id:?} since_ms {since} puts the first refusal at {at} (Unix ms), the account at \
                 {first_refusal}, more than {slack_ms} ms apart"
            );
        }
        ensure!(verdict["text"].as_str().is_some_and(|t| !t.is_empty()), "{what}: {id:?} has no sentence");
    }
    let resets: Vec<u64> = verdicts.iter().map(|v| v["resets"].as_u64().unwrap_or(0)).collect();
    ensure!(resets.windows(2).all(|w| w[0] >= w[1]), "{what}: verdicts not sorted by resets: {resets:?}");
    Ok(())
}

/// `rstwatch replay` of the committed capture gives the verdicts its account says (no root:
/// the same evidence code as a live run, fed from the capture).
#[test]
fn replay_of_the_committed_capture_names_each_cause() -> Result<()> {
    rst_lab::require!(Need::File(&rst_lab::paths::rstwatch_release(), RELEASE));
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rst-userspace/tests/data");
    let account: Value = serde_json::from_slice(&std::fs::read(data.join("verdict-lab.account.json"))?)?;
    let output = std::process::Command::new(rst_lab::paths::rstwatch_for_tests())
        .args(["replay", "--format", "json"])
        .arg(data.join("verdict-lab.cap"))
        .output()
        .context("running rstwatch replay")?;
    ensure!(output.status.success(), "replay failed: {}", String::from_utf8_lossy(&output.stderr));
    let summary = rst_lab::lab::summary_line(&String::from_utf8_lossy(&output.stdout))?;
    // Replay's run starts at the capture's first frame.
    let segments = tcp_segments(&std::fs::read(data.join("verdict-lab.cap"))?)?;
    let first_us = segments.iter().map(|s| s.time_us).min().context("an empty capture")?;
    check_verdicts("replay", &summary, &account, first_us / 1000, REPLAY_SLACK_MS, &[])
}

//! `cargo xtask demo`: the forum case ("I'm seeing a large number of TCP RST and am not sure what
//! is causing it") replayed in a namespace lab, with rstwatch showing who sends the resets; then
//! the forum's suspects one by one in the verdict lab (`rst_lab::verdict_lab`), a VIP failover to a
//! standby without state and a firewall forging resets among them, watched from the client.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use rst_lab::{
    lab, signal,
    traffic::{self, Kind, Side, Step},
    verdict_lab::{self, Cause, VerdictLab},
};

use crate::{build, setup};

const CLIENTS: [Ipv4Addr; 3] =
    [Ipv4Addr::new(10, 77, 1, 11), Ipv4Addr::new(10, 77, 1, 12), Ipv4Addr::new(10, 77, 1, 13)];
const VIP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 77, 2, 10)), 443);
const APP: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 77, 2, 20)), 8080);
const ABORTER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 77, 2, 30)), 9000);
const BALANCER_LIMIT: usize = 6;
const HOLD: Duration = Duration::from_millis(1500);
const PACE: Duration = Duration::from_millis(100);

pub fn run(seconds: Duration) -> Result<()> {
    signal::install()?;
    setup::run()?;
    let rstwatch = build::run()?;
    if signal::stop_requested() {
        return Ok(());
    }
    for name in lab::sweep_stale()? {
        eprintln!("xtask: removed stale lab namespace {name}");
    }

    let client_addrs: Vec<IpAddr> = CLIENTS.iter().copied().map(IpAddr::V4).collect();
    let hosts = lab::TwoHosts::new(&client_addrs, &[VIP.ip(), APP.ip(), ABORTER.ip()])?;
    if signal::stop_requested() {
        return Ok(());
    }
    print_header(&hosts, seconds);

    let mut steps: Vec<Step> =
        CLIENTS.iter().map(|&c| Step { kind: Kind::Balancer, every: 1, src: c.into(), dst: VIP }).collect();
    steps.push(Step { kind: Kind::Refused, every: 5, src: CLIENTS[1].into(), dst: APP });
    steps.push(Step { kind: Kind::ServerAbort, every: 4, src: CLIENTS[2].into(), dst: ABORTER });
    let plan = traffic::Plan {
        client_ns: hosts.client.clone(),
        server_ns: hosts.server.clone(),
        steps,
        rounds: None,
        // Traffic ends just before rstwatch's --duration does, so its summary holds all of it
        // and can be checked against the generator's account printed after it.
        duration: Some(seconds.saturating_sub(Duration::from_millis(500))),
        pace: PACE,
        balancer_limit: BALANCER_LIMIT,
        hold: Some(HOLD),
    };

    // The kernel's reasons come through tracefs; without it the demo still runs, and rstwatch
    // says what is missing.
    if let Err(error) = rst_lab::diag_lab::ensure_tracefs() {
        eprintln!("xtask: no tracefs ({error:#}): rstwatch will show no kernel reasons");
    }
    let mut watcher = watch(&hosts.server, &hosts.server_if, &rstwatch, seconds, &["--by", "service"])?;

    let watcher_done = AtomicBool::new(false);
    let stop = || watcher_done.load(Ordering::SeqCst) || signal::stop_requested();
    let (report, status) = thread::scope(|scope| {
        let generator = scope.spawn(|| traffic::run(&plan, &stop));
        let status = wait_for_watcher(&mut watcher, seconds);
        watcher_done.store(true, Ordering::SeqCst);
        let report = generator.join().map_err(|_| anyhow!("the traffic generator panicked"))?;
        Ok::<_, anyhow::Error>((report, status))
    })?;
    let report = report?;
    print_report(&report);
    let status = status?;
    drop(hosts);
    if !status.success() {
        bail!("rstwatch exited with {status}");
    }
    if !report.errors.is_empty() {
        bail!("the traffic generator hit {} unexpected outcomes (see above)", report.errors.len());
    }
    if signal::stop_requested() {
        return Ok(());
    }
    suspects(&rstwatch, seconds)
}

/// rstwatch on `iface` for `seconds`, run with nsenter: `ip netns exec` mounts a /sys of its own,
/// without tracefs. Returns once it has attached.
fn watch(
    ns: &lab::Netns,
    iface: &lab::Iface,
    rstwatch: &std::path::Path,
    seconds: Duration,
    extra: &[&str],
) -> Result<lab::Proc> {
    let duration_arg = format!("{}s", seconds.as_secs());
    let mut cmd = rst_lab::diag_lab::nsenter(ns, rstwatch);
    cmd.args(["-i", &iface.name, "--duration", &duration_arg]).args(extra);
    let mut watcher = lab::Proc::spawn_with(&mut cmd, false, true)?;
    watcher.wait_for_stderr("attached", Duration::from_secs(30)).context("starting rstwatch")?;
    Ok(watcher)
}

/// The second act: every suspect of the forum thread, each made by real software on a host of
/// its own, watched from the client's veth; the lab's account follows rstwatch's summary.
fn suspects(rstwatch: &std::path::Path, seconds: Duration) -> Result<()> {
    let lab = VerdictLab::new()?;
    println!();
    println!(
        "The suspects one by one: client {} — router — the server LAN behind {}",
        verdict_lab::CLIENT,
        verdict_lab::ROUTER_LAN
    );
    println!("  rstwatch watches the client's veth {} for {} s.", lab.client_if.name, seconds.as_secs());
    println!();
    let mut watcher = watch(&lab.client, &lab.client_if, rstwatch, seconds, &[])?;
    // rstwatch's --duration must outlast the scenarios, which take a second or two on their own.
    let run = lab.run_announced(seconds.saturating_sub(Duration::from_secs(3)), |cause| {
        println!("  now: {}", suspect(cause));
    });
    let status = wait_for_watcher(&mut watcher, seconds);
    let run = run?;
    println!();
    println!("verdict lab: what each service did (rstwatch's verdicts above should say the same):");
    for account in &run.accounts {
        println!("  {:<16} {}", account.cause.name(), account.text());
    }
    let status = status?;
    drop(lab);
    if !status.success() {
        bail!("rstwatch exited with {status}");
    }
    Ok(())
}

fn suspect(cause: Cause) -> &'static str {
    match cause {
        Cause::HealthCheck => "HAProxy on the client starts health-checking a backend (harmless resets)",
        Cause::NoListener => "a server with nothing listening on the port",
        Cause::WentDown => "an HTTP server that serves, then is killed",
        Cause::ConnectionLimit => "a balancer at its connection limit (nftables ct count)",
        Cause::StateLost => "a VIP failing over to a standby that knows none of the connections",
        Cause::Middlebox => "a firewall on the router forging resets for one port",
        Cause::AppAbort => "an application aborting its connections (SO_LINGER 0)",
        Cause::Teardown => "connections reset while already closing (ordinary teardown)",
        Cause::Scan => "a client scanning ports",
        Cause::IdleTimeout => "a firewall forgetting idle connections",
        Cause::KeepaliveRace => "a server closing idle keep-alive connections as clients reuse them",
        Cause::NatLost => "a NAT losing its translations",
        Cause::ListenOverflow => "a listener whose accept queue overflows",
        Cause::LocalFirewall => "this host's firewall rejecting with resets",
    }
}

/// Waits for rstwatch to end on its own (`--duration`, or the Ctrl-C it shares with us). If we
/// alone were told to stop (SIGTERM to xtask), it is passed on; if rstwatch still hangs, killed.
fn wait_for_watcher(watcher: &mut lab::Proc, seconds: Duration) -> Result<std::process::ExitStatus> {
    let hard_deadline = Instant::now() + seconds + Duration::from_secs(30);
    let mut stop_seen: Option<Instant> = None;
    let mut forwarded = false;
    loop {
        if let Some(status) = watcher.try_wait()? {
            return Ok(status);
        }
        if signal::stop_requested() {
            let since = *stop_seen.get_or_insert_with(Instant::now);
            if !forwarded && since.elapsed() > Duration::from_secs(2) {
                watcher.signal(libc::SIGINT)?;
                forwarded = true;
            }
            if since.elapsed() > Duration::from_secs(15) {
                bail!("rstwatch did not stop within 15 s of SIGINT");
            }
        }
        if Instant::now() > hard_deadline {
            bail!("rstwatch ran 30 s past its --duration");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn print_header(hosts: &lab::TwoHosts, seconds: Duration) {
    let clients: Vec<String> = CLIENTS.iter().map(ToString::to_string).collect();
    println!("rstwatch demo: \"I'm seeing a large number of TCP RST and am not sure what is causing it\"");
    println!();
    println!("  clients      netns {}  veth {}: {}", hosts.client.name(), hosts.client_if.name, clients.join(", "));
    println!("  data centre  netns {}  veth {}:", hosts.server.name(), hosts.server_if.name);
    println!(
        "    {:<17} load balancer VIP: keeps {BALANCER_LIMIT} connections, resets any above that",
        VIP.to_string()
    );
    println!("    {:<17} app server with nothing listening: its kernel answers every SYN with a RST", APP.to_string());
    println!("    {:<17} a service that accepts and aborts (SO_LINGER 0)", ABORTER.to_string());
    println!();
    println!(
        "  Each client connects to the VIP every {} ms and keeps what it gets for {} ms; {} also hits the closed",
        PACE.as_millis(),
        HOLD.as_millis(),
        CLIENTS[1]
    );
    println!(
        "  port, {} the aborting service. rstwatch watches the data centre's veth {} for {} s: XDP sees",
        CLIENTS[2],
        hosts.server_if.name,
        seconds.as_secs()
    );
    println!(
        "  the clients' SYNs arrive, TC egress the resets the data centre sends, with the kernel's reason for each."
    );
    println!("  Ctrl-C stops early (summary still printed).");
    println!();
}

fn print_report(report: &traffic::Report) {
    let mut by_sender: BTreeMap<SocketAddr, (u64, u64)> = BTreeMap::new();
    for (flow, n) in report.expected(Side::Server) {
        let e = by_sender.entry(flow.src).or_default();
        e.0 += n;
        e.1 += 1;
    }
    let held = report.conns.iter().filter(|c| c.outcome == traffic::Outcome::Held).count();
    println!();
    println!(
        "traffic generator: {} connections in {:.1} s; the resets the data centre sent (rstwatch's summary should match):",
        report.conns.len(),
        report.elapsed.as_secs_f64()
    );
    for (src, (resets, flows)) in &by_sender {
        println!("  {:<17} {resets:>6} RSTs over {flows} flows", src.to_string());
    }
    println!("  (the balancer kept {held} connections and closed them cleanly)");
    println!("  causes (rstwatch's ▶ lines should name the first two and nothing else):");
    println!("    {:<17} connection_limit at ~{BALANCER_LIMIT} open", VIP.to_string());
    println!("    {:<17} no_listener", APP.to_string());
    println!(
        "    {:<17} none: each connection reset right after its handshake, no data, nothing held — no clear cause",
        ABORTER.to_string()
    );
    for e in &report.errors {
        println!("  unexpected: {e}");
    }
}

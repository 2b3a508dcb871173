//! The fleet's answer from a real Prometheus: Debian's `prometheus` scrapes three rstwatch
//! instances ("nodes"), each watching its own veth with its own traffic, evaluates the shipped
//! `deploy/prometheus/rules.yml`, and its HTTP API must rank the fleet's resetters and services
//! as the traffic made them.
//!
//! Everything runs in one lab namespace (`mon`): the three rstwatch, Prometheus on 127.0.0.1,
//! and the clients, each node's link leading to a server namespace of its own. Needs root and
//! the release binary (`cargo xtask build`, or RSTWATCH_BIN).
//!
//! The recording rules average over a minute, and the test does not wait a minute of traffic:
//! every series is created by a warm-up round first, then the measured traffic runs for
//! `MEASURED`, and the rules are read while the whole run still lies inside their window. A
//! `rate(...[1m])` is then the measured resets over 60 s, which is what is compared.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use rst_lab::Need;
use rst_lab::{
    cmd::workspace_root,
    lab::{Iface, Lab, Netns, Proc},
    traffic::{self, Kind, Plan, Report, Side, Step},
};
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const MEASURED: Duration = Duration::from_secs(20);
/// Scrape and rule evaluation interval (also rstwatch's): short so the test is fast.
const TICK: &str = "1s";
const PROMETHEUS_PORT: u16 = 9090;
const FIRST_METRICS_PORT: u16 = 9101;
/// `--top` for every node.
const TOP: usize = 5;

/// One node: a link from `mon` to its server namespace, with the traffic it carries.
struct Node {
    server_ns: Netns,
    mon_if: Iface,
    steps: Vec<Step>,
}

fn step(kind: Kind, every: u32, src: &str, dst: &str) -> Step {
    Step { kind, every, src: src.parse().expect("test address"), dst: dst.parse().expect("test address") }
}

/// Node 0's server resets 3 times a round (a closed port, two aborting services), node 1's
/// twice, node 2's once, and node 2's client every other round: a ranking of 6 : 4 : 2 : 1.
fn node_steps(n: usize) -> Vec<Step> {
    let (client, server) = (format!("10.81.{n}.1"), format!("10.81.{n}.2"));
    let to = |port: u16| format!("{server}:{port}");
    match n {
        0 => vec![
            step(Kind::Refused, 1, &client, &to(81)),
            step(Kind::ServerAbort, 1, &client, &to(80)),
            step(Kind::ServerAbort, 1, &client, &to(8080)),
        ],
        1 => vec![step(Kind::Refused, 1, &client, &to(81)), step(Kind::ServerAbort, 1, &client, &to(80))],
        _ => vec![step(Kind::ServerAbort, 1, &client, &to(80)), step(Kind::ClientAbort, 2, &client, &to(8443))],
    }
}

fn run_traffic(mon: &Netns, node: &Node, rounds: Option<u32>, duration: Option<Duration>) -> Result<Report> {
    let plan = Plan {
        client_ns: mon.clone(),
        server_ns: node.server_ns.clone(),
        steps: node.steps.clone(),
        rounds,
        duration,
        pace: Duration::from_millis(20),
        balancer_limit: 0,
        hold: None,
    };
    let report = traffic::run(&plan, &|| false)?;
    ensure!(report.errors.is_empty(), "the traffic did not go as planned: {:?}", report.errors);
    Ok(report)
}

/// A GET from inside `ns` (where Prometheus listens on loopback): the body.
fn get(ns: &Netns, port: u16, path_and_query: &str) -> Result<String> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<String> {
                ns.enter_current_thread()?;
                let mut stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))?;
                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                write!(stream, "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
                let mut response = String::new();
                stream.read_to_string(&mut response)?;
                let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header end")?;
                ensure!(head.starts_with("HTTP/1.") && head.contains(" 200 "), "GET {path_and_query}: {head}\n{body}");
                Ok(body.to_owned())
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the HTTP client thread panicked"))?
    })
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query: each result's labels and value.
fn query(ns: &Netns, promql: &str) -> Result<Vec<(BTreeMap<String, String>, f64)>> {
    let body = get(ns, PROMETHEUS_PORT, &format!("/api/v1/query?query={}", percent_encode(promql)))?;
    let answer: Value = serde_json::from_str(&body).with_context(|| format!("query {promql}: {body}"))?;
    ensure!(answer["status"] == "success", "query {promql}: {answer}");
    let mut results = Vec::new();
    for result in answer["data"]["result"].as_array().context("result")? {
        let labels = result["metric"]
            .as_object()
            .context("metric")?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let value: f64 = result["value"][1].as_str().context("value")?.parse()?;
        results.push((labels, value));
    }
    Ok(results)
}

/// Polls `done` until it says true; its errors end the wait at once.
fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if done()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("{what} within {timeout:?}")
}

/// Removes the Prometheus storage even when the test fails.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn start_prometheus(mon: &Netns, dir: &Path, targets: &[String]) -> Result<Proc> {
    let rules = workspace_root().join("deploy/prometheus/rules.yml");
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    let config = format!(
        "global:\n  scrape_interval: {TICK}\n  scrape_timeout: 900ms\n  evaluation_interval: {TICK}\n\
         rule_files: [\"{}\"]\nscrape_configs:\n  - job_name: rstwatch\n    static_configs:\n      - targets: [{}]\n",
        rules.display(),
        targets.join(", ")
    );
    std::fs::write(dir.join("prometheus.yml"), config)?;
    let mut cmd = mon.exec("prometheus");
    cmd.arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}"))
        .arg("--log.level=warn");
    let mut proc = Proc::spawn(&mut cmd)?;
    wait_until("Prometheus did not get ready", START_TIMEOUT, || {
        if let Some(status) = proc.try_wait()? {
            bail!("prometheus exited ({status}): {}", proc.stderr());
        }
        Ok(get(mon, PROMETHEUS_PORT, "/-/ready").is_ok())
    })?;
    Ok(proc)
}

/// The series one rstwatch exports at most, as docs/metrics.md's "Cardinality per node" states it: `ifaces`
/// watched, `--top`, the kernel's reset reasons seen and the programs whose run time is sampled.
fn series_bound(ifaces: usize, top: usize, reasons: usize, programs: usize) -> usize {
    let causes = rst_common::Cause::ALL.len();
    let kinds = rst_common::wire::ResetKind::ALL.len();
    // frames, tcp_segments (2 directions each), malformed, fragments, unattributed, both
    // overflows, intervals, fill, read time; the causes; resets_by_source's "other".
    let fixed = 12 + causes + 1;
    // resets (2 directions × kinds, and the overflowed resets'), middlebox (2 directions).
    let per_iface = 2 * kinds + 1 + 2;
    // The three service gauges, the top resetter gauge, resets_by_source, the four by_service,
    // the two workload gauges (sent, received).
    let per_top = 3 + 1 + 1 + 4 + 2;
    fixed + ifaces * per_iface + top * per_top + reasons + programs
}

#[test]
fn prometheus_ranks_the_fleet_from_three_rstwatch_with_the_shipped_rules() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"), Need::Tool("prometheus"));
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "this test needs root (network namespaces, BPF, XDP)");
    let rstwatch = rst_lab::paths::rstwatch_for_tests();
    rst_lab::lab::sweep_stale()?;
    let mut lab = Lab::new()?;
    let mon = lab.add_ns("mon")?;
    let mut nodes = Vec::new();
    for n in 0..3 {
        let server_ns = lab.add_ns(&format!("srv{n}"))?;
        let (mon_if, srv_if) = lab.add_veth(&mon, &server_ns)?;
        mon_if.add_addr(format!("10.81.{n}.1").parse()?, 24)?;
        srv_if.add_addr(format!("10.81.{n}.2").parse()?, 24)?;
        nodes.push(Node { server_ns, mon_if, steps: node_steps(n) });
    }
    let targets: Vec<String> =
        (0..nodes.len()).map(|n| format!("127.0.0.1:{}", FIRST_METRICS_PORT + n as u16)).collect();
    let mut watchers = Vec::new();
    for (node, target) in nodes.iter().zip(&targets) {
        let mut cmd = mon.exec(&rstwatch);
        cmd.args(["-i", &node.mon_if.name, "--interval", TICK, "--format", "json", "--top", &TOP.to_string()])
            .args(["--metrics", target]);
        watchers.push(Proc::spawn(&mut cmd)?);
    }
    for (watcher, node) in watchers.iter_mut().zip(&nodes) {
        watcher.wait_for_stderr(&format!("attached to {}", node.mon_if.name), START_TIMEOUT)?;
    }
    let dir = TempDir(Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("prometheus-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&dir.0);
    std::fs::create_dir_all(&dir.0)?;
    let prometheus = start_prometheus(&mon, &dir.0, &targets)?;
    wait_until("not every rstwatch was scraped", START_TIMEOUT, || {
        Ok(query(&mon, "up{job=\"rstwatch\"} == 1").is_ok_and(|up| up.len() == targets.len()))
    })?;

    // Warm-up: one round creates every series, so the measured traffic is all increase.
    let warm_up = Instant::now();
    for node in &nodes {
        run_traffic(&mon, node, Some(1), None)?;
    }
    wait_until("the warm-up's series did not reach Prometheus", START_TIMEOUT, || {
        let sources = query(&mon, "rstwatch_resets_by_source_total")?;
        let services = query(&mon, "rstwatch_attempts_by_service_total")?;
        Ok(sources.len() == 4 && services.len() == 7)
    })?;

    let reports = std::thread::scope(|scope| -> Result<Vec<Report>> {
        let runs: Vec<_> =
            nodes.iter().map(|node| scope.spawn(|| run_traffic(&mon, node, None, Some(MEASURED)))).collect();
        let mut reports = Vec::new();
        for run in runs {
            reports.push(run.join().map_err(|_| anyhow::anyhow!("a traffic thread panicked"))??);
        }
        Ok(reports)
    })?;
    // The last interval read, scraped and evaluated.
    std::thread::sleep(Duration::from_secs(4));
    ensure!(
        warm_up.elapsed() < Duration::from_secs(55),
        "the run took {:?}: no longer inside the rules' one-minute window",
        warm_up.elapsed()
    );

    // What the traffic made: resets by sender and by service, refusals and attempts by service.
    let mut by_source: BTreeMap<IpAddr, u64> = BTreeMap::new();
    let mut by_service: BTreeMap<SocketAddr, (u64, u64, u64)> = BTreeMap::new();
    for report in &reports {
        for side in [Side::Server, Side::Client] {
            for (flow, resets) in report.expected(side) {
                *by_source.entry(flow.src.ip()).or_default() += resets;
            }
        }
        for conn in &report.conns {
            let (by_server, by_client) = conn.outcome.resets();
            let entry = by_service.entry(conn.server).or_default();
            entry.0 += by_server + by_client;
            entry.1 += 1;
            entry.2 += u64::from(conn.outcome == traffic::Outcome::Refused);
        }
    }
    let within = |what: &str, got: f64, expected: f64| {
        eprintln!("{what}: {got:.2}/s from Prometheus, {expected:.2}/s made");
        assert!(
            (got - expected).abs() <= 0.2 * expected,
            "{what}: Prometheus says {got:.2}/s, the traffic made {expected:.2}/s"
        );
    };

    let sources = query(&mon, "sort_desc(rstwatch:resets_by_source:rate1m)")?;
    let ranked: Vec<IpAddr> = sources.iter().filter_map(|(labels, _)| labels["src"].parse().ok()).collect();
    let mut expected_ranking: Vec<(&IpAddr, &u64)> = by_source.iter().collect();
    expected_ranking.sort_by(|a, b| b.1.cmp(a.1));
    let expected_ranking: Vec<IpAddr> = expected_ranking.into_iter().map(|(ip, _)| *ip).collect();
    assert_eq!(ranked, expected_ranking, "the fleet's resetters, ranked: {sources:?}");
    assert!(sources.iter().all(|(labels, _)| labels["src"] != "other"), "four resetters fit --top {TOP}");
    for (labels, rate) in &sources {
        let src: IpAddr = labels["src"].parse()?;
        within(&format!("resets from {src}"), *rate, by_source[&src] as f64 / 60.0);
    }

    let services = query(&mon, "sort_desc(rstwatch:resets_by_service:rate1m)")?;
    let found: BTreeMap<SocketAddr, f64> = services
        .iter()
        .map(|(labels, rate)| Ok((format!("{}:{}", labels["addr"], labels["port"]).parse()?, *rate)))
        .collect::<Result<_>>()?;
    let expected_services: Vec<SocketAddr> = by_service.keys().copied().collect();
    assert_eq!(found.keys().copied().collect::<Vec<_>>(), expected_services, "services: {services:?}");
    for (service, (resets, _, _)) in &by_service {
        within(&format!("resets on {service}'s connections"), found[service], *resets as f64 / 60.0);
    }
    // The service the client resets every other round has the fewest, by half: ranked last.
    let fewest = by_service.iter().min_by_key(|(_, (resets, _, _))| *resets).map(|(service, _)| *service);
    let last = services.last().map(|(labels, _)| format!("{}:{}", labels["addr"], labels["port"]));
    assert_eq!(last, fewest.map(|s| s.to_string()), "services ranked by their resets: {services:?}");

    let shares = query(&mon, "rstwatch:refused_share:ratio_rate5m")?;
    assert_eq!(shares.len(), by_service.len(), "a share for every service attempted: {shares:?}");
    for (labels, share) in &shares {
        let service: SocketAddr = format!("{}:{}", labels["addr"], labels["port"]).parse()?;
        let (_, attempts, refused) = by_service[&service];
        let expected = refused as f64 / attempts as f64;
        assert!((share - expected).abs() < 0.02, "{service} refused {share:.3} of attempts, the traffic {expected:.3}");
    }

    // Series per node: under the stated bound, and the bound not absurdly loose.
    let per_node = query(&mon, "count by (instance) ({__name__=~\"rstwatch_.+\", job=\"rstwatch\"})")?;
    assert_eq!(per_node.len(), targets.len(), "{per_node:?}");
    let reasons = query(&mon, "count by (instance) (rstwatch_kernel_resets_total)")?;
    let programs = query(&mon, "count by (instance) (rstwatch_program_run_seconds_per_packet)")?;
    let bound = series_bound(1, TOP, reasons.iter().map(|(_, n)| *n as usize).max().unwrap_or(0), 3);
    for (labels, series) in &per_node {
        eprintln!("{}: {series} series (bound {bound})", labels["instance"]);
        assert!((*series as usize) <= bound, "{}: {series} series over the bound {bound}", labels["instance"]);
    }
    ensure!(programs.iter().all(|(_, n)| *n <= 3.0), "more programs sampled than stated: {programs:?}");

    // Nothing of the lab's traffic is middlebox-like or a health check; no rstwatch overflowed.
    let firing = query(&mon, "ALERTS{alertstate=\"firing\"}")?;
    let unexpected: Vec<&String> = firing
        .iter()
        .map(|(labels, _)| &labels["alertname"])
        .filter(|name| !matches!(name.as_str(), "RstwatchServiceRefusing" | "RstwatchServiceDown"))
        .collect();
    assert!(unexpected.is_empty(), "alerts firing on the lab's traffic: {unexpected:?}");

    drop(prometheus);
    for watcher in watchers {
        watcher.signal(libc::SIGINT)?;
        let finished = watcher.finish(Duration::from_secs(30))?;
        ensure!(finished.status.success(), "rstwatch failed: {}", finished.stderr);
    }
    Ok(())
}

/// rstwatch's own exposition, scraped from inside `ns`: the number of series of each metric.
fn series_of(ns: &Netns, port: u16) -> Result<BTreeMap<String, usize>> {
    let text = get(ns, port, "/metrics")?;
    let mut series = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap_or_default();
        *series.entry(name.to_owned()).or_default() += 1;
    }
    Ok(series)
}

/// Checks one rstwatch's series against the bound and returns the total.
fn within_bound(what: &str, series: &BTreeMap<String, usize>) -> usize {
    let total: usize = series.values().sum();
    let reasons = series.get("rstwatch_kernel_resets_total").copied().unwrap_or(0);
    let programs = series.get("rstwatch_program_run_seconds_per_packet").copied().unwrap_or(0);
    let bound = series_bound(1, TOP, reasons, programs);
    eprintln!("{what}: {total} series (bound {bound} with --top {TOP}, {reasons} kernel reasons, {programs} programs)");
    assert!(total <= bound, "{what}: {total} series over the bound {bound}: {series:?}");
    total
}

/// The series bound holds when it is pushed: a flood of distinct flows (most of them new every
/// interval) and a port scan (a new service per port) fill the per-resetter and per-service
/// slots, and nothing grows past them.
#[test]
fn series_stay_under_the_bound_idle_under_a_flood_of_flows_and_during_a_scan() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"), Need::Tool("prometheus"));
    let rstwatch = rst_lab::paths::rstwatch_for_tests();
    let metrics = format!("127.0.0.1:{FIRST_METRICS_PORT}");
    let watch = |ns: &Netns, iface: &Iface| -> Result<Proc> {
        let mut cmd = ns.exec(&rstwatch);
        cmd.args(["-i", &iface.name, "--interval", "500ms", "--format", "json", "--top", &TOP.to_string()])
            .args(["--metrics", &metrics]);
        let mut proc = Proc::spawn(&mut cmd)?;
        proc.wait_for_stderr(&format!("attached to {}", iface.name), START_TIMEOUT)?;
        Ok(proc)
    };
    let settle = || std::thread::sleep(Duration::from_millis(1200));

    // Idle, then a flood: 10.20.0.1 and 10.20.1.1 resetting 120 000 distinct flows, as fast as
    // the live-frames generator goes (tens of thousands of new flows per interval).
    rst_lab::flood::build_bench()?;
    let flood = rst_lab::flood::FloodLab::new()?;
    let watcher = watch(&flood.mon, &flood.mon_if)?;
    settle();
    let idle = within_bound("idle", &series_of(&flood.mon, FIRST_METRICS_PORT)?);
    let plan =
        rst_lab::flood::GenPlan { flows: 120_000, first: 0, repeat: 1, length: rst_lab::flood::GenLength::Passes(1) };
    let started = Instant::now();
    let sent = rst_lab::flood::generate(&flood, &plan)?;
    let rate = sent.sent as f64 / started.elapsed().as_secs_f64();
    settle();
    let flooded = series_of(&flood.mon, FIRST_METRICS_PORT)?;
    let total = within_bound(&format!("flood of {} flows at {rate:.0} flows/s", sent.sent), &flooded);
    assert_eq!(flooded.get("rstwatch_resets_by_source_total"), Some(&2), "the flood's two senders: {flooded:?}");
    assert!(total > idle, "the flood added series: {idle} → {total}");
    drop(watcher);
    drop(flood);

    // A scan: one client tries 300 closed ports of a server, each refused.
    rst_lab::lab::sweep_stale()?;
    let hosts = rst_lab::lab::TwoHosts::new(&["10.82.1.2".parse()?], &["10.82.2.2".parse()?])?;
    let watcher = watch(&hosts.client, &hosts.client_if)?;
    let steps = (2000..2300).map(|port| step(Kind::Refused, 1, "10.82.1.2", &format!("10.82.2.2:{port}"))).collect();
    let plan = Plan {
        client_ns: hosts.client.clone(),
        server_ns: hosts.server.clone(),
        steps,
        rounds: Some(1),
        duration: None,
        pace: Duration::ZERO,
        balancer_limit: 0,
        hold: None,
    };
    let report = traffic::run(&plan, &|| false)?;
    ensure!(report.errors.is_empty() && report.conns.len() == 300, "the scan: {:?}", report.errors);
    settle();
    let scanned = series_of(&hosts.client, FIRST_METRICS_PORT)?;
    within_bound("scan of 300 ports", &scanned);
    for family in ["attempts", "accepted", "refused", "resets"] {
        let name = format!("rstwatch_{family}_by_service_total");
        assert_eq!(scanned.get(&name), Some(&TOP), "300 services, {TOP} slots: {scanned:?}");
    }
    drop(watcher);
    Ok(())
}

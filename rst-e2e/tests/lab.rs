//! rstwatch end to end, in network namespaces, against real Linux TCP stacks on both ends.
//!
//! Runs the release binary (`cargo xtask build`, or RSTWATCH_BIN) and needs root: BPF, XDP and
//! network namespaces. Every expected count comes from the traffic generator's own account of
//! what it did, and tcpdump on the same veth is an independent witness of that account.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use rst_lab::lab::{Finished, Iface, Netns, Proc, TwoHosts};
use rst_lab::Need;
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

const C1: &str = "10.77.1.2";
const C2: &str = "10.77.1.3";
const C3: &str = "10.77.1.4";
const C6: &str = "fd77::1:2";
const S4: &str = "10.77.2.2";
const S6: &str = "fd77::2:2";

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address literal")
}

fn rstwatch() -> PathBuf {
    rst_lab::paths::rstwatch_for_tests()
}

fn hosts() -> Result<TwoHosts> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    ensure!(euid == 0, "these tests need root (network namespaces, BPF, XDP)");
    rst_lab::lab::sweep_stale()?;
    TwoHosts::new(&[ip(C1), ip(C2), ip(C3), ip(C6)], &[ip(S4), ip(S6)])
}

/// [`hosts`], or `None` where this machine lacks root, ip or tcpdump: the test is then skipped,
/// with its one line (a failure under `CI=true`).
fn ready_hosts() -> Result<Option<TwoHosts>> {
    let needs = [Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"), Need::Tool("tcpdump")];
    if !rst_lab::skip::require(&rst_lab::skip::current_test(), &needs)? {
        return Ok(None);
    }
    hosts().map(Some)
}

/// Starts rstwatch inside `iface`'s namespace and waits until it says it attached.
fn watch(iface: &Iface, args: &[&str]) -> Result<Proc> {
    let mut cmd = iface.ns.exec(rstwatch());
    cmd.args(["-i", &iface.name]).args(args);
    let mut proc = Proc::spawn(&mut cmd)?;
    proc.wait_for_stderr(&format!("attached to {}", iface.name), START_TIMEOUT)?;
    Ok(proc)
}

/// Runs the generator and returns its JSON account; the run must have gone exactly as planned.
fn traffic(hosts: &TwoHosts, extra: &[&str], steps: &[String]) -> Result<Value> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rst-traffic"));
    cmd.args(["--client-ns", hosts.client.name(), "--server-ns", hosts.server.name()]).args(extra).args(steps);
    let fin = Proc::spawn(&mut cmd)?.finish(Duration::from_secs(120))?;
    ensure!(fin.status.success(), "traffic generator failed ({}): {}", fin.status, fin.stderr);
    let report: Value = serde_json::from_str(fin.stdout.trim()).context("traffic generator JSON")?;
    ensure!(report["errors"].as_array().is_some_and(Vec::is_empty), "generator errors: {}", report["errors"]);
    Ok(report)
}

fn steps(kind: &str, srcs: &[&str], dst: &str, port: u16) -> Vec<String> {
    let dst: IpAddr = ip(dst);
    srcs.iter().map(|s| format!("{kind}:{s}->{}", SocketAddr::new(dst, port))).collect()
}

type FlowKey = (IpAddr, u16, IpAddr, u16);

/// What the generator says each flow must have counted, for resets sent by `from`.
fn expected(report: &Value, from: &str) -> Result<BTreeMap<FlowKey, u64>> {
    let mut flows = BTreeMap::new();
    for conn in report["connections"].as_array().context("no connections")? {
        for reset in conn["resets"].as_array().context("no resets array")? {
            if reset["from"] != from {
                continue;
            }
            let key = flow_key(reset)?;
            *flows.entry(key).or_insert(0) += reset["count"].as_u64().context("count")?;
        }
    }
    Ok(flows)
}

fn flow_key(v: &Value) -> Result<FlowKey> {
    let addr = |k: &str| -> Result<IpAddr> {
        v[k].as_str().with_context(|| format!("{k} in {v}"))?.parse().with_context(|| format!("{k} in {v}"))
    };
    let port = |k: &str| -> Result<u16> {
        u16::try_from(v[k].as_u64().with_context(|| format!("{k} in {v}"))?).with_context(|| format!("{k} in {v}"))
    };
    Ok((addr("src")?, port("sport")?, addr("dst")?, port("dport")?))
}

/// rstwatch's final summary: the one `summary` line, the last line of its stdout.
fn summary(fin: &Finished) -> Result<Value> {
    rst_lab::lab::summary_line(&fin.stdout).with_context(|| format!("rstwatch's stdout:\n{}", fin.stdout))
}

/// rstwatch's flows with resets that `iface` received, checking the totals add up.
fn counted(summary: &Value, iface: &Iface) -> Result<BTreeMap<FlowKey, u64>> {
    counted_in(summary, iface, "rx")
}

/// rstwatch's flows with resets that left through `iface` (TC egress).
fn counted_tx(summary: &Value, iface: &Iface) -> Result<BTreeMap<FlowKey, u64>> {
    counted_in(summary, iface, "tx")
}

fn counted_in(summary: &Value, iface: &Iface, direction: &str) -> Result<BTreeMap<FlowKey, u64>> {
    let mut flows = BTreeMap::new();
    let mut sum = 0;
    for f in summary["flows"].as_array().context("summary has no flows array")? {
        let resets = f["resets"].as_u64().with_context(|| format!("resets in {f}"))?;
        sum += resets;
        if resets == 0 || f["direction"] != direction {
            continue;
        }
        ensure!(f["iface"] == iface.name.as_str(), "flow on an unexpected interface: {f}");
        let key = flow_key(f)?;
        let family = if key.0.is_ipv4() { "ipv4" } else { "ipv6" };
        ensure!(f["family"] == family, "family does not match the addresses: {f}");
        ensure!(flows.insert(key, resets).is_none(), "flow listed twice: {f}");
    }
    let totals = &summary["totals"];
    let total = totals["resets"].as_u64().context("totals.resets")?;
    let overflow = totals["overflow"].as_u64().context("totals.overflow")?;
    assert_eq!(total, sum + overflow, "totals.resets != sum of flow resets + overflow: {totals}");
    assert_eq!(overflow, 0, "a handful of flows must not overflow the table: {totals}");
    let ifaces = summary["interfaces"].as_array().context("summary has no interfaces")?;
    ensure!(
        ifaces.iter().any(|i| i["iface"] == iface.name.as_str()),
        "{} missing from {}",
        iface.name,
        summary["interfaces"]
    );
    Ok(flows)
}

fn assert_detached(iface: &Iface) -> Result<()> {
    let details = iface.details()?;
    assert!(
        !rst_lab::lab::details_show_xdp(&details),
        "an XDP program is still attached to {}:\n{details}",
        iface.name
    );
    Ok(())
}

fn assert_one_line_error(fin: &Finished, needle: &str) {
    assert!(!fin.status.success(), "expected failure, got {}; stderr: {}", fin.status, fin.stderr);
    let lines: Vec<&str> = fin.stderr.trim_end().lines().collect();
    assert_eq!(lines.len(), 1, "stderr must be exactly one line, got:\n{}", fin.stderr);
    assert!(lines[0].contains(needle), "stderr should mention {needle:?}: {}", lines[0]);
}

/// rstwatch refused to run: one line on stderr naming `needle`, and nothing left attached.
fn assert_refused(fin: &Finished, needle: &str, iface: &Iface) -> Result<()> {
    assert_one_line_error(fin, needle);
    assert_detached(iface)
}

/// tcpdump on `iface` (the diagnosis lab's witness), counting resets per directional flow.
struct Capture(rst_lab::diag_lab::Capture);

impl Capture {
    fn start(iface: &Iface) -> Result<Capture> {
        rst_lab::diag_lab::Capture::start(iface).map(Capture)
    }

    fn resets(self) -> Result<BTreeMap<FlowKey, u64>> {
        let mut flows = BTreeMap::new();
        for segment in self.0.stop()?.iter().filter(|s| s.has(rst_lab::diag_lab::RST)) {
            *flows.entry((segment.src.ip(), segment.src.port(), segment.dst.ip(), segment.dst.port())).or_insert(0) +=
                1;
        }
        Ok(flows)
    }
}

fn refused_and_aborted_steps() -> Vec<String> {
    let mut s = steps("refused", &[C1, C2, C3], S4, 81);
    s.extend(steps("server-abort", &[C1, C2, C3], S4, 8443));
    s.extend(steps("refused", &[C6], S6, 81));
    s.extend(steps("server-abort", &[C6], S6, 8443));
    s
}

/// (a) Resets the server sends, counted on the client's veth, flow by flow.
#[test]
fn counts_server_resets_exactly_on_the_client_side() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"), Need::Tool("tcpdump"));
    counts_server_resets_on_the_client_side(&[], "per-cpu")
}

/// The same with the programs a PREEMPT_RT kernel gets: atomic adds, no per-CPU cache.
#[test]
fn atomic_counting_counts_server_resets_exactly_on_the_client_side() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"), Need::Tool("tcpdump"));
    counts_server_resets_on_the_client_side(&["--counting", "atomic"], "atomic")
}

fn counts_server_resets_on_the_client_side(counting: &[&str], mode: &str) -> Result<()> {
    let hosts = hosts()?;
    let capture = Capture::start(&hosts.client_if)?;
    let args = [&["--duration", "6s", "--interval", "1s", "--format", "json"], counting].concat();
    let rw = watch(&hosts.client_if, &args)?;
    let report = traffic(&hosts, &["--rounds", "3"], &refused_and_aborted_steps())?;
    let fin = rw.finish(EXIT_TIMEOUT)?;
    assert!(fin.status.success(), "rstwatch failed ({}): {}", fin.status, fin.stderr);
    let witness = capture.resets()?;

    let want = expected(&report, "server")?;
    // Summed rather than counted per flow: a source port freed by a RST may be handed out again.
    assert_eq!(want.values().sum::<u64>(), 3 * 8, "3 rounds of 8 connections that reset once each");
    assert!(expected(&report, "client")?.is_empty());
    assert_eq!(witness, want, "tcpdump disagrees with the generator's account");

    let summary = summary(&fin)?;
    // `auto` is per-cpu unless this kernel is PREEMPT_RT.
    if !counting.is_empty() || !std::path::Path::new("/sys/kernel/realtime").exists() {
        assert_eq!(summary["counting"], mode, "the summary says how the kernel side counted");
    }
    let got = counted(&summary, &hosts.client_if)?;
    assert_eq!(got, want, "rstwatch's per-flow counts differ from the resets that were sent");
    assert_eq!(counted_tx(&summary, &hosts.client_if)?, BTreeMap::new(), "the clients sent no reset");
    assert!(fin.stdout.lines().any(|l| l.contains("\"interval\"")), "no interval line in {}", fin.stdout);
    assert_detached(&hosts.client_if)
}

/// (b) Both directions on the server's veth: XDP counts the clients' aborts as received, TC
/// egress the server's own resets as sent.
#[test]
fn counts_client_resets_on_the_server_side() -> Result<()> {
    let Some(hosts) = ready_hosts()? else { return Ok(()) };
    let capture = Capture::start(&hosts.server_if)?;
    let rw = watch(&hosts.server_if, &["--duration", "6s", "--interval", "1s", "--format", "json"])?;
    let mut s = steps("client-abort", &[C1, C2, C3], S4, 9000);
    s.extend(steps("client-abort", &[C6], S6, 9000));
    s.extend(steps("server-abort", &[C1], S4, 8443));
    s.extend(steps("balancer", &[C2, C3, C1], S4, 443));
    let report = traffic(&hosts, &["--rounds", "2", "--balancer-limit", "2"], &s)?;
    let fin = rw.finish(EXIT_TIMEOUT)?;
    assert!(fin.status.success(), "rstwatch failed ({}): {}", fin.status, fin.stderr);
    let witness = capture.resets()?;

    let from_clients = expected(&report, "client")?;
    let from_server = expected(&report, "server")?;
    assert_eq!(from_clients.values().sum::<u64>(), 2 * 4);
    // Server aborts: one a round. The balancer keeps two and turns one away in round one, and
    // turns all three away in round two.
    let (server_aborts, kept_then_full, all_turned_away) = (2, 1, 3);
    assert_eq!(from_server.values().sum::<u64>(), server_aborts + kept_then_full + all_turned_away);
    // The two directions never share a key: src is the server in one, a client in the other.
    let mut all = from_clients.clone();
    all.extend(from_server.iter().map(|(k, v)| (*k, *v)));
    assert_eq!(witness, all, "tcpdump disagrees with the generator's account");

    let summary = summary(&fin)?;
    assert_eq!(
        counted(&summary, &hosts.server_if)?,
        from_clients,
        "XDP on the server side must count exactly the clients' resets"
    );
    assert_eq!(
        counted_tx(&summary, &hosts.server_if)?,
        from_server,
        "TC egress on the server side must count exactly the server's own resets"
    );
    // The balancer accepts every handshake and resets what is over its two: a connection limit
    // of two, from the server's own veth, and no other cause for that service.
    let verdicts = summary["verdicts"].as_array().context("verdicts")?;
    let balancer: Vec<&Value> = verdicts.iter().filter(|v| v["addr"] == S4 && v["port"] == 443).collect();
    assert_eq!(balancer.len(), 1, "one cause for the balancer: {verdicts:?}");
    assert_eq!(
        (balancer[0]["cause"].as_str(), balancer[0]["limit"].as_u64(), balancer[0]["resets"].as_u64()),
        (Some("connection_limit"), Some(2), Some(kept_then_full + all_turned_away)),
        "{verdicts:?}"
    );
    assert_detached(&hosts.server_if)
}

/// Beside another XDP user: the interface's XDP hook is taken (here by a first rstwatch, which
/// must keep working), a plain second rstwatch is refused and names --hook tc, and
/// `--hook tc` counts exactly the same resets through a tcx link.
#[test]
fn hook_tc_watches_beside_a_foreign_xdp_program() -> Result<()> {
    let Some(hosts) = ready_hosts()? else { return Ok(()) };
    let iface = &hosts.client_if;
    let foreign = watch(iface, &["--duration", "8s", "--format", "json"])?;
    let refused = run_to_end(&hosts.client, &rstwatch_str(), &["-i", &iface.name, "--duration", "1s"])?;
    assert_one_line_error(&refused, "--hook tc");
    let beside = watch(iface, &["--hook", "tc", "--duration", "5s", "--format", "json"])?;
    let report = traffic(&hosts, &["--rounds", "2"], &refused_and_aborted_steps())?;
    let want = expected(&report, "server")?;
    let (beside, foreign) = (beside.finish(EXIT_TIMEOUT)?, foreign.finish(EXIT_TIMEOUT)?);
    for (name, fin) in [("--hook tc", &beside), ("the XDP one", &foreign)] {
        assert!(fin.status.success(), "{name} failed ({}): {}", fin.status, fin.stderr);
        assert_eq!(counted(&summary(fin)?, iface)?, want, "{name} miscounted");
    }
    assert_eq!(summary(&beside)?["interfaces"][0]["mode"], "tc");
    // The tcx link's own detach is checked with a BPF_PROG_QUERY in rst-userspace/tests/hooks.rs
    // (this machine's bpftool 7.1 does not list tcx links).
    assert_detached(iface)
}

/// One raw HTTP exchange from inside `ns`: returns the whole response.
fn http_in(ns: &Netns, request: &'static [u8]) -> Result<String> {
    use std::io::{Read, Write};
    let ns = Netns::open(ns.name())?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || -> Result<String> {
                ns.enter_current_thread()?;
                let mut stream = std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT))?;
                stream.set_read_timeout(Some(EXIT_TIMEOUT))?;
                stream.write_all(request)?;
                let mut response = String::new();
                stream.read_to_string(&mut response)?;
                Ok(response)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("HTTP thread panicked"))?
    })
}

const METRICS_PORT: u16 = 19101;

/// `--metrics`: the endpoint reports exactly the resets that crossed the interface, passes
/// `promtool check metrics`, answers malformed requests with 400 and other paths with 404, and
/// keeps serving while idle clients hold connections open.
#[test]
fn metrics_endpoint_counts_exactly_and_survives_bad_clients() -> Result<()> {
    let Some(hosts) = ready_hosts()? else { return Ok(()) };
    let iface = &hosts.client_if;
    let listen = format!("127.0.0.1:{METRICS_PORT}");
    let rw = watch(iface, &["--duration", "8s", "--format", "json", "--metrics", &listen])?;
    // Idle clients that never send a request must not block anyone.
    let idle = {
        let ns = Netns::open(hosts.client.name())?;
        std::thread::spawn(move || -> Result<Vec<std::net::TcpStream>> {
            ns.enter_current_thread()?;
            (0..16).map(|_| Ok(std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT))?)).collect()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("idle-client thread panicked"))??
    };
    let report = traffic(&hosts, &["--rounds", "2"], &refused_and_aborted_steps())?;
    let want: u64 = expected(&report, "server")?.values().sum();
    std::thread::sleep(Duration::from_millis(2500)); // two intervals: the counts are published
    let bad = http_in(&hosts.client, b"GARBAGE\r\n\r\n")?;
    assert!(bad.starts_with("HTTP/1.1 400"), "malformed request: {bad}");
    let missing = http_in(&hosts.client, b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let scrape = http_in(&hosts.client, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    assert!(scrape.starts_with("HTTP/1.1 200"), "{scrape}");
    let body = scrape.split_once("\r\n\r\n").map(|(_, body)| body).context("no body")?;
    // One series per kind; the refused ones are the answers from the closed port 81.
    let series = format!("rstwatch_resets_total{{iface=\"{}\",direction=\"rx\",kind=\"", iface.name);
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix(&series) {
            let (kind, value) = rest.split_once("\"} ").with_context(|| format!("odd series line {line}"))?;
            by_kind.insert(kind.to_owned(), value.trim().parse()?);
        }
    }
    let counted: u64 = by_kind.values().sum();
    assert_eq!(counted, want, "resets in the metrics: {by_kind:?}\n{body}");
    let refused: u64 = expected(&report, "server")?.iter().filter(|(key, _)| key.1 == 81).map(|(_, n)| n).sum();
    assert_eq!(by_kind.get("refused").copied().unwrap_or(0), refused, "refused resets in the metrics: {by_kind:?}");
    // Every refused connection was one attempt at port 81 (IPv4 and IPv6 services apart).
    let attempts_81: u64 = body
        .lines()
        .filter(|l| l.starts_with("rstwatch_service_attempts{") && l.contains("port=\"81\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(attempts_81, refused, "service attempts in the metrics:\n{body}");
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .output_with_stdin(body.as_bytes())?;
    let lint = format!("{}{}", String::from_utf8_lossy(&promtool.stdout), String::from_utf8_lossy(&promtool.stderr));
    assert!(promtool.status.success(), "promtool check metrics: {lint}");
    drop(idle);
    let fin = rw.finish(EXIT_TIMEOUT)?;
    assert!(fin.status.success(), "rstwatch failed ({}): {}", fin.status, fin.stderr);
    assert_eq!(counted_total(&summary(&fin)?)?, want);
    assert_detached(iface)
}

fn counted_total(summary: &Value) -> Result<u64> {
    summary["totals"]["resets"].as_u64().context("totals.resets")
}

trait OutputWithStdin {
    fn output_with_stdin(&mut self, input: &[u8]) -> Result<std::process::Output>;
}

impl OutputWithStdin for Command {
    fn output_with_stdin(&mut self, input: &[u8]) -> Result<std::process::Output> {
        use std::io::Write;
        let mut child = self.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn()?;
        child.stdin.take().context("stdin")?.write_all(input)?;
        Ok(child.wait_with_output()?)
    }
}

/// Interfaces come and go: a watched interface deleted mid-run is reported once, the others
/// keep being counted exactly, and when it comes back under its name it is attached again.
#[test]
fn a_deleted_interface_is_reported_and_reattached_when_it_returns() -> Result<()> {
    let Some(hosts) = ready_hosts()? else { return Ok(()) };
    let extra = Iface { ns: Netns::open(hosts.client.name())?, name: format!("{}x", hosts.client_if.name) };
    let peer = format!("{}y", hosts.client_if.name);
    let create = || -> Result<()> {
        hosts.client.ip(["link", "add", &extra.name, "type", "veth", "peer", "name", &peer])?;
        hosts.client.ip(["link", "set", &extra.name, "up"])?;
        hosts.client.ip(["link", "set", &peer, "up"])?;
        Ok(())
    };
    create()?;
    let rw =
        watch(&hosts.client_if, &["-i", &extra.name, "--duration", "7s", "--interval", "500ms", "--format", "json"])?;
    std::thread::sleep(Duration::from_millis(800));
    hosts.client.ip(["link", "del", &extra.name])?;
    let report = traffic(&hosts, &["--rounds", "1"], &refused_and_aborted_steps())?;
    create()?;
    std::thread::sleep(Duration::from_millis(1500));
    assert!(extra.xdp_attached()?, "rstwatch did not attach to {} again", extra.name);
    let fin = rw.finish(EXIT_TIMEOUT)?;
    assert!(fin.status.success(), "rstwatch failed ({}): {}", fin.status, fin.stderr);
    assert_eq!(fin.stderr.matches("disappeared").count(), 1, "reported once: {}", fin.stderr);
    assert_eq!(fin.stderr.matches("is back").count(), 1, "{}", fin.stderr);
    let summary = summary(&fin)?;
    assert_eq!(counted(&summary, &hosts.client_if)?, expected(&report, "server")?);
    let listed = summary["interfaces"].as_array().context("interfaces")?;
    assert_eq!(listed.iter().filter(|i| i["iface"] == extra.name.as_str()).count(), 2, "{listed:?}");
    assert_detached(&extra)?;
    assert_detached(&hosts.client_if)
}

/// rstwatch on the client's veth under `setpriv` with `privileges` (its options), run to the end.
fn rstwatch_with_privileges(hosts: &TwoHosts, privileges: &[String], args: &[&str]) -> Result<Finished> {
    let bin = rstwatch_str();
    let mut all: Vec<&str> = privileges.iter().map(String::as_str).collect();
    all.extend(["--", bin.as_str(), "-i", hosts.client_if.name.as_str()]);
    all.extend(args);
    run_to_end(&hosts.client, "setpriv", &all)
}

fn run_to_end(ns: &Netns, prog: &str, args: &[&str]) -> Result<Finished> {
    let mut cmd = ns.exec(prog);
    cmd.args(args);
    Proc::spawn(&mut cmd)?.finish(EXIT_TIMEOUT)
}

fn rstwatch_str() -> String {
    rstwatch().to_string_lossy().into_owned()
}

/// (c) An interface that does not exist.
#[test]
fn unknown_interface_is_one_line_error() -> Result<()> {
    let Some(hosts) = ready_hosts()? else { return Ok(()) };
    let fin = run_to_end(&hosts.client, &rstwatch_str(), &["-i", "nosuchif0", "--duration", "1s"])?;
    assert_eq!(fin.status.code(), Some(1), "runtime errors exit 1");
    assert_refused(&fin, "nosuchif0", &hosts.client_if)
}

/// (c) Durations that do not parse or make no sense.
#[test]
fn bad_durations_are_one_line_errors() -> Result<()> {
    let Some(hosts) = ready_hosts()? else { return Ok(()) };
    let iface = hosts.client_if.name.as_str();
    for (args, needle) in [
        (vec!["-i", iface, "--duration", "5parsecs"], "5parsecs"),
        (vec!["-i", iface, "--duration", "1s", "--interval", "0s"], "interval"),
    ] {
        let fin = run_to_end(&hosts.client, &rstwatch_str(), &args)?;
        assert_refused(&fin, needle, &hosts.client_if)?;
    }
    Ok(())
}

/// (c) Without CAP_BPF (and CAP_SYS_ADMIN, which also grants it) or without CAP_NET_ADMIN.
#[test]
fn missing_capabilities_are_named() -> Result<()> {
    let Some(hosts) = ready_hosts()? else { return Ok(()) };
    for (caps, needle) in [("-bpf,-sys_admin", "CAP_BPF"), ("-net_admin", "CAP_NET_ADMIN")] {
        let privileges = [format!("--bounding-set={caps}"), format!("--inh-caps={caps}")];
        let fin = rstwatch_with_privileges(&hosts, &privileges, &["--duration", "1s"])?;
        assert_refused(&fin, needle, &hosts.client_if)?;
    }
    Ok(())
}

/// The documented minimum for an unprivileged user (the container line: BPF, NET_ADMIN,
/// PERFMON) is enough, and each one of them is needed: without it the error names it.
#[test]
fn an_unprivileged_user_needs_exactly_bpf_net_admin_and_perfmon() -> Result<()> {
    let Some(hosts) = ready_hosts()? else { return Ok(()) };
    let run_as_nobody = |caps: &str| -> Result<Finished> {
        let set = format!("-all,{caps}");
        let privileges = [
            "--reuid=65534".to_owned(),
            "--regid=65534".to_owned(),
            "--clear-groups".to_owned(),
            format!("--inh-caps={set}"),
            format!("--ambient-caps={set}"),
            format!("--bounding-set={set}"),
        ];
        rstwatch_with_privileges(&hosts, &privileges, &["--duration", "1s", "--format", "json"])
    };
    let fin = run_as_nobody("+bpf,+net_admin,+perfmon")?;
    assert_eq!(fin.status.code(), Some(0), "stderr: {}", fin.stderr);
    summary(&fin)?;
    assert_detached(&hosts.client_if)?;
    for (caps, missing) in
        [("+net_admin,+perfmon", "CAP_BPF"), ("+bpf,+perfmon", "CAP_NET_ADMIN"), ("+bpf,+net_admin", "CAP_PERFMON")]
    {
        let fin = run_as_nobody(caps)?;
        assert_refused(&fin, missing, &hosts.client_if)?;
    }
    Ok(())
}

/// (c) A second rstwatch on an interface that already has an XDP program fails; the first one
/// carries on untouched.
#[test]
fn second_attach_fails_and_first_keeps_running() -> Result<()> {
    let Some(hosts) = ready_hosts()? else { return Ok(()) };
    let first = watch(&hosts.client_if, &["--duration", "5s", "--format", "json"])?;
    let second = run_to_end(&hosts.client, &rstwatch_str(), &["-i", &hosts.client_if.name, "--duration", "1s"])?;
    assert_one_line_error(&second, "already has an XDP program");
    assert!(hosts.client_if.xdp_attached()?, "the second rstwatch removed the first one's program");
    let report = traffic(&hosts, &["--rounds", "2"], &steps("refused", &[C1], S4, 81))?;
    let fin = first.finish(EXIT_TIMEOUT)?;
    assert!(fin.status.success(), "the first rstwatch failed ({}): {}", fin.status, fin.stderr);
    assert_eq!(counted(&summary(&fin)?, &hosts.client_if)?, expected(&report, "server")?);
    assert_detached(&hosts.client_if)
}

fn stops_on(signal: libc::c_int) -> Result<()> {
    let hosts = hosts()?;
    let rw = watch(&hosts.client_if, &["--duration", "10m", "--interval", "1s", "--format", "json"])?;
    let report = traffic(&hosts, &["--rounds", "2"], &refused_and_aborted_steps())?;
    rw.signal(signal)?;
    let fin = rw.finish(EXIT_TIMEOUT)?;
    assert_eq!(fin.status.code(), Some(0), "rstwatch must exit 0 on signal {signal}; stderr: {}", fin.stderr);
    assert_eq!(counted(&summary(&fin)?, &hosts.client_if)?, expected(&report, "server")?);
    assert_detached(&hosts.client_if)
}

/// (d)
#[test]
fn sigterm_prints_summary_and_detaches() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"), Need::Tool("tcpdump"));
    stops_on(libc::SIGTERM)
}

/// (d)
#[test]
fn sigint_prints_summary_and_detaches() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"), Need::Tool("tcpdump"));
    stops_on(libc::SIGINT)
}

/// The lab itself: everything it made is gone after drop, also when the test panics.
#[test]
fn lab_is_removed_after_a_panic() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"), Need::Tool("tcpdump"));
    let names = std::sync::Mutex::new(None);
    let panicked = std::panic::catch_unwind(|| {
        let hosts = hosts().expect("lab");
        *names.lock().expect("lock") = Some((hosts.client.name().to_owned(), hosts.server.name().to_owned()));
        panic!("deliberate");
    });
    assert!(panicked.is_err());
    let (client, server) = names.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.take().context("lab never built")?;
    let list = String::from_utf8(Command::new("ip").args(["netns", "list"]).output()?.stdout)?;
    assert!(!list.contains(&client) && !list.contains(&server), "namespaces left behind: {list}");
    Ok(())
}

/// Kernels before 6.6 have no tcx links: `--hook tc` ingress and the egress program then go
/// through a clsact qdisc and netlink filters (asked for here with --tc-link clsact). The
/// counts are the same, and the filters are gone after rstwatch exits.
#[test]
fn clsact_filters_count_both_directions_and_are_removed_at_exit() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"), Need::Tool("tcpdump"));
    let hosts = hosts()?;
    let iface = &hosts.server_if;
    let mut cmd = iface.ns.exec(rstwatch());
    cmd.args([
        "-i",
        &iface.name,
        "--hook",
        "tc",
        "--tc-link",
        "clsact",
        "--duration",
        "5s",
        "--interval",
        "1s",
        "--format",
        "json",
    ]);
    let mut rw = Proc::spawn(&mut cmd)?;
    rw.wait_for_stderr(&format!("attached to {}", iface.name), START_TIMEOUT)?;
    assert!(rw.stderr().contains("clsact egress"), "{}", rw.stderr());
    let mut s = steps("client-abort", &[C1, C2], S4, 9000);
    s.extend(steps("server-abort", &[C3], S4, 8443));
    s.extend(steps("server-abort", &[C6], S6, 8443));
    let report = traffic(&hosts, &["--rounds", "2"], &s)?;
    let fin = rw.finish(EXIT_TIMEOUT)?;
    assert!(fin.status.success(), "rstwatch failed ({}): {}", fin.status, fin.stderr);
    let summary = summary(&fin)?;
    assert_eq!(counted(&summary, iface)?, expected(&report, "client")?, "clsact ingress");
    assert_eq!(counted_tx(&summary, iface)?, expected(&report, "server")?, "clsact egress");
    for direction in ["ingress", "egress"] {
        let out = Command::new("ip")
            .args(["netns", "exec", hosts.server.name(), "tc", "filter", "show", "dev", &iface.name, direction])
            .output()?;
        let filters = String::from_utf8_lossy(&out.stdout);
        assert!(!filters.contains("rstwatch"), "a {direction} filter outlived rstwatch: {filters}");
    }
    Ok(())
}

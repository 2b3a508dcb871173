//! rstwatch's diagnosis of who reset what and why, end to end: the three-namespace lab of
//! `rst_lab::diag_lab` (client — router with a middlebox rule — server) drives real Linux TCP
//! stacks through five reset scenarios over IPv4 and IPv6, and rstwatch watches the client's and
//! the server's veth at once.
//!
//! Needs root (namespaces, BPF, tracefs). Expectations come from the lab's own account of each
//! connection; tcpdump on both veths and the kernel's `tcp:tcp_send_reset` tracepoint are
//! independent witnesses that the lab did exactly that (and nothing else), so a failure says
//! whether the lab or rstwatch is wrong.

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
        self, ensure_rsts, listing, Capture, Conn, DiagLab, End, Family, ResetTrace, Scenario, Segment, ACK,
        DEFAULT_TTL, PSH, SYN,
    },
    lab::{Finished, Iface, Proc},
};
use serde_json::{json, Value};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// After the last scenario: well past the first retransmission timeout (≥ 200 ms) and any
/// delayed ACK, so a stray segment would show, and past one rstwatch interval.
const SETTLE: Duration = Duration::from_millis(1500);

/// The lab, or `None` where this machine lacks what it needs: the test is then skipped, with its
/// one line (a failure under `CI=true`).
fn lab() -> Result<Option<DiagLab>> {
    let needs =
        [Need::Root("network namespaces, BPF, tracefs"), Need::Tool("ip"), Need::Tool("nft"), Need::Tool("tcpdump")];
    if !rst_lab::skip::require(&rst_lab::skip::current_test(), &needs)? {
        return Ok(None);
    }
    rst_lab::lab::sweep_stale()?;
    diag_lab::ensure_tracefs()?;
    DiagLab::new().map(Some)
}

fn end_name(end: End) -> &'static str {
    match end {
        End::Client => "client",
        End::Server => "server",
    }
}

/// The segments of `conn` (either direction).
fn of_conn<'a>(segments: &'a [Segment], conn: &Conn) -> Vec<&'a Segment> {
    segments
        .iter()
        .filter(|s| (s.src, s.dst) == (conn.client, conn.server) || (s.src, s.dst) == (conn.server, conn.client))
        .collect()
}

/// What tcpdump saw on `end`'s veth is exactly what the lab claims: one RST per connection
/// (none of the router's on the server's side) with the expected flags and TTL, one SYN per
/// connection, SYN+ACKs with the TTL of their path, and nothing from anyone else.
fn check_wire(conns: &[Conn], end: End, segments: &[Segment]) -> Result<()> {
    let name = end_name(end);
    ensure_rsts(&format!("the {name}'s veth"), conns.iter().flat_map(|c| c.rsts_at(end)).collect(), segments)?;
    for s in segments {
        ensure!(
            conns.iter().any(|c| !of_conn(std::slice::from_ref(s), c).is_empty()),
            "a segment of no scenario's connection on the {name}'s veth: {s}{}",
            listing(segments)
        );
    }
    for conn in conns {
        let mine = of_conn(segments, conn);
        let syns = mine.iter().filter(|s| s.has(SYN) && !s.has(ACK)).count();
        let synacks: Vec<_> = mine.iter().filter(|s| s.has(SYN | ACK)).collect();
        ensure!(syns == 1, "{conn}: {syns} SYNs on the {name}'s veth{}", listing(segments));
        let want_synacks = usize::from(conn.scenario.handshake_completes());
        ensure!(
            synacks.len() == want_synacks,
            "{conn}: {} SYN+ACKs on the {name}'s veth, want {want_synacks}{}",
            synacks.len(),
            listing(segments)
        );
        let path_ttl = match end {
            End::Client => DEFAULT_TTL - 1,
            End::Server => DEFAULT_TTL,
        };
        for sa in synacks {
            ensure!(sa.ttl == path_ttl, "{conn}: SYN+ACK with TTL {} on the {name}'s veth, want {path_ttl}", sa.ttl);
        }
        if conn.scenario == Scenario::Middlebox {
            let data: Vec<_> = mine.iter().filter(|s| s.src == conn.client && s.payload > 0 && s.has(PSH)).collect();
            let want_data = usize::from(end == End::Client);
            ensure!(
                data.len() == want_data,
                "{conn}: {} client data segments on the {name}'s veth, want {want_data} (the router must drop it){}",
                data.len(),
                listing(segments)
            );
        }
    }
    Ok(())
}

/// The kernel's own account: one `tcp_send_reset` per RST a TCP stack sent, with the reason the
/// lab expects, and none for the router's.
fn check_kernel_reasons(conns: &[Conn], events: &[diag_lab::KernelReset]) -> Result<()> {
    let ours = |e: &diag_lab::KernelReset| {
        conns.iter().find(|c| [(c.client, c.server), (c.server, c.client)].contains(&(e.src, e.dst)))
    };
    let mut got: Vec<String> =
        events.iter().filter_map(|e| ours(e).map(|c| format!("{c}: {} > {} {}", e.src, e.dst, e.reason))).collect();
    let mut want: Vec<String> = conns
        .iter()
        .filter_map(|c| {
            let (src, dst) = c.rst_src_dst();
            c.scenario.kernel_reason().map(|r| format!("{c}: {src} > {dst} {r}"))
        })
        .collect();
    got.sort();
    want.sort();
    ensure!(
        got == want,
        "tcp:tcp_send_reset events differ from the lab's account\n  want:\n    {}\n  got:\n    {}",
        want.join("\n    "),
        got.join("\n    ")
    );
    Ok(())
}

/// The lab alone, against tcpdump on both veths and the kernel's tracepoint: exactly one RST per
/// connection, with the flags, TTLs and kernel reasons `diag_lab` states. Needs no rstwatch.
#[test]
fn diag_lab_scenarios_produce_the_expected_resets() -> Result<()> {
    let Some(lab) = lab()? else { return Ok(()) };
    let client_cap = Capture::start(&lab.client_if)?;
    let server_cap = Capture::start(&lab.server_if)?;
    let trace = ResetTrace::start()?;
    let conns = lab.run_all()?;
    std::thread::sleep(SETTLE);
    let events = trace.stop()?;
    let client_segs = client_cap.stop()?;
    let server_segs = server_cap.stop()?;
    lab.release_held();
    assert_eq!(conns.len(), 2 * Scenario::ALL.len());
    // For the record (`--nocapture`): what the lab did, as both witnesses saw it.
    for (end, segs) in [(End::Client, &client_segs), (End::Server, &server_segs)] {
        eprintln!("segments on the {}'s veth:{}", end_name(end), listing(segs));
    }
    for e in &events {
        if conns.iter().any(|c| [(c.client, c.server), (c.server, c.client)].contains(&(e.src, e.dst))) {
            eprintln!("tcp_send_reset {} > {} state={} reason={}", e.src, e.dst, e.state, e.reason);
        }
    }
    check_wire(&conns, End::Client, &client_segs)?;
    check_wire(&conns, End::Server, &server_segs)?;
    check_kernel_reasons(&conns, &events)
}

/// `nsenter --net` rather than `ip netns exec`: rstwatch needs the host's tracefs.
fn watch(iface: &Iface) -> Result<Proc> {
    let mut cmd = diag_lab::nsenter(&iface.ns, rst_lab::paths::rstwatch_for_tests());
    cmd.args(["-i", &iface.name, "--format", "json", "--interval", "1s"]);
    let mut proc = Proc::spawn(&mut cmd)?;
    proc.wait_for_stderr(&format!("attached to {}", iface.name), START_TIMEOUT)?;
    Ok(proc)
}

/// rstwatch's final summary: the one `summary` line, the last line of its stdout.
fn summary(fin: &Finished, what: &str) -> Result<Value> {
    ensure!(fin.status.success(), "rstwatch on the {what}'s veth failed ({}): {}", fin.status, fin.stderr);
    rst_lab::lab::summary_line(&fin.stdout).with_context(|| format!("rstwatch on the {what}'s veth:\n{}", fin.stdout))
}

/// A flow by the RST's source and destination. Within one interface of this lab each pair's RSTs
/// cross in one direction only, so `direction` is compared as a field: a wrong one then reads as
/// such rather than as one flow missing and another unexpected.
type FlowKey = (SocketAddr, SocketAddr);

fn sockaddr(v: &Value, addr: &str, port: &str) -> Result<SocketAddr> {
    let ip: IpAddr = v[addr]
        .as_str()
        .with_context(|| format!("no {addr} in {v}"))?
        .parse()
        .with_context(|| format!("{addr} in {v}"))?;
    let port = u16::try_from(v[port].as_u64().with_context(|| format!("no {port} in {v}"))?)?;
    Ok(SocketAddr::new(ip, port))
}

/// Compares `want`'s fields with `got`'s: objects key by key (so rstwatch may add fields),
/// except under `reasons`, which must be exactly the expected map.
fn compare(what: &str, path: &str, got: &Value, want: &Value, problems: &mut Vec<String>) {
    match want {
        Value::Object(fields) if !path.ends_with("reasons") && got.is_object() => {
            for (k, w) in fields {
                let sub = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                compare(what, &sub, &got[k.as_str()], w, problems);
            }
        }
        _ if got != want => problems.push(format!("{what}: `{path}` is {got}, want {want}")),
        _ => {}
    }
}

/// The flow record rstwatch should list on `end`'s veth for `conn`'s RST, if that RST crosses it.
fn expected_flow(conn: &Conn, end: End, iface: &Iface, ifindex: u32) -> Option<(FlowKey, Value)> {
    let rst = conn.rsts_at(end).pop()?;
    let tx = conn.sent_from(end);
    let direction = if tx { "tx" } else { "rx" };
    let s = conn.scenario;
    let kinds = json!({
        "refused": u64::from(s.kind() == "refused"),
        "handshake": 0,
        "established": u64::from(s.kind() == "established"),
        "closing": 0,
    });
    let middlebox = if s == Scenario::Middlebox {
        json!({"rst_ttl": DEFAULT_TTL, "peer_ttl": DEFAULT_TTL - 1, "resets": 1})
    } else {
        Value::Null
    };
    // Reasons come from this host's own stack, so only for what it sends; an RST it sent that no
    // kernel event explains would count as no_kernel_event (never here: the router's RST is rx).
    let (reasons, no_kernel_event) = match (tx, s.kernel_reason()) {
        (true, Some(r)) => (json!({ r: 1 }), json!(0)),
        (true, None) => (json!({}), json!(1)),
        // Received RSTs have no kernel event to look for.
        (false, _) => (json!({}), Value::Null),
    };
    let record = json!({
        "iface": iface.name,
        "ifindex": ifindex,
        "family": conn.family.name(),
        "src": rst.src.ip().to_string(), "sport": rst.src.port(),
        "dst": rst.dst.ip().to_string(), "dport": rst.dst.port(),
        "direction": direction,
        "resets": 1,
        "kinds": kinds,
        "with_ack": u64::from(rst.ack),
        "side": s.claimed_side().name(),
        "side_observed": true,
        "first": true,
        "middlebox": middlebox,
        "reasons": reasons,
        "no_kernel_event": no_kernel_event,
    });
    Some(((rst.src, rst.dst), record))
}

/// `summary[key]` as an array; a missing one is a problem (reported with the others), not an abort.
fn array<'a>(summary: &'a Value, key: &str, name: &str, problems: &mut Vec<String>) -> &'a [Value] {
    match summary[key].as_array() {
        Some(a) => a,
        None => {
            problems.push(format!("{name}: the summary has no `{key}` array"));
            &[]
        }
    }
}

/// Everything rstwatch's summary on `end`'s veth gets wrong, as readable lines.
fn summary_problems(summary: &Value, end: End, iface: &Iface, conns: &[Conn]) -> Result<Vec<String>> {
    let name = end_name(end);
    let ifindex = iface.ifindex()?;
    let mut problems = Vec::new();

    // Flows: exactly one record per RST that crossed this veth, classified.
    let mut want: BTreeMap<FlowKey, (Conn, Value)> = BTreeMap::new();
    for conn in conns {
        if let Some((key, record)) = expected_flow(conn, end, iface, ifindex) {
            want.insert(key, (*conn, record));
        }
    }
    let flows = array(summary, "flows", name, &mut problems);
    let mut seen = BTreeSet::new();
    let mut flow_resets = 0;
    for f in flows {
        flow_resets += f["resets"].as_u64().with_context(|| format!("resets in {f}"))?;
        let key: FlowKey = (sockaddr(f, "src", "sport")?, sockaddr(f, "dst", "dport")?);
        if !seen.insert(key) {
            problems.push(format!("{name}: flow listed twice: {f}"));
        }
        match want.get(&key) {
            Some((conn, record)) => compare(&format!("{name}: flow of {conn}"), "", f, record, &mut problems),
            None => problems.push(format!("{name}: unexpected flow {f}")),
        }
    }
    for (key, (conn, record)) in &want {
        if !seen.contains(key) {
            problems.push(format!("{name}: no {} flow {} > {} for {conn}", record["direction"], key.0, key.1));
        }
    }

    // Totals: every reset is in a listed flow.
    let totals = &summary["totals"];
    let want_total = u64::try_from(want.len())?;
    compare(&format!("{name}: totals"), "", totals, &json!({"resets": want_total, "overflow": 0}), &mut problems);
    if totals["resets"].as_u64() != Some(flow_resets) {
        problems.push(format!("{name}: totals.resets {} != sum of flow resets {flow_resets}", totals["resets"]));
    }

    // Services: one per scenario and family, whether or not a RST of it crossed this veth.
    let mut want_services: BTreeMap<SocketAddr, (Conn, Value)> = BTreeMap::new();
    for conn in conns {
        let resets = u64::try_from(conn.rsts_at(end).len())?;
        let refused = u64::from(conn.scenario == Scenario::Refused);
        let record = json!({
            "iface": iface.name,
            "addr": conn.server.ip().to_string(),
            "port": conn.server.port(),
            "attempts": 1,
            "synacks": u64::from(conn.scenario.handshake_completes()),
            "resets": resets,
            "refused": refused,
        });
        want_services.insert(conn.server, (*conn, record));
    }
    let services = array(summary, "services", name, &mut problems);
    let mut seen_services = BTreeSet::new();
    for s in services {
        let key = sockaddr(s, "addr", "port")?;
        if !seen_services.insert(key) {
            problems.push(format!("{name}: service listed twice: {s}"));
        }
        match want_services.get(&key) {
            Some((conn, record)) => compare(&format!("{name}: service {key} of {conn}"), "", s, record, &mut problems),
            None => problems.push(format!("{name}: unexpected service {s}")),
        }
    }
    for key in want_services.keys() {
        if !seen_services.contains(key) {
            problems.push(format!("{name}: service {key} missing"));
        }
    }

    // Sources and destinations: the server's address resets the client four times per family on
    // the client's veth, once of them as (spoofed by) the middlebox; the server's veth never
    // sees a middlebox RST.
    let sources = array(summary, "sources", name, &mut problems);
    let destinations = array(summary, "destinations", name, &mut problems);
    for family in Family::ALL {
        let server = family.server().to_string();
        let client = family.client().to_string();
        match end {
            End::Client => {
                let to_client = conns.iter().filter(|c| c.family == family && c.rst_src_dst().1 == c.client).count();
                let to_client = u64::try_from(to_client)?;
                match sources.iter().find(|s| s["src"] == server.as_str()) {
                    Some(s) => compare(
                        &format!("{name}: source {server}"),
                        "",
                        s,
                        &json!({"resets": to_client, "middlebox": 1}),
                        &mut problems,
                    ),
                    None => problems.push(format!("{name}: no source {server} in {}", summary["sources"])),
                }
                match destinations.iter().find(|d| d["dst"] == client.as_str()) {
                    Some(d) => compare(
                        &format!("{name}: destination {client}"),
                        "",
                        d,
                        &json!({"resets": to_client}),
                        &mut problems,
                    ),
                    None => problems.push(format!("{name}: no destination {client} in {}", summary["destinations"])),
                }
            }
            End::Server => {}
        }
    }
    if end == End::Server {
        for s in sources {
            if s["middlebox"] != 0 {
                problems.push(format!(
                    "{name}: source {}: `middlebox` is {}, want 0 (no middlebox RST reaches the server's veth)",
                    s["src"], s["middlebox"]
                ));
            }
        }
    }
    Ok(problems)
}

/// On the router's veth towards the client, the RST its nftables rule made leaves (tx) with no
/// TCP stack event behind it, and its TTL gives it away there too: the server's SYN+ACK left
/// this veth one hop older than the router's own RST.
fn router_problems(summary: &Value, conns: &[Conn]) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let flows = summary["flows"].as_array().context("router summary has no flows")?;
    for conn in conns.iter().filter(|c| c.scenario == Scenario::Middlebox) {
        let found = flows.iter().find(|f| {
            f["direction"] == "tx"
                && sockaddr(f, "src", "sport").ok() == Some(conn.server)
                && sockaddr(f, "dst", "dport").ok() == Some(conn.client)
        });
        let Some(flow) = found else {
            problems.push(format!("router: no tx flow for the nftables RST of {conn}"));
            continue;
        };
        let want = json!({
            "resets": 1,
            "reasons": {},
            "no_kernel_event": 1,
            "middlebox": {"rst_ttl": DEFAULT_TTL, "peer_ttl": DEFAULT_TTL - 1, "resets": 1},
            "kinds": {"established": 1},
            "side": "server",
        });
        compare("router", &format!("flow of {conn}"), flow, &want, &mut problems);
    }
    Ok(problems)
}

/// Both veths watched at once; every scenario over IPv4 and IPv6; each summary must classify
/// every RST exactly: direction, connection state, ACK, the sender's role, first in its
/// connection, the middlebox's TTL tell, the kernel's reason on the sending side, and the
/// per-service and per-source views.
#[test]
fn diagnosis_lab_classifies_every_reset() -> Result<()> {
    let Some(lab) = lab()? else { return Ok(()) };
    assert!(
        Path::new(diag_lab::TRACEFS).join("events/tcp/tcp_send_reset").is_dir(),
        "tracefs lacks tcp:tcp_send_reset"
    );
    let client_cap = Capture::start(&lab.client_if)?;
    let server_cap = Capture::start(&lab.server_if)?;
    let client_rw = watch(&lab.client_if)?;
    let server_rw = watch(&lab.server_if)?;
    // The router's side towards the client: where its nftables RST leaves.
    let router_rw = watch(&lab.router_client_if)?;
    let conns = lab.run_all()?;
    std::thread::sleep(SETTLE);
    let signalled = [client_rw.signal(libc::SIGINT), server_rw.signal(libc::SIGINT), router_rw.signal(libc::SIGINT)];
    let client_fin = client_rw.finish(EXIT_TIMEOUT);
    let server_fin = server_rw.finish(EXIT_TIMEOUT);
    let router_fin = router_rw.finish(EXIT_TIMEOUT);
    let client_segs = client_cap.stop()?;
    let server_segs = server_cap.stop()?;
    // Only now: closing these sends FINs that the client's stack answers with RSTs.
    lab.release_held();
    for s in signalled {
        s?;
    }
    let (client_fin, server_fin, router_fin) = (client_fin?, server_fin?, router_fin?);

    check_wire(&conns, End::Client, &client_segs)
        .context("the lab itself misbehaved (tcpdump on the client's veth): rstwatch cannot be judged")?;
    check_wire(&conns, End::Server, &server_segs)
        .context("the lab itself misbehaved (tcpdump on the server's veth): rstwatch cannot be judged")?;

    let client_summary = summary(&client_fin, "client")?;
    let server_summary = summary(&server_fin, "server")?;
    let router_summary = summary(&router_fin, "router")?;
    let mut problems = summary_problems(&client_summary, End::Client, &lab.client_if, &conns)?;
    problems.extend(summary_problems(&server_summary, End::Server, &lab.server_if, &conns)?);
    problems.extend(router_problems(&router_summary, &conns)?);
    if !problems.is_empty() {
        let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
        bail!(
            "rstwatch misclassified {} things:\n  {}\n\nconnections:\n  {}\n\nclient-side flows: {}\nclient-side services: {}\n\
             server-side flows: {}\nserver-side services: {}\nrouter-side flows: {}",
            problems.len(),
            problems.join("\n  "),
            conns.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "),
            pretty(&client_summary["flows"]),
            pretty(&client_summary["services"]),
            pretty(&server_summary["flows"]),
            pretty(&server_summary["services"]),
            pretty(&router_summary["flows"]),
        );
    }
    Ok(())
}

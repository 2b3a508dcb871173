//! What the real-stack labs share: the lab's working directory and skip rule, rstwatch and
//! tcpdump on each vantage, the verdicts expected of them, the captured resets, nginx.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{self, Read as _},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use rst_lab::{
    diag_lab::{self, bound_client, nsenter, Capture, Rst, Segment, RST},
    lab::{Iface, Netns, Proc},
    Need,
};
use serde_json::Value;
use socket2::Socket;

pub(crate) const START_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// After the last reset: past a retransmission timeout and one rstwatch interval.
pub(crate) const SETTLE: Duration = Duration::from_millis(1500);
/// Linux's TTL; every lab here is one wire (a bridge at most), so no hop lowers it.
pub(crate) const TTL: u8 = 64;
/// `tcpi_state` values (include/net/tcp_states.h).
pub(crate) const TCP_CLOSE: u8 = 7;
pub(crate) const TCP_CLOSE_WAIT: u8 = 8;

/// The causes that are not a problem: everything else is alarming.
pub(crate) const BENIGN: [&str; 2] = ["teardown", "health_check"];

// ---------------------------------------------------------------------------------------------
// Preconditions, namespaces and sockets
// ---------------------------------------------------------------------------------------------

/// Whether the test can run: root and `tools`; otherwise skipped with its reason, or a failure
/// under CI=true (`rst_lab::skip`).
pub(crate) fn ready(test: &str, tools: &[&str]) -> Result<bool> {
    let mut needs = vec![Need::Root("network namespaces, BPF, nftables")];
    needs.extend(["ip", "nft", "tcpdump"].iter().chain(tools).map(|tool| Need::Tool(tool)));
    if !rst_lab::skip::require(test, &needs)? {
        return Ok(false);
    }
    rst_lab::lab::sweep_stale()?;
    diag_lab::ensure_tracefs()?;
    Ok(true)
}

/// A directory for one test's captures and rstwatch outputs: removed after a pass, kept (and
/// named) after a failure or a panic.
pub(crate) struct Workdir {
    pub(crate) path: PathBuf,
    pub(crate) keep: bool,
}

impl Workdir {
    pub(crate) fn new(test: &str) -> Result<Workdir> {
        let path = std::env::temp_dir().join(format!("rstwatch-real-stacks-{}-{test}", std::process::id()));
        if path.exists() {
            std::fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Workdir { path, keep: false })
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if self.keep || thread::panicking() {
            eprintln!("captures and rstwatch outputs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs `body` if the test can run, timing it; its directory stays when it fails.
pub(crate) fn run_test(test: &str, tools: &[&str], body: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    if !ready(test, tools)? {
        return Ok(());
    }
    let mut dir = Workdir::new(test)?;
    let started = Instant::now();
    let result = body(&dir.path);
    eprintln!("{test}: {:.1} s", started.elapsed().as_secs_f64());
    dir.keep = result.is_err();
    result
}

/// A client socket of `ns` connected from `client_ip` to `server`.
pub(crate) fn connect(client_ip: IpAddr, server: SocketAddr) -> Result<(Socket, SocketAddr)> {
    let (sock, local) = bound_client(client_ip)?;
    sock.connect_timeout(&server.into(), IO_TIMEOUT).with_context(|| format!("{local}: connecting to {server}"))?;
    sock.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok((sock, local))
}

pub(crate) fn tcp_state(sock: &Socket) -> io::Result<u8> {
    Ok(diag_lab::tcp_info(sock)?.tcpi_state)
}

/// Polls `done` every 10 ms until it holds, failing after `timeout`.
pub(crate) fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done().with_context(|| format!("waiting until {what}"))? {
        ensure!(Instant::now() < deadline, "not {what} within {timeout:?}");
        thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// Whether `ss` in `ns` lists a TCP socket on local port `port` in `state` (an `ss` state or
/// state class: `listening`, `connected` (all but listening and closed: TIME_WAIT sockets, in
/// their FIN_WAIT2 substate too, included), …).
pub(crate) fn has_socket(ns: &Netns, state: &str, port: u16) -> Result<bool> {
    let mut ss = ns.exec("ss");
    ss.args(["-Htan", "state", state, "sport", "=", &format!(":{port}")]);
    let out = ss.output().context("running ss")?;
    ensure!(out.status.success(), "ss failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(!String::from_utf8_lossy(&out.stdout).trim().is_empty())
}

// ---------------------------------------------------------------------------------------------
// Watching: rstwatch live and tcpdump on each vantage, then replay of each capture
// ---------------------------------------------------------------------------------------------

/// rstwatch live and tcpdump on one interface.
pub(crate) struct Vantage {
    pub(crate) name: &'static str,
    pub(crate) pcap: PathBuf,
    pub(crate) capture: Capture,
    pub(crate) rstwatch: Proc,
}

/// What one vantage saw: the capture's segments and rstwatch's summaries, live and replayed.
pub(crate) struct Seen {
    pub(crate) name: &'static str,
    pub(crate) segments: Vec<Segment>,
    pub(crate) live: Value,
    pub(crate) replay: Value,
}

impl Seen {
    pub(crate) fn pcap_hint(&self) -> String {
        format!("(capture {}.pcap)", self.name)
    }
}

/// Starts a capture and a live rstwatch on each `(name, interface)`; returns once every
/// rstwatch is attached.
pub(crate) fn watch(dir: &Path, ends: &[(&'static str, &Iface)]) -> Result<Vec<Vantage>> {
    let ends: Vec<_> = ends.iter().map(|&(name, iface)| (name, iface, &[][..])).collect();
    watch_with(dir, &ends)
}

/// [`watch`], each rstwatch with its vantage's own extra arguments.
pub(crate) fn watch_with(dir: &Path, ends: &[(&'static str, &Iface, &[&str])]) -> Result<Vec<Vantage>> {
    watch_filtered(dir, ends, "tcp")
}

/// [`watch`] capturing everything IP: the TCP inside tunnels is UDP, GRE or IP on the wire.
pub(crate) fn watch_all_ip(dir: &Path, ends: &[(&'static str, &Iface, &[&str])]) -> Result<Vec<Vantage>> {
    watch_filtered(dir, ends, "ip or ip6")
}

fn watch_filtered(dir: &Path, ends: &[(&'static str, &Iface, &[&str])], filter: &str) -> Result<Vec<Vantage>> {
    let mut vantages = Vec::new();
    for &(name, iface, args) in ends {
        let pcap = dir.join(format!("{name}.pcap"));
        let capture = Capture::to_file_filtered(iface, &pcap, filter)?;
        let mut cmd = nsenter(&iface.ns, rst_lab::paths::rstwatch_for_tests());
        cmd.args(["-i", &iface.name, "--format", "json", "--interval", "1s"]).args(args);
        let mut rstwatch = Proc::spawn(&mut cmd)?;
        rstwatch.wait_for_stderr(&format!("attached to {}", iface.name), START_TIMEOUT)?;
        vantages.push(Vantage { name, pcap, capture, rstwatch });
    }
    Ok(vantages)
}

/// Lets the last segments land, stops every rstwatch (at once) and capture, and replays each
/// capture. Outputs are written beside the captures.
pub(crate) fn stop(dir: &Path, vantages: Vec<Vantage>) -> Result<Vec<Seen>> {
    thread::sleep(SETTLE);
    for v in &vantages {
        v.rstwatch.signal(libc::SIGINT)?;
    }
    let mut seen = Vec::new();
    for Vantage { name, pcap, capture, rstwatch } in vantages {
        let live = rstwatch.finish(EXIT_TIMEOUT)?;
        std::fs::write(dir.join(format!("{name}.live.jsonl")), &live.stdout)?;
        std::fs::write(dir.join(format!("{name}.live.stderr")), &live.stderr)?;
        ensure!(live.status.success(), "{name}: rstwatch failed ({}): {}", live.status, live.stderr.trim());
        let segments = capture.stop()?;
        let replayed = Command::new(rst_lab::paths::rstwatch_for_tests())
            .args(["replay", "--format", "json"])
            .arg(&pcap)
            .output()
            .context("running rstwatch replay")?;
        std::fs::write(dir.join(format!("{name}.replay.jsonl")), &replayed.stdout)?;
        ensure!(
            replayed.status.success(),
            "{name}: rstwatch replay failed ({}): {}",
            replayed.status,
            String::from_utf8_lossy(&replayed.stderr).trim()
        );
        let live = rst_lab::lab::summary_line(&live.stdout).with_context(|| format!("{name}: live"))?;
        let replay = rst_lab::lab::summary_line(&String::from_utf8_lossy(&replayed.stdout))
            .with_context(|| format!("{name}: replay"))?;
        seen.push(Seen { name, segments, live, replay });
    }
    Ok(seen)
}

pub(crate) fn vantage<'a>(seen: &'a [Seen], name: &str) -> Result<&'a Seen> {
    seen.iter().find(|s| s.name == name).with_context(|| format!("no vantage {name}"))
}

// ---------------------------------------------------------------------------------------------
// Verdicts
// ---------------------------------------------------------------------------------------------

/// What identifies a verdict: cause, service, side and client.
pub(crate) type Key = (String, String, u64, String, String);

pub(crate) fn key(v: &Value) -> Key {
    let text = |field: &str| match &v[field] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    (text("cause"), text("addr"), v["port"].as_u64().unwrap_or(0), text("side"), text("client"))
}

pub(crate) fn verdicts(summary: &Value) -> Result<Vec<Value>> {
    summary["verdicts"].as_array().cloned().context("the summary has no verdicts")
}

pub(crate) fn show(verdicts: &[Value]) -> String {
    if verdicts.is_empty() {
        return " none".to_owned();
    }
    verdicts.iter().map(|v| format!("\n    {v}")).collect()
}

pub(crate) fn alarming(v: &Value) -> bool {
    !BENIGN.iter().any(|b| v["cause"] == *b)
}

/// One verdict a vantage must name (and nothing else).
pub(crate) struct Want {
    pub(crate) cause: &'static str,
    pub(crate) addr: IpAddr,
    pub(crate) port: u16,
    pub(crate) side: Option<&'static str>,
    /// Resets, each ending one connection.
    pub(crate) resets: u64,
}

impl Want {
    pub(crate) fn key(&self) -> Key {
        (
            self.cause.to_owned(),
            self.addr.to_string(),
            u64::from(self.port),
            self.side.unwrap_or("-").to_owned(),
            "-".to_owned(),
        )
    }
}

/// The summary names exactly `want`, with its counts.
pub(crate) fn expect_verdicts(what: &str, summary: &Value, want: &[Want]) -> Result<()> {
    let got = verdicts(summary)?;
    let got_keys: BTreeSet<Key> = got.iter().map(key).collect();
    let want_keys: BTreeSet<Key> = want.iter().map(Want::key).collect();
    ensure!(got_keys == want_keys, "{what}: verdicts differ\n  want: {want_keys:?}\n  got:{}", show(&got));
    for w in want {
        let v = got.iter().find(|v| key(v) == w.key()).context("matched above")?;
        ensure!(
            v["resets"] == w.resets && v["connections"] == w.resets,
            "{what}: {} resets / {} connections, want {} each: {v}",
            v["resets"],
            v["connections"],
            w.resets
        );
        ensure!(v["text"].as_str().is_some_and(|t| !t.is_empty()), "{what}: a verdict without its sentence: {v}");
    }
    Ok(())
}

/// A teardown after the resetter's own FIN (answering the peer's late segments) is told only
/// where data segments are watched: replay, not live (docs/verdicts.md, "Why: what each reset is").
pub(crate) fn own_fin_teardowns(v: &Value) -> u64 {
    if v["cause"] == "teardown" {
        v["after_own_fin"].as_u64().unwrap_or(0)
    } else {
        0
    }
}

/// Live and replay of the same wire name the same causes with the same counts, but for the
/// teardowns only replay can tell (`own_fin_teardowns`), which live may lack or count without.
pub(crate) fn same_live_and_replay(seen: &Seen) -> Result<()> {
    let what = format!("{} {}", seen.name, seen.pcap_hint());
    let live = verdicts(&seen.live)?;
    let replay = verdicts(&seen.replay)?;
    let live_by: BTreeMap<Key, &Value> = live.iter().map(|v| (key(v), v)).collect();
    let replay_by: BTreeMap<Key, &Value> = replay.iter().map(|v| (key(v), v)).collect();
    let extra: Vec<&Key> = live_by.keys().filter(|k| !replay_by.contains_key(*k)).collect();
    ensure!(
        extra.is_empty(),
        "{what}: live names {extra:?}, replay does not\n  live:{}\n  replay:{}",
        show(&live),
        show(&replay)
    );
    for (k, r) in &replay_by {
        let own_fin = own_fin_teardowns(r);
        let Some(l) = live_by.get(k) else {
            let peer_fin = r["after_peer_fin"].as_u64().unwrap_or(0);
            ensure!(
                own_fin > 0 && peer_fin == 0,
                "{what}: replay names {k:?}, live does not\n  live:{}\n  replay:{}",
                show(&live),
                show(&replay)
            );
            continue;
        };
        if own_fin == 0 {
            for field in ["resets", "connections", "after_peer_fin", "scan", "benign"] {
                ensure!(l[field] == r[field], "{what}: {k:?} {field} live {} ≠ replay {}", l[field], r[field]);
            }
        } else {
            ensure!(
                l["connections"] == r["after_peer_fin"],
                "{what}: {k:?}: live's connections {} are not replay's after the peer's FIN {}",
                l["connections"],
                r["after_peer_fin"]
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Witnesses: what the captures show
// ---------------------------------------------------------------------------------------------

/// Segments of the 4-tuple of `s` (either direction).
pub(crate) fn same_conn<'a>(segments: &'a [Segment], s: &Segment) -> Vec<&'a Segment> {
    segments.iter().filter(|o| (o.src, o.dst) == (s.src, s.dst) || (o.src, o.dst) == (s.dst, s.src)).collect()
}

/// Each RST with the segments of its connection before it.
pub(crate) fn rsts_with_history(segments: &[Segment]) -> Vec<(&Segment, Vec<&Segment>)> {
    segments
        .iter()
        .enumerate()
        .filter(|(_, s)| s.has(RST))
        .map(|(i, rst)| (rst, same_conn(&segments[..i], rst)))
        .collect()
}

pub(crate) fn rst(src: SocketAddr, dst: SocketAddr, ack: bool) -> Rst {
    Rst { src, dst, ack, ttl: TTL }
}

// ---------------------------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------------------------

pub(crate) const HTTP_PORT: u16 = 8080;
/// The response a client leaves mostly unread: well inside the client's initial receive
/// window, so the server's FIN follows it at once.
pub(crate) const BIG_LEN: usize = 16 * 1024;

/// nginx in `ns`, listening on `addr`, closing idle keep-alive connections after 1 s; serves
/// `/big.bin` (`BIG_LEN` bytes) and `/hello` ("hello\n"). Returns once it listens.
pub(crate) fn nginx(ns: &Netns, dir: &Path, addr: SocketAddr) -> Result<Proc> {
    let prefix = dir.join("nginx");
    let www = prefix.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("big.bin"), vec![b'x'; BIG_LEN])?;
    let p = prefix.display();
    let http = format!(
        "\tdefault_type application/octet-stream;\n\
         \tkeepalive_timeout 1s;\n\
         \tserver {{\n\
         \t\tlisten {addr};\n\
         \t\troot {p}/www;\n\
         \t\tlocation = /hello {{ return 200 \"hello\\n\"; }}\n\
         \t}}\n"
    );
    nginx_serving(ns, &prefix, &http, &[addr.port()])
}

/// nginx in `ns` with its files under `prefix` and `http` inside its `http` block; returns
/// once it listens on every one of `ports`.
pub(crate) fn nginx_serving(ns: &Netns, prefix: &Path, http: &str, ports: &[u16]) -> Result<Proc> {
    std::fs::create_dir_all(prefix)?;
    let p = prefix.display();
    let conf = format!(
        "user root;\n\
         worker_processes 1;\n\
         pid {p}/nginx.pid;\n\
         error_log {p}/error.log notice;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n\
         \taccess_log off;\n\
         {http}\
         }}\n"
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf)?;
    let mut cmd = ns.exec("nginx");
    cmd.arg("-p").arg(prefix).arg("-e").arg(prefix.join("error.log")).arg("-c").arg(&conf_path);
    cmd.args(["-g", "daemon off;"]);
    let mut proc = Proc::spawn(&mut cmd)?;
    for &port in ports {
        wait_until("nginx listens", START_TIMEOUT, || {
            if let Some(status) = proc.try_wait()? {
                bail!("nginx exited ({status}): {}", proc.stderr().trim());
            }
            has_socket(ns, "listening", port)
        })?;
    }
    Ok(proc)
}

/// Reads from `sock` until `buf` ends with `end`.
pub(crate) fn read_until(sock: &Socket, end: &[u8]) -> Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.ends_with(end) {
        let n = (&*sock).read(&mut buf).context("reading the response")?;
        ensure!(n > 0, "the connection closed before the response ended: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    Ok(got)
}

//! `cargo xtask bench`: the numbers in BENCHMARKS.md, measured the way BENCHMARKS.md says.
//!
//! Kernel-side measurements need the eBPF object and the real `Collector`, which xtask must not
//! link (it would build the eBPF object before `cargo xtask setup` installed its toolchain): they
//! live in the `rstwatch-bench` binary (crate rst-tools), built here with
//! `cargo build --release -p rst-tools --bin rstwatch-bench` and run as a child process that
//! prints one JSON object, typed on both sides by rst-bench-report. This module runs it, builds the namespace lab for the floods, runs rstwatch,
//! tcpdump and tshark against them, checks exactness, and prints Markdown tables.
//!
//! The flood helpers are public: `xtask/tests/flood.rs` uses the same lab, generator and
//! checks.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use rst_bench_report::{median, DrainReport, GenReport, KernelReport, PktReport, Report};
use serde_json::{json, Value};

use crate::{
    build, cmd,
    lab::{Iface, Lab, Netns, Proc},
};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// The BPF filter the capture tools get: only what rstwatch counts.
pub const RST_FILTER: &str = "tcp[tcpflags] & tcp-rst != 0";

/// Which parts to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    Kernel,
    Flood,
    Userspace,
    /// `rstwatch top` vs plain `rstwatch` under the same flood (not in the default set).
    Top,
    /// `rstwatch --capture` vs tcpdump writing the same RSTs under the flood (not in the default set).
    Capture,
}

pub struct Options {
    pub parts: Vec<Part>,
    /// Fewer trials and shorter floods: a smoke run, not numbers to publish.
    pub quick: bool,
    /// Where the raw JSON goes (default target/bench/results.json).
    pub out: Option<PathBuf>,
}

/// `target/release/rstwatch-bench`, or `BENCH_BIN`.
pub fn bench_bin() -> PathBuf {
    std::env::var_os("BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| cmd::workspace_root().join("target/release/rstwatch-bench"))
}

/// `target/release/rstwatch`, or `RSTWATCH_BIN`.
pub fn rstwatch_bin() -> PathBuf {
    std::env::var_os("RSTWATCH_BIN").map(PathBuf::from).unwrap_or_else(build::rstwatch_path)
}

/// Builds the bench binary (and with it the eBPF object) unless `BENCH_BIN` names one; once
/// per process.
pub fn build_bench() -> Result<PathBuf> {
    static BUILT: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut built = BUILT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !*built && std::env::var_os("BENCH_BIN").is_none() {
        let mut cargo = cmd::command("cargo", ["build", "--release", "-p", "rst-tools", "--bin", "rstwatch-bench"]);
        cargo.current_dir(cmd::workspace_root());
        cmd::run(&mut cargo).context("building rstwatch-bench")?;
    }
    *built = true;
    let bin = bench_bin();
    ensure!(bin.is_file(), "{} does not exist", bin.display());
    Ok(bin)
}

/// Runs the bench binary (inside `ns` if given) and parses the one report it prints.
pub fn bench_report<T: serde::de::DeserializeOwned>(ns: Option<&Netns>, args: &[String]) -> Result<T> {
    let bin = bench_bin();
    let mut command = match ns {
        Some(ns) => ns.exec(&bin),
        None => std::process::Command::new(&bin),
    };
    command.args(args);
    let fin = Proc::spawn(&mut command)?.finish(Duration::from_secs(900))?;
    ensure!(fin.status.success(), "`bench {}` failed ({}): {}", args.join(" "), fin.status, fin.stderr.trim());
    serde_json::from_str(fin.stdout.trim()).with_context(|| format!("bench printed no report: {}", fin.stdout))
}

fn strings<const N: usize>(args: [&str; N]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

// ---------------------------------------------------------------------------------------------
// The flood lab

/// A generator namespace and a monitor namespace joined by one veth pair. The monitor's end
/// has GRO on, so XDP_TX frames from the generator reach it also when no XDP program is there.
pub struct FloodLab {
    pub gen: Netns,
    pub mon: Netns,
    pub gen_if: Iface,
    pub mon_if: Iface,
    pub lab: Lab,
}

impl FloodLab {
    pub fn new() -> Result<FloodLab> {
        // SAFETY: geteuid has no preconditions.
        ensure!(unsafe { libc::geteuid() } == 0, "the flood lab needs root (namespaces, BPF, XDP)");
        crate::lab::sweep_stale()?;
        let mut lab = Lab::new()?;
        let gen = lab.add_ns("gen")?;
        let mon = lab.add_ns("mon")?;
        let (gen_if, mon_if) = lab.add_veth(&gen, &mon)?;
        let mut ethtool = mon.exec("ethtool");
        ethtool.args(["-K", &mon_if.name, "gro", "on"]);
        cmd::output(&mut ethtool)?;
        Ok(FloodLab { gen, mon, gen_if, mon_if, lab })
    }

    /// XDP frames the monitor's veth received from its peer (`ethtool -S`, all queues).
    pub fn xdp_received(&self) -> Result<u64> {
        let mut ethtool = self.mon.exec("ethtool");
        ethtool.args(["-S", &self.mon_if.name]);
        let text = cmd::output(&mut ethtool)?;
        let mut total = 0;
        for line in text.lines() {
            let line = line.trim();
            if let Some((name, value)) = line.split_once(':') {
                if name.starts_with("rx_queue_") && name.ends_with("_xdp_packets") {
                    total += value.trim().parse::<u64>().with_context(|| format!("ethtool -S: {line}"))?;
                }
            }
        }
        Ok(total)
    }

    /// Moves the monitor veth's NAPI poll into a kernel thread of its own: the generator then
    /// fills the 256-frame ring faster than the thread empties it, as a starved softirq does on
    /// a loaded machine, and the ring refuses frames.
    pub fn threaded_napi(&self) -> Result<()> {
        let mut sh = self.mon.exec("sh");
        sh.args(["-c", &format!("echo 1 > /sys/class/net/{}/threaded", self.mon_if.name)]);
        cmd::output(&mut sh)?;
        Ok(())
    }

    /// The monitor veth's `ip -s link` receive counter.
    pub fn rx_packets(&self) -> Result<u64> {
        let text = self.mon.ip(["-s", "-j", "link", "show", "dev", &self.mon_if.name])?;
        let v: Value = serde_json::from_str(&text).context("ip -j output")?;
        v[0]["stats64"]["rx"]["packets"].as_u64().context("no rx packets in `ip -s -j link`")
    }
}

/// One run of the live-frames generator.
#[derive(Clone, Copy, Debug)]
pub struct GenPlan {
    pub flows: u32,
    /// First flow index (flows `first .. first + flows`).
    pub first: u32,
    /// Frames per test run (one flow per run); above 1 each run also costs a grace period.
    pub repeat: u32,
    pub length: GenLength,
}

/// When a generator run stops.
#[derive(Clone, Copy, Debug)]
pub enum GenLength {
    /// After this many passes over the flows.
    Passes(u32),
    /// After this long (to the millisecond).
    Seconds(f64),
}

impl GenPlan {
    /// The generator's arguments (`rstwatch-bench gen ...`) for this plan, out of `iface`.
    pub fn args(&self, iface: &str) -> Vec<String> {
        let GenPlan { flows, first, repeat, length } = *self;
        let (stop, until) = match length {
            GenLength::Passes(passes) => ("--passes", passes.to_string()),
            GenLength::Seconds(seconds) => ("--seconds", format!("{seconds:.3}")),
        };
        let mut args = vec!["gen".to_owned(), "--iface".to_owned(), iface.to_owned()];
        for (option, value) in [
            ("--flows", flows.to_string()),
            ("--first", first.to_string()),
            ("--repeat", repeat.to_string()),
            (stop, until),
        ] {
            args.extend([option.to_owned(), value]);
        }
        args
    }
}

/// `(src, sport, dst, dport)` as rstwatch's JSON prints them.
pub type FlowId = (String, u64, String, u64);

/// What the generator did.
#[derive(Debug)]
pub struct GenOutcome {
    pub sent: u64,
    /// Frames the peer's ring accepted: `sent` less what a full ring dropped before any hook.
    pub delivered: u64,
    /// The generator's report without the per-flow list (that is `expected`).
    pub json: Value,
    pub expected: BTreeMap<FlowId, u64>,
}

/// Runs the live-frames generator in the generator namespace, out of its veth.
pub fn generate(lab: &FloodLab, plan: &GenPlan) -> Result<GenOutcome> {
    generate_with(lab, plan, &[])
}

/// [`generate`] with more of the generator's options (`rstwatch-bench gen --help`).
pub fn generate_with(lab: &FloodLab, plan: &GenPlan, extra: &[&str]) -> Result<GenOutcome> {
    let mut args = plan.args(&lab.gen_if.name);
    args.extend(["--list".to_owned(), "1".to_owned()]);
    args.extend(extra.iter().map(|arg| (*arg).to_owned()));
    let mut report: GenReport = bench_report(Some(&lab.gen), &args)?;
    let (sent, delivered) = (report.sent, report.delivered);
    let mut expected = BTreeMap::new();
    for (src, sport, dst, dport, count) in report.expected.take().context("generator: no expected flows")? {
        *expected.entry((src, u64::from(sport), dst, u64::from(dport))).or_insert(0) += count;
    }
    let json = serde_json::to_value(Report::Gen(report))?;
    ensure!(
        expected.values().sum::<u64>() == delivered,
        "generator's per-flow counts do not add up to the {delivered} frames delivered"
    );
    Ok(GenOutcome { sent, delivered, json, expected })
}

/// Starts rstwatch on the monitor's veth (JSON output) and waits until it attached.
pub fn start_rstwatch(lab: &FloodLab, extra: &[&str]) -> Result<Proc> {
    let mut command = lab.mon.exec(rstwatch_bin());
    command.args(["-i", &lab.mon_if.name, "--format", "json"]).args(extra);
    let mut proc = Proc::spawn(&mut command)?;
    proc.wait_for_stderr(&format!("attached to {}", lab.mon_if.name), START_TIMEOUT)?;
    Ok(proc)
}

/// rstwatch's JSON lines.
pub struct RstwatchOutput {
    pub intervals: Vec<Value>,
    pub summary: Value,
}

/// SIGINTs rstwatch and parses what it printed.
pub fn stop_rstwatch(proc: Proc) -> Result<RstwatchOutput> {
    proc.signal(libc::SIGINT)?;
    let fin = proc.finish(EXIT_TIMEOUT)?;
    ensure!(fin.status.success(), "rstwatch failed ({}): {}", fin.status, fin.stderr.trim());
    let mut intervals = Vec::new();
    let mut summary = None;
    for line in fin.stdout.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).with_context(|| format!("rstwatch printed non-JSON: {line}"))?;
        match v["type"].as_str() {
            Some("interval") => intervals.push(v),
            Some("summary") => {
                ensure!(summary.is_none(), "two summary lines");
                summary = Some(v);
            }
            other => bail!("unexpected line type {other:?}"),
        }
    }
    Ok(RstwatchOutput { intervals, summary: summary.context("rstwatch printed no summary")? })
}

/// What the exactness check found.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exactness {
    pub sent: u64,
    pub resets: u64,
    pub in_flows: u64,
    pub overflow: u64,
    pub intervals: usize,
    pub flows: usize,
}

/// The invariant, at every interval and over the run: sum of per-flow counts + overflow == the
/// kernel's RST total == RSTs sent. Without overflow every flow must have exactly what the
/// generator sent on it; with overflow no flow may have more. Fails with what differs.
pub fn check_exact(out: &RstwatchOutput, sent: u64, expected: &BTreeMap<FlowId, u64>) -> Result<Exactness> {
    let mut interval_resets = 0;
    let mut interval_overflow = 0;
    for (n, interval) in out.intervals.iter().enumerate() {
        let totals = &interval["totals"];
        let resets = totals["resets"].as_u64().context("interval totals.resets")?;
        let overflow = totals["overflow"].as_u64().context("interval totals.overflow")?;
        let in_flows = interval["flow_resets"].as_u64().context("interval flow_resets")?;
        ensure!(
            in_flows + overflow == resets,
            "interval {}: flow_resets {in_flows} + overflow {overflow} != resets {resets}",
            n + 1
        );
        interval_resets += resets;
        interval_overflow += overflow;
    }
    let totals = &out.summary["totals"];
    let resets = totals["resets"].as_u64().context("totals.resets")?;
    let overflow = totals["overflow"].as_u64().context("totals.overflow")?;
    let source_overflow = totals["source_overflow"].as_u64().context("totals.source_overflow")?;
    ensure!(
        interval_resets == resets && interval_overflow == overflow,
        "the intervals add up to {interval_resets} resets / {interval_overflow} overflow, the summary says {resets} / {overflow}; intervals (resets, overflow, frames, ms): {:?}",
        out.intervals
            .iter()
            .map(|i| (&i["totals"]["resets"], &i["totals"]["overflow"], &i["totals"]["frames"], &i["duration_ms"]))
            .collect::<Vec<_>>()
    );
    let mut counted: BTreeMap<FlowId, u64> = BTreeMap::new();
    for flow in out.summary["flows"].as_array().context("summary flows")? {
        let id = (
            flow["src"].as_str().context("src")?.to_owned(),
            flow["sport"].as_u64().context("sport")?,
            flow["dst"].as_str().context("dst")?.to_owned(),
            flow["dport"].as_u64().context("dport")?,
        );
        let resets = flow["resets"].as_u64().context("flow resets")?;
        ensure!(counted.insert(id.clone(), resets).is_none(), "flow {id:?} listed twice");
    }
    let in_flows: u64 = counted.values().sum();
    ensure!(in_flows + overflow == resets, "sum of flows {in_flows} + overflow {overflow} != resets {resets}");
    ensure!(resets == sent, "rstwatch counted {resets} RSTs, the generator sent {sent}");
    let sources_overflow: u64 = out.summary["sources"]
        .as_array()
        .context("summary sources")?
        .iter()
        .map(|s| s["overflow"].as_u64().unwrap_or(0))
        .sum();
    ensure!(
        sources_overflow + source_overflow == overflow,
        "overflow {overflow} != per-source overflow {sources_overflow} + source_overflow {source_overflow}"
    );
    for (id, &count) in &counted {
        let want = expected.get(id).copied().unwrap_or(0);
        if overflow == 0 {
            ensure!(count == want, "flow {id:?}: counted {count}, sent {want}");
        } else {
            ensure!(count <= want, "flow {id:?}: counted {count}, more than the {want} sent");
        }
    }
    if overflow == 0 {
        ensure!(counted.len() == expected.len(), "{} flows counted, {} sent", counted.len(), expected.len());
    }
    Ok(Exactness { sent, resets, in_flows, overflow, intervals: out.intervals.len(), flows: counted.len() })
}

// ---------------------------------------------------------------------------------------------
// Capture tools

/// A capture tool's account of a run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Captured {
    pub captured: u64,
    /// What the kernel said it dropped (tcpdump: "dropped by kernel", tshark: "dropped").
    pub dropped: u64,
}

/// `tcpdump` or `tshark` writing the RSTs on the monitor's veth to /dev/null.
pub fn start_capture(lab: &FloodLab, tool: &str) -> Result<Proc> {
    let mut command = lab.mon.exec(tool);
    let ready = match tool {
        "tcpdump" => {
            command.args(["-i", &lab.mon_if.name, "-n", "-w", "/dev/null", RST_FILTER]);
            "listening on"
        }
        "tshark" => {
            command.args(["-i", &lab.mon_if.name, "-n", "-q", "-f", RST_FILTER, "-w", "/dev/null"]);
            "Capturing on"
        }
        other => bail!("unknown capture tool {other}"),
    };
    let mut proc = Proc::spawn(&mut command)?;
    proc.wait_for_stderr(ready, START_TIMEOUT)?;
    // dumpcap says "Capturing on" a moment before the socket is bound.
    thread::sleep(Duration::from_millis(500));
    Ok(proc)
}

pub fn stop_capture(proc: Proc) -> Result<Captured> {
    // Let the last frames through the ring before stopping.
    thread::sleep(Duration::from_millis(500));
    proc.signal(libc::SIGINT)?;
    let fin = proc.finish(EXIT_TIMEOUT)?;
    let number = |suffix: &str| -> Option<u64> {
        fin.stderr.lines().find_map(|line| {
            let line = line.trim();
            let rest = line.strip_suffix(suffix).or_else(|| line.find(suffix).map(|i| &line[..i]))?;
            rest.split_whitespace().last()?.parse().ok()
        })
    };
    let captured = number(" packets captured").or_else(|| number(" packet captured"));
    let captured = captured.with_context(|| format!("no packet count in: {}", fin.stderr.trim()))?;
    let dropped = number(" packets dropped by kernel").or_else(|| number(" packets dropped")).unwrap_or(0);
    Ok(Captured { captured, dropped })
}

// ---------------------------------------------------------------------------------------------
// `cargo xtask bench`

pub fn run(options: &Options) -> Result<()> {
    let started = Instant::now();
    build::run()?;
    build_bench()?;
    let parts: Vec<Part> =
        if options.parts.is_empty() { vec![Part::Kernel, Part::Flood, Part::Userspace] } else { options.parts.clone() };
    let mut results = json!({ "machine": machine()?, "quick": options.quick });
    let mut markdown = String::new();
    writeln!(markdown, "{}", machine_line(&results["machine"]))?;
    if parts.contains(&Part::Kernel) {
        let trials = if options.quick { "3" } else { "9" };
        let repeat = if options.quick { "500000" } else { "2000000" };
        let singles = if options.quick { "5000" } else { "20000" };
        eprintln!("xtask bench: part 1, cost per packet ({trials} trials)");
        let kernel: KernelReport =
            bench_report(None, &strings(["kernel", "--trials", trials, "--repeat", repeat, "--singles", singles]))?;
        markdown.push_str(&kernel_table(&kernel)?);
        results["kernel"] = serde_json::to_value(Report::Kernel(kernel))?;
    }
    if parts.iter().any(|part| [Part::Flood, Part::Userspace, Part::Top, Part::Capture].contains(part)) {
        let lab = FloodLab::new()?;
        if parts.contains(&Part::Flood) {
            eprintln!("xtask bench: part 2, exactness under flood");
            let flood = flood(&lab, options.quick)?;
            markdown.push_str(&flood_table(&flood)?);
            results["flood"] = flood;
        }
        if parts.contains(&Part::Userspace) {
            eprintln!("xtask bench: part 3, userspace read cost");
            let sizes = if options.quick { "1000,100000" } else { "1000,100000,1000000" };
            let drain: DrainReport = bench_report(None, &strings(["drain", "--flows", sizes, "--trials", "5"]))?;
            let cpu = cpu_share(&lab, options.quick)?;
            markdown.push_str(&userspace_table(&drain, &cpu)?);
            results["drain"] = serde_json::to_value(Report::Drain(drain))?;
            results["cpu"] = cpu;
        }
        if parts.contains(&Part::Top) {
            results["top"] = crate::bench_top::run(&lab, options.quick)?;
            markdown.push_str(&crate::bench_top::table(&results["top"])?);
        }
        if parts.contains(&Part::Capture) {
            eprintln!("xtask bench: capture under flood");
            results["capture"] = crate::bench_capture::run(&lab, options.quick)?;
            markdown.push_str(&crate::bench_capture::table(&results["capture"])?);
        }
    }
    let out = options.out.clone().unwrap_or_else(|| cmd::workspace_root().join("target/bench/results.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{markdown}");
    eprintln!("xtask bench: raw results in {} ({:.0} s)", out.display(), started.elapsed().as_secs_f64());
    Ok(())
}

fn machine() -> Result<Value> {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_default();
    let kernel = cmd::output(&mut cmd::command("uname", ["-r"]))?.trim().to_owned();
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let bpf_stats = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    Ok(json!({ "cpu": cpu, "cpus": cpus, "kernel": kernel, "bpf_stats_enabled": bpf_stats.trim() }))
}

fn machine_line(m: &Value) -> String {
    format!(
        "Machine: {} × {}, Linux {} (kernel.bpf_stats_enabled = {})\n",
        m["cpus"],
        m["cpu"].as_str().unwrap_or("?"),
        m["kernel"].as_str().unwrap_or("?"),
        m["bpf_stats_enabled"].as_str().unwrap_or("?")
    )
}

fn kernel_table(kernel: &KernelReport) -> Result<String> {
    let mut md = String::new();
    writeln!(md, "\n### 1. Cost per packet in the kernel (BPF_PROG_TEST_RUN, kernel-reported duration)\n")?;
    writeln!(
        md,
        "{} trials per line, median; `rstwatch_xdp` minus `rstwatch_xdp_pass` (empty XDP_PASS, same object); flow tables of {} entries.\n",
        kernel.trials, kernel.max_flows
    )?;
    writeln!(
        md,
        "| frames | method | rstwatch ns | empty ns | ns over empty | share of 67.2 ns | per-trial deltas (ns) |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|---:|---|")?;
    for line in &kernel.lines {
        let deltas: Vec<String> = line.trial_deltas_ns.iter().map(|d| format!("{d:.0}")).collect();
        writeln!(
            md,
            "| {} | {} | {:.1} | {:.1} | **{:.1}** | {:.0}% | {} |",
            line.name,
            line.method,
            line.prog_ns,
            line.baseline_ns,
            line.over_empty_ns,
            100.0 * line.budget_share,
            deltas.join(" ")
        )?;
    }
    Ok(md)
}

/// The listeners compared on the same flood.
const LISTENERS: [&str; 5] = ["rstwatch", "empty XDP", "tcpdump", "tshark", "nothing (GRO only)"];

fn flood(lab: &FloodLab, quick: bool) -> Result<Value> {
    let trials = if quick { 1 } else { 3 };
    // Rate: few flows, long runs (each run of more than one frame costs a grace period).
    let rate_plan =
        GenPlan { flows: 16, first: 0, repeat: if quick { 100_000 } else { 250_000 }, length: GenLength::Passes(1) };
    let mut runs = Vec::new();
    for trial in 0..trials {
        // Rotate the order so a drift in machine load does not favour one listener.
        for k in 0..LISTENERS.len() {
            let listener = LISTENERS[(k + trial) % LISTENERS.len()];
            eprintln!("xtask bench:   trial {} {listener}", trial + 1);
            runs.push(flood_once(lab, listener, &rate_plan)?);
        }
    }
    // Exactness over many flows: 4096 flows (four times the per-CPU cache), one frame per run.
    let many_plan =
        GenPlan { flows: 4096, first: 100_000, repeat: 1, length: GenLength::Passes(if quick { 3 } else { 10 }) };
    eprintln!("xtask bench:   rstwatch, {} flows", many_plan.flows);
    let many = flood_once(lab, "rstwatch", &many_plan)?;
    Ok(
        json!({ "rate_plan": format!("{rate_plan:?}"), "many_plan": format!("{many_plan:?}"), "runs": runs, "many": many }),
    )
}

fn flood_once(lab: &FloodLab, listener: &str, plan: &GenPlan) -> Result<Value> {
    let xdp_before = lab.xdp_received()?;
    let rx_before = lab.rx_packets()?;
    let mut row = json!({ "listener": listener });
    match listener {
        "rstwatch" => {
            let proc = start_rstwatch(lab, &["--interval", "1s"])?;
            let gen = generate(lab, plan)?;
            let out = stop_rstwatch(proc)?;
            let exact = check_exact(&out, gen.delivered, &gen.expected);
            row["gen"] = gen.json;
            row["sent"] = gen.sent.into();
            row["counted"] = out.summary["totals"]["resets"].clone();
            row["overflow"] = out.summary["totals"]["overflow"].clone();
            row["intervals"] = out.intervals.len().into();
            row["exact"] = match exact {
                Ok(e) => json!({ "ok": true, "flows": e.flows, "in_flows": e.in_flows }),
                Err(e) => json!({ "ok": false, "error": format!("{e:#}") }),
            };
        }
        "empty XDP" => {
            let mut command = lab.mon.exec(bench_bin());
            command.args(["hold", "--iface", &lab.mon_if.name]);
            let mut proc = Proc::spawn(&mut command)?;
            proc.wait_for_stderr("attached", START_TIMEOUT)?;
            let gen = generate(lab, plan)?;
            drop(proc);
            row["gen"] = gen.json;
            row["sent"] = gen.sent.into();
        }
        "tcpdump" | "tshark" => {
            let proc = start_capture(lab, listener)?;
            let gen = generate(lab, plan)?;
            let captured = stop_capture(proc)?;
            row["gen"] = gen.json;
            row["sent"] = gen.sent.into();
            row["counted"] = captured.captured.into();
            row["dropped"] = captured.dropped.into();
        }
        _ => {
            let gen = generate(lab, plan)?;
            row["gen"] = gen.json;
            row["sent"] = gen.sent.into();
        }
    }
    row["xdp_received"] = (lab.xdp_received()? - xdp_before).into();
    row["rx_packets"] = (lab.rx_packets()? - rx_before).into();
    Ok(row)
}

fn flood_table(flood: &Value) -> Result<String> {
    let mut md = String::new();
    let runs = flood["runs"].as_array().context("flood runs")?;
    writeln!(md, "\n### 2. Exactness under flood (live-frames XDP_TX generator → veth → listener on the peer)\n")?;
    writeln!(md, "Plan per trial: `{}`; medians over trials.\n", flood["rate_plan"].as_str().unwrap_or("?"))?;
    writeln!(md, "| on the peer | sent / trial | received (ethtool xdp) | counted / delivered | kernel-reported rate (Mpps) | wall rate (Mpps) | trials |")?;
    writeln!(md, "|---|---:|---:|---|---:|---:|---:|")?;
    for listener in LISTENERS {
        let rows: Vec<&Value> = runs.iter().filter(|r| r["listener"] == listener).collect();
        if rows.is_empty() {
            continue;
        }
        let ratios: Vec<String> = rows
            .iter()
            .map(|r| match r["counted"].as_u64() {
                Some(c) => {
                    // A frame the veth's ring refused reached no listener at all.
                    let sent = r["gen"]["delivered"].as_u64().unwrap_or(0);
                    let exact = if listener == "rstwatch" {
                        if r["exact"]["ok"] == true {
                            " ✔"
                        } else {
                            " ✘"
                        }
                    } else {
                        ""
                    };
                    format!("{c}/{sent} = {:.4}{exact}", c as f64 / sent.max(1) as f64)
                }
                None => "–".to_owned(),
            })
            .collect();
        let f = |key: &str| median(rows.iter().map(|r| r["gen"][key].as_f64().unwrap_or(f64::NAN)));
        writeln!(
            md,
            "| {listener} | {} | {} | {} | {:.2} | {:.2} | {} |",
            rows[0]["sent"],
            median(rows.iter().map(|r| r["xdp_received"].as_f64().unwrap_or(f64::NAN))),
            ratios.join("<br>"),
            f("kernel_rate_pps") / 1e6,
            f("wall_rate_pps") / 1e6,
            rows.len()
        )?;
    }
    let many = &flood["many"];
    writeln!(
        md,
        "\nMany flows (`{}`): sent {}, rstwatch counted {} (overflow {}), per-flow and per-interval invariant: {}\n",
        flood["many_plan"].as_str().unwrap_or("?"),
        many["sent"],
        many["counted"],
        many["overflow"],
        if many["exact"]["ok"] == true {
            "exact ✔".to_owned()
        } else {
            format!("FAILED: {}", many["exact"]["error"])
        }
    )?;
    Ok(md)
}

/// rstwatch at 1 s intervals against a paced AF_PACKET flood of `flows` distinct flows.
fn cpu_share(lab: &FloodLab, quick: bool) -> Result<Value> {
    let seconds = if quick { 6.0 } else { 12.0 };
    let rate = 200_000;
    let mut rows = Vec::new();
    for flows in [10_000u32, 100_000] {
        eprintln!("xtask bench:   rstwatch CPU with {flows} flows");
        let proc = start_rstwatch(lab, &["--interval", "1s", "--max-flows", "262144"])?;
        let pid = proc.id();
        // rstwatch runs under `ip netns exec`, which execs it: same pid.
        let mut command = lab.gen.exec(bench_bin());
        command.args([
            "pkt",
            "--iface",
            &lab.gen_if.name,
            "--flows",
            &flows.to_string(),
            "--rate",
            &rate.to_string(),
            "--seconds",
            &seconds.to_string(),
        ]);
        let generator = Proc::spawn(&mut command)?;
        // Skip the first interval (start-up), then measure over whole intervals.
        thread::sleep(Duration::from_millis(1500));
        let (ticks_before, at_before) = (cpu_ticks(pid)?, Instant::now());
        thread::sleep(Duration::from_secs_f64(seconds - 3.0));
        let (ticks_after, at_after) = (cpu_ticks(pid)?, Instant::now());
        let hwm_running = vm_hwm_kb(pid)?;
        let gen = generator.finish(Duration::from_secs(60))?;
        ensure!(gen.status.success(), "pkt generator failed: {}", gen.stderr.trim());
        let gen: PktReport = serde_json::from_str(gen.stdout.trim())?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let share = (ticks_after - ticks_before) as f64 / hz / (at_after - at_before).as_secs_f64();
        // The summary at exit holds every flow of the run: watch the peak until it is gone.
        let watcher = thread::spawn(move || {
            let mut peak = 0;
            while let Ok(kb) = vm_hwm_kb(pid) {
                peak = kb;
                thread::sleep(Duration::from_millis(20));
            }
            peak
        });
        let out = stop_rstwatch(proc)?;
        let hwm_exit = watcher.join().unwrap_or(0).max(hwm_running);
        let flows_seen: Vec<f64> = out.intervals.iter().filter_map(|i| i["flows_seen"].as_f64()).collect();
        rows.push(json!({
            "flows": flows,
            "rate_pps": gen.rate_pps,
            "sent": gen.sent,
            "counted": out.summary["totals"]["resets"],
            "overflow": out.summary["totals"]["overflow"],
            "cpu_share": share,
            "median_flows_per_interval": median(flows_seen),
            "vm_hwm_kb_running": hwm_running,
            "vm_hwm_kb_peak": hwm_exit,
        }));
    }
    Ok(json!({ "rows": rows }))
}

pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let utime: u64 = fields.get(11).context("utime")?.parse()?;
    let stime: u64 = fields.get(12).context("stime")?.parse()?;
    Ok(utime + stime)
}

/// The peak resident size of a process, in KiB.
pub fn vm_hwm_kb(pid: u32) -> Result<u64> {
    status_kb(pid, "VmHWM")
}

/// A size field of `/proc/PID/status` (`VmHWM`, `VmRSS`, ...), in KiB.
pub fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let value = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("no {field} in {path}"))?;
    value.trim().trim_end_matches("kB").trim().parse().with_context(|| format!("{field} in {path}: {value:?}"))
}

fn userspace_table(drain: &DrainReport, cpu: &Value) -> Result<String> {
    let mut md = String::new();
    writeln!(md, "\n### 3. Userspace read cost\n")?;
    writeln!(
        md,
        "Epoch flip: grace period (membarrier MEMBARRIER_CMD_GLOBAL) {:.2} ms; a whole collect() with empty tables {:.2} ms, of which flow-cache batch read {:.2} ms and clear {:.2} ms (medians of {} trials).\n",
        drain.grace_period_ms, drain.empty_collect_ms, drain.cache_read_ms, drain.cache_clear_ms, drain.trials
    )?;
    writeln!(md, "| flows drained | collect() ms | ns per entry | ns per entry over empty collect | of which the table scan alone (read + empty, no merge), ns per entry | with every eviction log full too: entries, collect() ms, ns per entry |")?;
    writeln!(md, "|---:|---:|---:|---:|---:|---:|")?;
    for row in &drain.rows {
        writeln!(
            md,
            "| {} | {:.2} | {:.0} | {:.0} | {:.0} | {}, {:.2}, {:.0} |",
            row.flows,
            row.collect_ms,
            row.ns_per_entry,
            row.ns_per_entry_over_empty,
            row.scan_ns_per_entry,
            // As the untyped table printed it: an integral f64 through serde_json, "123.0".
            serde_json::Value::from(row.with_full_logs_entries),
            row.with_full_logs_collect_ms,
            row.with_full_logs_ns_per_entry
        )?;
    }
    writeln!(md, "\n| distinct flows (per second) | flood rate (pps) | flows per interval | rstwatch CPU | VmHWM running | VmHWM incl. summary | counted / sent |")?;
    writeln!(md, "|---:|---:|---:|---:|---:|---:|---|")?;
    for row in cpu["rows"].as_array().context("cpu rows")? {
        writeln!(
            md,
            "| {} | {:.0} | {} | {:.1}% | {:.1} MiB | {:.1} MiB | {}/{} (overflow {}) |",
            row["flows"],
            row["rate_pps"].as_f64().unwrap_or(f64::NAN),
            row["median_flows_per_interval"],
            100.0 * row["cpu_share"].as_f64().unwrap_or(f64::NAN),
            row["vm_hwm_kb_running"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            row["vm_hwm_kb_peak"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            row["counted"],
            row["sent"],
            row["overflow"]
        )?;
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_arguments_name_the_plan_and_its_length() {
        let plan = GenPlan { flows: 16, first: 4, repeat: 2, length: GenLength::Passes(3) };
        assert_eq!(plan.args("veth0").join(" "), "gen --iface veth0 --flows 16 --first 4 --repeat 2 --passes 3");
        let timed = GenPlan { length: GenLength::Seconds(1.25), ..plan };
        assert_eq!(timed.args("g").join(" "), "gen --iface g --flows 16 --first 4 --repeat 2 --seconds 1.250");
    }
}

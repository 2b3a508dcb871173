//! The flood lab and its live-frames generator: what `cargo xtask bench`, `cargo xtask soak` and
//! the flood, capture and fleet suites (`rst-e2e/tests/flood.rs`, ...) share.
//!
//! Kernel-side work needs the eBPF object and the real `Collector`, which this crate must not
//! link (it would build the eBPF object before `cargo xtask setup` installed its toolchain): it
//! lives in the `rstwatch-bench` binary (crate rst-tools), built here with
//! `cargo build --release -p rst-tools --bin rstwatch-bench` and run as a child process that
//! prints one JSON object, typed on both sides by rst-bench-report. This module runs it, builds
//! the namespace lab for the floods, runs rstwatch, tcpdump and tshark against them and checks
//! exactness.

use std::{collections::BTreeMap, path::PathBuf, thread, time::Duration};

use anyhow::{bail, ensure, Context as _, Result};
use rst_bench_report::{GenReport, Report};
use serde_json::Value;

use crate::{
    cmd,
    lab::{Iface, Lab, Netns, Proc},
    paths,
};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);
/// The BPF filter the capture tools get: only what rstwatch counts.
pub const RST_FILTER: &str = "tcp[tcpflags] & tcp-rst != 0";

/// `target/release/rstwatch-bench`, or `BENCH_BIN`.
pub fn bench_bin() -> PathBuf {
    std::env::var_os("BENCH_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| cmd::workspace_root().join("target/release/rstwatch-bench"))
}

/// `target/release/rstwatch`, or `RSTWATCH_BIN`.
pub fn rstwatch_bin() -> PathBuf {
    std::env::var_os("RSTWATCH_BIN").map(PathBuf::from).unwrap_or_else(paths::rstwatch_path)
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
// What a process uses, from /proc

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

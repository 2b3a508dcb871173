//! `cargo xtask bench`: the numbers in BENCHMARKS.md, measured the way BENCHMARKS.md says.
//!
//! The kernel-side parts run `rstwatch-bench` (crate rst-tools); the floods run in rst-lab's
//! flood lab (`rst_lab::flood`: the lab, the generator and the exactness check, shared with the
//! flood suite); this module picks the parts, runs rstwatch, tcpdump and tshark against the
//! floods and prints Markdown tables.

use std::{
    fmt::{self, Write as _},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use rst_bench_report::{median, DrainReport, KernelReport, PktReport, Report};
pub use rst_lab::flood::*;
use rst_lab::{cmd, lab::Proc};
use serde_json::{json, Value};

use crate::build;

const START_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// `rstwatch replay` vs tcpdump filtering the same capture file for RSTs (needs no root).
    Replay,
}

pub struct Options {
    pub parts: Vec<Part>,
    /// Fewer trials and shorter floods: a smoke run, not numbers to publish.
    pub quick: bool,
    /// Where the raw JSON goes (default target/bench/results.json).
    pub out: Option<PathBuf>,
}

fn strings<const N: usize>(args: [&str; N]) -> Vec<String> {
    args.iter().map(|s| (*s).to_owned()).collect()
}

pub fn run(options: &Options) -> Result<()> {
    let started = Instant::now();
    build::run()?;
    build_bench()?;
    let parts: Vec<Part> = if options.parts.is_empty() {
        vec![Part::Kernel, Part::Flood, Part::Userspace, Part::Replay]
    } else {
        options.parts.clone()
    };
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
    if parts.contains(&Part::Replay) {
        eprintln!("xtask bench: replay against tcpdump");
        results["replay"] = crate::bench_replay::run(options.quick)?;
        markdown.push_str(&crate::bench_replay::table(&results["replay"])?);
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
            runs.push(flood_once(lab, listener, &rate_plan, &[])?);
        }
    }
    // Exactness over many flows: 4096 flows (four times the per-CPU cache), one frame per run.
    let many_plan =
        GenPlan { flows: 4096, first: 100_000, repeat: 1, length: GenLength::Passes(if quick { 3 } else { 10 }) };
    eprintln!("xtask bench:   rstwatch, {} flows", many_plan.flows);
    let many = flood_once(lab, "rstwatch", &many_plan, &[])?;
    // The same flows inside VXLAN (VNI 42), as an overlay node's underlay carries them.
    eprintln!("xtask bench:   rstwatch, {} flows inside VXLAN", many_plan.flows);
    let many_vxlan = flood_once(lab, "rstwatch", &many_plan, &["--vxlan", "42"])?;
    Ok(json!({
        "rate_plan": format!("{rate_plan:?}"),
        "many_plan": format!("{many_plan:?}"),
        "runs": runs,
        "many": many,
        "many_vxlan": many_vxlan,
    }))
}

/// One flood of `plan` (with the generator's `gen_extra` options) watched by `listener`.
fn flood_once(lab: &FloodLab, listener: &str, plan: &GenPlan, gen_extra: &[&str]) -> Result<Value> {
    let xdp_before = lab.xdp_received()?;
    let rx_before = lab.rx_packets()?;
    let mut row = json!({ "listener": listener });
    match listener {
        "rstwatch" => {
            let proc = start_rstwatch(lab, &["--interval", "1s"])?;
            let gen = generate_with(lab, plan, gen_extra)?;
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
            let gen = generate_with(lab, plan, gen_extra)?;
            drop(proc);
            row["gen"] = gen.json;
            row["sent"] = gen.sent.into();
        }
        "tcpdump" | "tshark" => {
            let proc = start_capture(lab, listener)?;
            let gen = generate_with(lab, plan, gen_extra)?;
            let captured = stop_capture(proc)?;
            row["gen"] = gen.json;
            row["sent"] = gen.sent.into();
            row["counted"] = captured.captured.into();
            row["dropped"] = captured.dropped.into();
        }
        _ => {
            let gen = generate_with(lab, plan, gen_extra)?;
            row["gen"] = gen.json;
            row["sent"] = gen.sent.into();
        }
    }
    row["xdp_received"] = (lab.xdp_received()? - xdp_before).into();
    row["rx_packets"] = (lab.rx_packets()? - rx_before).into();
    Ok(row)
}

/// A flood table's title, the plan of its trials, and its head: "on the peer", then `columns`
/// (name, markdown alignment).
pub(crate) fn table_head(md: &mut String, title: &str, plan: &Value, columns: &[(&str, &str)]) -> fmt::Result {
    writeln!(md, "\n### {title}\n")?;
    writeln!(md, "Plan per trial: `{}`; medians over trials.\n", plan.as_str().unwrap_or("?"))?;
    let names: String = columns.iter().map(|(name, _)| format!(" {name} |")).collect();
    let aligns: String = columns.iter().map(|(_, align)| format!("{align}|")).collect();
    writeln!(md, "| on the peer |{names}")?;
    writeln!(md, "|---|{aligns}")
}

/// The runs of each listener that has any, in the order of `listeners`.
pub(crate) fn by_listener<'a>(
    runs: &'a [Value],
    listeners: &'a [&str],
) -> impl Iterator<Item = (&'a str, Vec<&'a Value>)> {
    listeners.iter().filter_map(|&listener| {
        let rows: Vec<&Value> = runs.iter().filter(|r| r["listener"] == listener).collect();
        (!rows.is_empty()).then_some((listener, rows))
    })
}

fn flood_table(flood: &Value) -> Result<String> {
    let mut md = String::new();
    let runs = flood["runs"].as_array().context("flood runs")?;
    table_head(
        &mut md,
        "2. Exactness under flood (live-frames XDP_TX generator → veth → listener on the peer)",
        &flood["rate_plan"],
        &[
            ("sent / trial", "---:"),
            ("received (ethtool xdp)", "---:"),
            ("counted / delivered", "---"),
            ("kernel-reported rate (Mpps)", "---:"),
            ("wall rate (Mpps)", "---:"),
            ("trials", "---:"),
        ],
    )?;
    for (listener, rows) in by_listener(runs, &LISTENERS) {
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

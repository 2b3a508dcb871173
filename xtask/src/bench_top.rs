//! `cargo xtask bench --part top`: what `rstwatch top` costs against plain `rstwatch` at the
//! same load. Both run in turn on the flood lab's monitor veth at 1 s intervals while the
//! `pkt` generator sends RSTs over 10 000 and 100 000 distinct flows a second; `top` draws
//! into a detached tmux pane (a real terminal, as a person would run it). CPU is read from
//! `/proc/PID/stat` over whole intervals, as for the watch-only numbers.

use std::{
    fmt::Write as _,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use serde_json::{json, Value};

use rst_lab::{
    cmd,
    flood::{self as bench, FloodLab},
    lab::Proc,
};

/// How long one mode runs under the flood; the first 1.5 s and the last 1.5 s are not measured.
fn seconds(quick: bool) -> f64 {
    if quick {
        6.0
    } else {
        12.0
    }
}

const RATE_PPS: u32 = 200_000;
const RSTWATCH_ARGS: [&str; 4] = ["--interval", "1s", "--max-flows", "262144"];

/// Which front end is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Watch,
    Top,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Watch => "watch",
            Mode::Top => "top",
        }
    }
}

/// `rstwatch top` in a detached tmux session of its own (its own server socket).
struct TopInTmux {
    socket: String,
    pid: u32,
}

impl TopInTmux {
    fn start(lab: &FloodLab) -> Result<TopInTmux> {
        let socket = format!("rstwatch-bench-top-{}", std::process::id());
        let script = format!(
            "exec ip netns exec {ns} {bin} top -i {iface} {args}",
            ns = lab.mon.name(),
            bin = bench::rstwatch_bin().display(),
            iface = lab.mon_if.name,
            args = RSTWATCH_ARGS.join(" "),
        );
        let mut top = TopInTmux { socket, pid: 0 };
        top.tmux(&["new-session", "-d", "-s", "bench", "-x", "200", "-y", "50", &script])?;
        let pid = top.tmux(&["list-panes", "-t", "bench", "-F", "#{pane_pid}"])?;
        top.pid = pid.trim().parse().with_context(|| format!("tmux pane pid {pid:?}"))?;
        // The header is drawn once the programs are attached.
        let deadline = Instant::now() + Duration::from_secs(30);
        while !top.screen()?.contains("rstwatch top") {
            ensure!(Instant::now() < deadline, "rstwatch top did not start: {}", top.screen()?);
            thread::sleep(Duration::from_millis(100));
        }
        Ok(top)
    }

    fn tmux(&self, args: &[&str]) -> Result<String> {
        cmd::output(Command::new("tmux").arg("-L").arg(&self.socket).args(args))
    }

    fn screen(&self) -> Result<String> {
        self.tmux(&["capture-pane", "-p", "-t", "bench"])
    }

    /// SIGTERMs `top` (it restores the terminal, detaches and prints its summary) and waits.
    fn stop(self) -> Result<()> {
        rst_lab::signal::send(self.pid, libc::SIGTERM)?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::path::Path::new(&format!("/proc/{}", self.pid)).exists() {
            ensure!(Instant::now() < deadline, "rstwatch top (pid {}) did not exit on SIGTERM", self.pid);
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for TopInTmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// The RST total `top`'s header shows (`... resets N ...`).
fn top_resets(screen: &str) -> Option<u64> {
    let header = screen.lines().find(|line| line.contains("resets "))?;
    header.split("resets ").nth(1)?.split_whitespace().next()?.parse().ok()
}

/// One mode under one flood: its CPU share over whole intervals, and what it counted.
fn measure(lab: &FloodLab, mode: Mode, flows: u32, quick: bool) -> Result<Value> {
    let seconds = seconds(quick);
    eprintln!("xtask bench:   {} with {flows} flows", mode.name());
    let (watch, top) = match mode {
        Mode::Watch => (Some(bench::start_rstwatch(lab, &RSTWATCH_ARGS)?), None),
        Mode::Top => (None, Some(TopInTmux::start(lab)?)),
    };
    let pid = watch.as_ref().map_or_else(|| top.as_ref().map_or(0, |t| t.pid), Proc::id);
    let mut command = lab.gen.exec(bench::bench_bin());
    command.args(["pkt", "--iface", &lab.gen_if.name, "--flows", &flows.to_string()]);
    command.args(["--rate", &RATE_PPS.to_string(), "--seconds", &seconds.to_string()]);
    let generator = Proc::spawn(&mut command)?;
    thread::sleep(Duration::from_millis(1500));
    let (ticks_before, at_before) = (bench::cpu_ticks(pid)?, Instant::now());
    thread::sleep(Duration::from_secs_f64(seconds - 3.0));
    let (ticks_after, at_after) = (bench::cpu_ticks(pid)?, Instant::now());
    let hwm_kb = bench::vm_hwm_kb(pid)?;
    let gen = generator.finish(Duration::from_secs(60))?;
    ensure!(gen.status.success(), "pkt generator failed: {}", gen.stderr.trim());
    let gen: Value = serde_json::from_str(gen.stdout.trim())?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let share = (ticks_after - ticks_before) as f64 / hz / (at_after - at_before).as_secs_f64();
    // Let the last interval of the flood be read before stopping.
    thread::sleep(Duration::from_millis(1200));
    let counted = match (watch, top) {
        (Some(watch), _) => bench::stop_rstwatch(watch)?.summary["totals"]["resets"].as_u64(),
        (None, Some(top)) => {
            let counted = top_resets(&top.screen()?);
            top.stop()?;
            counted
        }
        (None, None) => None,
    };
    Ok(json!({
        "mode": mode.name(),
        "flows": flows,
        "rate_pps": gen["rate_pps"],
        "sent": gen["sent"],
        "counted": counted,
        "cpu_share": share,
        "vm_hwm_kb": hwm_kb,
    }))
}

/// Watch and top in turn at 10 k and 100 k flows per second, `trials` times each.
pub fn run(lab: &FloodLab, quick: bool) -> Result<Value> {
    let trials = if quick { 1 } else { 3 };
    let mut rows = Vec::new();
    for flows in [10_000u32, 100_000] {
        for _ in 0..trials {
            for mode in [Mode::Watch, Mode::Top] {
                rows.push(measure(lab, mode, flows, quick)?);
            }
        }
    }
    Ok(json!({ "rows": rows, "trials": trials }))
}

/// The Markdown table: per flow count and mode, the median CPU share and each trial's.
pub fn table(results: &Value) -> Result<String> {
    let mut md = String::new();
    writeln!(md, "\n### `rstwatch top` vs plain `rstwatch`\n")?;
    writeln!(md, "| distinct flows per second | mode | CPU (of one core), median | trials | VmHWM | counted / sent (last trial) |")?;
    writeln!(md, "|---:|---|---:|---|---:|---|")?;
    let rows = results["rows"].as_array().context("top rows")?;
    for flows in [10_000u64, 100_000] {
        for mode in [Mode::Watch, Mode::Top] {
            let trials: Vec<&Value> = rows.iter().filter(|r| r["flows"] == flows && r["mode"] == mode.name()).collect();
            let mut shares: Vec<f64> = trials.iter().filter_map(|r| r["cpu_share"].as_f64()).collect();
            shares.sort_by(f64::total_cmp);
            let median = shares.get(shares.len() / 2).copied().unwrap_or(f64::NAN);
            let each: Vec<String> = shares.iter().map(|s| format!("{:.1} %", 100.0 * s)).collect();
            let last = trials.last().context("no trial")?;
            writeln!(
                md,
                "| {flows} | {} | **{:.1} %** | {} | {:.1} MiB | {} / {} |",
                mode.name(),
                100.0 * median,
                each.join(", "),
                last["vm_hwm_kb"].as_f64().unwrap_or(f64::NAN) / 1024.0,
                last["counted"],
                last["sent"],
            )?;
        }
    }
    Ok(md)
}

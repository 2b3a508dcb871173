//! `cargo xtask bench --parts replay`: `rstwatch replay` against tcpdump filtering the same
//! file for RSTs (`tcpdump -nn -r FILE -w /dev/null 'tcp[tcpflags] & tcp-rst != 0'`), on
//! synthetic captures of 1 M and 5 M frames over 5 000 flows (`rstwatch-replay-capture`,
//! generated into a temporary directory, never kept). Each trial runs both, the order flipped
//! every trial, after one warm-up run of each (the file in the page cache); the ratio is the
//! median over trials of tcpdump's wall time over rstwatch's. Peak memory is the kernel's
//! `ru_maxrss` of each process.

use std::{
    fmt::Write as _,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::Instant,
};

use anyhow::{bail, ensure, Context as _, Result};
use rst_bench_report::median;
use serde_json::{json, Value};

use rst_lab::{
    cmd,
    flood::{rstwatch_bin, RST_FILTER},
};

const FLOWS: &str = "5000";

/// A directory for the generated captures, removed afterwards.
struct Files(PathBuf);

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One finished run: wall seconds, peak RSS (KiB), stdout.
struct Run {
    seconds: f64,
    max_rss_kib: u64,
    stdout: Vec<u8>,
}

pub fn run(quick: bool) -> Result<Value> {
    let tcpdump = rst_lab::skip::find_tool("tcpdump").context("the replay part compares with tcpdump: install it")?;
    let mut cargo =
        cmd::command("cargo", ["build", "--release", "-p", "rst-tools", "--bin", "rstwatch-replay-capture"]);
    cargo.current_dir(cmd::workspace_root());
    cmd::run(&mut cargo).context("building rstwatch-replay-capture")?;
    let generator = cmd::workspace_root().join("target/release/rstwatch-replay-capture");
    let files = Files(std::env::temp_dir().join(format!("rstwatch-bench-replay-{}", std::process::id())));
    std::fs::create_dir_all(&files.0).with_context(|| format!("creating {}", files.0.display()))?;
    let (sizes, trials): (&[u64], usize) = if quick { (&[1_000_000], 1) } else { (&[1_000_000, 5_000_000], 3) };
    let mut rows = Vec::new();
    for &frames in sizes {
        let file = files.0.join(format!("{frames}.pcap"));
        let mut generate = Command::new(&generator);
        generate.arg(&file).arg(frames.to_string()).args(["--flows", FLOWS]);
        cmd::run(&mut generate).context("generating the capture")?;
        let bytes = std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        eprintln!("xtask bench:   replay, {frames} frames ({} MiB)", bytes >> 20);
        // Warm-up: both read the file from the page cache afterwards.
        rstwatch(&file, frames)?;
        run_tcpdump(&tcpdump, &file)?;
        let mut runs = Vec::new();
        for trial in 0..trials {
            let (r, t) = if trial % 2 == 0 {
                let t = run_tcpdump(&tcpdump, &file)?;
                (rstwatch(&file, frames)?, t)
            } else {
                let r = rstwatch(&file, frames)?;
                (r, run_tcpdump(&tcpdump, &file)?)
            };
            eprintln!("xtask bench:     trial {}: tcpdump {:.3} s, rstwatch {:.3} s", trial + 1, t.seconds, r.seconds);
            runs.push(json!({
                "tcpdump_s": t.seconds,
                "rstwatch_s": r.seconds,
                "ratio": t.seconds / r.seconds,
                "tcpdump_max_rss_kib": t.max_rss_kib,
                "rstwatch_max_rss_kib": r.max_rss_kib,
            }));
        }
        let _ = std::fs::remove_file(&file);
        rows.push(json!({ "frames": frames, "flows": FLOWS, "bytes": bytes, "runs": runs }));
    }
    Ok(json!({ "rows": rows }))
}

fn rstwatch(file: &Path, frames: u64) -> Result<Run> {
    let mut command = Command::new(rstwatch_bin());
    command.args(["replay", "--quiet", "--format", "json"]).arg(file);
    let run = timed(command)?;
    // The run must have read the whole file: a fast replay that stopped early is no result.
    let summary: Value = std::str::from_utf8(&run.stdout)
        .ok()
        .and_then(|out| out.lines().last())
        .and_then(|line| serde_json::from_str(line).ok())
        .context("rstwatch printed no summary")?;
    ensure!(
        summary["totals"]["frames"].as_u64() == Some(frames),
        "rstwatch counted {} frames of {frames}",
        summary["totals"]["frames"]
    );
    Ok(run)
}

fn run_tcpdump(tcpdump: &Path, file: &Path) -> Result<Run> {
    let mut command = Command::new(tcpdump);
    command.arg("-nn").arg("-r").arg(file).args(["-w", "/dev/null", RST_FILTER]);
    timed(command)
}

/// Runs `command` to its end; its wall time and peak RSS from `wait4`.
fn timed(mut command: Command) -> Result<Run> {
    command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let described = cmd::describe(&command);
    let started = Instant::now();
    let mut child = command.spawn().with_context(|| format!("starting {described}"))?;
    let drain = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        thread::spawn(move || {
            let mut out = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut out);
            }
            out
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
    let pid = libc::pid_t::try_from(child.id()).context("pid")?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our child, not yet waited for; status and usage are valid for writes.
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    ensure!(rc == pid, "wait4 on {described}: {}", std::io::Error::last_os_error());
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{described} failed ({status:#x}): {}", cmd::first_line(&stderr));
    }
    Ok(Run { seconds, max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0), stdout })
}

pub fn table(replay: &Value) -> Result<String> {
    let mut md = String::new();
    writeln!(md, "\n### Offline: `rstwatch replay` against tcpdump (`cargo xtask bench --parts replay`)\n")?;
    writeln!(
        md,
        "Synthetic captures (`rstwatch-replay-capture FILE N --flows {FLOWS}`), page cache warm; `tcpdump -nn -r FILE -w /dev/null '{RST_FILTER}'` against `rstwatch replay --quiet --format json FILE`, order flipped every trial; medians.\n"
    )?;
    writeln!(md, "| frames | file | tcpdump s | rstwatch s | speed ratio (tcpdump s / rstwatch s) | per trial | rstwatch M frames/s | peak RSS rstwatch / tcpdump |")?;
    writeln!(md, "|---:|---:|---:|---:|---:|---|---:|---:|")?;
    for row in replay["rows"].as_array().context("replay rows")? {
        let runs = row["runs"].as_array().context("replay runs")?;
        let f = |key: &str| median(runs.iter().map(|r| r[key].as_f64().unwrap_or(f64::NAN)));
        let per_trial: Vec<String> =
            runs.iter().map(|r| format!("{:.2}", r["ratio"].as_f64().unwrap_or(f64::NAN))).collect();
        let frames = row["frames"].as_f64().unwrap_or(f64::NAN);
        writeln!(
            md,
            "| {} | {:.0} MiB | {:.3} | {:.3} | **×{:.2}** | {} | {:.1} | {:.1} / {:.1} MiB |",
            row["frames"],
            row["bytes"].as_f64().unwrap_or(f64::NAN) / 1048576.0,
            f("tcpdump_s"),
            f("rstwatch_s"),
            f("ratio"),
            per_trial.join(" "),
            frames / f("rstwatch_s") / 1e6,
            f("rstwatch_max_rss_kib") / 1024.0,
            f("tcpdump_max_rss_kib") / 1024.0,
        )?;
    }
    Ok(md)
}

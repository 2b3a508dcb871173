//! `cargo xtask bench --part capture`: `rstwatch --capture` against tcpdump writing the same
//! RSTs (`tcp[tcpflags] & tcp-rst != 0`, `-w FILE`) under the flood of part 2: what each counts
//! and writes of what the veth delivered, and the generator's rate beside it. rstwatch runs
//! without capture, capturing within the default budget, and capturing with no budget to speak
//! of (every RST to the ring); the order rotates between trials.

use std::{fmt::Write as _, path::PathBuf};

use anyhow::{Context as _, Result};
use rst_bench_report::median;
use serde_json::{json, Value};

use rst_lab::{
    flood::{self as bench, FloodLab, GenLength, GenPlan, RST_FILTER},
    lab::Proc,
};

const LISTENERS: [&str; 4] = ["rstwatch", "rstwatch --capture", "rstwatch --capture, no budget", "tcpdump -w"];
/// Far more RSTs per second than any flood here: every one goes to the ring.
const NO_BUDGET: &str = "4000000000";

/// A directory for the files, removed afterwards.
struct Files(PathBuf);

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(lab: &FloodLab, quick: bool) -> Result<Value> {
    let trials = if quick { 1 } else { 3 };
    let plan =
        GenPlan { flows: 16, first: 0, repeat: if quick { 50_000 } else { 250_000 }, length: GenLength::Passes(1) };
    let files = Files(std::env::temp_dir().join(format!("rstwatch-bench-capture-{}", std::process::id())));
    std::fs::create_dir_all(&files.0).with_context(|| format!("creating {}", files.0.display()))?;
    let mut runs = Vec::new();
    for trial in 0..trials {
        for k in 0..LISTENERS.len() {
            let listener = LISTENERS[(k + trial) % LISTENERS.len()];
            eprintln!("xtask bench:   capture trial {} {listener}", trial + 1);
            let file = files.0.join(format!("{trial}-{k}.pcapng"));
            runs.push(once(lab, listener, &plan, &file)?);
            let _ = std::fs::remove_file(&file);
        }
    }
    Ok(json!({ "plan": format!("{plan:?}"), "runs": runs }))
}

fn once(lab: &FloodLab, listener: &str, plan: &GenPlan, file: &std::path::Path) -> Result<Value> {
    let mut row = json!({ "listener": listener });
    let file_arg = file.display().to_string();
    match listener {
        "tcpdump -w" => {
            let mut command = lab.mon.exec("tcpdump");
            command.args(["-i", &lab.mon_if.name, "-n", "-w", &file_arg, RST_FILTER]);
            let mut proc = Proc::spawn(&mut command)?;
            proc.wait_for_stderr("listening on", std::time::Duration::from_secs(30))?;
            let gen = bench::generate(lab, plan)?;
            let captured = bench::stop_capture(proc)?;
            row["gen"] = gen.json;
            row["counted"] = captured.captured.into();
            row["written"] = captured.captured.into();
            row["dropped"] = captured.dropped.into();
        }
        rstwatch => {
            let mut args = vec!["--interval", "1s"];
            if rstwatch.contains("--capture") {
                args.extend(["--capture", &file_arg]);
            }
            if rstwatch.ends_with("no budget") {
                args.extend(["--capture-budget", NO_BUDGET]);
            }
            let proc = bench::start_rstwatch(lab, &args)?;
            let gen = bench::generate(lab, plan)?;
            let out = bench::stop_rstwatch(proc)?;
            row["exact"] = bench::check_exact(&out, gen.delivered, &gen.expected).is_ok().into();
            row["gen"] = gen.json;
            row["counted"] = out.summary["totals"]["resets"].clone();
            row["written"] = out.summary["capture"]["written"].clone();
            row["dropped"] = out.summary["capture"]["dropped"].clone();
        }
    }
    row["file_bytes"] = std::fs::metadata(file).map_or(0, |m| m.len()).into();
    Ok(row)
}

pub fn table(capture: &Value) -> Result<String> {
    let mut md = String::new();
    let runs = capture["runs"].as_array().context("capture runs")?;
    crate::bench::table_head(
        &mut md,
        "Capture under flood (`cargo xtask bench --part capture`)",
        &capture["plan"],
        &[
            ("counted / delivered", "---"),
            ("written to the file", "---"),
            ("kernel-reported rate (Mpps)", "---:"),
            ("wall rate (Mpps)", "---:"),
            ("trials", "---:"),
        ],
    )?;
    for (listener, rows) in crate::bench::by_listener(runs, &LISTENERS) {
        let ratio = |r: &&Value, key: &str| match r[key].as_u64() {
            Some(n) => {
                let delivered = r["gen"]["delivered"].as_u64().unwrap_or(0).max(1);
                format!("{n}/{delivered} = {:.4}", n as f64 / delivered as f64)
            }
            None => "–".to_owned(),
        };
        let counted: Vec<String> = rows
            .iter()
            .map(|r| {
                let exact = match r["exact"].as_bool() {
                    Some(true) => " ✔",
                    Some(false) => " ✘",
                    None => "",
                };
                format!("{}{exact}", ratio(r, "counted"))
            })
            .collect();
        let written: Vec<String> = rows.iter().map(|r| ratio(r, "written")).collect();
        let f = |key: &str| median(rows.iter().map(|r| r["gen"][key].as_f64().unwrap_or(f64::NAN)));
        writeln!(
            md,
            "| {listener} | {} | {} | {:.2} | {:.2} | {} |",
            counted.join("<br>"),
            written.join("<br>"),
            f("kernel_rate_pps") / 1e6,
            f("wall_rate_pps") / 1e6,
            rows.len()
        )?;
    }
    Ok(md)
}

//! `cargo xtask fuzz` and `cargo xtask soak`: the repeatable evidence behind RELIABILITY.md.
//!
//! - `fuzz` runs the differential fuzzer (`rstwatch-fuzz`, crate rst-tools) through cargo: xtask
//!   must not depend on rst-userspace, whose build script builds the eBPF object.
//! - `soak` runs `rst_lab::soak` (the flood lab's generator in rounds of churning flows, every
//!   interval checked) and writes its report.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use rst_lab::cmd;
pub use rst_lab::soak::*;

/// `cargo run --release -p rst-tools --bin rstwatch-fuzz -- ARGS`; the exit status is the fuzzer's.
pub fn fuzz(args: &[String]) -> Result<ExitCode> {
    let mut cargo = cmd::command("cargo", ["run", "--release", "-p", "rst-tools", "--bin", "rstwatch-fuzz", "--"]);
    cargo.args(args).current_dir(cmd::workspace_root());
    println!("xtask: {}", cmd::describe(&cargo));
    let status = cargo.status().with_context(|| format!("cannot start `{}`", cmd::describe(&cargo)))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

/// `cargo xtask soak`: prints the report as JSON (also to `out`) and fails on any problem.
pub fn soak_command(options: &SoakOptions, out: Option<PathBuf>) -> Result<ExitCode> {
    let report = soak(options)?;
    let text = serde_json::to_string_pretty(&report.to_json())?;
    println!("{text}");
    let out = out.unwrap_or_else(|| cmd::workspace_root().join("target/reliability/soak.json"));
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("xtask: soak report in {}", out.display());
    let problems = report.problems();
    for p in &problems {
        eprintln!("xtask soak: {p}");
    }
    Ok(if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

//! `cargo xtask test`: setup, lint, build, then the whole suite in one runner invocation, last, so the
//! output ends with the runner's own summary.

use std::process::ExitCode;

use anyhow::{Context as _, Result};

use rst_lab::{cmd, lab};

use crate::{build, image, lint, setup};

pub fn run(extra: &[String]) -> Result<ExitCode> {
    setup::run()?;
    lint::run()?;
    build::run()?;
    // The container suite runs the image as shipped (rst-e2e/tests/container.rs).
    image::run()?;
    // Leftovers of a test run that was killed would otherwise pile up run after run.
    for name in lab::sweep_stale()? {
        println!("xtask: removed stale lab namespace {name}");
    }
    // rst-ebpf is a no_std BPF binary on nightly; rst-userspace's build script compiles it, and a
    // host build of it on stable cannot work, so it is left out of `--workspace`.
    let mut runner = if cmd::succeeds(&mut cmd::command("cargo", ["nextest", "--version"])) {
        cmd::command("cargo", ["nextest", "run", "--release", "--workspace", "--exclude", "rst-ebpf", "--no-fail-fast"])
    } else {
        cmd::command("cargo", ["test", "--release", "--workspace", "--exclude", "rst-ebpf", "--no-fail-fast"])
    };
    runner.args(extra).current_dir(cmd::workspace_root());
    println!("xtask: {}", cmd::describe(&runner));
    let status = runner.status().with_context(|| format!("cannot start `{}`", cmd::describe(&runner)))?;
    // The runner already printed its verdict; only the exit code is passed on.
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

//! `cargo xtask lint`: the gate every change passes before it lands — rustfmt on every crate,
//! clippy with `-D warnings` on the host crates (all targets) and on the eBPF crate (its own
//! target and nightly).

use std::path::Path;

use anyhow::{Context as _, Result};

use rst_lab::cmd;

use crate::setup;

pub fn run() -> Result<()> {
    let root = cmd::workspace_root();
    // rst-ebpf is a workspace member, so `--all` formats it as well.
    step("rustfmt", &root, &["fmt", "--all", "--check"])?;
    step(
        "clippy (host crates)",
        &root,
        &["clippy", "--release", "--workspace", "--exclude", "rst-ebpf", "--all-targets", "--", "-D", "warnings"],
    )?;
    // The eBPF crate only builds for its BPF target, with core built from source on the nightly;
    // its own target directory keeps this from invalidating the host build.
    let toolchain = format!("+{}", setup::ebpf_toolchain()?);
    let target_dir = root.join("target/lint-ebpf");
    let target_dir = target_dir.to_str().context("the workspace path is not UTF-8")?;
    step(
        "clippy (eBPF crate)",
        &root.join("rst-ebpf"),
        &[
            &toolchain,
            "clippy",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            target_dir,
            "--",
            "-D",
            "warnings",
        ],
    )?;
    println!("lint: ok");
    Ok(())
}

fn step(what: &str, dir: &Path, args: &[&str]) -> Result<()> {
    let mut cargo = cmd::command("cargo", args);
    cargo.current_dir(dir);
    println!("lint: {what}: {}", cmd::describe(&cargo));
    cmd::run(&mut cargo).with_context(|| format!("lint: {what} failed"))
}

//! `cargo xtask build`: the release `rstwatch` binary that the lab and the tests run.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use crate::cmd;

pub fn rstwatch_path() -> PathBuf {
    cmd::workspace_root().join("target/release/rstwatch")
}

/// The binary the integration tests run: `RSTWATCH_BIN`, or the release build, which must exist.
///
/// # Panics
/// When it does not exist: a test without its binary must fail, saying how to build it.
pub fn rstwatch_for_tests() -> PathBuf {
    let bin = std::env::var_os("RSTWATCH_BIN").map(PathBuf::from).unwrap_or_else(rstwatch_path);
    assert!(bin.is_file(), "{} does not exist: run `cargo xtask build` (or set RSTWATCH_BIN)", bin.display());
    bin
}

pub fn run() -> Result<PathBuf> {
    let mut cargo = cmd::command("cargo", ["build", "--release", "-p", "rst-userspace"]);
    cargo.current_dir(cmd::workspace_root());
    cmd::run(&mut cargo).context("building rstwatch")?;
    let bin = rstwatch_path();
    if !bin.is_file() {
        anyhow::bail!("the build succeeded but {} does not exist", bin.display());
    }
    Ok(bin)
}

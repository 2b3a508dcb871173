//! `cargo xtask build`: the release `rstwatch` binary that the lab and the tests run.

use std::path::PathBuf;

use anyhow::{Context as _, Result};

use rst_lab::{cmd, paths::rstwatch_path};

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

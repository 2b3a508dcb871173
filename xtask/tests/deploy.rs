//! The deployment files are linted, not just written: the Dockerfile with hadolint (installed
//! by `cargo xtask setup`), and the linter is shown to catch what it should.

use std::{path::Path, process::Command};

use anyhow::{ensure, Context as _, Result};
use xtask::{cmd::workspace_root, setup::hadolint_path};

fn hadolint(dockerfile: &Path) -> Result<(bool, String)> {
    let path = hadolint_path();
    ensure!(path.exists(), "{} is missing: run `cargo xtask setup`", path.display());
    let output = Command::new(&path).arg("--no-color").arg(dockerfile).output().context("running hadolint")?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), text))
}

#[test]
fn dockerfile_passes_hadolint() -> Result<()> {
    let (clean, findings) = hadolint(&workspace_root().join("Dockerfile"))?;
    assert!(clean && findings.trim().is_empty(), "hadolint findings:\n{findings}");
    Ok(())
}

/// The lint above could pass by linting nothing: the same linter flags an unpinned base image.
#[test]
fn hadolint_flags_a_bad_dockerfile() -> Result<()> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy");
    std::fs::create_dir_all(&dir)?;
    let bad = dir.join("Dockerfile.bad");
    std::fs::write(&bad, "FROM debian:latest\nRUN apt-get install curl\n")?;
    let (clean, findings) = hadolint(&bad)?;
    assert!(!clean && findings.contains("DL3007"), "hadolint should flag `debian:latest`:\n{findings}");
    Ok(())
}

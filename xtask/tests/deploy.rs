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

/// Every metric the Grafana dashboard queries is one rstwatch registers (a renamed metric would
/// leave a silently empty panel).
#[test]
fn grafana_dashboard_queries_only_metrics_rstwatch_exports() -> Result<()> {
    let root = workspace_root();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deploy/grafana-dashboard.json"))?)?;
    let source = std::fs::read_to_string(root.join("rst-userspace/src/metrics.rs"))?;
    let mut queried = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().context("expr")?;
            let mut rest = expr;
            while let Some(at) = rest.find("rstwatch_") {
                let name: String = rest[at + "rstwatch_".len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + "rstwatch_".len() + name.len()..];
                queried.push(name);
            }
        }
    }
    ensure!(queried.len() >= 8, "the dashboard queries too little: {queried:?}");
    for name in &queried {
        let registered = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            source.contains(&format!("\"{registered}\",")) || source.contains(&format!("register(\"{registered}\"")),
            "the dashboard queries rstwatch_{name}, which metrics.rs does not register"
        );
    }
    Ok(())
}

//! The deployment files are linted, not just written: the Dockerfile with hadolint, the
//! Kubernetes manifests with kubernetes-validate (both installed by `cargo xtask setup`), the
//! systemd unit with `systemd-analyze verify`, the Prometheus rules with promtool (check and
//! their unit tests); each checker is shown to catch what it should.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context as _, Result};
use rst_lab::{
    cmd::workspace_root,
    paths::{hadolint_path, kubernetes_validate_path},
    Need,
};
use serde_json::Value;

/// How a missing linter is installed.
const SETUP: &str = "`cargo xtask setup` installs it";
/// How a missing release binary is made.
const RELEASE: &str = "`cargo xtask build` makes it, or set RSTWATCH_BIN";

/// The recording rules and alerts named in the fleet issue: a contract.
const RECORDING_RULES: &[&str] = &[
    "rstwatch:resets_by_source:rate1m",
    "rstwatch:resets_by_service:rate1m",
    "rstwatch:refused_share:ratio_rate5m",
    "rstwatch:resets_by_cause:rate1m",
    "rstwatch:middlebox_resets:rate5m",
];
const ALERTS: &[&str] = &[
    "RstwatchServiceRefusing",
    "RstwatchServiceDown",
    "RstwatchMiddleboxResets",
    "RstwatchResetSurge",
    "RstwatchOverflow",
    "RstwatchInstanceDown",
];

fn scratch(name: &str) -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy").join(name);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs `cmd`: whether it succeeded, and stdout and stderr together.
fn run(cmd: &mut Command) -> Result<(bool, String)> {
    let output = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), text))
}

/// The names after `key: ` in a rules file (`record`, `alert`): one per rule, in order.
fn rule_names(rules: &str, key: &str) -> Vec<String> {
    let prefix = format!("- {key}: ");
    rules.lines().filter_map(|line| line.trim().strip_prefix(&prefix)).map(|name| name.trim().to_owned()).collect()
}

fn promtool(args: &[&Path], subcommand: &[&str]) -> Result<(bool, String)> {
    run(Command::new("promtool").args(subcommand).args(args))
}

#[test]
fn prometheus_rules_pass_promtool_check_with_the_contract_names() -> Result<()> {
    rst_lab::require!(Need::Tool("promtool"));
    let path = workspace_root().join("deploy/prometheus/rules.yml");
    let rules = std::fs::read_to_string(&path)?;
    let recorded = rule_names(&rules, "record");
    let alerts = rule_names(&rules, "alert");
    for name in RECORDING_RULES {
        assert!(recorded.iter().any(|r| r == name), "rules.yml records no {name}: {recorded:?}");
    }
    assert_eq!(alerts, ALERTS, "the alerts");
    let (ok, text) = promtool(&[&path], &["check", "rules"])?;
    let total = recorded.len() + alerts.len();
    assert!(ok && text.contains(&format!("SUCCESS: {total} rules found")), "promtool check rules:\n{text}");
    Ok(())
}

#[test]
fn prometheus_rules_pass_their_unit_tests() -> Result<()> {
    rst_lab::require!(Need::Tool("promtool"));
    let (ok, text) = promtool(&[&workspace_root().join("deploy/prometheus/rules_test.yml")], &["test", "rules"])?;
    assert!(ok && text.contains("SUCCESS"), "promtool test rules:\n{text}");
    Ok(())
}

/// Every alert has a test that fires it, and the healthy and benign series are what stops a
/// broken rule: each of these breakages makes the unit tests fail, naming the alert.
#[test]
fn the_rule_unit_tests_catch_broken_alerts() -> Result<()> {
    rst_lab::require!(Need::Tool("promtool"));
    let root = workspace_root().join("deploy/prometheus");
    let rules = std::fs::read_to_string(root.join("rules.yml"))?;
    let tests = std::fs::read_to_string(root.join("rules_test.yml"))?;
    for alert in ALERTS {
        assert!(tests.contains(&format!("alertname: {alert}")), "rules_test.yml never tests {alert}");
    }
    let breakages = [
        // Fires on any service with attempts, the healthy and the health-checked too.
        (
            "rstwatch:refused_share:ratio_rate5m > 0.5",
            "rstwatch:refused_share:ratio_rate5m >= 0",
            "RstwatchServiceRefusing",
        ),
        // Counts health checks' resets as a surge.
        (
            "rstwatch:unexplained_resets:rate10m\n            > 3",
            "sum by (instance) (rate(rstwatch_resets_total[10m]))\n            > 3",
            "RstwatchResetSurge",
        ),
        // A service nobody calls any more is not down.
        (
            "and on (addr, port, tunnel) sum by (addr, port, tunnel) (increase(rstwatch_attempts_by_service_total[5m])) > 0",
            "",
            "RstwatchServiceDown",
        ),
        // Sums an overlay's tenants at one inner address: one tenant's closed port is diluted.
        ("by (addr, port, tunnel)", "by (addr, port)", "RstwatchServiceRefusing"),
        ("rstwatch:middlebox_resets:rate5m > 0.1", "rstwatch:middlebox_resets:rate5m >= 0", "RstwatchMiddleboxResets"),
        (
            "max by (instance) (rstwatch_flow_table_fill_ratio) > 0.9",
            "max by (instance) (rstwatch_flow_table_fill_ratio) > 0.2",
            "RstwatchOverflow",
        ),
        ("up{job=~\".*rstwatch.*\"} == 0", "up{job=~\".*rstwatch.*\"} >= 0", "RstwatchInstanceDown"),
    ];
    for (n, (from, to, alert)) in breakages.iter().enumerate() {
        assert!(rules.contains(from), "rules.yml no longer has {from:?}: update this test");
        let dir = scratch(&format!("broken-rules-{n}"))?;
        std::fs::write(dir.join("rules.yml"), rules.replace(from, to))?;
        std::fs::write(dir.join("rules_test.yml"), &tests)?;
        let (ok, text) = promtool(&[&dir.join("rules_test.yml")], &["test", "rules"])?;
        assert!(!ok && text.contains(&format!("alertname: {alert}")), "breaking {alert} went unnoticed:\n{text}");
    }
    Ok(())
}

fn kubernetes_validate(files: &[&Path]) -> Result<(bool, String)> {
    let path = kubernetes_validate_path();
    ensure!(path.exists(), "{} is missing: run `cargo xtask setup`", path.display());
    run(Command::new("python3").args(["-m", "kubernetes_validate", "--strict"]).args(files).env("PYTHONPATH", &path))
}

/// A manifest as JSON, read with the PyYAML that kubernetes-validate brings.
fn manifest(path: &Path) -> Result<Value> {
    let (ok, text) = run(Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"])
        .arg(path)
        .env("PYTHONPATH", kubernetes_validate_path()))?;
    ensure!(ok, "reading {}: {text}", path.display());
    Ok(serde_json::from_str(&text)?)
}

#[test]
fn the_daemonset_validates_against_the_kubernetes_schemas() -> Result<()> {
    rst_lab::require!(Need::Tool("python3"), Need::File(&kubernetes_validate_path(), SETUP));
    let path = workspace_root().join("deploy/daemonset.yaml");
    let (ok, text) = kubernetes_validate(&[&path])?;
    assert!(ok && text.contains("passed for resource daemonset/rstwatch"), "kubernetes-validate:\n{text}");
    // What the schema cannot say: the mounts the pod mapping reads are there and read-only,
    // and the metrics port is the one scraped.
    let daemonset = manifest(&path)?;
    let pod = &daemonset["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    for mount in ["/var/log/pods", "/host/sys/fs/cgroup", "/sys/kernel/tracing"] {
        let found = container["volumeMounts"].as_array().into_iter().flatten().find(|m| m["mountPath"] == mount);
        assert!(found.is_some_and(|m| m["readOnly"] == true), "{mount} is not mounted read-only: {container}");
    }
    let args: Vec<&str> = container["args"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    let cgroup_root = args.iter().position(|a| *a == "--cgroup-root").and_then(|i| args.get(i + 1));
    assert_eq!(cgroup_root, Some(&"/host/sys/fs/cgroup"), "the node's cgroup tree is named: {args:?}");
    let metrics = args.iter().position(|a| *a == "--metrics").and_then(|i| args.get(i + 1)).context("no --metrics")?;
    let port = metrics.rsplit(':').next().context("--metrics port")?;
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], port, "scrape annotation");
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/scrape"], "true");
    let ports = container["ports"].as_array().context("ports")?;
    assert!(
        ports.iter().any(|p| p["name"] == "metrics" && p["containerPort"].as_u64() == port.parse().ok()),
        "{ports:?}"
    );
    assert_eq!(container["securityContext"]["privileged"], false);
    Ok(())
}

/// kubernetes-validate has no schema for the Operator's PodMonitor: it must at least select the
/// DaemonSet's pods and name its metrics port.
#[test]
fn the_pod_monitor_selects_the_daemonsets_metrics_port() -> Result<()> {
    let root = workspace_root();
    let monitor = manifest(&root.join("deploy/prometheus/podmonitor.yaml"))?;
    let daemonset = manifest(&root.join("deploy/daemonset.yaml"))?;
    assert_eq!(monitor["kind"], "PodMonitor");
    assert_eq!(monitor["spec"]["selector"]["matchLabels"], daemonset["spec"]["template"]["metadata"]["labels"]);
    assert_eq!(monitor["metadata"]["namespace"], daemonset["metadata"]["namespace"]);
    let port = &monitor["spec"]["podMetricsEndpoints"][0]["port"];
    let ports = &daemonset["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert!(ports.as_array().into_iter().flatten().any(|p| &p["name"] == port), "{port} not in {ports}");
    // RstwatchInstanceDown matches the job name this gives.
    let job_label = monitor["spec"]["jobLabel"].as_str().context("jobLabel")?;
    assert_eq!(daemonset["spec"]["template"]["metadata"]["labels"][job_label], "rstwatch");
    Ok(())
}

#[test]
fn kubernetes_validate_flags_a_bad_manifest() -> Result<()> {
    rst_lab::require!(Need::Tool("python3"), Need::File(&kubernetes_validate_path(), SETUP));
    let good = std::fs::read_to_string(workspace_root().join("deploy/daemonset.yaml"))?;
    let bad = scratch("k8s")?.join("daemonset.bad.yaml");
    std::fs::write(&bad, good.replace("hostNetwork: true", "hostNetwrk: true"))?;
    let (ok, text) = kubernetes_validate(&[&bad])?;
    assert!(!ok && text.contains("hostNetwrk"), "kubernetes-validate should flag the typo:\n{text}");
    Ok(())
}

/// `systemd-analyze verify` on the unit, its ExecStart pointed at the built binary (verify
/// checks that the command exists). It exits 0 on findings it only warns about, so any output
/// is a finding.
fn verify_unit(unit: &str, name: &str) -> Result<(bool, String)> {
    let dir = scratch("systemd")?;
    let path = dir.join(name);
    let rstwatch = rst_lab::paths::rstwatch_for_tests();
    std::fs::write(&path, unit.replace("/usr/local/bin/rstwatch", &rstwatch.display().to_string()))?;
    let (ok, text) = run(Command::new("systemd-analyze").arg("verify").arg(&path))?;
    Ok((ok && text.trim().is_empty(), text))
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() -> Result<()> {
    rst_lab::require!(Need::Tool("systemd-analyze"), Need::File(&rst_lab::paths::rstwatch_release(), RELEASE));
    let unit = std::fs::read_to_string(workspace_root().join("deploy/rstwatch.service"))?;
    assert!(unit.contains("ExecStart=/usr/local/bin/rstwatch "), "the unit's ExecStart moved: update this test");
    let (clean, findings) = verify_unit(&unit, "rstwatch.service")?;
    assert!(clean, "systemd-analyze verify:\n{findings}");
    Ok(())
}

#[test]
fn systemd_analyze_flags_a_bad_unit() -> Result<()> {
    rst_lab::require!(Need::Tool("systemd-analyze"), Need::File(&rst_lab::paths::rstwatch_release(), RELEASE));
    let unit = std::fs::read_to_string(workspace_root().join("deploy/rstwatch.service"))?;
    let (clean, findings) = verify_unit(&unit.replace("NoNewPrivileges=", "NoNewPrivilege="), "rstwatch-bad.service")?;
    assert!(!clean && findings.contains("NoNewPrivilege"), "systemd-analyze should flag the typo:\n{findings}");
    Ok(())
}

fn hadolint(dockerfile: &Path) -> Result<(bool, String)> {
    let path = hadolint_path();
    ensure!(path.exists(), "{} is missing: run `cargo xtask setup`", path.display());
    let output = Command::new(&path).arg("--no-color").arg(dockerfile).output().context("running hadolint")?;
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    Ok((output.status.success(), text))
}

#[test]
fn dockerfile_passes_hadolint() -> Result<()> {
    rst_lab::require!(Need::File(&hadolint_path(), SETUP));
    let (clean, findings) = hadolint(&workspace_root().join("Dockerfile"))?;
    assert!(clean && findings.trim().is_empty(), "hadolint findings:\n{findings}");
    Ok(())
}

/// The lint above could pass by linting nothing: the same linter flags an unpinned base image.
#[test]
fn hadolint_flags_a_bad_dockerfile() -> Result<()> {
    rst_lab::require!(Need::File(&hadolint_path(), SETUP));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy");
    std::fs::create_dir_all(&dir)?;
    let bad = dir.join("Dockerfile.bad");
    std::fs::write(&bad, "FROM debian:latest\nRUN apt-get install curl\n")?;
    let (clean, findings) = hadolint(&bad)?;
    assert!(!clean && findings.contains("DL3007"), "hadolint should flag `debian:latest`:\n{findings}");
    Ok(())
}

/// Every metric the Grafana dashboard queries is one rstwatch registers, and every recording
/// rule one rules.yml records (a renamed metric would leave a silently empty panel); the fleet
/// panels read the recording rules.
#[test]
fn grafana_dashboard_queries_only_metrics_rstwatch_exports() -> Result<()> {
    let root = workspace_root();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deploy/grafana-dashboard.json"))?)?;
    let source = std::fs::read_to_string(root.join("rst-userspace/src/output/metrics/mod.rs"))?;
    let recorded = rule_names(&std::fs::read_to_string(root.join("deploy/prometheus/rules.yml"))?, "record");
    let mut queried = Vec::new();
    let mut rules_queried = Vec::new();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().context("expr")?;
            for (at, _) in expr.match_indices("rstwatch:") {
                let name: String =
                    expr[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
                assert!(recorded.contains(&name), "the dashboard queries {name}, which rules.yml does not record");
                rules_queried.push(name);
            }
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
    for name in RECORDING_RULES {
        assert!(rules_queried.iter().any(|q| q == name), "no dashboard panel shows {name}");
    }
    for name in &queried {
        let registered = name.strip_suffix("_total").unwrap_or(name);
        assert!(
            source.contains(&format!("\"{registered}\",")) || source.contains(&format!("register(\"{registered}\"")),
            "the dashboard queries rstwatch_{name}, which metrics.rs does not register"
        );
    }
    Ok(())
}

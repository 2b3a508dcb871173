//! Verdicts from a capture: `rstwatch replay` of the verdict lab's client-side capture
//! (`tests/data/verdict-lab.cap`, made by `cargo xtask verdict-lab --capture`, with the lab's own
//! account of what each service did and why) names each service's cause — the same evidence
//! code live runs use — and gives no service a cause it does not have. No root needed.

use std::{collections::BTreeSet, path::Path, process::Command};

use serde_json::Value;

fn data(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn summary_of_replay(capture: &Path) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_rstwatch"))
        .args(["replay", "--format", "json"])
        .arg(capture)
        .output()
        .expect("running rstwatch replay");
    assert!(output.status.success(), "replay failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["type"] == "summary")
        .expect("a summary line")
}

/// (cause, addr, port) of a verdict or an account entry.
fn identity(entry: &Value) -> (String, String, u64) {
    (
        entry["cause"].as_str().unwrap_or("?").to_owned(),
        entry["addr"].as_str().unwrap_or("?").to_owned(),
        entry["port"].as_u64().unwrap_or(0),
    )
}

#[test]
fn replay_names_every_lab_service_by_its_own_cause_only() {
    let account: Value =
        serde_json::from_str(&std::fs::read_to_string(data("verdict-lab.account.json")).expect("the lab's account"))
            .expect("the account is JSON");
    let summary = summary_of_replay(&data("verdict-lab.cap"));
    let verdicts = summary["verdicts"].as_array().expect("summary.verdicts");
    let services = account["services"].as_array().expect("account.services");

    // The lab's service went down 30 ms after its last accept, inside one interval: the evidence
    // holds accepts and refusals of an interval without their order, so it names no cause
    // there rather than guess (asserted below: no verdict at all for that service).
    let (gone, services): (Vec<&Value>, Vec<&Value>) = services.iter().partition(|s| s["cause"] == "went_down");
    for service in &gone {
        let (addr, port) = (&service["addr"], &service["port"]);
        let named: Vec<&Value> = verdicts.iter().filter(|v| &v["addr"] == addr && &v["port"] == port).collect();
        assert!(named.is_empty(), "no guess for a service whose order of events is unknown: {named:#?}");
    }
    let expected: BTreeSet<_> = services.iter().copied().map(identity).collect();
    let named: BTreeSet<_> = verdicts.iter().map(identity).collect();
    let wrong: Vec<_> = named.difference(&expected).collect();
    assert!(wrong.is_empty(), "causes a service does not have: {wrong:?}\nverdicts: {verdicts:#?}");
    let missed: Vec<_> = expected.difference(&named).collect();
    assert!(missed.is_empty(), "causes not named: {missed:?}\nverdicts: {verdicts:#?}");

    for service in services {
        let verdict = verdicts.iter().find(|v| identity(v) == identity(service)).expect("named above");
        let what = identity(service);
        assert_eq!(verdict["resets"], service["resets"], "{what:?}: resets");
        assert_eq!(verdict["benign"], service["benign"], "{what:?}: benign");
        for field in ["limit", "rst_ttl", "peer_ttl"] {
            if !service[field].is_null() {
                assert_eq!(verdict[field], service[field], "{what:?}: {field}");
            }
        }
        assert!(verdict["text"].as_str().is_some_and(|t| !t.is_empty()), "{what:?}: a sentence");
    }
    let resets: Vec<u64> = verdicts.iter().map(|v| v["resets"].as_u64().unwrap_or(0)).collect();
    assert!(resets.windows(2).all(|w| w[0] >= w[1]), "sorted by resets: {resets:?}");
}

//! The parts of the command line that need no kernel: version, completions, man page.

#![allow(clippy::expect_used)] // test helpers: a panic is the failure report

use std::process::Command;

fn rstwatch(args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_rstwatch")).args(args).output().expect("rstwatch runs");
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn version_names_the_tool_and_its_version() {
    let (ok, out) = rstwatch(&["--version"]);
    assert!(ok);
    assert_eq!(out.trim(), format!("rstwatch {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn completions_cover_the_options_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let (ok, out) = rstwatch(&["completions", shell]);
        assert!(ok, "{shell}");
        for option in ["iface", "interval", "max-flows", "replay"] {
            assert!(out.contains(option), "{shell} completions lack {option}");
        }
    }
}

#[test]
fn man_page_is_roff_generated_from_the_options() {
    let (ok, out) = rstwatch(&["man"]);
    assert!(ok);
    assert!(out.starts_with(".ie") || out.contains(".TH rstwatch"), "not roff: {}", &out[..out.len().min(80)]);
    for option in ["\\-\\-iface", "\\-\\-xdp\\-mode", "\\-\\-max\\-flows"] {
        assert!(out.contains(option), "man page lacks {option}");
    }
}

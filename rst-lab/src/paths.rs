//! Where the suites, the bench and xtask find what `cargo xtask build` and `cargo xtask setup` put
//! in the workspace's `target/`.

use std::path::PathBuf;

use crate::cmd;

/// `target/release/rstwatch`, which `cargo xtask build` makes.
pub fn rstwatch_path() -> PathBuf {
    cmd::workspace_root().join("target/release/rstwatch")
}

/// The binary the end-to-end suites run: `RSTWATCH_BIN`, or the release build.
pub fn rstwatch_release() -> PathBuf {
    std::env::var_os("RSTWATCH_BIN").map(PathBuf::from).unwrap_or_else(rstwatch_path)
}

/// [`rstwatch_release`], which must exist.
///
/// # Panics
/// When it does not exist: a test without its binary must fail, saying how to build it.
pub fn rstwatch_for_tests() -> PathBuf {
    let bin = rstwatch_release();
    assert!(bin.is_file(), "{} does not exist: run `cargo xtask build` (or set RSTWATCH_BIN)", bin.display());
    bin
}

/// Where setup puts kubernetes-validate: run it as `python3 -m kubernetes_validate` with this
/// directory as `PYTHONPATH`.
pub fn kubernetes_validate_path() -> PathBuf {
    cmd::workspace_root().join("target/tools/kubernetes-validate")
}

/// Where setup puts hadolint: `target/tools/hadolint/bin/hadolint`.
pub fn hadolint_path() -> PathBuf {
    cmd::workspace_root().join("target/tools/hadolint/bin/hadolint")
}

/// The image tarball `cargo xtask image` writes (OCI layout plus Docker's manifest.json).
pub fn image_tarball() -> PathBuf {
    cmd::workspace_root().join("target/image/rstwatch-image.tar")
}

/// The machine's cgroup2 mount (`/sys/fs/cgroup/unified` on a hybrid host), found in
/// `/proc/self/mountinfo` as rstwatch finds it.
pub fn cgroup2_root() -> anyhow::Result<PathBuf> {
    use anyhow::Context as _;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            let (mount, fs) = line.split_once(" - ")?;
            (fs.split_whitespace().next()? == "cgroup2").then(|| mount.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 mount")
}

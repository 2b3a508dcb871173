//! The test tiers. A plain `cargo test` (after `cargo xtask setup`) passes for a user without
//! privileges: a test that needs root (namespaces, BPF, XDP, tracefs), a tool from a Debian
//! package or a file that only a privileged run makes says what it lacks in one line,
//! `SKIPPED <test>: <reason>`, and passes. Under `CI=true` (CI, and `cargo xtask test` there) a
//! missing need is a failure instead: the full tier must really run.
//!
//! ```ignore
//! #[test]
//! fn a_lab_test() -> anyhow::Result<()> {
//!     rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("tcpdump"));
//!     // ...
//!     Ok(())
//! }
//! ```

use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use anyhow::{bail, Result};

/// What a test may need that an unprivileged run can lack.
#[derive(Clone, Copy, Debug)]
pub enum Need<'a> {
    /// Effective uid 0, for what the text says (`"network namespaces, BPF, XDP"`).
    Root(&'a str),
    /// What `BPF_PROG_TEST_RUN` of the eBPF object needs: CAP_BPF and CAP_PERFMON (the verifier
    /// refuses the programs' packet-pointer comparisons without it), which root has.
    Bpf,
    /// A program on `PATH` (or in `/usr/sbin`, `/sbin`: root's tools), from the Debian package
    /// `cargo xtask setup` installs.
    Tool(&'a str),
    /// A file that must exist, and how to get it.
    File(&'a Path, &'a str),
}

/// Whether this is CI (`CI=true`), where a missing need fails the test rather than skip it.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|ci| ci == "true")
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Whether the effective capabilities hold CAP_BPF and CAP_PERFMON (`CapEff` of
/// `/proc/self/status`).
pub fn can_load_bpf() -> bool {
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    [CAP_PERFMON, CAP_BPF].iter().all(|cap| effective & (1 << cap) != 0)
}

/// Where `program` is: a path as given if it is a file, else the first executable of that name
/// on `PATH` or in root's `sbin` directories.
pub fn find_tool(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Path::new(program).is_file().then(|| PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let sbin = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from);
    std::env::split_paths(&path).chain(sbin).map(|dir| dir.join(program)).find(|candidate| executable(candidate))
}

fn executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Why `need` is not met, or `None` when it is.
pub fn missing(need: &Need) -> Option<String> {
    match need {
        Need::Root(what) => (!is_root()).then(|| format!("needs root ({what})")),
        Need::Bpf => (!can_load_bpf()).then(|| "needs CAP_BPF and CAP_PERFMON (root): BPF test runs".to_owned()),
        Need::Tool(tool) => {
            find_tool(tool).is_none().then(|| format!("{tool} is not installed (`cargo xtask setup` installs it)"))
        }
        Need::File(path, how) => (!path.exists()).then(|| format!("{} does not exist ({how})", path.display())),
    }
}

/// Checks `needs` in order. All met: `Ok(true)`. The first one missing: under `CI=true` an error
/// naming it; otherwise `SKIPPED <test>: <reason>` on stderr (past the test harness's capture, so
/// `cargo test` shows it) and `Ok(false)`, and the test returns, passed.
pub fn require(test: &str, needs: &[Need]) -> Result<bool> {
    match needs.iter().find_map(missing) {
        None => Ok(true),
        Some(reason) => skip(test, &reason),
    }
}

/// Skips `test` for `reason` (see [`require`]): `Ok(false)`, or the error under `CI=true`.
pub fn skip(test: &str, reason: &str) -> Result<bool> {
    if ci() {
        bail!("{test}: {reason} (CI=true: this test must run)");
    }
    // Written to the stderr handle, not with eprintln!: the test harness captures only the
    // print macros, and a skip must show.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
    Ok(false)
}

/// The running test's name: the test harness names each test's thread after it.
pub fn current_test() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => std::env::args().nth(1).filter(|a| !a.starts_with('-')).unwrap_or_else(|| "test".to_owned()),
    }
}

/// `require!(need, ...)`: in a test returning `Result`, returns `Ok(())` (skipped, with its one
/// line) unless every need is met; under `CI=true` a missing need is the test's error.
#[macro_export]
macro_rules! require {
    ($($need:expr),+ $(,)?) => {
        if !$crate::skip::require(&$crate::skip::current_test(), &[$($need),+])? {
            return Ok(());
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn met_needs_are_not_missing_and_missing_ones_say_why() {
        assert_eq!(missing(&Need::Tool("sh")), None);
        let absent = missing(&Need::Tool("no-such-tool-rstwatch")).unwrap();
        assert!(absent.starts_with("no-such-tool-rstwatch is not installed"), "{absent}");
        assert_eq!(missing(&Need::File(Path::new("/"), "always there")), None);
        let file = missing(&Need::File(Path::new("/no/such/file"), "make it")).unwrap();
        assert_eq!(file, "/no/such/file does not exist (make it)");
        assert_eq!(missing(&Need::Root("x")).is_none(), is_root());
        if is_root() {
            assert_eq!(missing(&Need::Bpf), None);
        }
    }

    #[test]
    fn the_test_is_named_after_its_thread() {
        let name = std::thread::Builder::new().name("suite::case".to_owned()).spawn(current_test).unwrap().join();
        assert_eq!(name.unwrap(), "suite::case");
    }
}

//! A Docker engine of the test's own (Debian's docker.io: its own data root, exec root and
//! socket, no bridge, no iptables), and the README's `docker run` line read from README.md.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use rst_lab::{cmd::workspace_root, lab::Proc};

/// Debian's docker.io client (another client may come first on PATH; this one matches the
/// engine).
pub const DOCKER: &str = "/usr/bin/docker";

pub struct Dockerd {
    data: PathBuf,
    run: PathBuf,
    socket: PathBuf,
    daemon: Option<Proc>,
}

impl Dockerd {
    pub fn start() -> Result<Dockerd> {
        let name = super::runtime::unique("rstwatch-dockerd");
        let data = Path::new(env!("CARGO_TARGET_TMPDIR")).join(&name);
        let run = Path::new("/run").join(&name);
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&run)?;
        let socket = run.join("docker.sock");
        let mut daemon = Command::new("dockerd");
        daemon
            .arg("--data-root")
            .arg(&data)
            .arg("--exec-root")
            .arg(run.join("exec"))
            .arg("--pidfile")
            .arg(run.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            // Host or container networks only: no bridge, nothing written to the firewall.
            .args(["--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false"]);
        let mut dockerd = Dockerd { data, run, socket, daemon: Some(Proc::spawn(&mut daemon)?) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !rst_lab::cmd::succeeds(&mut dockerd.docker(&["version"])) {
            if let Some(proc) = dockerd.daemon.as_mut() {
                if let Some(status) = proc.try_wait()? {
                    bail!("dockerd exited ({status}): {}", proc.stderr());
                }
            }
            ensure!(Instant::now() < deadline, "dockerd did not answer within 60 s");
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(dockerd)
    }

    pub fn docker(&self, args: &[&str]) -> Command {
        let mut c = Command::new(DOCKER);
        c.arg("--host").arg(format!("unix://{}", self.socket.display())).args(args);
        c
    }

    pub fn output(&self, args: &[&str]) -> Result<String> {
        rst_lab::cmd::output(&mut self.docker(args))
    }

    pub fn server_version(&self) -> Result<String> {
        Ok(self.output(&["version", "--format", "{{.Server.Version}}"])?.trim().to_owned())
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let ids = self.output(&["ps", "--all", "--quiet"]).unwrap_or_default();
        for id in ids.lines() {
            let _ = self.output(&["rm", "--force", "--volumes", id]);
        }
        let images = self.output(&["images", "--quiet"]).unwrap_or_default();
        for image in images.lines() {
            let _ = self.output(&["rmi", "--force", image]);
        }
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(20);
            while daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let roots = [self.data.display().to_string(), self.run.display().to_string()];
        let mut below: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(4))
            .filter(|m| roots.iter().any(|r| m.starts_with(r.as_str())))
            .collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in below {
            let _ = Command::new("umount").arg("--lazy").arg(mount).status();
        }
        // The engine's parent cgroup in each hierarchy, if it is empty (rmdir fails otherwise).
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(hierarchy.path().join("docker"));
        }
        for dir in [&self.data, &self.run] {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                eprintln!("container suite: could not remove {}: {e}", dir.display());
            }
        }
    }
}

/// The `docker run` line of README.md's "In a container, as a service", its `\` continuations
/// joined, as words (it has no quoting).
pub fn readme_line() -> Result<Vec<String>> {
    let readme = std::fs::read_to_string(workspace_root().join("README.md"))?;
    let section = readme.split("## In a container, as a service").nth(1).context("README has no container section")?;
    let mut joined = String::new();
    let mut lines = section.lines().skip_while(|l| !l.starts_with("docker run"));
    for line in lines.by_ref() {
        match line.strip_suffix('\\') {
            Some(part) => joined.push_str(part),
            None => {
                joined.push_str(line);
                break;
            }
        }
    }
    ensure!(!joined.is_empty(), "no `docker run` line in README's container section");
    Ok(joined.split_whitespace().map(str::to_owned).collect())
}

/// Replaces `from` (one or two words) with `to` in `line`; it must be there.
pub fn replace(line: &[String], from: &[&str], to: &[&str]) -> Result<Vec<String>> {
    let at = line
        .windows(from.len())
        .position(|w| w.iter().zip(from).all(|(a, b)| a == b))
        .with_context(|| format!("{from:?} is not in {line:?}"))?;
    let mut out = line[..at].to_vec();
    out.extend(to.iter().map(|s| (*s).to_owned()));
    out.extend_from_slice(&line[at + from.len()..]);
    Ok(out)
}

//! The container side of the container suite: the DaemonSet's container read from
//! `deploy/daemonset.yaml` and turned into `ctr run` flags, a containerd of the test's own
//! (its own root, state and socket, so it never touches a containerd the machine runs), and
//! what the kernel says a running task holds (capabilities, mounts, its memory cgroup).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use rst_lab::{cmd::workspace_root, lab::Proc, paths::kubernetes_validate_path};
use serde_json::Value;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A unique name for this process: `<what>-<pid>-<n>`.
pub fn unique(what: &str) -> String {
    format!("{what}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Every capability the kernel knows, by number: `drop: ["ALL"]` drops each one by name (ctr
/// has no ALL).
pub const CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capability mask of `names` (Kubernetes' spelling, without `CAP_`).
pub fn cap_mask(names: &[String]) -> Result<u64> {
    names.iter().try_fold(0u64, |mask, name| {
        let bit = CAPABILITIES.iter().position(|c| c == name).with_context(|| format!("unknown capability {name}"))?;
        Ok(mask | 1 << bit)
    })
}

/// A manifest as JSON, read with the PyYAML that kubernetes-validate brings.
pub fn yaml(path: &Path) -> Result<Value> {
    let out = Command::new("python3")
        .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"])
        .arg(path)
        .env("PYTHONPATH", kubernetes_validate_path())
        .output()?;
    ensure!(out.status.success(), "reading {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A Kubernetes quantity: bytes (`256Mi`, `1G`, `1000`) or millicores (`500m`, `2`), scaled by
/// `unit` for plain numbers (1 for bytes, 1000 for cores).
pub fn quantity(text: &str, unit: u64) -> Result<u64> {
    let suffixes: [(&str, u64); 9] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("m", 1),
    ];
    for (suffix, scale) in suffixes {
        if let Some(number) = text.strip_suffix(suffix) {
            let number: u64 = number.parse().with_context(|| format!("quantity {text:?}"))?;
            return Ok(number * scale);
        }
    }
    Ok(text.parse::<u64>().with_context(|| format!("quantity {text:?}"))? * unit)
}

/// One bind mount: a node path, where it appears, read-only or not.
#[derive(Debug, Clone)]
pub struct Mount {
    pub node: PathBuf,
    pub path: String,
    pub read_only: bool,
}

/// The DaemonSet's one container, as a runtime must run it.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub image: String,
    pub args: Vec<String>,
    pub privileged: bool,
    pub allow_privilege_escalation: bool,
    pub read_only_root: bool,
    pub cap_add: Vec<String>,
    pub drop_all: bool,
    pub mounts: Vec<Mount>,
    pub memory_limit: u64,
    pub memory_request: u64,
    pub cpu_limit_milli: u64,
    pub cpu_request_milli: u64,
    pub host_network: bool,
    /// The metrics port (`ports[name=metrics].containerPort`) and the readiness probe's path.
    pub metrics_port: u16,
    pub probe_path: String,
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_owned).collect()
}

/// Reads `deploy/daemonset.yaml`. `node_path` maps each hostPath to where this test's node
/// keeps it (a stand-in directory, or the same path). Anything the translation does not know
/// (a second container, a volume that is not a hostPath, a securityContext field) fails here,
/// so the manifest cannot grow what the test does not run.
pub fn daemonset(node_path: &dyn Fn(&str) -> Result<PathBuf>) -> Result<PodSpec> {
    let manifest = yaml(&workspace_root().join("deploy/daemonset.yaml"))?;
    let pod = &manifest["spec"]["template"]["spec"];
    let containers = pod["containers"].as_array().context("no containers")?;
    ensure!(containers.len() == 1, "the test runs one container; the DaemonSet has {}", containers.len());
    ensure!(pod["initContainers"].is_null(), "the DaemonSet grew init containers: teach the test");
    let c = &containers[0];
    let security = &c["securityContext"];
    for key in security.as_object().context("no securityContext")?.keys() {
        ensure!(
            ["privileged", "allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities"]
                .contains(&key.as_str()),
            "securityContext.{key} is not translated by the test: teach it"
        );
    }
    ensure!(c["command"].is_null(), "the DaemonSet sets command: the test runs the image's entrypoint");
    let drop = strings(&security["capabilities"]["drop"]);
    ensure!(drop.is_empty() || drop == ["ALL"], "capabilities.drop {drop:?}: the test knows only ALL");
    let volumes = pod["volumes"].as_array().context("no volumes")?;
    let mut mounts = Vec::new();
    for mount in c["volumeMounts"].as_array().into_iter().flatten() {
        let name = mount["name"].as_str().context("volumeMount without a name")?;
        let volume = volumes.iter().find(|v| v["name"] == name).with_context(|| format!("no volume {name}"))?;
        let host = volume["hostPath"]["path"].as_str().with_context(|| format!("volume {name} is not a hostPath"))?;
        let node = node_path(host)?;
        if volume["hostPath"]["type"] == "Directory" {
            ensure!(node.is_dir(), "hostPath {host} (type Directory) is no directory here: {}", node.display());
        }
        mounts.push(Mount {
            node,
            path: mount["mountPath"].as_str().context("mountPath")?.to_owned(),
            read_only: mount["readOnly"] == true,
        });
    }
    let resources = &c["resources"];
    let bytes = |v: &Value| v.as_str().map_or(Ok(0), |q| quantity(q, 1));
    let milli = |v: &Value| v.as_str().map_or(Ok(0), |q| quantity(q, 1000));
    let metrics_port = c["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "metrics")
        .and_then(|p| p["containerPort"].as_u64())
        .context("no metrics port")?;
    Ok(PodSpec {
        image: c["image"].as_str().context("image")?.to_owned(),
        args: strings(&c["args"]),
        privileged: security["privileged"] == true,
        allow_privilege_escalation: security["allowPrivilegeEscalation"] != false,
        read_only_root: security["readOnlyRootFilesystem"] == true,
        cap_add: strings(&security["capabilities"]["add"]),
        drop_all: drop == ["ALL"],
        mounts,
        memory_limit: bytes(&resources["limits"]["memory"])?,
        memory_request: bytes(&resources["requests"]["memory"])?,
        cpu_limit_milli: milli(&resources["limits"]["cpu"])?,
        cpu_request_milli: milli(&resources["requests"]["cpu"])?,
        host_network: pod["hostNetwork"] == true,
        metrics_port: u16::try_from(metrics_port)?,
        probe_path: c["readinessProbe"]["httpGet"]["path"].as_str().context("readinessProbe path")?.to_owned(),
    })
}

impl PodSpec {
    /// The args with `-i`'s interface replaced: the manifest's node interface is this test's
    /// lab veth.
    pub fn args_on(&self, iface: &str) -> Result<Vec<String>> {
        let mut args = self.args.clone();
        let at = args.iter().position(|a| a == "-i" || a == "--interface").context("the args name no -i")?;
        *args.get_mut(at + 1).context("-i without a value")? = iface.to_owned();
        Ok(args)
    }

    /// The `ctr run` flags that give a task what the kubelet gives this container, in the
    /// network namespace `netns` (the node's: hostNetwork).
    pub fn ctr_flags(&self, netns: &Path) -> Result<Vec<String>> {
        ensure!(self.host_network, "the DaemonSet is not on the host network: the test joins the node's namespace");
        let mut flags = Vec::new();
        if self.privileged {
            flags.push("--privileged".to_owned());
        }
        // containerd's default spec sets no_new_privs; allowPrivilegeEscalation: true lifts it.
        if self.allow_privilege_escalation {
            flags.push("--allow-new-privs".to_owned());
        }
        if self.read_only_root {
            flags.push("--read-only".to_owned());
        }
        if self.drop_all {
            for cap in CAPABILITIES.iter().filter(|c| !self.cap_add.iter().any(|a| a == *c)) {
                flags.extend(["--cap-drop".to_owned(), format!("CAP_{cap}")]);
            }
        }
        for cap in &self.cap_add {
            flags.extend(["--cap-add".to_owned(), format!("CAP_{cap}")]);
        }
        for m in &self.mounts {
            let options = if m.read_only { "rbind:ro" } else { "rbind:rw" };
            flags.extend([
                "--mount".to_owned(),
                format!("type=bind,src={},dst={},options={options}", m.node.display(), m.path),
            ]);
        }
        if self.memory_limit > 0 {
            flags.extend(["--memory-limit".to_owned(), self.memory_limit.to_string()]);
        }
        if self.cpu_limit_milli > 0 {
            // The kubelet's translation: quota = millicores * period / 1000 at a 100 ms period.
            flags.extend(["--cpu-period".to_owned(), "100000".to_owned()]);
            flags.extend(["--cpu-quota".to_owned(), (self.cpu_limit_milli * 100).to_string()]);
        }
        if self.cpu_request_milli > 0 {
            flags.extend(["--cpu-shares".to_owned(), (self.cpu_request_milli * 1024 / 1000).max(2).to_string()]);
        }
        flags.extend(["--with-ns".to_owned(), format!("network:{}", netns.display())]);
        Ok(flags)
    }

    /// containerd's name for the image (the kubelet normalizes the same way).
    pub fn image_ref(&self) -> String {
        let image = if self.image.contains(':') { self.image.clone() } else { format!("{}:latest", self.image) };
        if image.contains('/') {
            image
        } else {
            format!("docker.io/library/{image}")
        }
    }
}

/// The image's ENTRYPOINT, read from the Dockerfile `cargo xtask image` follows.
pub fn entrypoint() -> Result<Vec<String>> {
    let dockerfile = std::fs::read_to_string(workspace_root().join("Dockerfile"))?;
    let line = dockerfile.lines().rev().find_map(|l| l.strip_prefix("ENTRYPOINT ")).context("no ENTRYPOINT")?;
    Ok(serde_json::from_str(line)?)
}

/// A containerd of the test's own, stopped and its directories removed when dropped (its
/// containers, tasks, snapshots and images go with it, also when the test fails).
pub struct Containerd {
    root: PathBuf,
    run: PathBuf,
    socket: PathBuf,
    namespace: String,
    daemon: Option<Proc>,
}

impl Containerd {
    pub fn start() -> Result<Containerd> {
        let name = unique("rstwatch-ctr");
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join(&name);
        // The socket path must stay under the 108 bytes of sun_path.
        let run = Path::new("/run").join(&name);
        std::fs::create_dir_all(&root)?;
        std::fs::create_dir_all(&run)?;
        let socket = run.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{root}/root\"\nstate = \"{run}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{root}/opt\"\n",
            root = root.display(),
            run = run.display(),
            sock = socket.display(),
        );
        let config_path = root.join("config.toml");
        std::fs::write(&config_path, config)?;
        let mut daemon = Command::new("containerd");
        daemon.arg("--config").arg(&config_path);
        let mut containerd = Containerd { root, run, socket, namespace: name, daemon: Some(Proc::spawn(&mut daemon)?) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !rst_lab::cmd::succeeds(&mut containerd.ctr(&["version"])) {
            if let Some(proc) = containerd.daemon.as_mut() {
                if let Some(status) = proc.try_wait()? {
                    bail!("containerd exited ({status}): {}", proc.stderr());
                }
            }
            ensure!(Instant::now() < deadline, "containerd did not answer within 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(containerd)
    }

    /// `ctr` against this containerd, in the test's namespace.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&self.socket).args(["--namespace", &self.namespace]).args(args);
        c
    }

    pub fn ctr_output(&self, args: &[&str]) -> Result<String> {
        rst_lab::cmd::output(&mut self.ctr(args))
    }

    /// Starts `ctr run` of `image` as container `id` with `flags`, in the foreground (its
    /// stdout and stderr are the task's; SIGINT to it is forwarded to the task), writing the
    /// task's pid to a file.
    pub fn run(&self, flags: &[String], image: &str, id: &str, argv: &[String]) -> Result<(Proc, PathBuf)> {
        let pid_file = self.run.join(format!("{id}.pid"));
        let mut c = self.ctr(&["run", "--rm"]);
        c.args(flags).arg("--pid-file").arg(&pid_file).arg(image).arg(id).args(argv);
        Ok((Proc::spawn(&mut c)?, pid_file))
    }

    /// SIGKILL to container `id`'s task.
    pub fn kill(&self, id: &str) -> Result<()> {
        self.ctr_output(&["task", "kill", "--signal", "SIGKILL", id]).map(drop)
    }

    fn remove_everything(&self) {
        let list = |args: &[&str]| -> Vec<String> {
            self.ctr_output(args).map(|out| out.lines().map(str::to_owned).collect()).unwrap_or_default()
        };
        for id in list(&["containers", "list", "--quiet"]) {
            let _ = self.ctr_output(&["task", "kill", "--signal", "SIGKILL", &id]);
            let _ = self.ctr_output(&["task", "delete", "--force", &id]);
            let _ = self.ctr_output(&["containers", "delete", &id]);
        }
        for image in list(&["images", "list", "--quiet"]) {
            let _ = self.ctr_output(&["images", "remove", "--sync", &image]);
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.remove_everything();
        if let Some(mut daemon) = self.daemon.take() {
            let _ = daemon.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while daemon.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Snapshots still mounted (a task that would not die) would make the removal fail:
        // unmount what is left below the root first.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.root.display().to_string();
        let mut below: Vec<&str> =
            mounts.lines().filter_map(|l| l.split_whitespace().nth(4)).filter(|m| m.starts_with(&root)).collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in below {
            let _ = Command::new("umount").arg("--lazy").arg(mount).status();
        }
        // runc leaves the namespace's parent cgroup (`/<namespace>`) in every hierarchy.
        for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
            let _ = std::fs::remove_dir(hierarchy.path().join(&self.namespace));
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(&self.namespace));
        for dir in [&self.root, &self.run] {
            if let Err(e) = std::fs::remove_dir_all(dir) {
                eprintln!("container suite: could not remove {}: {e}", dir.display());
            }
        }
    }
}

/// What the kernel says about a running task.
#[derive(Debug)]
pub struct TaskView {
    pub status: BTreeMap<String, String>,
    /// Mount point → its options (per-mount and per-superblock).
    pub mounts: BTreeMap<String, String>,
}

impl TaskView {
    pub fn read(pid: u32) -> Result<TaskView> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect();
        let mut mounts = BTreeMap::new();
        for line in std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let (Some(point), Some(options)) = (fields.get(4), fields.get(5)) {
                mounts.insert((*point).to_owned(), (*options).to_owned());
            }
        }
        Ok(TaskView { status, mounts })
    }

    pub fn caps(&self, field: &str) -> Result<u64> {
        let hex = self.status.get(field).with_context(|| format!("no {field} in status"))?;
        Ok(u64::from_str_radix(hex, 16)?)
    }

    pub fn read_only(&self, point: &str) -> Result<bool> {
        let options =
            self.mounts.get(point).with_context(|| format!("nothing mounted at {point}: {:?}", self.mounts))?;
        Ok(options.split(',').any(|o| o == "ro"))
    }
}

/// A task's memory cgroup: cgroup v1's memory controller or cgroup v2, whichever holds it.
pub struct MemoryCgroup {
    dir: PathBuf,
    v1: bool,
}

impl MemoryCgroup {
    pub fn of(pid: u32) -> Result<MemoryCgroup> {
        let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        for line in cgroups.lines() {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if controllers.split(',').any(|c| c == "memory") {
                let dir = Path::new("/sys/fs/cgroup/memory").join(path.trim_start_matches('/'));
                return Ok(MemoryCgroup { dir, v1: true });
            }
        }
        let path = cgroups.lines().find_map(|l| l.strip_prefix("0::")).context("no cgroup of the task")?;
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let root = mountinfo
            .lines()
            .find_map(|l| {
                let (mount, fs) = l.split_once(" - ")?;
                (fs.split_whitespace().next()? == "cgroup2")
                    .then(|| mount.split_whitespace().nth(4).map(PathBuf::from))?
            })
            .context("no cgroup2 mount")?;
        Ok(MemoryCgroup { dir: root.join(path.trim_start_matches('/')), v1: false })
    }

    fn read(&self, v1: &str, v2: &str) -> Result<u64> {
        let file = self.dir.join(if self.v1 { v1 } else { v2 });
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        if text.trim() == "max" {
            return Ok(u64::MAX);
        }
        text.trim().parse().with_context(|| format!("{}: {text}", file.display()))
    }

    /// Charged now (BPF maps included: they are charged to the memory cgroup of their creator).
    pub fn usage(&self) -> Result<u64> {
        self.read("memory.usage_in_bytes", "memory.current")
    }

    /// The highest charge since the cgroup was made.
    pub fn peak(&self) -> Result<u64> {
        self.read("memory.max_usage_in_bytes", "memory.peak")
    }

    pub fn limit(&self) -> Result<u64> {
        self.read("memory.limit_in_bytes", "memory.max")
    }

    /// Times the limit was hit (v1 `memory.failcnt`, v2 `max` + `oom` events).
    pub fn limit_hits(&self) -> Result<u64> {
        if self.v1 {
            return self.read("memory.failcnt", "");
        }
        let events = std::fs::read_to_string(self.dir.join("memory.events"))?;
        Ok(events
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(k, _)| ["max", "oom", "oom_kill"].contains(k))
            .filter_map(|(_, v)| v.parse::<u64>().ok())
            .sum())
    }

    /// Where the charge is: anonymous memory, page cache and kernel memory (BPF maps among it).
    pub fn breakdown(&self) -> String {
        let stat = std::fs::read_to_string(self.dir.join("memory.stat")).unwrap_or_default();
        let field = |name: &str| {
            stat.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse::<u64>().ok()).unwrap_or(0)
        };
        let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        if self.v1 {
            let kernel = self.read("memory.kmem.usage_in_bytes", "").unwrap_or(0);
            format!(
                "anon {:.1} MiB, cache {:.1} MiB, kernel {:.1} MiB",
                mib(field("rss")),
                mib(field("cache")),
                mib(kernel)
            )
        } else {
            format!(
                "anon {:.1} MiB, file {:.1} MiB, kernel {:.1} MiB",
                mib(field("anon")),
                mib(field("file")),
                mib(field("kernel"))
            )
        }
    }

    pub fn describe(&self) -> String {
        format!("{} ({})", self.dir.display(), if self.v1 { "cgroup v1 memory" } else { "cgroup v2" })
    }
}

/// Waits for the pid file `ctr run --pid-file` writes.
pub fn task_pid(pid_file: &Path, proc: &mut Proc) -> Result<u32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(pid_file) {
            if let Ok(pid) = text.trim().parse() {
                return Ok(pid);
            }
        }
        if let Some(status) = proc.try_wait()? {
            bail!("ctr run exited ({status}) before the task started: {}", proc.stderr());
        }
        ensure!(Instant::now() < deadline, "no task pid in {} after 30 s", pid_file.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_read_as_kubernetes_writes_them() {
        assert_eq!(quantity("256Mi", 1).unwrap(), 256 << 20);
        assert_eq!(quantity("1G", 1).unwrap(), 1_000_000_000);
        assert_eq!(quantity("500m", 1000).unwrap(), 500);
        assert_eq!(quantity("2", 1000).unwrap(), 2000);
        assert!(quantity("lots", 1).is_err());
        assert_eq!(cap_mask(&["BPF".into(), "NET_ADMIN".into(), "PERFMON".into()]).unwrap(), 0xc0_0000_1000);
    }
}

//! The container as people run it: the image `cargo xtask image` builds (no registry), under
//! Debian's containerd + runc with exactly what `deploy/daemonset.yaml` gives the container
//! (securityContext, mounts, args, resource limits, host network), read from the manifest at
//! run time so that the manifest cannot drift from what was tested.
//!
//! The node is a lab namespace: "host network" joins the node's network namespace, `-i eth0`
//! becomes the node's end of the lab veth, and the hostPaths are the machine's (the cgroup
//! tree: its cgroup2 mount, which is `/sys/fs/cgroup` on a cgroup2-only node) except
//! `/var/log/pods`, which is a stand-in directory holding the test pod's entry. Nothing is
//! attached to the machine's own interfaces. Needs root, containerd, ctr, runc (`cargo xtask
//! setup`) and the image tarball (`cargo xtask image`, which `cargo xtask test` runs).

#[path = "container/docker.rs"]
mod docker;
#[path = "container/runtime.rs"]
mod runtime;

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use rst_lab::{
    flood::{self, FloodLab, FlowId, GenLength, GenPlan},
    lab::{Netns, Proc},
    paths::{image_tarball, kubernetes_validate_path},
    Need,
};
use serde_json::Value;

use runtime::{Containerd, MemoryCgroup, PodSpec, TaskView};

const IMAGE: &str = "`cargo xtask image` makes it";
const SETUP: &str = "`cargo xtask setup` installs it";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const NODE: &str = "10.28.1.1";
const PEER: &str = "10.28.1.2";
/// Connections to closed ports, each from its own source port so that every RST's flow is
/// known in advance: `host port first n`.
const REFUSED_PY: &str = r#"
import socket, sys
host, port, first, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for i in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", first + i))
    s.settimeout(5)
    try:
        s.connect((host, port))
        sys.exit("connected to a port that should be closed")
    except ConnectionRefusedError:
        pass
    s.close()
"#;

/// The node: the flood lab's monitor namespace, with addresses for real TCP, a pod cgroup
/// under the machine's cgroup2 tree and its `/var/log/pods` entry in a stand-in directory.
struct Node {
    lab: FloodLab,
    pod_logs: PathBuf,
    cgroup2: PathBuf,
    /// The pod's cgroup, relative to the cgroup2 root (as rstwatch names it).
    pod_cgroup: String,
    pod_uid: String,
}

impl Node {
    fn new() -> Result<Node> {
        rst_lab::diag_lab::ensure_tracefs()?;
        let lab = FloodLab::new()?;
        lab.mon_if.add_addr(NODE.parse()?, 24)?;
        lab.gen_if.add_addr(PEER.parse()?, 24)?;
        let cgroup2 = rst_lab::paths::cgroup2_root()?;
        let pid = std::process::id();
        let pod_uid = format!("{pid:08x}-28aa-4bbb-8ccc-{:012x}", rand_tail());
        let pod_cgroup = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{pid:x}28.scope",
            pod_uid.replace('-', "_")
        );
        let pod_logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join(runtime::unique("pod-logs"));
        std::fs::create_dir_all(pod_logs.join(format!("monitoring_shop-2b7c_{pod_uid}")))?;
        std::fs::create_dir_all(cgroup2.join(pod_cgroup.trim_start_matches('/')))
            .with_context(|| format!("creating cgroup {pod_cgroup}"))?;
        Ok(Node { lab, pod_logs, cgroup2, pod_cgroup, pod_uid })
    }

    fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(self.lab.mon.name())
    }

    /// Where this node keeps a hostPath of the manifest.
    fn path(&self, host: &str) -> Result<PathBuf> {
        Ok(match host {
            "/var/log/pods" => self.pod_logs.clone(),
            "/sys/fs/cgroup" => self.cgroup2.clone(),
            other => PathBuf::from(other),
        })
    }

    fn spec(&self) -> Result<PodSpec> {
        runtime::daemonset(&|host| self.path(host))
    }

    /// Runs the refusing client in `ns`, inside the pod's cgroup when `in_pod`.
    fn refused(&self, ns: &Netns, in_pod: bool, host: &str, port: u16, first: u16, n: u16) -> Result<()> {
        let procs = self.cgroup2.join(self.pod_cgroup.trim_start_matches('/')).join("cgroup.procs");
        let mut cmd = Command::new("sh");
        // The shell moves itself into the cgroup (or not), then becomes the client: nothing of
        // the client runs elsewhere. nsenter keeps the machine's /sys (ip netns exec would not).
        let script = if in_pod { r#"echo $$ > "$1" && shift && exec "$@""# } else { r#"shift && exec "$@""# };
        cmd.args(["-c", script, "sh"])
            .arg(&procs)
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .args(["python3", "-c", REFUSED_PY, host, &port.to_string(), &first.to_string(), &n.to_string()]);
        let fin = Proc::spawn(&mut cmd)?.finish(Duration::from_secs(60))?;
        ensure!(fin.status.success(), "refused client: {} {}", fin.status, fin.stderr);
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let dir = self.cgroup2.join(self.pod_cgroup.trim_start_matches('/'));
        // Remove the pod's cgroup and the empty parents this test made (kubepods.slice may
        // be a real kubelet's: rmdir fails on a parent that holds anything else).
        let mut at = Some(dir.as_path());
        while let Some(d) = at.filter(|d| *d != self.cgroup2) {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
            at = d.parent();
        }
        let _ = std::fs::remove_dir_all(&self.pod_logs);
    }
}

fn rand_tail() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        & 0xffff_ffff_ffff
}

/// `GET path` on `addr` from inside `ns`, as Prometheus or the readiness probe would: the body.
fn http_get(ns: &Netns, addr: &str, path: &str) -> Result<String> {
    let (addr, path) = (addr.to_owned(), path.to_owned());
    rst_lab::traffic::in_netns(ns, move || {
        let mut stream = TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        ensure!(response.starts_with("HTTP/1.") && response.contains(" 200 "), "GET {path}: {response}");
        Ok(response)
    })
}

/// The sum of a counter's samples in a Prometheus text page.
fn counter_sum(page: &str, name: &str) -> u64 {
    page.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The flows a refused burst makes, as rstwatch prints them: the RST goes from the closed
/// port back to each source port.
fn refused_flows(closed: (&str, u16), client: &str, first: u16, n: u16) -> BTreeMap<FlowId, u64> {
    (0..n).map(|i| ((closed.0.to_owned(), u64::from(closed.1), client.to_owned(), u64::from(first + i)), 1)).collect()
}

/// Samples a memory cgroup's usage every 50 ms until stopped: the highest sample.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl Sampler {
    fn start(cgroup: Arc<MemoryCgroup>) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut highest = 0;
            while !flag.load(Ordering::Relaxed) {
                highest = highest.max(cgroup.usage().unwrap_or(0));
                std::thread::sleep(Duration::from_millis(50));
            }
            highest
        });
        Sampler { stop, thread }
    }

    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

/// Checks a running task against the manifest: capabilities exactly the added ones in every
/// set but the ambient one, no_new_privs, a read-only root, each mount where and as
/// read-only as the manifest says, and the memory limit.
fn check_task(spec: &PodSpec, pid: u32) -> Result<MemoryCgroup> {
    let view = TaskView::read(pid)?;
    let want = runtime::cap_mask(&spec.cap_add)?;
    for set in ["CapEff", "CapPrm", "CapBnd"] {
        ensure!(
            view.caps(set)? == want,
            "{set} {:x}, the manifest adds {:?} ({want:x})",
            view.caps(set)?,
            spec.cap_add
        );
    }
    ensure!(view.caps("CapAmb")? == 0, "ambient capabilities {:x}", view.caps("CapAmb")?);
    let nnp = if spec.allow_privilege_escalation { "0" } else { "1" };
    ensure!(view.status.get("NoNewPrivs").map(String::as_str) == Some(nnp), "NoNewPrivs: {:?}", view.status);
    ensure!(view.read_only("/")? == spec.read_only_root, "root read-only: {:?}", view.mounts.get("/"));
    for m in &spec.mounts {
        ensure!(view.read_only(&m.path)? == m.read_only, "{} read-only should be {}", m.path, m.read_only);
    }
    let memory = MemoryCgroup::of(pid)?;
    ensure!(
        memory.limit()? == spec.memory_limit,
        "{}: limit {} != {}",
        memory.describe(),
        memory.limit()?,
        spec.memory_limit
    );
    Ok(memory)
}

/// The DaemonSet's container under containerd: exact counts of a refused burst (with the
/// kernel's reason), a pod's refused connections (named as the pod) and a flood of distinct
/// flows; /metrics as the readiness probe and Prometheus read it; then, in a second task, its
/// memory idle, with the flow table full and under a scan that overflows it, within its limit;
/// and SIGKILL of the task leaves nothing attached.
#[test]
fn the_daemonset_runs_under_containerd_counting_exactly_within_its_limits() -> Result<()> {
    rst_lab::require!(
        Need::Root("namespaces, BPF, cgroups, containerd"),
        Need::Tool("containerd"),
        Need::Tool("ctr"),
        Need::Tool("runc"),
        Need::Tool("nsenter"),
        Need::Tool("bpftool"),
        Need::File(&kubernetes_validate_path(), SETUP),
        Need::File(&image_tarball(), IMAGE)
    );
    flood::build_bench()?;
    let node = Node::new()?;
    let spec = node.spec()?;
    let containerd = Containerd::start()?;
    let imported = containerd.ctr_output(&["images", "import", &image_tarball().display().to_string()])?;
    let image = spec.image_ref();
    ensure!(imported.contains(&image), "the tarball does not hold {image} (the manifest's image): {imported}");
    let flags = spec.ctr_flags(&node.netns_path())?;
    let mut argv = runtime::entrypoint()?;
    argv.extend(spec.args_on(&node.lab.mon_if.name)?);
    let attached = format!("attached to {}", node.lab.mon_if.name);

    // 1. Counting.
    let id = runtime::unique("rstwatch");
    let (mut task, pid_file) = containerd.run(&flags, &image, &id, &argv)?;
    let pid = runtime::task_pid(&pid_file, &mut task)?;
    task.wait_for_stderr(&attached, START_TIMEOUT)?;
    check_task(&spec, pid)?;
    let metrics_addr = format!("{NODE}:{}", spec.metrics_port);
    http_get(&node.lab.gen, &metrics_addr, &spec.probe_path)?;

    // The node's kernel refuses the peer (NO_SOCKET), the peer's kernel refuses the pod.
    let (kernel_first, kernel_n, pod_first, pod_n) = (40_000, 40, 41_000, 25);
    node.refused(&node.lab.gen, false, NODE, 81, kernel_first, kernel_n)?;
    node.refused(&node.lab.mon, true, PEER, 82, pod_first, pod_n)?;
    let plan = GenPlan { flows: 20_000, first: 0, repeat: 1, length: GenLength::Passes(1) };
    let gen = flood::generate(&node.lab, &plan)?;
    let mut expected = gen.expected.clone();
    let kernel_flows = refused_flows((NODE, 81), PEER, kernel_first, kernel_n);
    let pod_flows = refused_flows((PEER, 82), NODE, pod_first, pod_n);
    expected.extend(kernel_flows.clone());
    expected.extend(pod_flows.clone());
    let total = gen.delivered + u64::from(kernel_n) + u64::from(pod_n);

    // /metrics counts them once the interval that holds them ends.
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut page = String::new();
    while Instant::now() < deadline {
        page = http_get(&node.lab.gen, &metrics_addr, &spec.probe_path)?;
        if counter_sum(&page, "rstwatch_resets_total") >= total {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    ensure!(
        counter_sum(&page, "rstwatch_resets_total") == total,
        "/metrics: rstwatch_resets_total sums to {}, {total} were sent:\n{page}",
        counter_sum(&page, "rstwatch_resets_total")
    );
    let out = flood::stop_rstwatch(task)?;
    let exact = flood::check_exact(&out, total, &expected)?;
    ensure!(exact.flows == expected.len(), "{exact:?}");
    let flows = out.summary["flows"].as_array().context("flows")?;
    let flow = |id: &FlowId| {
        flows.iter().find(|f| f["src"] == id.0 && f["sport"] == id.1 && f["dst"] == id.2 && f["dport"] == id.3)
    };
    for id in kernel_flows.keys() {
        let f = flow(id).with_context(|| format!("no flow {id:?}"))?;
        ensure!(f["reasons"] == serde_json::json!({"NO_SOCKET": 1}), "kernel reason of {f}");
    }
    for id in pod_flows.keys() {
        let f = flow(id).with_context(|| format!("no flow {id:?}"))?;
        ensure!(f["workload"]["cgroup"] == node.pod_cgroup.as_str(), "workload of {f}");
    }
    let pod = out.summary["workloads"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["cgroup"] == node.pod_cgroup.as_str()))
        .with_context(|| format!("no workload {} in {}", node.pod_cgroup, out.summary["workloads"]))?;
    ensure!(
        pod["pod"] == serde_json::json!({"namespace": "monitoring", "name": "shop-2b7c", "uid": node.pod_uid})
            && pod["received"].as_u64() == Some(u64::from(pod_n)),
        "{pod}"
    );
    eprintln!("containerd: {exact:?}; pod {}", pod["pod"]);

    // 2. Memory, then SIGKILL.
    let id = runtime::unique("rstwatch");
    let (mut task, pid_file) = containerd.run(&flags, &image, &id, &argv)?;
    let pid = runtime::task_pid(&pid_file, &mut task)?;
    task.wait_for_stderr(&attached, START_TIMEOUT)?;
    let memory = Arc::new(check_task(&spec, pid)?);
    std::thread::sleep(Duration::from_secs(5));
    let idle = memory.usage()?;
    eprintln!("idle: {:.1} MiB ({})", mib(idle), memory.breakdown());
    let pkt = |flows: u32, rate: u32, seconds: u32| -> Result<(u64, Value)> {
        let sampler = Sampler::start(Arc::clone(&memory));
        let args: Vec<String> = [
            "pkt",
            "--iface",
            &node.lab.gen_if.name,
            "--flows",
            &flows.to_string(),
            "--rate",
            &rate.to_string(),
            "--seconds",
            &seconds.to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let report: Value = flood::bench_report(Some(&node.lab.gen), &args)?;
        // The interval that holds the last frames is read after the flood ends.
        std::thread::sleep(Duration::from_secs(11));
        eprintln!("after pkt --flows {flows}: {:.1} MiB ({})", mib(memory.usage().unwrap_or(0)), memory.breakdown());
        Ok((sampler.stop(), report))
    };
    // 60 000 distinct flows in every 10 s interval: the default table (65 536) nearly full.
    let (full, full_report) = pkt(60_000, 100_000, 12)?;
    // Every frame a new flow at 100 000 per second: 1.2 M flows, the table overflows within
    // each interval's first second (a scan).
    let (scan, scan_report) = pkt(1_200_000, 100_000, 12)?;
    ensure!(task.try_wait()?.is_none(), "rstwatch exited under the flood: {}", task.stderr());
    let peak = memory.peak()?;
    let hits = memory.limit_hits()?;
    eprintln!(
        "container memory, {}: idle {:.1} MiB; 100k RST/s over 60k flows per interval {:.1} MiB; \
         100k new flows/s (overflowing scan) {:.1} MiB; peak {:.1} MiB of the {:.0} MiB limit (request {:.0} MiB); \
         limit hit {hits} times; pkt sent {} and {}",
        memory.describe(),
        mib(idle),
        mib(full),
        mib(scan),
        mib(peak),
        mib(spec.memory_limit),
        mib(spec.memory_request),
        full_report["sent"],
        scan_report["sent"],
    );
    ensure!(peak < spec.memory_limit && hits == 0, "the container reached its memory limit: peak {peak}, {hits} hits");

    // SIGKILL of the task: the kernel detaches everything with the process's last fd.
    let attachments = bpftool_attachments(&node.lab.mon)?;
    ensure!(!attachments.is_empty(), "bpftool shows nothing attached while rstwatch runs");
    containerd.kill(&id)?;
    let fin = task.finish(Duration::from_secs(30))?;
    ensure!(!fin.status.success(), "the killed task exited cleanly? {}", fin.stderr);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = bpftool_attachments(&node.lab.mon)?;
        if left.is_empty() && !node.lab.mon_if.xdp_attached()? {
            break;
        }
        ensure!(Instant::now() < deadline, "still attached 10 s after SIGKILL: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while attachments.iter().any(|id| prog_loaded(*id)) {
        ensure!(Instant::now() < deadline, "programs {attachments:?} still loaded 10 s after SIGKILL");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 3. Granted too little, rstwatch's own error names the whole set in each runtime's words.
    let short = PodSpec { cap_add: vec!["NET_ADMIN".to_owned()], ..spec.clone() };
    let (task, _) =
        containerd.run(&short.ctr_flags(&node.netns_path())?, &image, &runtime::unique("rstwatch"), &argv)?;
    let fin = task.finish(START_TIMEOUT)?;
    ensure!(!fin.status.success() && fin.stderr.contains(GRANT_HINT), "without BPF and PERFMON: {}", fin.stderr);
    Ok(())
}

/// What rstwatch's missing-capability error says in a container.
const GRANT_HINT: &str = "in a container grant BPF, NET_ADMIN and PERFMON";

/// Program ids attached in `ns` (`bpftool net show`: XDP, tc, tcx).
fn bpftool_attachments(ns: &Netns) -> Result<Vec<u64>> {
    let mut cmd = ns.exec("bpftool");
    cmd.args(["-j", "net", "show"]);
    let out = rst_lab::cmd::output(&mut cmd)?;
    let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("bpftool net show: {out}"))?;
    let mut ids = Vec::new();
    for section in v.as_array().into_iter().flatten() {
        for (_, entries) in section.as_object().into_iter().flatten() {
            for entry in entries.as_array().into_iter().flatten() {
                ids.extend(entry["id"].as_u64().or(entry["prog_id"].as_u64()));
            }
        }
    }
    Ok(ids)
}

fn prog_loaded(id: u64) -> bool {
    rst_lab::cmd::succeeds(Command::new("bpftool").args(["prog", "show", "id", &id.to_string()]))
}

/// A network namespace that is a running container's, named for `ip`: removed (the name
/// only; the namespace lives as long as the container) when dropped.
struct Attached(String);

impl Attached {
    fn new(pid: &str) -> Result<(Attached, Netns)> {
        let name = format!("{}{}-dkr", rst_lab::lab::NS_PREFIX, runtime::unique("node"));
        rst_lab::cmd::output(Command::new("ip").args(["netns", "attach", &name, pid]))?;
        let attached = Attached(name);
        let ns = Netns::open(&attached.0)?;
        Ok((attached, ns))
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

/// The README's `docker run` line under Debian's docker.io. Docker 20.10 refuses it
/// (`unknown capability: "CAP_BPF"`: moby#42601); later engines take it. Where it is refused,
/// the fallback the docs give (SYS_ADMIN in place of BPF and PERFMON) runs the image, counts a
/// refused burst exactly with the kernel's reason; and with NET_ADMIN alone rstwatch's error
/// names what to grant. The host network is a container's own namespace (a sleeping node
/// container, as a pod's pause container), reached by a lab veth, never the machine's.
#[test]
fn the_readme_docker_line_and_the_docker_20_10_fallback() -> Result<()> {
    rst_lab::require!(
        Need::Root("namespaces, BPF, dockerd"),
        Need::Tool("dockerd"),
        Need::Tool(docker::DOCKER),
        Need::Tool("containerd"),
        Need::Tool("runc"),
        Need::File(&image_tarball(), IMAGE)
    );
    rst_lab::lab::sweep_stale()?;
    let dockerd = docker::Dockerd::start()?;
    let version = dockerd.server_version()?;
    let loaded = dockerd.output(&["load", "--input", &image_tarball().display().to_string()])?;
    ensure!(loaded.contains("rstwatch:latest"), "docker load: {loaded}");
    let node_name = runtime::unique("rstwatch-node");
    let sleeper = ["run", "--detach", "--network", "none", "--name", &node_name, "--entrypoint", "sleep", "rstwatch"];
    dockerd.output(&[&sleeper[..], &["infinity"]].concat())?;
    let pid = dockerd.output(&["inspect", "--format", "{{.State.Pid}}", &node_name])?;
    let (_attached, node_ns) = Attached::new(pid.trim())?;
    let mut lab = rst_lab::lab::Lab::new()?;
    let peer = lab.add_ns("peer")?;
    let (peer_if, node_if) = lab.add_veth(&peer, &node_ns)?;
    node_if.add_addr("10.28.2.1".parse()?, 24)?;
    peer_if.add_addr("10.28.2.2".parse()?, 24)?;

    let readme = docker::readme_line()?;
    ensure!(readme[..2] == ["docker", "run"], "{readme:?}");
    let on_lab = |line: &[String]| -> Result<Vec<String>> {
        let line = docker::replace(line, &["--network", "host"], &["--network", &format!("container:{node_name}")])?;
        docker::replace(&line, &["-i", "eth0"], &["-i", &node_if.name, "--format", "json"])
    };
    let run = |line: &[String]| -> Result<Proc> {
        let args: Vec<&str> = line[1..].iter().map(String::as_str).collect();
        Proc::spawn(&mut dockerd.docker(&args))
    };
    let attached = format!("attached to {}", node_if.name);
    let line = on_lab(&readme)?;
    let fallback = if version.starts_with("20.10.") {
        let fin = run(&line)?.finish(START_TIMEOUT)?;
        ensure!(
            !fin.status.success() && fin.stderr.contains(r#"invalid CapAdd: unknown capability: "CAP_BPF""#),
            "Docker {version} took the README's line: {} {}",
            fin.status,
            fin.stderr
        );
        let line = docker::replace(&line, &["--cap-add", "BPF"], &["--cap-add", "SYS_ADMIN"])?;
        docker::replace(&line, &["--cap-add", "PERFMON"], &[])?
    } else {
        line
    };
    let mut rstwatch = run(&fallback)?;
    rstwatch.wait_for_stderr(&attached, START_TIMEOUT)?;
    let n = 30;
    let mut client = peer.exec("python3");
    client.args(["-c", REFUSED_PY, "10.28.2.1", "81", "42000", &n.to_string()]);
    let fin = Proc::spawn(&mut client)?.finish(START_TIMEOUT)?;
    ensure!(fin.status.success(), "refused client: {}", fin.stderr);
    std::thread::sleep(Duration::from_millis(1500));
    let out = flood::stop_rstwatch(rstwatch)?;
    let expected = refused_flows(("10.28.2.1", 81), "10.28.2.2", 42_000, n);
    flood::check_exact(&out, u64::from(n), &expected)?;
    for flow in out.summary["flows"].as_array().context("flows")? {
        ensure!(flow["reasons"] == serde_json::json!({"NO_SOCKET": 1}), "kernel reason of {flow}");
    }

    // Too little granted: rstwatch names the set, and the fallback, in its one error line.
    let too_little = docker::replace(&fallback, &["--cap-add", "SYS_ADMIN"], &[])?;
    let too_little = docker::replace(&too_little, &["--cap-add", "BPF"], &[]).unwrap_or(too_little);
    let too_little = docker::replace(&too_little, &["--cap-add", "PERFMON"], &[]).unwrap_or(too_little);
    let fin = run(&too_little)?.finish(START_TIMEOUT)?;
    ensure!(
        !fin.status.success() && fin.stderr.contains(GRANT_HINT) && fin.stderr.contains("--cap-add SYS_ADMIN"),
        "with NET_ADMIN alone: {}",
        fin.stderr
    );
    eprintln!(
        "docker {version}: README line {}; ran with {fallback:?}",
        if fallback == on_lab(&readme)? { "taken" } else { "refused" }
    );
    Ok(())
}

//! Workloads end to end: real cgroups made under this host's cgroup2 mount (a systemd service,
//! a pod container in each kubelet layout, with and without its `/var/log/pods` entry), real
//! processes moved into them making real connections from a namespace lab; rstwatch must name
//! each reset's workload and origin, with exact counts per workload.
//!
//! rstwatch and the workload processes enter only the lab's network namespace (`nsenter
//! --net`): `ip netns exec` would mount a fresh /sys without tracefs or the cgroup2 tree.
//! Needs root, tracefs (mounted if missing) and the release binary.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use anyhow::{ensure, Context as _, Result};
use rst_lab::lab::{Finished, Netns, Proc, TwoHosts};
use rst_lab::Need;
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const CLIENT: &str = "10.78.1.2";
const SERVER: &str = "10.78.2.2";

/// Opens connections from the current process and resets them as asked: `abort` connects and
/// closes with SO_LINGER 0 (the client's socket sends the RST), `refused` connects to a closed
/// port (the server's kernel answers), each `n` times, one after the other.
const CLIENT_PY: &str = r#"
import socket, struct, sys
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for _ in range(n):
    s = socket.socket()
    s.settimeout(5)
    if mode == "abort":
        s.connect((host, port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    else:
        try:
            s.connect((host, port))
            sys.exit("connected to a port that should be closed")
        except ConnectionRefusedError:
            pass
    s.close()
"#;

/// Accepts and holds every connection, so that only the client resets them.
const SERVER_PY: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(128)
print("listening", file=sys.stderr, flush=True)
held = []
while True:
    held.append(s.accept()[0])
"#;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A cgroup tree made for one test under the cgroup2 root, removed (its processes killed
/// first) when dropped, also when the test fails.
struct Cgroups {
    root: PathBuf,
    /// `/rstwatch-<pid>-<n>.slice`: every cgroup of the test lies below it.
    top: String,
}

impl Cgroups {
    fn new() -> Result<Cgroups> {
        let top = format!("/rstwatch-{}-{}.slice", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let root = rst_lab::paths::cgroup2_root()?;
        std::fs::create_dir(root.join(&top[1..])).with_context(|| format!("creating cgroup {top}"))?;
        Ok(Cgroups { root, top })
    }

    /// Makes `path` (below the test's top cgroup) and returns its full cgroup path.
    fn make(&self, path: &str) -> Result<String> {
        let full = format!("{}/{path}", self.top);
        std::fs::create_dir_all(self.dir(&full)).with_context(|| format!("creating cgroup {full}"))?;
        Ok(full)
    }

    fn dir(&self, cgroup: &str) -> PathBuf {
        self.root.join(cgroup.trim_start_matches('/'))
    }

    /// Removes one cgroup (it must hold no process any more).
    fn remove(&self, cgroup: &str) -> Result<()> {
        std::fs::remove_dir(self.dir(cgroup)).with_context(|| format!("removing cgroup {cgroup}"))
    }

    /// Starts `argv` inside `cgroup` (and no other namespace), killed when dropped.
    fn hold(&self, cgroup: &str, argv: &[&str]) -> Result<Proc> {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"echo $$ > "$1" && shift && exec "$@""#, "sh"])
            .arg(self.dir(cgroup).join("cgroup.procs"))
            .args(argv);
        Proc::spawn(&mut cmd)
    }

    /// Runs `argv` inside `cgroup` and the network namespace `ns`, to the end.
    fn run(&self, cgroup: &str, ns: &Netns, argv: &[&str]) -> Result<Finished> {
        let procs = self.dir(cgroup).join("cgroup.procs");
        // The shell moves itself into the cgroup, then becomes the command: nothing of it runs
        // outside the cgroup.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", r#"echo $$ > "$1" && shift && exec "$@""#, "sh"])
            .arg(&procs)
            .arg("nsenter")
            .arg(format!("--net=/run/netns/{}", ns.name()))
            .args(argv);
        let fin = Proc::spawn(&mut cmd)?.finish(EXIT_TIMEOUT)?;
        ensure!(fin.status.success(), "{argv:?} in {cgroup}: {} {}", fin.status, fin.stderr);
        Ok(fin)
    }

    fn kill_and_remove(dir: &Path) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                Self::kill_and_remove(&entry.path());
            }
        }
        // cgroup.kill (Linux 5.14) kills everything inside, or each pid by hand before it.
        if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
            for pid in std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
                if let Ok(pid) = pid.trim().parse::<i32>() {
                    // SAFETY: kill has no memory preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        for _ in 0..100 {
            if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("workloads test: could not remove cgroup {}", dir.display());
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        Cgroups::kill_and_remove(&self.dir(&self.top.clone()));
    }
}

/// A temporary `/var/log/pods` stand-in.
struct PodLogs(PathBuf);

impl PodLogs {
    fn new(entries: &[String]) -> Result<PodLogs> {
        let dir = std::env::temp_dir().join(format!(
            "rstwatch-pods-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        for entry in entries {
            std::fs::create_dir_all(dir.join(entry))?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(PodLogs(dir))
    }
}

impl Drop for PodLogs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn hosts() -> Result<TwoHosts> {
    // SAFETY: geteuid has no preconditions.
    ensure!(unsafe { libc::geteuid() } == 0, "these tests need root (namespaces, cgroups, BPF, tracefs)");
    rst_lab::diag_lab::ensure_tracefs()?;
    rst_lab::lab::sweep_stale()?;
    TwoHosts::new(&[CLIENT.parse()?], &[SERVER.parse()?])
}

/// rstwatch in the client's network namespace only, watching its end of the veth.
fn watch(hosts: &TwoHosts, prefix: &[&str], args: &[&str]) -> Result<Proc> {
    let bin = rst_lab::paths::rstwatch_for_tests();
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", hosts.client.name()))
        .args(prefix)
        .arg(&bin)
        .args(["-i", &hosts.client_if.name, "--format", "json", "--interval", "500ms", "--duration", "1h"])
        .args(args);
    let mut proc = Proc::spawn(&mut cmd)?;
    proc.wait_for_stderr(&format!("attached to {}", hosts.client_if.name), START_TIMEOUT)?;
    Ok(proc)
}

fn stop(proc: Proc) -> Result<Value> {
    proc.signal(libc::SIGINT)?;
    let fin = proc.finish(EXIT_TIMEOUT)?;
    ensure!(fin.status.success(), "rstwatch failed ({}): {}", fin.status, fin.stderr);
    rst_lab::lab::summary_line(&fin.stdout).with_context(|| format!("stderr: {}", fin.stderr))
}

fn server(hosts: &TwoHosts, port: u16) -> Result<Proc> {
    let mut cmd = hosts.server.exec("python3");
    cmd.args(["-c", SERVER_PY, &port.to_string()]);
    let mut proc = Proc::spawn(&mut cmd)?;
    proc.wait_for_stderr("listening", START_TIMEOUT)?;
    Ok(proc)
}

fn client(cgroups: &Cgroups, cgroup: &str, ns: &Netns, mode: &str, host: &str, port: u16, n: u32) -> Result<()> {
    cgroups.run(cgroup, ns, &["python3", "-c", CLIENT_PY, mode, host, &port.to_string(), &n.to_string()])?;
    Ok(())
}

/// Per direction and origin, the resets of flows with the given workload cgroup (`None`: no
/// workload).
/// A flow's direction, origin and workload cgroup.
type Attribution = (String, Option<String>, Option<String>);

fn by_workload(summary: &Value) -> Result<BTreeMap<Attribution, u64>> {
    let mut counts = BTreeMap::new();
    for flow in summary["flows"].as_array().context("no flows")? {
        let key = (
            flow["direction"].as_str().context("direction")?.to_owned(),
            flow["origin"].as_str().map(str::to_owned),
            flow["workload"]["cgroup"].as_str().map(str::to_owned),
        );
        *counts.entry(key).or_default() += flow["resets"].as_u64().context("resets")?;
    }
    Ok(counts)
}

fn workload<'a>(summary: &'a Value, cgroup: &str) -> Result<&'a Value> {
    summary["workloads"]
        .as_array()
        .context("no workloads")?
        .iter()
        .find(|w| w["cgroup"] == cgroup)
        .with_context(|| format!("no workload {cgroup} in {}", summary["workloads"]))
}

#[test]
fn each_reset_names_its_workload_and_origin_with_exact_counts() -> Result<()> {
    rst_lab::require!(Need::Root("namespaces, cgroups, BPF, tracefs"), Need::Tool("ip"), Need::Tool("nsenter"));
    let hosts = hosts()?;
    let cgroups = Cgroups::new()?;
    let uid = format!("{:08x}-77aa-4bbb-8ccc-{:012x}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let service = cgroups.make("shop-api.service")?;
    let systemd_pod = cgroups.make(&format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-c0ffee01.scope",
        uid.replace('-', "_")
    ))?;
    let cgroupfs_uid = format!("{uid}-fs");
    let cgroupfs_pod = cgroups.make(&format!("kubepods/besteffort/pod{cgroupfs_uid}/beef02"))?;
    // Only the systemd-layout pod has its log directory: the other is named by uid alone.
    let logs = PodLogs::new(&[format!("shop_cart-7d9f_{uid}")])?;
    let _server = server(&hosts, 8080)?;
    let pod_logs = logs.0.to_string_lossy().into_owned();
    // A process that lives in the service's cgroup through the run, as a daemon would.
    let _daemon = cgroups.hold(&service, &["sleep", "600"])?;
    let rw = watch(&hosts, &[], &["--pod-logs", &pod_logs])?;

    client(&cgroups, &service, &hosts.client, "abort", SERVER, 8080, 3)?;
    client(&cgroups, &systemd_pod, &hosts.client, "refused", SERVER, 81, 2)?;
    client(&cgroups, &cgroupfs_pod, &hosts.client, "abort", SERVER, 8080, 1)?;
    // The watched host's own closed port, answered by its kernel for nobody.
    let mut refused = hosts.server.exec("python3");
    refused.args(["-c", CLIENT_PY, "refused", CLIENT, "82", "4"]);
    let fin = Proc::spawn(&mut refused)?.finish(EXIT_TIMEOUT)?;
    ensure!(fin.status.success(), "closed-port client: {}", fin.stderr);
    // Gone mid-run, after an interval read its resets: it keeps its name.
    std::thread::sleep(Duration::from_millis(1200));
    cgroups.remove(&cgroupfs_pod)?;
    std::thread::sleep(Duration::from_millis(600));
    let summary = stop(rw)?;

    let counts = by_workload(&summary)?;
    let s = |v: &str| Some(v.to_owned());
    let expected = BTreeMap::from([
        (("tx".to_owned(), s("application"), Some(service.clone())), 3),
        (("rx".to_owned(), None, Some(systemd_pod.clone())), 2),
        (("tx".to_owned(), s("application"), Some(cgroupfs_pod.clone())), 1),
        (("tx".to_owned(), s("kernel"), None), 4),
    ]);
    assert_eq!(counts, expected, "flows: {}", summary["flows"]);

    let unit = workload(&summary, &service)?;
    assert_eq!(
        (unit["unit"].as_str(), unit["sent"].as_u64(), unit["received"].as_u64()),
        (Some("shop-api.service"), Some(3), Some(0))
    );
    assert!(unit["pod"].is_null(), "{unit}");
    let pod = workload(&summary, &systemd_pod)?;
    assert_eq!((pod["sent"].as_u64(), pod["received"].as_u64()), (Some(0), Some(2)));
    assert_eq!(pod["pod"], serde_json::json!({"namespace": "shop", "name": "cart-7d9f", "uid": uid}));
    assert_eq!(pod["container"], "c0ffee01");
    let gone = workload(&summary, &cgroupfs_pod)?;
    assert_eq!((gone["sent"].as_u64(), gone["received"].as_u64()), (Some(1), Some(0)));
    assert_eq!(gone["pod"], serde_json::json!({"namespace": null, "name": null, "uid": cgroupfs_uid}));
    assert_eq!(gone["container"], "beef02");
    assert_eq!(summary["workloads"].as_array().map(Vec::len), Some(3), "{}", summary["workloads"]);

    // The processes are the ones that were in the cgroup when it was named: the daemon (the
    // client that sent the resets may have exited by then).
    let flow = summary["flows"]
        .as_array()
        .and_then(|flows| flows.iter().find(|f| f["workload"]["cgroup"] == service.as_str()))
        .context("a flow of the service")?;
    let comms: Vec<&str> = flow["workload"]["processes"]
        .as_array()
        .context("processes")?
        .iter()
        .filter_map(|p| p["comm"].as_str())
        .collect();
    assert!(comms.contains(&"sleep"), "{}", flow["workload"]);
    Ok(())
}

/// Attribution with the minimal capability set: uid 0 (root owns tracefs) holding only CAP_BPF,
/// CAP_NET_ADMIN and CAP_PERFMON, as in a container; as uid 65534 tracefs is closed, and
/// rstwatch runs on and names what it would need.
#[test]
fn the_minimal_capability_set_names_workloads() -> Result<()> {
    rst_lab::require!(Need::Root("namespaces, cgroups, BPF, tracefs"), Need::Tool("ip"), Need::Tool("nsenter"));
    let hosts = hosts()?;
    let cgroups = Cgroups::new()?;
    let service = cgroups.make("caps.service")?;
    let _server = server(&hosts, 8080)?;
    let caps = "-all,+bpf,+net_admin,+perfmon";
    let setpriv = |uid: &str| {
        vec![
            "setpriv".to_owned(),
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".to_owned(),
            format!("--inh-caps={caps}"),
            format!("--ambient-caps={caps}"),
            format!("--bounding-set={caps}"),
            "--".to_owned(),
        ]
    };
    let root = setpriv("0");
    let root: Vec<&str> = root.iter().map(String::as_str).collect();
    let rw = watch(&hosts, &root, &[])?;
    client(&cgroups, &service, &hosts.client, "abort", SERVER, 8080, 2)?;
    std::thread::sleep(Duration::from_millis(700));
    let summary = stop(rw)?;
    let named = workload(&summary, &service)?;
    assert_eq!(named["sent"].as_u64(), Some(2), "{}", summary["workloads"]);

    let nobody = setpriv("65534");
    let nobody: Vec<&str> = nobody.iter().map(String::as_str).collect();
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", hosts.client.name()))
        .args(&nobody)
        .arg(rst_lab::paths::rstwatch_for_tests())
        .args(["-i", &hosts.client_if.name, "--format", "json", "--duration", "1s"]);
    let fin = Proc::spawn(&mut cmd)?.finish(EXIT_TIMEOUT)?;
    assert_eq!(fin.status.code(), Some(0), "stderr: {}", fin.stderr);
    assert!(
        fin.stderr.contains("workloads behind resets are unavailable") && fin.stderr.contains("uid 0"),
        "{}",
        fin.stderr
    );
    Ok(())
}

/// `-i` with a pattern: a veth created after the start that matches is attached and its resets
/// reported under its name, with the namespace its peer is in named: the lab's name for it, the
/// process running there (in a pod container's cgroup) and that container. The veth watched
/// from the start is named too (its peer is the server's namespace, where nothing runs).
#[test]
fn a_pattern_picks_up_an_interface_created_after_the_start() -> Result<()> {
    rst_lab::require!(Need::Root("namespaces, cgroups, BPF, tracefs"), Need::Tool("ip"), Need::Tool("nsenter"));
    let mut hosts = hosts()?;
    let cgroups = Cgroups::new()?;
    let first = hosts.client_if.name.clone();
    // The lab names its pairs <tag><n>a / <tag><n>b: the next pair's client end matches this.
    let pattern = format!("{}1*", first.strip_suffix("0a").context("lab interface names end in 0a")?);
    let mut rw = watch(&hosts, &[], &["-i", &pattern])?;
    ensure!(!rw.stderr().contains("matches -i"), "nothing matched before the veth existed: {}", rw.stderr());
    // The container's namespace, with its process running before its veth appears.
    let container_ns = hosts.lab.add_ns("ctr")?;
    let container = format!("5eed{}", std::process::id());
    let scope = cgroups.make(&format!(
        "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod77_{}.slice/cri-containerd-{container}.scope",
        std::process::id()
    ))?;
    let sleeper = cgroups.hold(&scope, &["ip", "netns", "exec", container_ns.name(), "sleep", "30"])?;
    let pid = sleeper.id();
    wait_for_comm(pid, "sleep")?;
    let client = hosts.client.clone();
    let (late_client, late_server) = hosts.lab.add_veth(&client, &container_ns)?;
    late_client.add_addr("10.78.3.1".parse()?, 24)?;
    late_server.add_addr("10.78.3.2".parse()?, 24)?;
    let said = format!(
        "interface {} matches -i '{pattern}' (peer in netns {}, pid {pid} sleep, container {container})",
        late_client.name,
        container_ns.name()
    );
    rw.wait_for_stderr(&said, START_TIMEOUT)?;
    let mut refused = Command::new("nsenter");
    refused.arg(format!("--net=/run/netns/{}", client.name())).args([
        "python3",
        "-c",
        CLIENT_PY,
        "refused",
        "10.78.3.2",
        "81",
        "3",
    ]);
    let fin = Proc::spawn(&mut refused)?.finish(EXIT_TIMEOUT)?;
    ensure!(fin.status.success(), "refused client: {}", fin.stderr);
    std::thread::sleep(Duration::from_millis(700));
    let summary = stop(rw)?;
    let on_late: u64 = summary["flows"]
        .as_array()
        .context("flows")?
        .iter()
        .filter(|f| f["iface"] == late_client.name.as_str() && f["direction"] == "rx")
        .filter_map(|f| f["resets"].as_u64())
        .sum();
    assert_eq!(on_late, 3, "flows: {}", summary["flows"]);
    let interfaces = summary["interfaces"].as_array().context("interfaces")?;
    let record = |name: &str| interfaces.iter().find(|i| i["iface"] == name).cloned();
    let late = record(&late_client.name).with_context(|| format!("{} not in {interfaces:?}", late_client.name))?;
    let peer = &late["peer_netns"];
    assert_eq!(
        (&peer["name"], &peer["pid"], &peer["comm"], &peer["container"]),
        (&Value::from(container_ns.name()), &Value::from(pid), &Value::from("sleep"), &Value::from(container.as_str())),
        "{late}"
    );
    assert!(peer["nsid"].is_i64(), "{late}");
    let watched = record(&first).with_context(|| format!("{first} not in {interfaces:?}"))?;
    let server_peer = &watched["peer_netns"];
    assert_eq!(
        (&server_peer["name"], &server_peer["pid"]),
        (&Value::from(hosts.server.name()), &Value::Null),
        "{watched}"
    );
    assert_ne!(server_peer["nsid"], peer["nsid"], "{interfaces:?}");
    drop(sleeper);
    Ok(())
}

/// Waits until process `pid` runs `comm` (`ip netns exec` has entered the namespace and
/// exec'd it).
fn wait_for_comm(pid: u32, comm: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + START_TIMEOUT;
    loop {
        let now = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if now.trim_end() == comm {
            return Ok(());
        }
        ensure!(std::time::Instant::now() < deadline, "pid {pid} is {now:?}, not {comm}, after {START_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

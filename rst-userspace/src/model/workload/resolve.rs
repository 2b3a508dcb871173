//! The thin filesystem layer: cgroup ids → [`Workload`]s by walking the cgroup2 tree (a
//! cgroup's id is its directory's inode number), its `cgroup.procs` and `/proc/<pid>/comm`,
//! and the kubelet's `/var/log/pods`. Resolutions are cached while they are used: a cgroup
//! that vanished keeps the name it had as long as a report still holds its resets, and what
//! nothing used for [`UNUSED_WINDOW`] is forgotten, so pod churn does not grow a long run.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{names, recent::Recent, Error};
use crate::model::aggregate::model::{Process, Workload};

/// Processes listed per workload at most.
const MAX_PROCESSES: usize = 16;
/// Cgroup directories walked at most per refresh, so a host with a huge tree stays bounded.
/// Also the most paths kept: a walk that leaves more keeps only what it saw.
const MAX_CGROUPS: usize = 100_000;
/// How long a name, a path or a miss nothing used is kept. Events arrive within an interval or
/// two of their reset and reports read names of resets they hold (the run's flows keep theirs
/// in use), so an hour only has to outlast the longest `--interval` with room to spare, while a
/// node with pod churn forgets its dead pods within the hour.
const UNUSED_WINDOW: Duration = Duration::from_secs(3600);
/// Forgetting walks the caches, so at most once a minute: far below the window's resolution.
const TRIM_EVERY: Duration = Duration::from_secs(60);
/// Names kept at most, the least recently used going first: a node runs a few hundred pods
/// (the kubelet's default limit is 110), so this holds hours of churn, and at about a
/// kilobyte a name (16 processes at most) a few MiB at worst.
const MAX_NAMES: usize = 4096;
/// Ids not found kept at most: a forgotten one costs at most one more walk in a later round.
const MAX_MISSING: usize = 16_384;

/// The kubelet's pod log directories, where the DaemonSet mounts them.
pub const DEFAULT_POD_LOGS: &str = "/var/log/pods";

pub struct Resolver {
    root: PathBuf,
    pod_logs: PathBuf,
    proc: PathBuf,
    /// Every cgroup seen in a walk: id → path under the root and when a walk last saw it.
    paths: HashMap<u64, (String, Duration)>,
    resolved: Recent<Workload>,
    /// Ids a walk did not find: gone before they could be named (ids are not reused).
    missing: Recent<()>,
    /// Whether the tree was walked since [`Resolver::new_round`]: one walk per round at most.
    walked: bool,
    /// The run's clock at the last [`Resolver::new_round`] / [`Resolver::trim`].
    now: Duration,
    /// When the caches were last trimmed.
    trimmed: Duration,
}

impl Resolver {
    /// The resolver for this host: the cgroup2 mount from `/proc/self/mountinfo`.
    ///
    /// # Errors
    /// [`Error::NoCgroup2`] when no cgroup2 hierarchy is mounted.
    pub fn for_host(pod_logs: &Path) -> Result<Resolver, Error> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(Error::Mountinfo)?;
        let root = names::cgroup2_mount(&mountinfo).ok_or(Error::NoCgroup2)?;
        Ok(Resolver::new(PathBuf::from(root), pod_logs.to_owned(), PathBuf::from("/proc")))
    }

    pub fn new(root: PathBuf, pod_logs: PathBuf, proc: PathBuf) -> Resolver {
        Resolver {
            root,
            pod_logs,
            proc,
            paths: HashMap::new(),
            resolved: Recent::new(MAX_NAMES),
            missing: Recent::new(MAX_MISSING),
            walked: false,
            now: Duration::ZERO,
            trimmed: Duration::ZERO,
        }
    }

    /// Allows the next miss to walk the tree again (the aggregator calls it once per interval);
    /// `now` is the run's clock, what uses are stamped with.
    pub fn new_round(&mut self, now: Duration) {
        self.walked = false;
        self.now = self.now.max(now);
    }

    /// Forgets names, paths and misses not used for [`UNUSED_WINDOW`], at most once per
    /// [`TRIM_EVERY`] (otherwise `in_use` is not even iterated). `in_use`: the cgroups the
    /// reports still hold resets of (the run's flows), counted as used now so that a vanished
    /// cgroup keeps its name while it is reported. Allocates nothing.
    pub fn trim(&mut self, now: Duration, in_use: impl Iterator<Item = u64>) {
        self.now = self.now.max(now);
        if self.now < self.trimmed + TRIM_EVERY {
            return;
        }
        self.trimmed = self.now;
        for id in in_use {
            self.resolved.touch(id, self.now);
        }
        self.resolved.forget_unused(self.now, UNUSED_WINDOW);
        self.missing.forget_unused(self.now, UNUSED_WINDOW);
        let now = self.now;
        self.paths.retain(|_, (_, seen)| now.saturating_sub(*seen) <= UNUSED_WINDOW);
    }

    /// The workload of cgroup `id`, resolved now if it was not before; `None` when no cgroup
    /// with that id exists (it came and went unseen), or it was not found and the tree was
    /// already walked this round.
    pub fn resolve(&mut self, id: u64) -> Option<&Workload> {
        if !self.resolved.touch(id, self.now) {
            if self.missing.touch(id, self.now) {
                return None;
            }
            if !self.paths.contains_key(&id) {
                if self.walked {
                    return None;
                }
                self.walk();
                self.walked = true;
            }
            let Some((path, _)) = self.paths.get(&id).cloned() else {
                self.missing.insert(id, (), self.now);
                return None;
            };
            let workload = self.workload(&path);
            self.resolved.insert(id, workload, self.now);
        }
        self.resolved.get(id)
    }

    /// A name already resolved (reading it is not a use: see [`Resolver::trim`]).
    pub fn known(&self, id: u64) -> Option<&Workload> {
        self.resolved.get(id)
    }

    fn walk(&mut self) {
        let now = self.now;
        let mut pending = vec![(self.root.clone(), String::from("/"))];
        let mut seen = 0;
        while let Some((dir, path)) = pending.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            self.paths.insert(meta.ino(), (path.clone(), now));
            seen += 1;
            if seen >= MAX_CGROUPS {
                tracing::debug!("cgroup walk stopped after {MAX_CGROUPS} cgroups");
                break;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    let child = if path == "/" { format!("/{name}") } else { format!("{path}/{name}") };
                    pending.push((entry.path(), child));
                }
            }
        }
        if self.paths.len() > MAX_CGROUPS {
            // What this walk did not see is gone from the tree, the least recently seen by
            // definition; what it saw is at most MAX_CGROUPS.
            self.paths.retain(|_, (_, seen)| *seen == now);
        }
    }

    fn workload(&self, path: &str) -> Workload {
        let names::PathNames { unit, pod_uid, container } = names::path_names(path);
        let pod = pod_uid.map(|uid| {
            let dirs = std::fs::read_dir(&self.pod_logs)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned());
            names::pod(&uid, dirs)
        });
        Workload { cgroup: path.to_owned(), unit, pod, container, processes: self.processes(path) }
    }

    fn processes(&self, path: &str) -> Vec<Process> {
        let procs = self.root.join(path.trim_start_matches('/')).join("cgroup.procs");
        let Ok(list) = std::fs::read_to_string(procs) else { return Vec::new() };
        list.lines()
            .filter_map(|line| line.trim().parse::<u32>().ok())
            .take(MAX_PROCESSES)
            .map(|pid| {
                let comm = std::fs::read_to_string(self.proc.join(pid.to_string()).join("comm")).unwrap_or_default();
                Process { pid, comm: comm.trim_end().to_owned() }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake cgroup tree, pod log root and /proc in a temporary directory.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Tree {
            let dir = std::env::temp_dir().join(format!("rstwatch-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            Tree(dir)
        }

        fn dir(&self, path: &str) -> PathBuf {
            let dir = self.0.join(path);
            std::fs::create_dir_all(&dir).expect("mkdir");
            dir
        }

        fn file(&self, path: &str, text: &str) {
            let file = self.0.join(path);
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
            std::fs::write(file, text).expect("write");
        }

        fn id(&self, path: &str) -> u64 {
            std::fs::metadata(self.0.join(path)).expect("stat").ino()
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn resolves_ids_to_paths_units_pods_and_processes_and_keeps_vanished_names() {
        let tree = Tree::new("resolve");
        let pod = "cg/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12_34.slice";
        tree.dir(&format!("{pod}/cri-containerd-c0ffee.scope"));
        tree.dir("cg/system.slice/nginx.service");
        tree.file("cg/system.slice/nginx.service/cgroup.procs", "41\n42\n");
        tree.file("proc/41/comm", "nginx\n");
        tree.dir("logs/shop_cart-7d9f_12-34");
        let mut resolver = Resolver::new(tree.0.join("cg"), tree.0.join("logs"), tree.0.join("proc"));
        let nginx = tree.id("cg/system.slice/nginx.service");
        let workload = resolver.resolve(nginx).expect("nginx").clone();
        assert_eq!(workload.cgroup, "/system.slice/nginx.service");
        assert_eq!(workload.unit.as_deref(), Some("nginx.service"));
        assert_eq!(
            workload.processes,
            [Process { pid: 41, comm: "nginx".into() }, Process { pid: 42, comm: String::new() }]
        );
        let container = tree.id(&format!("{pod}/cri-containerd-c0ffee.scope"));
        let workload = resolver.resolve(container).expect("container").clone();
        let pod_names = workload.pod.expect("a pod");
        assert_eq!((pod_names.namespace.as_deref(), pod_names.name.as_deref()), (Some("shop"), Some("cart-7d9f")));
        assert_eq!(workload.container.as_deref(), Some("c0ffee"));
        // A new cgroup is found by the next round's walk, not by this round's.
        tree.dir("cg/late.service");
        let late = tree.id("cg/late.service");
        assert!(resolver.resolve(late).is_none(), "this round walked already");
        resolver.new_round(Duration::from_secs(1));
        assert_eq!(resolver.resolve(late).map(|w| w.cgroup.as_str()), Some("/late.service"));
        // Gone from the tree, still named.
        std::fs::remove_dir_all(tree.0.join("cg/system.slice/nginx.service")).expect("rmdir");
        assert_eq!(resolver.resolve(nginx).map(|w| w.cgroup.as_str()), Some("/system.slice/nginx.service"));
        assert!(resolver.resolve(u64::MAX).is_none());
    }

    #[test]
    fn forgets_what_goes_unused_for_the_window_and_keeps_what_is_used_or_reported() {
        let tree = Tree::new("resolve-trim");
        for unit in ["idle", "busy", "reported", "unnamed"] {
            tree.dir(&format!("cg/{unit}.service"));
        }
        let id = |unit: &str| tree.id(&format!("cg/{unit}.service"));
        let (idle, busy, reported, unnamed) = (id("idle"), id("busy"), id("reported"), id("unnamed"));
        let mut resolver = Resolver::new(tree.0.join("cg"), tree.0.join("logs"), tree.0.join("proc"));
        let at = Duration::from_secs;
        resolver.new_round(at(0));
        for id in [idle, busy, reported] {
            assert!(resolver.resolve(id).is_some());
        }
        // All four leave the tree; `unnamed` was walked but never named.
        for unit in ["idle", "busy", "reported", "unnamed"] {
            std::fs::remove_dir(tree.0.join(format!("cg/{unit}.service"))).expect("rmdir");
        }
        resolver.new_round(at(0));
        assert!(resolver.resolve(u64::MAX - 1).is_none());
        assert_eq!(resolver.missing.len(), 1, "a miss, remembered");
        // Trimming is at most once a minute: this one, before any is old, keeps all.
        resolver.trim(at(30), std::iter::empty());
        for minute in 1..=60 {
            resolver.new_round(at(minute * 60));
            assert!(resolver.resolve(busy).is_some(), "a vanished cgroup keeps its name while used");
            resolver.trim(at(minute * 60), [reported].into_iter());
        }
        assert!(resolver.known(idle).is_some(), "an hour unused is still inside the window");
        resolver.new_round(at(3601));
        resolver.trim(at(3601), [reported].into_iter());
        assert!(resolver.known(idle).is_some(), "the last trim was under a minute ago");
        resolver.new_round(at(3660));
        resolver.trim(at(3660), [reported].into_iter());
        assert_eq!(resolver.known(idle), None, "unused past the window");
        assert!(resolver.known(busy).is_some() && resolver.known(reported).is_some());
        assert_eq!(resolver.resolved.len(), 2);
        assert!(resolver.paths.keys().all(|id| ![idle, busy, reported, unnamed].contains(id)), "old paths go");
        assert!(resolver.missing.is_empty(), "old misses go");
        // Its path forgotten and its directory gone, `unnamed` is now a miss, not a stale name.
        assert!(resolver.resolve(unnamed).is_none());
    }

    #[test]
    fn names_and_misses_stay_under_their_caps() {
        let tree = Tree::new("resolve-cap");
        tree.dir("cg");
        let mut resolver = Resolver::new(tree.0.join("cg"), tree.0.join("logs"), tree.0.join("proc"));
        // The root's id stands for every cgroup: each distinct id past the cap evicts the oldest.
        let root = tree.id("cg");
        resolver.new_round(Duration::ZERO);
        assert!(resolver.resolve(root).is_some());
        let path = resolver.paths[&root].clone();
        for extra in 1..=(MAX_NAMES as u64 + 10) {
            resolver.paths.insert(root + extra, path.clone());
            resolver.new_round(Duration::from_millis(extra));
            assert!(resolver.resolve(root + extra).is_some());
        }
        assert_eq!(resolver.resolved.len(), MAX_NAMES);
        assert_eq!(resolver.known(root), None, "the least recently used went first");
        assert!(resolver.known(root + MAX_NAMES as u64 + 10).is_some());
        for miss in 0..(MAX_MISSING as u64 + 10) {
            resolver.new_round(Duration::from_secs(10 + miss));
            assert!(resolver.resolve(u64::MAX - miss).is_none());
        }
        assert_eq!(resolver.missing.len(), MAX_MISSING);
    }
}

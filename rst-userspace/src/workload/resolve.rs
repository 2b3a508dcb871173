//! The thin filesystem layer: cgroup ids → [`Workload`]s by walking the cgroup2 tree (a
//! cgroup's id is its directory's inode number), its `cgroup.procs` and `/proc/<pid>/comm`,
//! and the kubelet's `/var/log/pods`. Resolutions are cached for the run: a cgroup that
//! vanished keeps the name it had.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::{names, Error};
use crate::aggregate::model::{Process, Workload};

/// Processes listed per workload at most.
const MAX_PROCESSES: usize = 16;
/// Cgroup directories walked at most per refresh, so a host with a huge tree stays bounded.
const MAX_CGROUPS: usize = 100_000;

/// The kubelet's pod log directories, where the DaemonSet mounts them.
pub const DEFAULT_POD_LOGS: &str = "/var/log/pods";

pub struct Resolver {
    root: PathBuf,
    pod_logs: PathBuf,
    proc: PathBuf,
    /// Every cgroup seen in a walk: id → path under the root.
    paths: HashMap<u64, String>,
    resolved: HashMap<u64, Workload>,
    /// Ids a walk did not find: gone before they could be named (ids are not reused).
    missing: std::collections::HashSet<u64>,
    /// Whether the tree was walked since [`Resolver::new_round`]: one walk per round at most.
    walked: bool,
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
            resolved: HashMap::new(),
            missing: std::collections::HashSet::new(),
            walked: false,
        }
    }

    /// Allows the next miss to walk the tree again (the aggregator calls it once per interval).
    pub fn new_round(&mut self) {
        self.walked = false;
    }

    /// The workload of cgroup `id`, resolved now if it was not before; `None` when no cgroup
    /// with that id exists (it came and went unseen), or it was not found and the tree was
    /// already walked this round.
    pub fn resolve(&mut self, id: u64) -> Option<&Workload> {
        if !self.resolved.contains_key(&id) {
            if self.missing.contains(&id) {
                return None;
            }
            if !self.paths.contains_key(&id) {
                if self.walked {
                    return None;
                }
                self.walk();
                self.walked = true;
            }
            let Some(path) = self.paths.get(&id).cloned() else {
                self.missing.insert(id);
                return None;
            };
            let workload = self.workload(&path);
            self.resolved.insert(id, workload);
        }
        self.resolved.get(&id)
    }

    /// A name already resolved.
    pub fn known(&self, id: u64) -> Option<&Workload> {
        self.resolved.get(&id)
    }

    fn walk(&mut self) {
        let mut pending = vec![(self.root.clone(), String::from("/"))];
        let mut seen = 0;
        while let Some((dir, path)) = pending.pop() {
            let Ok(meta) = std::fs::metadata(&dir) else { continue };
            self.paths.insert(meta.ino(), path.clone());
            seen += 1;
            if seen >= MAX_CGROUPS {
                tracing::debug!("cgroup walk stopped after {MAX_CGROUPS} cgroups");
                return;
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
        resolver.new_round();
        assert_eq!(resolver.resolve(late).map(|w| w.cgroup.as_str()), Some("/late.service"));
        // Gone from the tree, still named.
        std::fs::remove_dir_all(tree.0.join("cg/system.slice/nginx.service")).expect("rmdir");
        assert_eq!(resolver.resolve(nginx).map(|w| w.cgroup.as_str()), Some("/system.slice/nginx.service"));
        assert!(resolver.resolve(u64::MAX).is_none());
    }
}

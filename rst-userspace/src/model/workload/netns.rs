//! The network namespace at the other end of a watched link (a container's veth), named once
//! when the link is attached: the link's `IFLA_LINK_NETNSID`, matched against the ids our
//! namespace gives the `/run/netns` names and, failing those, the namespaces processes are in;
//! then a process in it, its `comm`, and the container in its cgroup path.
//!
//! The ids are the kernel's own (`RTM_GETNSID` on an open namespace file), so nothing is
//! guessed from interface names. One `/proc` scan per lookup: a lookup is made per interface
//! attached, never per interval.

use std::{
    collections::HashSet,
    fs::File,
    os::{fd::AsFd as _, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use crate::{load::netlink, model::aggregate::model::PeerNetns, model::workload::names, sys};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("asking rtnetlink which namespace the peer of ifindex {ifindex} is in")]
    Link {
        ifindex: u32,
        #[source]
        source: sys::Error,
    },
}

/// Where namespaces are named: `ip netns`'s directory and procfs.
#[derive(Debug, Clone)]
pub struct Places {
    pub run_netns: PathBuf,
    pub proc: PathBuf,
}

impl Default for Places {
    fn default() -> Self {
        Places { run_netns: PathBuf::from("/run/netns"), proc: PathBuf::from("/proc") }
    }
}

/// The namespace the peer of `ifindex` is in, or `None` when the link has its other end here
/// (or has none). Names, processes and containers that cannot be read (another user's
/// processes without CAP_SYS_PTRACE) are left out, not errors.
///
/// # Errors
/// The link cannot be asked about (gone: `ENODEV`).
pub fn peer_of(ifindex: u32, places: &Places) -> Result<Option<PeerNetns>, Error> {
    let Some(nsid) = netlink::link_netnsid(ifindex).map_err(|source| Error::Link { ifindex, source })? else {
        return Ok(None);
    };
    let own = std::fs::metadata(places.proc.join("self/ns/net")).map(|m| m.ino()).ok();
    let named = named_namespaces(&places.run_netns);
    let processes = process_namespaces(&places.proc);
    let ask = |path: &Path| File::open(path).ok().and_then(|file| netlink::nsid_of(file.as_fd()).ok().flatten());
    let found = locate(nsid, own, &named, &processes, &places.proc, ask);
    let pid = found.pid;
    let process_file =
        |file: &str| pid.and_then(|pid| std::fs::read_to_string(places.proc.join(format!("{pid}/{file}"))).ok());
    let comm = process_file("comm").map(|comm| comm.trim_end().to_owned());
    let container = process_file("cgroup").as_deref().and_then(cgroup_v2_path).and_then(container_of);
    Ok(Some(PeerNetns { nsid, name: found.name, pid, comm, container }))
}

/// A namespace with a name under `/run/netns`: the name, its file, its inode.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    name: String,
    path: PathBuf,
    inode: u64,
}

/// Every name under `run_netns` with its namespace's inode; none when the directory is absent.
fn named_namespaces(run_netns: &Path) -> Vec<Named> {
    let Ok(entries) = std::fs::read_dir(run_netns) else {
        return Vec::new();
    };
    let mut named: Vec<Named> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let path = entry.path();
            let inode = std::fs::metadata(&path).ok()?.ino();
            Some(Named { name, path, inode })
        })
        .collect();
    named.sort_by(|a, b| a.name.cmp(&b.name));
    named
}

/// `(pid, inode of its network namespace)` of every process this one may look at, by pid.
fn process_namespaces(proc: &Path) -> Vec<(u32, u64)> {
    let Ok(entries) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let mut processes: Vec<(u32, u64)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let inode = std::fs::metadata(entry.path().join("ns/net")).ok()?.ino();
            Some((pid, inode))
        })
        .collect();
    processes.sort_unstable();
    processes
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Found {
    name: Option<String>,
    pid: Option<u32>,
}

/// Which of the namespaces seen has id `nsid` (`ask` gives the id of a namespace file), and
/// the lowest pid in it. Named ones first, then one process per other namespace; our own
/// namespace is never the peer's, and each namespace is asked about once.
fn locate(
    nsid: i32,
    own: Option<u64>,
    named: &[Named],
    processes: &[(u32, u64)],
    proc: &Path,
    mut ask: impl FnMut(&Path) -> Option<i32>,
) -> Found {
    let mut asked: HashSet<u64> = own.into_iter().collect();
    let mut found: Option<(u64, Option<String>)> = None;
    for Named { name, path, inode } in named {
        if asked.insert(*inode) && ask(path) == Some(nsid) {
            found = Some((*inode, Some(name.clone())));
            break;
        }
    }
    if found.is_none() {
        for (pid, inode) in processes {
            if asked.insert(*inode) && ask(&proc.join(format!("{pid}/ns/net"))) == Some(nsid) {
                found = Some((*inode, None));
                break;
            }
        }
    }
    let Some((inode, name)) = found else {
        return Found::default();
    };
    let pid = processes.iter().find(|(_, of)| *of == inode).map(|(pid, _)| *pid);
    Found { name, pid }
}

/// The cgroup v2 path in a `/proc/<pid>/cgroup` (the `0::` line).
fn cgroup_v2_path(cgroup: &str) -> Option<&str> {
    cgroup.lines().find_map(|line| line.strip_prefix("0::"))
}

/// The container a cgroup path names: the kubelet's layouts as the workload resolver reads
/// them, else a container runtime's scope (`docker-<id>.scope`) outside Kubernetes.
fn container_of(path: &str) -> Option<String> {
    names::path_names(path).container.or_else(|| names::scope_container(path))
}

/// ` (peer in netns lab-x, pid 123 sleep, container ab12…)` for the line that says an interface
/// was attached; empty when its other end is in this namespace.
pub fn describe(peer: Option<&PeerNetns>) -> String {
    let Some(PeerNetns { nsid, name, pid, comm, container }) = peer else {
        return String::new();
    };
    let mut said = match name {
        Some(name) => format!(" (peer in netns {name}"),
        None => format!(" (peer in netns id {nsid}"),
    };
    if let Some(pid) = pid {
        said.push_str(&format!(", pid {pid}"));
        if let Some(comm) = comm {
            said.push_str(&format!(" {comm}"));
        }
    }
    if let Some(container) = container {
        said.push_str(&format!(", container {container}"));
    }
    said.push(')');
    said
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &str, inode: u64) -> Named {
        Named { name: name.into(), path: Path::new("/p/run/netns").join(name), inode }
    }

    #[test]
    fn a_named_namespace_with_the_id_is_named_with_its_lowest_pid() {
        let proc = Path::new("/p/proc");
        let processes = [(1, 10), (200, 30), (300, 20), (400, 30)];
        let mut asked = Vec::new();
        let found = locate(7, Some(10), &[named("a", 20), named("b", 30)], &processes, proc, |path| {
            asked.push(path.to_owned());
            (path == Path::new("/p/run/netns/b")).then_some(7)
        });
        assert_eq!(found, Found { name: Some("b".into()), pid: Some(200) });
        assert_eq!(asked, [PathBuf::from("/p/run/netns/a"), PathBuf::from("/p/run/netns/b")]);
    }

    #[test]
    fn without_a_name_the_processes_namespaces_are_asked_once_each_never_our_own() {
        let proc = Path::new("/p/proc");
        let processes = [(1, 10), (5, 40), (6, 40), (9, 50), (12, 50)];
        let mut asked = Vec::new();
        let found = locate(3, Some(10), &[named("other", 40)], &processes, proc, |path| {
            asked.push(path.to_owned());
            (path == Path::new("/p/proc/9/ns/net")).then_some(3)
        });
        assert_eq!(found, Found { name: None, pid: Some(9) });
        // "other" was asked by name; pid 5's namespace is the same one, so it is not asked again.
        assert_eq!(asked, [PathBuf::from("/p/run/netns/other"), PathBuf::from("/p/proc/9/ns/net")]);
    }

    #[test]
    fn a_named_namespace_without_processes_and_an_unknown_id() {
        let proc = Path::new("/p/proc");
        let found = locate(2, None, &[named("empty", 60)], &[(1, 10)], proc, |path| {
            (path == Path::new("/p/run/netns/empty")).then_some(2)
        });
        assert_eq!(found, Found { name: Some("empty".into()), pid: None });
        assert_eq!(locate(4, None, &[named("empty", 60)], &[(1, 10)], proc, |_| Some(2)), Found::default());
    }

    #[test]
    fn reads_names_and_process_namespaces_from_a_tree() {
        let root = std::env::temp_dir().join(format!("rstwatch-netns-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for dir in ["run/netns", "proc/7/ns", "proc/31/ns", "proc/self/ns", "proc/sys"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        // Hard links stand in for namespace files: the same inode behind several paths.
        std::fs::write(root.join("run/netns/lab"), "").unwrap();
        std::fs::hard_link(root.join("run/netns/lab"), root.join("proc/31/ns/net")).unwrap();
        std::fs::write(root.join("proc/7/ns/net"), "").unwrap();
        let inode = |path: &str| std::fs::metadata(root.join(path)).unwrap().ino();
        let lab = Named { name: "lab".into(), path: root.join("run/netns/lab"), inode: inode("run/netns/lab") };
        assert_eq!(named_namespaces(&root.join("run/netns")), [lab]);
        assert_eq!(process_namespaces(&root.join("proc")), [(7, inode("proc/7/ns/net")), (31, inode("run/netns/lab"))]);
        assert!(named_namespaces(&root.join("absent")).is_empty());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_container_comes_from_the_v2_line_of_the_cgroup_file() {
        let cgroup = "12:cpu:/x\n0::/kubepods.slice/kubepods-pod11_22.slice/cri-containerd-abc.scope\n";
        assert_eq!(cgroup_v2_path(cgroup).and_then(container_of).as_deref(), Some("abc"));
        assert_eq!(container_of("/system.slice/docker-ff01.scope").as_deref(), Some("ff01"));
        assert_eq!(container_of("/user.slice/user-0.slice/session-1.scope"), None);
        assert_eq!(cgroup_v2_path("1:name=systemd:/\n"), None);
    }

    #[test]
    fn describes_what_was_found() {
        let peer = PeerNetns {
            nsid: 3,
            name: Some("lab-x".into()),
            pid: Some(123),
            comm: Some("sleep".into()),
            container: None,
        };
        assert_eq!(describe(Some(&peer)), " (peer in netns lab-x, pid 123 sleep)");
        let bare = PeerNetns { nsid: 3, name: None, pid: None, comm: None, container: None };
        assert_eq!(describe(Some(&bare)), " (peer in netns id 3)");
        let contained = PeerNetns { container: Some("abc".into()), ..peer };
        assert_eq!(describe(Some(&contained)), " (peer in netns lab-x, pid 123 sleep, container abc)");
        assert_eq!(describe(None), "");
    }
}

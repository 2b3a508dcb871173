//! Cgroup paths → what they name, pure (paths in, names out): the systemd unit, the kubelet's
//! pod and container in both of its cgroup layouts, the pod's name from its log directory, the
//! cgroup2 mount from `/proc/self/mountinfo`.

use crate::model::aggregate::model::Pod;

/// What a cgroup path (under the cgroup2 root, starting with `/`) says by itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathNames {
    /// The last `*.service` / `*.scope` component.
    pub unit: Option<String>,
    /// The pod's uid (dashes, as the kubelet writes it in `/var/log/pods`).
    pub pod_uid: Option<String>,
    pub container: Option<String>,
}

/// Container runtimes' scope prefixes (systemd driver): `cri-containerd-<id>.scope` and the like.
const SCOPE_PREFIXES: [&str; 4] = ["cri-containerd-", "docker-", "crio-", "containerd-"];

pub fn path_names(path: &str) -> PathNames {
    let parts: Vec<&str> = path.split('/').filter(|part| !part.is_empty()).collect();
    let unit = parts.iter().rev().find(|part| part.ends_with(".service") || part.ends_with(".scope"));
    let mut names = PathNames { unit: unit.map(|unit| (*unit).to_owned()), ..PathNames::default() };
    let Some(kubepods) = parts.iter().position(|part| *part == "kubepods" || part.starts_with("kubepods")) else {
        return names;
    };
    for (at, part) in parts.iter().enumerate().skip(kubepods) {
        // systemd driver: kubepods-<qos>-pod<uid with _>.slice, or kubepods-pod<uid>.slice
        // for a Guaranteed pod; cgroupfs driver: pod<uid> below kubepods[/<qos>].
        let uid = part
            .strip_suffix(".slice")
            .and_then(|slice| slice.rsplit_once("-pod").map(|(_, uid)| uid.replace('_', "-")))
            .or_else(|| part.strip_prefix("pod").map(str::to_owned));
        let Some(uid) = uid.filter(|uid| !uid.is_empty()) else {
            continue;
        };
        names.pod_uid = Some(uid);
        names.container = parts.get(at + 1).map(|next| container_id(next));
        break;
    }
    names
}

/// `cri-containerd-<id>.scope` → `<id>`; a cgroupfs container directory is its id.
fn container_id(part: &str) -> String {
    let Some(scope) = part.strip_suffix(".scope") else {
        return part.to_owned();
    };
    SCOPE_PREFIXES.iter().find_map(|prefix| scope.strip_prefix(prefix)).unwrap_or(scope).to_owned()
}

/// The id of a container runtime's scope (`docker-<id>.scope`, `cri-containerd-<id>.scope`…) at
/// the end of a cgroup path: a container outside Kubernetes, which [`path_names`] leaves out.
pub fn scope_container(path: &str) -> Option<String> {
    let scope = path.rsplit('/').next()?.strip_suffix(".scope")?;
    SCOPE_PREFIXES.iter().find_map(|prefix| scope.strip_prefix(prefix)).filter(|id| !id.is_empty()).map(str::to_owned)
}

/// The pod of `uid` from the kubelet's log directories (`<namespace>_<name>_<uid>`: neither a
/// namespace nor a pod name may hold `_`); without one, the uid alone.
pub fn pod(uid: &str, log_dirs: impl IntoIterator<Item = String>) -> Pod {
    for dir in log_dirs {
        let mut parts = dir.splitn(3, '_');
        if let (Some(namespace), Some(name), Some(dir_uid)) = (parts.next(), parts.next(), parts.next()) {
            if dir_uid == uid {
                return Pod { namespace: Some(namespace.to_owned()), name: Some(name.to_owned()), uid: uid.to_owned() };
            }
        }
    }
    Pod { namespace: None, name: None, uid: uid.to_owned() }
}

/// The mount point of the cgroup2 hierarchy in a `/proc/self/mountinfo` (hybrid hierarchies
/// mount it at `/sys/fs/cgroup/unified`).
pub fn cgroup2_mount(mountinfo: &str) -> Option<String> {
    mountinfo.lines().find_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        (fs.split_whitespace().next()? == "cgroup2").then(|| mount.split_whitespace().nth(4).map(unescape))?
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    field.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_systemd_service_is_its_unit() {
        let names = path_names("/system.slice/nginx.service");
        assert_eq!(names, PathNames { unit: Some("nginx.service".into()), pod_uid: None, container: None });
        assert_eq!(path_names("/user.slice/user-0.slice/session-3.scope/sub").unit.as_deref(), Some("session-3.scope"));
        assert_eq!(path_names("/").unit, None);
    }

    #[test]
    fn kubelet_systemd_layout() {
        let path = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f1c_2a3b_44.slice/cri-containerd-abc123.scope";
        let names = path_names(path);
        assert_eq!(names.pod_uid.as_deref(), Some("6f1c-2a3b-44"));
        assert_eq!(names.container.as_deref(), Some("abc123"));
        assert_eq!(names.unit.as_deref(), Some("cri-containerd-abc123.scope"));
        let guaranteed = path_names("/kubepods.slice/kubepods-pod11_22.slice/docker-ff.scope");
        assert_eq!((guaranteed.pod_uid.as_deref(), guaranteed.container.as_deref()), (Some("11-22"), Some("ff")));
        let crio = path_names("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod9.slice/crio-77.scope");
        assert_eq!(crio.container.as_deref(), Some("77"));
        // The pod's own slice: a pod, no container.
        let pod_only = path_names("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod9.slice");
        assert_eq!((pod_only.pod_uid.as_deref(), pod_only.container), (Some("9"), None));
    }

    #[test]
    fn kubelet_cgroupfs_layout() {
        let names = path_names("/kubepods/besteffort/pod6f1c-2a3b/0123abcd");
        assert_eq!(names.pod_uid.as_deref(), Some("6f1c-2a3b"));
        assert_eq!(names.container.as_deref(), Some("0123abcd"));
        assert_eq!(names.unit, None);
        let guaranteed = path_names("/kubepods/pod55/99");
        assert_eq!((guaranteed.pod_uid.as_deref(), guaranteed.container.as_deref()), (Some("55"), Some("99")));
        // Outside kubepods a `pod…` directory is nobody's pod.
        assert_eq!(path_names("/system.slice/podman.service").pod_uid, None);
    }

    #[test]
    fn a_runtime_scope_outside_kubernetes_names_its_container() {
        assert_eq!(scope_container("/system.slice/docker-ff01.scope").as_deref(), Some("ff01"));
        assert_eq!(scope_container("/machine.slice/crio-77.scope").as_deref(), Some("77"));
        assert_eq!(scope_container("/user.slice/session-3.scope"), None);
        assert_eq!(scope_container("/system.slice/docker-.scope"), None);
        assert_eq!(scope_container("/system.slice/docker.service"), None);
    }

    #[test]
    fn pod_names_come_from_the_log_directory() {
        let dirs = || vec!["kube-system_coredns-1_u1".to_owned(), "shop_cart-7d9f_u2".to_owned()];
        let found = pod("u2", dirs());
        assert_eq!(
            (found.namespace.as_deref(), found.name.as_deref(), found.uid.as_str()),
            (Some("shop"), Some("cart-7d9f"), "u2")
        );
        let unknown = pod("u3", dirs());
        assert_eq!((unknown.namespace, unknown.name, unknown.uid.as_str()), (None, None, "u3"));
    }

    #[test]
    fn finds_the_cgroup2_mount_in_hybrid_and_unified_hierarchies() {
        let hybrid = "25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n\
                      42 25 0:39 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(cgroup2_mount(hybrid).as_deref(), Some("/sys/fs/cgroup/unified"));
        let unified = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_mount(unified).as_deref(), Some("/sys/fs/cgroup"));
        assert_eq!(cgroup2_mount("25 30 0:23 / /mnt\\040x rw - cgroup2 none rw\n").as_deref(), Some("/mnt x"));
        assert_eq!(cgroup2_mount("25 30 0:23 / /sys rw - sysfs sysfs rw\n"), None);
    }
}

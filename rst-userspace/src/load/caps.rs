//! Capabilities: what loading and attaching need, checked up front so that an operator reads
//! which one is missing rather than a bare EPERM.

use std::path::Path;

use caps::{CapSet, Capability};

use super::Error;

pub(super) fn has_capability(capability: Capability) -> bool {
    // If capget itself fails, let the kernel be the judge rather than refuse up front.
    caps::has_cap(None, CapSet::Effective, capability).unwrap_or(true)
}

/// Checks up front what the kernel would otherwise refuse with a bare EPERM.
pub fn check_capabilities() -> Result<(), Error> {
    let admin = has_capability(Capability::CAP_SYS_ADMIN);
    if !admin && !has_capability(Capability::CAP_BPF) {
        return Err(Error::MissingCapability {
            capability: "CAP_BPF",
            short: "BPF",
            why: "needed to load eBPF programs and maps",
        });
    }
    if !has_capability(Capability::CAP_NET_ADMIN) {
        return Err(Error::MissingCapability {
            capability: "CAP_NET_ADMIN",
            short: "NET_ADMIN",
            why: "needed to attach XDP to an interface",
        });
    }
    Ok(())
}

/// What the missing-capability error tells the operator to do: in a container, the whole set a
/// container needs in each runtime's words (granting one at a time only moves the error to the
/// next), with Docker 20.10's fallback; elsewhere, root or the capability.
pub(super) fn grant_hint(short: &str) -> String {
    if in_container(Path::new("/")) {
        "in a container grant BPF, NET_ADMIN and PERFMON: Kubernetes `securityContext.capabilities.add: \
         [BPF, NET_ADMIN, PERFMON]`, `docker run`/`ctr run` `--cap-add BPF --cap-add NET_ADMIN --cap-add \
         PERFMON` (ctr: CAP_BPF, ...); Docker 20.10 refuses BPF and PERFMON (\"unknown capability\"): \
         there `--cap-add SYS_ADMIN --cap-add NET_ADMIN` (docs/guide.md, \"In a container\")"
            .to_owned()
    } else {
        format!("run as root or grant it, e.g. `--cap-add {short}` in a container")
    }
}

/// Whether `root` is a container's root: the marker files Docker and Podman leave, the
/// `container` variable systemd-nspawn and LXC set, a Kubernetes pod's service variables, or
/// a root file system that is an overlay (containerd's and CRI-O's snapshots; no host boots
/// from one).
fn in_container(root: &Path) -> bool {
    if root.join(".dockerenv").exists() || root.join("run/.containerenv").exists() {
        return true;
    }
    if std::env::var_os("container").is_some() || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return true;
    }
    let mountinfo = std::fs::read_to_string(root.join("proc/self/mountinfo")).unwrap_or_default();
    root_is_overlay(&mountinfo)
}

fn root_is_overlay(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        let Some((mount, fs)) = line.split_once(" - ") else { return false };
        mount.split_whitespace().nth(4) == Some("/") && fs.split_whitespace().next() == Some("overlay")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlay_root_is_a_container() {
        let container = "1402 1180 0:112 / / ro,relatime - overlay overlay rw,lowerdir=/a,upperdir=/b\n\
            1403 1402 0:115 / /proc rw - proc proc rw\n";
        let host = "22 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
            40 22 0:35 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw\n";
        assert!(root_is_overlay(container));
        assert!(!root_is_overlay(host));
    }
}

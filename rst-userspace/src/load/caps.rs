//! Capabilities: what loading and attaching need, checked up front so that an operator reads
//! which one is missing rather than a bare EPERM.

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

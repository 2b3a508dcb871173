//! Attaching the loaded programs to an interface: XDP through a bpf_link (never aya's netlink
//! fallback), TC ingress and egress through tcx links or, before 6.6, a `clsact` qdisc.

use std::{
    fmt,
    os::fd::{AsFd as _, OwnedFd},
};

use aya::programs::{
    tc::{SchedClassifierLink, TcAttachOptions},
    LinkOrder, SchedClassifier, TcAttachType, Xdp,
};
use rst_common::wire::{PROG_PAUSES, PROG_PAUSES_EGRESS};

use super::{
    object::{classifier, load_error, tc_egress_program, tc_program, xdp_program, LoadedObject},
    Error,
};

/// Where to count: XDP (the earliest hook, one program per interface), or TC ingress through a
/// tcx link, which coexists with other programs (an XDP-based load balancer or DDoS filter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    Xdp,
    Tc,
}

/// How to attach the TC programs: `auto` takes tcx links where the kernel has them (6.6+) and a
/// `clsact` qdisc before; `clsact` asks for the qdisc on any kernel, beside tools that manage
/// their TC programs as clsact filters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcLinkChoice {
    #[default]
    Auto,
    Tcx,
    Clsact,
}

impl TcLinkChoice {
    /// The way this kernel attaches for this choice.
    pub fn resolve(self) -> TcLink {
        match self {
            TcLinkChoice::Auto => TcLink::for_this_kernel(),
            TcLinkChoice::Tcx => TcLink::Tcx,
            TcLinkChoice::Clsact => TcLink::Clsact,
        }
    }
}

/// Where and how the live commands attach (the `--hook`, `--xdp-mode`, `--tc-link` and
/// `--idle-gaps` options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttachOptions {
    pub hook: HookChoice,
    pub xdp_mode: XdpModeChoice,
    pub tc_link: TcLinkChoice,
    /// Attach the programs that time every connection's pauses too (see [`attach_pauses`]).
    pub idle_gaps: bool,
}

/// How to hook XDP: in the driver (fast path) or in the generic network stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeChoice {
    /// Native where the driver supports it, generic otherwise.
    Auto,
    Native,
    Skb,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    Native,
    Skb,
}

/// Where an attachment counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp(XdpMode),
    TcIngress,
    TcEgress,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Xdp(mode) => mode.as_str(),
            Hook::TcIngress => "tc",
            Hook::TcEgress => "tc egress",
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hook::Xdp(mode) => mode.fmt(f),
            Hook::TcIngress => f.write_str("tcx ingress"),
            Hook::TcEgress => f.write_str("tcx egress"),
        }
    }
}

impl XdpMode {
    fn link_flags(self) -> u32 {
        // XDP_FLAGS_SKB_MODE / XDP_FLAGS_DRV_MODE from include/uapi/linux/if_link.h
        match self {
            XdpMode::Skb => 1 << 1,
            XdpMode::Native => 1 << 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Skb => "skb",
        }
    }
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XdpMode::Native => "native XDP",
            XdpMode::Skb => "generic XDP",
        })
    }
}

/// Attaches the chosen hook's program to one interface.
pub fn attach(ebpf: &mut LoadedObject, options: AttachOptions, iface: &str, ifindex: u32) -> Result<Attachment, Error> {
    let AttachOptions { hook, xdp_mode, tc_link, idle_gaps } = options;
    let tc_link = tc_link.resolve();
    // Before the counting programs, which then go first in line: a SYN's connection has its
    // slot by the time the pauses program looks for it.
    let pauses = if idle_gaps { attach_pauses(ebpf, iface, tc_link)? } else { Vec::new() };
    let mut attachment = match hook {
        HookChoice::Xdp => attach_xdp(xdp_program(ebpf)?, iface, ifindex, xdp_mode)?,
        HookChoice::Tc => attach_tc_as(tc_program(ebpf)?, iface, ifindex, tc_link)?,
    };
    match attach_tc_with(tc_egress_program(ebpf)?, iface, TcAttachType::Egress, tc_link) {
        Ok(link) => attachment.egress = Some(link),
        Err(error) => tracing::warn!("{:#}; counting only the resets {iface} receives", anyhow::Error::from(error)),
    }
    let ingress = match (attachment.hook, tc_link) {
        (Hook::TcIngress, TcLink::Clsact) => "clsact ingress".to_owned(),
        (hook, _) => hook.to_string(),
    };
    let egress = match (attachment.egress.is_some(), tc_link) {
        (false, _) => "",
        (true, TcLink::Tcx) => " + tcx egress",
        (true, TcLink::Clsact) => " + clsact egress",
    };
    let timed = if pauses.is_empty() { "" } else { "; timing every connection's pauses" };
    tracing::info!("attached to {iface} (ifindex {ifindex}, {ingress}{egress}{timed})");
    attachment.pauses = pauses;
    Ok(attachment)
}

/// Attaches `--idle-gaps`' programs ([`PROG_PAUSES`], [`PROG_PAUSES_EGRESS`]) to `iface`'s
/// ingress and egress, loading them on first use. Attached first in line, before the counting
/// programs are: those then run before them (tcx `first`; a clsact filter with an
/// automatic priority runs before the filters already there).
///
/// # Errors
/// As [`attach_tc`]: unlike the counting egress program, a pauses program that cannot attach
/// stops the run, since the operator asked for them.
pub fn attach_pauses(ebpf: &mut LoadedObject, iface: &str, how: TcLink) -> Result<Vec<SchedClassifierLink>, Error> {
    let mut links = Vec::with_capacity(2);
    for (name, direction) in [(PROG_PAUSES, TcAttachType::Ingress), (PROG_PAUSES_EGRESS, TcAttachType::Egress)] {
        let program = classifier(ebpf, name)?;
        if program.fd().is_err() {
            program.load().map_err(|error| load_error(Box::new(error)))?;
        }
        links.push(attach_tc_with(program, iface, direction, how)?);
    }
    Ok(links)
}

/// Attaches to every target; if one fails, those before it are dropped (detached) on the way out.
pub fn attach_all(
    ebpf: &mut LoadedObject,
    options: AttachOptions,
    targets: &[(String, u32)],
) -> Result<Vec<Attachment>, Error> {
    targets.iter().map(|(iface, ifindex)| attach(ebpf, options, iface, *ifindex)).collect()
}

/// An attached program. Dropping it (or the process dying) detaches it: both kinds are links
/// owned by a file descriptor of this process.
#[derive(Debug)]
pub struct Attachment {
    pub iface: String,
    pub ifindex: u32,
    pub hook: Hook,
    _link: Link,
    /// The TC egress link, when the kernel has tcx: what the host sends.
    pub egress: Option<SchedClassifierLink>,
    /// `--idle-gaps`' ingress and egress links; empty without it.
    pub pauses: Vec<SchedClassifierLink>,
}

#[derive(Debug)]
enum Link {
    Xdp(#[allow(dead_code, reason = "held for its Drop")] OwnedFd),
    Tc(#[allow(dead_code, reason = "held for its Drop")] SchedClassifierLink),
}

/// Attaches the TC program to `iface`'s ingress through a tcx link, first in line before any
/// other program; it returns "next", so the others' verdicts stand.
///
/// # Errors
/// [`Error::AttachTc`] (kernels before 6.6 have no tcx), [`Error::MissingCapability`] on EPERM.
pub fn attach_tc(program: &mut SchedClassifier, iface: &str, ifindex: u32) -> Result<Attachment, Error> {
    attach_tc_as(program, iface, ifindex, TcLink::for_this_kernel())
}

fn attach_tc_as(program: &mut SchedClassifier, iface: &str, ifindex: u32, how: TcLink) -> Result<Attachment, Error> {
    let link = attach_tc_with(program, iface, TcAttachType::Ingress, how)?;
    Ok(Attachment {
        iface: iface.to_owned(),
        ifindex,
        hook: Hook::TcIngress,
        _link: Link::Tc(link),
        egress: None,
        pauses: Vec::new(),
    })
}

/// Attaches the egress program to `iface` through a tcx link, first in line.
///
/// # Errors
/// As [`attach_tc`].
pub fn attach_tc_egress(program: &mut SchedClassifier, iface: &str) -> Result<SchedClassifierLink, Error> {
    attach_tc_with(program, iface, TcAttachType::Egress, TcLink::for_this_kernel())
}

/// How TC programs are attached: tcx links where the kernel has them (6.6+), otherwise a
/// `clsact` qdisc with a netlink filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcLink {
    Tcx,
    /// Kernels before 6.6. The filter is removed when rstwatch exits, but unlike a link it
    /// outlives a `kill -9` (remove it with `tc filter del dev IFACE ingress|egress`), and the
    /// `clsact` qdisc rstwatch may have added stays (it is shared with other users).
    Clsact,
}

impl TcLink {
    /// tcx on kernels that have it.
    pub fn for_this_kernel() -> TcLink {
        match aya::util::KernelVersion::current() {
            Ok(version) if version < aya::util::KernelVersion::new(6, 6, 0) => TcLink::Clsact,
            _ => TcLink::Tcx,
        }
    }
}

/// Attaches a TC program to one direction of `iface`, first in line; it returns "next"
/// (`TC_ACT_UNSPEC` for clsact), so the verdicts of the others stand.
///
/// # Errors
/// [`Error::AttachTc`], [`Error::MissingCapability`] on EPERM.
pub fn attach_tc_with(
    program: &mut SchedClassifier,
    iface: &str,
    direction: TcAttachType,
    how: TcLink,
) -> Result<SchedClassifierLink, Error> {
    let attach_error = |source: aya::programs::ProgramError| {
        let denied = matches!(
            &source,
            aya::programs::ProgramError::SyscallError(aya::sys::SyscallError { io_error, .. })
                if matches!(io_error.raw_os_error(), Some(libc::EPERM | libc::EACCES))
        );
        if denied {
            Error::MissingCapability {
                capability: "CAP_NET_ADMIN",
                short: "NET_ADMIN",
                why: "needed to attach to an interface",
            }
        } else {
            let direction = if direction == TcAttachType::Egress { "egress" } else { "ingress" };
            Error::AttachTc { iface: iface.to_owned(), direction, source }
        }
    };
    let options = match how {
        TcLink::Tcx => TcAttachOptions::TcxOrder(LinkOrder::first()),
        TcLink::Clsact => {
            // Already there (another user's, or ours from a previous run) is fine.
            if let Err(error) = aya::programs::tc::qdisc_add_clsact(iface) {
                let exists = matches!(&error, aya::programs::tc::TcError::NetlinkError(e) if e.raw_os_error() == Some(libc::EEXIST));
                if !exists {
                    tracing::debug!("adding a clsact qdisc to {iface}: {error}");
                }
            }
            TcAttachOptions::Netlink(aya::programs::tc::NlOptions::default())
        }
    };
    let id = program.attach_with_options(iface, direction, options).map_err(attach_error)?;
    program.take_link(id).map_err(attach_error)
}

/// Attaches rstwatch's XDP program to `iface` through a bpf_link.
///
/// aya's `Xdp::attach` silently falls back to a netlink attachment, which would outlive a
/// killed rstwatch; this refuses instead, so every attachment is owned by a file descriptor.
///
/// # Errors
/// [`Error::AlreadyAttached`] when any XDP program is on the interface (in any mode: the kernel
/// refuses to mix them), [`Error::NativeUnsupported`] for `--xdp-mode native` on a driver
/// without XDP, [`Error::MissingCapability`] on EPERM.
pub fn attach_xdp(program: &Xdp, iface: &str, ifindex: u32, choice: XdpModeChoice) -> Result<Attachment, Error> {
    let modes: &[XdpMode] = match choice {
        XdpModeChoice::Auto => &[XdpMode::Native, XdpMode::Skb],
        XdpModeChoice::Native => &[XdpMode::Native],
        XdpModeChoice::Skb => &[XdpMode::Skb],
    };
    let program_fd = program.fd().map_err(|error| Error::Load(Box::new(error)))?.as_fd();
    let mut last_error = None;
    for &mode in modes {
        match crate::sys::bpf_link::create_xdp(program_fd, ifindex, mode.link_flags()) {
            Ok(link) => {
                return Ok(Attachment {
                    iface: iface.to_owned(),
                    ifindex,
                    hook: Hook::Xdp(mode),
                    _link: Link::Xdp(link),
                    egress: None,
                    pauses: Vec::new(),
                });
            }
            Err(error) => match error.raw_os_error() {
                Some(libc::EBUSY | libc::EEXIST) => {
                    return Err(Error::AlreadyAttached { iface: iface.to_owned(), holder: describe_holder(ifindex) })
                }
                Some(libc::EPERM | libc::EACCES) => {
                    return Err(Error::MissingCapability {
                        capability: "CAP_NET_ADMIN",
                        short: "NET_ADMIN",
                        why: "needed to attach XDP to an interface",
                    })
                }
                Some(libc::EOPNOTSUPP) if choice == XdpModeChoice::Native => {
                    return Err(Error::NativeUnsupported { iface: iface.to_owned() })
                }
                _ => last_error = Some(Error::Attach { iface: iface.to_owned(), mode, source: error }),
            },
        }
    }
    Err(last_error.unwrap_or(Error::NativeUnsupported { iface: iface.to_owned() }))
}

/// " (program 42 \"ddos_filter\", native)" — as much as the kernel tells this process.
fn describe_holder(ifindex: u32) -> String {
    match crate::load::netlink::attached_xdp(ifindex) {
        Ok(Some(held)) if held.program_id != 0 => match crate::load::netlink::program_name(held.program_id) {
            Some(name) => format!(" (program {} {name:?}, {})", held.program_id, held.mode),
            None => format!(" (program {}, {})", held.program_id, held.mode),
        },
        Ok(Some(held)) => format!(" ({})", held.mode),
        _ => String::new(),
    }
}

//! This host's firewall resets: nftables' and iptables' `reject with tcp reset` build their RST
//! in `nf_send_reset` / `nf_send_reset6`, which the TCP stack never sees. Before loading, where
//! the programs find the rejected packet in a `struct sk_buff` (from the kernel's BTF); after,
//! attaching one of two ways in, said once in the log ([`log_firewall`]):
//! - fentry programs on `nf_send_reset` / `nf_send_reset6` (preferred: they run only when
//!   netfilter rejects, and are told the hook). Minimum kernel 5.5 with BPF trampolines, and the
//!   functions built in (`CONFIG_NF_REJECT_IPV4=y` / `…IPV6=y`; a module's are not attached to).
//! - where that is refused (a kernel without BPF trampolines says EPERM even to root, as some VM
//!   kernels do) or the functions are not built in: a BTF tracepoint on `skb:kfree_skb` that
//!   returns at once unless netfilter dropped the skb (`SKB_DROP_REASON_NETFILTER_DROP`,
//!   Linux >= 5.17), and then records the RST that would answer it, with the hook inferred from
//!   the skb (see `rst-ebpf/src/firewall.rs`). A plain `drop` is recorded the same way: these
//!   are candidates, confirmed by an RST this host sent on the same tuple.
//!
//! Both need BTF (`/sys/kernel/btf/vmlinux`) and CAP_BPF + CAP_PERFMON. Without either way in
//! rstwatch says why once and runs on: these resets then stay tx resets without a kernel event.
//! The programs never change a packet.
//!
//! Memory, fixed at load: two hash tables ([`rst_common::wire::MAP_FIREWALL_RESETS`]) of
//! [`super::overflow_sources_for`]`(--max-flows)` entries each (a 40-byte
//! [`FirewallResetKey`](rst_common::wire::FirewallResetKey), an 8-byte count: about 100 bytes an
//! entry with the kernel's own, so ~26 MB for both at the default 1M flows), and one u64 per
//! CPU and epoch for what found no room.

use std::fmt;

use aya::{
    programs::{BtfTracePoint, FEntry},
    Btf,
};
use rst_common::wire::{
    FN_NF_SEND_RESET, FN_NF_SEND_RESET6, GLOBAL_NETFILTER_DROP_REASON, GLOBAL_RT6_INFO_FLAGS_OFFSET,
    GLOBAL_RTABLE_FLAGS_OFFSET, GLOBAL_SKB_DEV_OFFSET, GLOBAL_SKB_HEAD_OFFSET, GLOBAL_SKB_NETWORK_HEADER_OFFSET,
    GLOBAL_SKB_REFDST_OFFSET, PROG_NF_DROP, PROG_NF_SEND_RESET, PROG_NF_SEND_RESET6, TP_KFREE_SKB,
};

use super::{
    btf::{self, Types, VMLINUX_BTF},
    Error, LoadedObject,
};

/// The enum the `skb:kfree_skb` program filters on, and the value it keeps.
const DROP_REASONS: &str = "skb_drop_reason";
const NETFILTER_DROP: &str = "SKB_DROP_REASON_NETFILTER_DROP";

/// Where the programs find the rejected packet, and which ways in this kernel has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallOffsets {
    /// `sk_buff.head`.
    pub skb_head: u32,
    /// `sk_buff.network_header` (a u16 offset from `head`).
    pub skb_network_header: u32,
    /// What the ways in need beyond that.
    pub targets: FirewallTargets,
    /// The `skb:kfree_skb` program's numbers, when [`FirewallTargets::drops`] is `Ok`.
    drops: Option<DropOffsets>,
}

/// The ways in this kernel offers, as its BTF tells (whether it lets them load is another matter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallTargets {
    /// Of [`FN_NF_SEND_RESET`] and [`FN_NF_SEND_RESET6`], those the kernel's BTF has (the fentry
    /// programs' targets).
    pub functions: Vec<&'static str>,
    /// Whether the `skb:kfree_skb` fallback has what it needs, or why not.
    pub drops: Result<(), String>,
}

/// The `skb:kfree_skb` program's globals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DropOffsets {
    netfilter_drop: u32,
    skb_dev: u32,
    skb_refdst: u32,
    rtable_flags: u32,
    rt6_info_flags: u32,
}

impl FirewallOffsets {
    /// From this kernel's BTF ([`Types::of_kernel`], read once per load).
    ///
    /// # Errors
    /// [`Error::Firewall`] when `/sys/kernel/btf/vmlinux` cannot be read or lacks what the
    /// programs need.
    pub fn read(btf: Result<&Types, &btf::Error>) -> Result<FirewallOffsets, Error> {
        match btf {
            Ok(types) => FirewallOffsets::parse(types),
            Err(btf::Error::NoBtf(error)) => Err(Error::Firewall(format!(
                "reading {VMLINUX_BTF} (Linux >= 5.5 with CONFIG_DEBUG_INFO_BTF): {error}"
            ))),
            Err(error) => Err(Error::Firewall(error.to_string())),
        }
    }

    /// From the kernel's BTF types.
    ///
    /// # Errors
    /// [`Error::Firewall`] naming what is missing: `sk_buff`'s members, or both the reject
    /// functions and what the fallback needs.
    pub fn parse(types: &Types) -> Result<FirewallOffsets, Error> {
        let missing = |strukt: &str, member: &str| {
            format!("this kernel's BTF has no {strukt}.{member} (whole bytes) to read packets by")
        };
        let offset = |strukt: &str, member: &str| types.member(strukt, member).map_err(|_| missing(strukt, member));
        let (skb_head, skb_network_header) = (
            offset("sk_buff", "head").map_err(Error::Firewall)?,
            offset("sk_buff", "network_header").map_err(Error::Firewall)?,
        );
        let functions: Vec<&'static str> =
            [FN_NF_SEND_RESET, FN_NF_SEND_RESET6].into_iter().filter(|name| types.has_function(name)).collect();
        let drops = (|| {
            let netfilter_drop = types
                .enumerator(DROP_REASONS, NETFILTER_DROP)
                .ok_or_else(|| format!("this kernel's BTF has no {NETFILTER_DROP} (drop reasons: Linux >= 5.17)"))?;
            Ok::<_, String>(DropOffsets {
                netfilter_drop,
                skb_dev: offset("sk_buff", "dev")?,
                skb_refdst: offset("sk_buff", "_skb_refdst")?,
                rtable_flags: offset("rtable", "rt_flags")?,
                rt6_info_flags: offset("rt6_info", "rt6i_flags")?,
            })
        })();
        if functions.is_empty() {
            if let Err(why) = &drops {
                return Err(Error::Firewall(format!(
                    "this kernel has neither {FN_NF_SEND_RESET} nor {FN_NF_SEND_RESET6} built in \
                     (CONFIG_NF_REJECT_IPV4/IPV6=y; rstwatch does not attach to them in a module), \
                     and {why}"
                )));
            }
        }
        let targets = FirewallTargets { functions, drops: drops.as_ref().map(|_| ()).map_err(Clone::clone) };
        Ok(FirewallOffsets { skb_head, skb_network_header, targets, drops: drops.ok() })
    }

    /// Sets the programs' globals.
    pub fn apply<'a>(&'a self, loader: &mut aya::EbpfLoader<'a>) {
        loader.override_global(GLOBAL_SKB_HEAD_OFFSET, &self.skb_head, true).override_global(
            GLOBAL_SKB_NETWORK_HEADER_OFFSET,
            &self.skb_network_header,
            true,
        );
        if let Some(drops) = &self.drops {
            loader
                .override_global(GLOBAL_NETFILTER_DROP_REASON, &drops.netfilter_drop, true)
                .override_global(GLOBAL_SKB_DEV_OFFSET, &drops.skb_dev, true)
                .override_global(GLOBAL_SKB_REFDST_OFFSET, &drops.skb_refdst, true)
                .override_global(GLOBAL_RTABLE_FLAGS_OFFSET, &drops.rtable_flags, true)
                .override_global(GLOBAL_RT6_INFO_FLAGS_OFFSET, &drops.rt6_info_flags, true);
        }
    }
}

/// Which way in traces this host's firewall resets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirewallHook {
    /// fentry programs on these reject functions: every RST netfilter sends, with its hook.
    FEntry(Vec<&'static str>),
    /// The `skb:kfree_skb` BTF tracepoint, netfilter's drops only: candidates, hook inferred;
    /// `fentry` says why fentry is not used.
    NetfilterDrops { fentry: String },
}

impl fmt::Display for FirewallHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FirewallHook::FEntry(functions) => write!(f, "fentry on {}", functions.join(" and ")),
            FirewallHook::NetfilterDrops { fentry } => write!(
                f,
                "tp_btf/{TP_KFREE_SKB} on netfilter's drops (candidates: a plain drop looks the same; \
                 hook inferred from the skb), because {fentry}"
            ),
        }
    }
}

/// Attaches the firewall programs (see [`attach_firewall`]); when that is not possible at all,
/// why, for [`log_firewall`] to say once.
pub fn start_firewall(object: &mut LoadedObject) -> Result<FirewallHook, String> {
    attach_firewall(object).map_err(|error| format!("{error:#}"))
}

/// Says once which way in [`start_firewall`] took, or why none.
pub fn log_firewall(status: &Result<FirewallHook, String>) {
    match status {
        Ok(hook) => tracing::info!("resets this host's firewall sends (reject with tcp reset) are traced by {hook}"),
        Err(why) => {
            tracing::warn!("resets this host's firewall sends (reject with tcp reset) are not traced: {why}");
        }
    }
}

/// Loads and attaches the fentry program of each reject function the kernel has; where that
/// fails, undoes it and attaches the `skb:kfree_skb` program instead. A kernel with only one
/// of the functions (no IPv6) gets that one, and the log says which is missing.
///
/// # Errors
/// Why neither way in could be attached: no BTF ([`Error::Firewall`], as found at load), or the
/// kernel refused to load or attach both (e.g. without CAP_BPF / CAP_PERFMON), each said.
pub fn attach_firewall(object: &mut LoadedObject) -> Result<FirewallHook, Error> {
    let targets = object.firewall_targets().map_err(|why| Error::Firewall(why.to_owned()))?.clone();
    let btf = Btf::from_sys_fs().map_err(|error| Error::Firewall(format!("reading the kernel's BTF: {error}")))?;
    let fentry = if targets.functions.is_empty() {
        Error::Firewall(format!("this kernel has neither {FN_NF_SEND_RESET} nor {FN_NF_SEND_RESET6} built in"))
    } else {
        match attach_fentry(object, &targets.functions, &btf) {
            Ok(()) => return Ok(FirewallHook::FEntry(targets.functions)),
            Err(error) => error,
        }
    };
    let fallback = match targets.drops {
        Ok(()) => attach_drops(object, &btf),
        Err(why) => Err(Error::Firewall(why)),
    };
    match fallback {
        Ok(()) => Ok(FirewallHook::NetfilterDrops { fentry: fentry.to_string() }),
        Err(error) => Err(Error::Firewall(format!("{fentry}; and the fallback, tp_btf/{TP_KFREE_SKB}: {error}"))),
    }
}

/// The fentry programs, all or none: one left attached beside the fallback would count its
/// resets twice.
fn attach_fentry(object: &mut LoadedObject, functions: &[&'static str], btf: &Btf) -> Result<(), Error> {
    let mut attached = Vec::new();
    for (program, function) in [(PROG_NF_SEND_RESET, FN_NF_SEND_RESET), (PROG_NF_SEND_RESET6, FN_NF_SEND_RESET6)] {
        if !functions.contains(&function) {
            tracing::info!("this kernel has no {function} built in: its firewall resets are not traced by fentry");
            continue;
        }
        if let Err(error) = attach_one_fentry(object, program, function, btf) {
            for done in attached {
                let fentry: Result<&mut FEntry, _> = object
                    .program_mut(done)
                    .ok_or_else(|| Error::MissingProgram(done.to_owned()))
                    .and_then(|p| p.try_into().map_err(Error::from));
                // Unloading detaches its link; a failure leaves nothing worse than a program
                // that will go with the object.
                if let Ok(fentry) = fentry {
                    let _ = fentry.unload();
                }
            }
            return Err(error);
        }
        attached.push(program);
    }
    Ok(())
}

fn attach_one_fentry(object: &mut LoadedObject, program: &str, function: &'static str, btf: &Btf) -> Result<(), Error> {
    let fentry: &mut FEntry =
        object.program_mut(program).ok_or_else(|| Error::MissingProgram(program.to_owned()))?.try_into()?;
    let failed = |what| {
        move |source: aya::programs::ProgramError| {
            let refused = denied(&source) && privileged();
            Error::FirewallProgram { what, function, refused, source }
        }
    };
    fentry.load(function, btf).map_err(failed("loading the fentry program on"))?;
    fentry.attach().map_err(failed("attaching the fentry program to"))?;
    Ok(())
}

/// The `skb:kfree_skb` BTF tracepoint program.
fn attach_drops(object: &mut LoadedObject, btf: &Btf) -> Result<(), Error> {
    let program: &mut BtfTracePoint =
        object.program_mut(PROG_NF_DROP).ok_or_else(|| Error::MissingProgram(PROG_NF_DROP.to_owned()))?.try_into()?;
    let failed = |what| {
        move |source: aya::programs::ProgramError| Error::FirewallProgram {
            what,
            function: TP_KFREE_SKB,
            refused: false,
            source,
        }
    };
    program.load(TP_KFREE_SKB, btf).map_err(failed("loading the tp_btf program on"))?;
    program.attach().map_err(failed("attaching the tp_btf program to"))?;
    Ok(())
}

/// Whether the kernel said EPERM somewhere in `error`'s chain.
fn denied(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(current) = source {
        if current.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(libc::EPERM) {
            return true;
        }
        source = current.source();
    }
    false
}

/// Whether this process holds what loading a tracing program takes.
fn privileged() -> bool {
    use caps::Capability;
    [Capability::CAP_BPF, Capability::CAP_PERFMON].into_iter().all(super::caps::has_capability)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernels_btf_has_the_skb_headers_and_reject_functions() {
        let Ok(types) = Types::of_kernel() else {
            let skip = rst_lab::skip::skip(
                "this_kernels_btf_has_the_skb_headers_and_reject_functions",
                &format!("no {VMLINUX_BTF}"),
            );
            skip.expect("CI=true: this test must run");
            return;
        };
        let offsets = FirewallOffsets::parse(&types).expect("offsets");
        assert!(offsets.skb_head > 0 && offsets.skb_network_header > 0, "{offsets:?}");
        assert_ne!(offsets.skb_head, offsets.skb_network_header);
        // The numbers rst-ebpf/src/firewall.rs defaults to are this kernel's.
        eprintln!("{offsets:?}");
    }

    #[test]
    fn what_is_not_btf_is_named() {
        let error = FirewallOffsets::read(Types::parse(b"not btf at all, not at all").as_ref()).expect_err("not BTF");
        assert!(error.to_string().contains("bad magic"), "{error}");
        let missing = Types::parse(&btf::tests::blob(&[("sk_buff", &[("head", 1536)])])).expect("blob");
        let error = FirewallOffsets::parse(&missing).expect_err("no network_header");
        assert!(error.to_string().contains("no sk_buff.network_header (whole bytes)"), "{error}");
    }
}

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

use std::{
    collections::{HashMap, HashSet},
    fmt,
};

use aya::{
    programs::{BtfTracePoint, FEntry},
    Btf,
};
use rst_common::wire::{
    FN_NF_SEND_RESET, FN_NF_SEND_RESET6, GLOBAL_NETFILTER_DROP_REASON, GLOBAL_RT6_INFO_FLAGS_OFFSET,
    GLOBAL_RTABLE_FLAGS_OFFSET, GLOBAL_SKB_DEV_OFFSET, GLOBAL_SKB_HEAD_OFFSET, GLOBAL_SKB_NETWORK_HEADER_OFFSET,
    GLOBAL_SKB_REFDST_OFFSET, PROG_NF_DROP, PROG_NF_SEND_RESET, PROG_NF_SEND_RESET6, TP_KFREE_SKB,
};

use super::{Error, LoadedObject};

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
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
    /// # Errors
    /// [`Error::Firewall`] when `/sys/kernel/btf/vmlinux` cannot be read or lacks what the
    /// programs need.
    pub fn read() -> Result<FirewallOffsets, Error> {
        let blob = std::fs::read(VMLINUX_BTF).map_err(|error| {
            Error::Firewall(format!("reading {VMLINUX_BTF} (Linux >= 5.5 with CONFIG_DEBUG_INFO_BTF): {error}"))
        })?;
        FirewallOffsets::parse(&blob)
    }

    /// From a raw BTF blob (native byte order).
    ///
    /// # Errors
    /// [`Error::Firewall`] naming what is missing: BTF itself, `sk_buff`'s members, or both the
    /// reject functions and what the fallback needs.
    pub fn parse(blob: &[u8]) -> Result<FirewallOffsets, Error> {
        let types = Types::parse(blob).map_err(|why| Error::Firewall(format!("{VMLINUX_BTF}: {why}")))?;
        let missing = |strukt: &str, member: &str| {
            format!("this kernel's BTF has no {strukt}.{member} (whole bytes) to read packets by")
        };
        let offset =
            |strukt: &str, member: &str| types.member_offset(strukt, member).ok_or_else(|| missing(strukt, member));
        let (skb_head, skb_network_header) = (
            offset("sk_buff", "head").map_err(Error::Firewall)?,
            offset("sk_buff", "network_header").map_err(Error::Firewall)?,
        );
        let functions: Vec<&'static str> =
            [FN_NF_SEND_RESET, FN_NF_SEND_RESET6].into_iter().filter(|name| types.functions.contains(*name)).collect();
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

/// Just enough of BTF (`Documentation/bpf/btf.rst`) for member offsets through anonymous
/// structs and unions (`sk_buff` keeps its headers in `struct_group`s), the names of functions
/// and the values of [`DROP_REASONS`]; the workload's reader looks at direct members only.
struct Types {
    /// By type id (id 0 is `void`): structs' and unions' members as (name, type id, bit
    /// offset), and what qualifiers and typedefs refer to.
    entries: Vec<Entry>,
    structs: HashMap<String, u32>,
    functions: HashSet<String>,
    /// [`DROP_REASONS`]' enumerators (only that enum's: vmlinux has tens of thousands).
    enumerators: HashMap<(String, String), u32>,
}

#[derive(Default)]
struct Entry {
    members: Vec<(String, u32, u32)>,
    /// A typedef's or qualifier's type.
    refers_to: Option<u32>,
}

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FUNC: u32 = 12;

impl Types {
    fn parse(blob: &[u8]) -> Result<Types, String> {
        let u32_at = |at: usize| -> Result<u32, String> {
            blob.get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_ne_bytes)
                .ok_or_else(|| "truncated BTF".to_owned())
        };
        if blob.len() < 24 || blob.get(..2) != Some(&MAGIC.to_ne_bytes()[..]) {
            return Err("not a BTF blob (bad magic)".to_owned());
        }
        let header = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings =
            blob.get(header + str_off..header + str_off + str_len).ok_or_else(|| "truncated BTF strings".to_owned())?;
        let name = |offset: u32| -> String {
            let tail = strings.get(offset as usize..).unwrap_or_default();
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            String::from_utf8_lossy(&tail[..end]).into_owned()
        };
        let mut types = Types {
            entries: vec![Entry::default()],
            structs: HashMap::new(),
            functions: HashSet::new(),
            enumerators: HashMap::new(),
        };
        let mut at = header + type_off;
        let end = at + type_len;
        while at < end {
            let (name_off, info, size_or_type) = (u32_at(at)?, u32_at(at + 4)?, u32_at(at + 8)?);
            let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31 == 1);
            at += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                4 | 5 | 15 | 19 => 12 * vlen,
                6 | 13 => 8 * vlen,
                2 | 7..=12 | 16 | 18 => 0,
                other => return Err(format!("unknown BTF kind {other}")),
            };
            let mut entry = Entry::default();
            match kind {
                KIND_STRUCT | KIND_UNION => {
                    for member in 0..vlen {
                        let base = at + 12 * member;
                        let offset = u32_at(base + 8)?;
                        // With kind_flag the top byte is a bitfield's size.
                        let bits = if kind_flag { offset & 0x00ff_ffff } else { offset };
                        entry.members.push((name(u32_at(base)?), u32_at(base + 4)?, bits));
                    }
                    if kind == KIND_STRUCT && name_off != 0 {
                        let id = u32::try_from(types.entries.len()).map_err(|_| "too many BTF types".to_owned())?;
                        types.structs.entry(name(name_off)).or_insert(id);
                    }
                }
                // typedef, volatile, const, restrict, type tag.
                8..=11 | 18 => entry.refers_to = Some(size_or_type),
                KIND_FUNC => {
                    types.functions.insert(name(name_off));
                }
                KIND_ENUM if name(name_off) == DROP_REASONS => {
                    for value in 0..vlen {
                        let base = at + 8 * value;
                        let key = (DROP_REASONS.to_owned(), name(u32_at(base)?));
                        types.enumerators.insert(key, u32_at(base + 4)?);
                    }
                }
                _ => {}
            }
            types.entries.push(entry);
            at += extra;
        }
        Ok(types)
    }

    /// The value of `enumerator` in `enumeration` (one of those kept, see [`Types::enumerators`]).
    fn enumerator(&self, enumeration: &str, enumerator: &str) -> Option<u32> {
        self.enumerators.get(&(enumeration.to_owned(), enumerator.to_owned())).copied()
    }

    /// The byte offset of `member` in struct `strukt`, looking through anonymous members.
    fn member_offset(&self, strukt: &str, member: &str) -> Option<u32> {
        let bits = self.find(*self.structs.get(strukt)?, member, 0)?;
        (bits % 8 == 0).then_some(bits / 8)
    }

    fn find(&self, id: u32, member: &str, depth: u32) -> Option<u32> {
        // Anonymous members nest a few levels deep; a cycle in a corrupt blob must not hang.
        if depth > 8 {
            return None;
        }
        let entry = self.entries.get(id as usize)?;
        if let Some(target) = entry.refers_to {
            return self.find(target, member, depth + 1);
        }
        for (name, type_id, bits) in &entry.members {
            if name == member {
                return Some(*bits);
            }
            if name.is_empty() {
                if let Some(inner) = self.find(*type_id, member, depth + 1) {
                    return Some(bits + inner);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_kernels_btf_has_the_skb_headers_and_reject_functions() {
        let Ok(blob) = std::fs::read(VMLINUX_BTF) else {
            eprintln!("skipped: no {VMLINUX_BTF}");
            return;
        };
        let offsets = FirewallOffsets::parse(&blob).expect("offsets");
        assert!(offsets.skb_head > 0 && offsets.skb_network_header > 0, "{offsets:?}");
        assert_ne!(offsets.skb_head, offsets.skb_network_header);
        // The numbers rst-ebpf/src/firewall.rs defaults to are this kernel's.
        eprintln!("{offsets:?}");
    }

    #[test]
    fn what_is_not_btf_is_named() {
        let error = FirewallOffsets::parse(b"not btf at all, not at all").expect_err("not BTF");
        assert!(error.to_string().contains("bad magic"), "{error}");
    }
}

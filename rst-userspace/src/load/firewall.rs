//! This host's firewall resets: the fentry programs on `nf_send_reset` / `nf_send_reset6`,
//! where nftables' and iptables' `reject with tcp reset` build their RST (which the TCP stack
//! never sees). Before loading, where the programs find the rejected packet in a `struct
//! sk_buff` (from the kernel's BTF); after, attaching them where the kernel has the functions.
//!
//! Minimum kernel: 5.5 (fentry) with BTF (`/sys/kernel/btf/vmlinux`), netfilter's reject built
//! in (`CONFIG_NF_REJECT_IPV4=y` / `…IPV6=y`; a module's functions are not attached to), and
//! CAP_BPF + CAP_PERFMON. Without any of it rstwatch says so once and runs on: these resets
//! then stay tx resets without a kernel event. The programs run only when netfilter rejects a
//! segment, never change it, and cost nothing on any other path.
//!
//! Memory, fixed at load: two hash tables ([`rst_common::wire::MAP_FIREWALL_RESETS`]) of
//! [`super::overflow_sources_for`]`(--max-flows)` entries each (a 40-byte
//! [`FirewallResetKey`](rst_common::wire::FirewallResetKey), an 8-byte count: about 100 bytes an
//! entry with the kernel's own, so ~26 MB for both at the default 1M flows), and one u64 per
//! CPU and epoch for what found no room.

use std::collections::{HashMap, HashSet};

use aya::{programs::FEntry, Btf};
use rst_common::wire::{
    FN_NF_SEND_RESET, FN_NF_SEND_RESET6, GLOBAL_SKB_HEAD_OFFSET, GLOBAL_SKB_NETWORK_HEADER_OFFSET, PROG_NF_SEND_RESET,
    PROG_NF_SEND_RESET6,
};

use super::{Error, LoadedObject};
use crate::availability::Availability;

const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// Where the programs find the rejected packet, and which reject functions this kernel has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirewallOffsets {
    /// `sk_buff.head`.
    pub skb_head: u32,
    /// `sk_buff.network_header` (a u16 offset from `head`).
    pub skb_network_header: u32,
    /// Of [`FN_NF_SEND_RESET`] and [`FN_NF_SEND_RESET6`], those the kernel's BTF has.
    pub functions: Vec<&'static str>,
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
    /// [`Error::Firewall`] naming what is missing: BTF itself, `sk_buff`'s members, or both
    /// reject functions.
    pub fn parse(blob: &[u8]) -> Result<FirewallOffsets, Error> {
        let types = Types::parse(blob).map_err(|why| Error::Firewall(format!("{VMLINUX_BTF}: {why}")))?;
        let offset = |member: &str| {
            types.member_offset("sk_buff", member).ok_or_else(|| {
                Error::Firewall(format!("this kernel's BTF has no sk_buff.{member} (whole bytes) to read packets by"))
            })
        };
        let (skb_head, skb_network_header) = (offset("head")?, offset("network_header")?);
        let functions: Vec<&'static str> =
            [FN_NF_SEND_RESET, FN_NF_SEND_RESET6].into_iter().filter(|name| types.functions.contains(*name)).collect();
        if functions.is_empty() {
            return Err(Error::Firewall(format!(
                "this kernel has neither {FN_NF_SEND_RESET} nor {FN_NF_SEND_RESET6} built in \
                 (CONFIG_NF_REJECT_IPV4/IPV6=y; rstwatch does not attach to them in a module)"
            )));
        }
        Ok(FirewallOffsets { skb_head, skb_network_header, functions })
    }

    /// Sets the programs' globals.
    pub fn apply<'a>(&'a self, loader: &mut aya::EbpfLoader<'a>) {
        loader.override_global(GLOBAL_SKB_HEAD_OFFSET, &self.skb_head, true).override_global(
            GLOBAL_SKB_NETWORK_HEADER_OFFSET,
            &self.skb_network_header,
            true,
        );
    }
}

/// Attaches the firewall programs (see [`attach_firewall`]); when that is not possible at all,
/// says why, for the caller to say once ([`warn_firewall`]) and to report.
pub fn start_firewall(object: &mut LoadedObject) -> Availability {
    Availability::of(attach_firewall(object))
}

/// The warning for [`start_firewall`]'s failure.
pub fn warn_firewall(status: &Availability) {
    if let Some(why) = status.why_not() {
        tracing::warn!("resets this host's firewall sends (reject with tcp reset) are not traced: {why}");
    }
}

/// Loads and attaches the fentry program of each reject function the kernel has. A kernel with
/// only one of them (no IPv6) gets that one, and the log says which is missing.
///
/// # Errors
/// Why no program could be attached: no BTF or neither function ([`Error::Firewall`], as found
/// at load), or the kernel refused to load or attach (e.g. without CAP_BPF / CAP_PERFMON,
/// [`Error::FirewallProgram`]).
pub fn attach_firewall(object: &mut LoadedObject) -> Result<(), Error> {
    let functions = object.firewall_functions().map_err(|why| Error::Firewall(why.to_owned()))?.to_vec();
    let btf = Btf::from_sys_fs().map_err(|error| Error::Firewall(format!("reading the kernel's BTF: {error}")))?;
    for (program, function) in [(PROG_NF_SEND_RESET, FN_NF_SEND_RESET), (PROG_NF_SEND_RESET6, FN_NF_SEND_RESET6)] {
        if !functions.contains(&function) {
            tracing::info!("this kernel has no {function} built in: its firewall resets are not traced");
            continue;
        }
        let fentry: &mut FEntry =
            object.program_mut(program).ok_or_else(|| Error::MissingProgram(program.to_owned()))?.try_into()?;
        let failed = |what| {
            move |source: aya::programs::ProgramError| {
                let refused = denied(&source) && privileged();
                Error::FirewallProgram { what, function, refused, source }
            }
        };
        fentry.load(function, &btf).map_err(failed("loading the fentry program on"))?;
        fentry.attach().map_err(failed("attaching the fentry program to"))?;
    }
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
/// structs and unions (`sk_buff` keeps its headers in `struct_group`s) and the names of
/// functions; the workload's reader looks at direct members only.
struct Types {
    /// By type id (id 0 is `void`): structs' and unions' members as (name, type id, bit
    /// offset), and what qualifiers and typedefs refer to.
    entries: Vec<Entry>,
    structs: HashMap<String, u32>,
    functions: HashSet<String>,
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
        let mut types = Types { entries: vec![Entry::default()], structs: HashMap::new(), functions: HashSet::new() };
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
                _ => {}
            }
            types.entries.push(entry);
            at += extra;
        }
        Ok(types)
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
    }

    #[test]
    fn what_is_not_btf_is_named() {
        let error = FirewallOffsets::parse(b"not btf at all, not at all").expect_err("not BTF");
        assert!(error.to_string().contains("bad magic"), "{error}");
    }
}

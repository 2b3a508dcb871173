//! Just enough of the BTF format (`Documentation/bpf/btf.rst`) for what the programs' globals
//! need from `/sys/kernel/btf/vmlinux`, parsed once per load ([`Types::of_kernel`]):
//! - a member's byte offset, by struct and member ([`Types::member`]) or by path
//!   ([`Types::offset`], `inet_connection_sock.icsk_ack.lrcvtime`), through nested and anonymous
//!   structs and unions (`sk_buff`'s `network_header` sits in an unnamed struct inside an
//!   unnamed union): the workloads' cgroup path, the socket reads, the firewall's `sk_buff`;
//! - whether a function is in the kernel's BTF ([`Types::has_function`]): the fentry targets;
//! - an enumerator's value ([`Types::enumerator`]): `enum skb_drop_reason`'s.
//!
//! aya parses BTF too but keeps struct members private.

use std::{collections::HashMap, sync::Arc};

/// Where the kernel's BTF is.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_TYPE_TAG: u32 = 18;

/// Why the kernel's BTF, or something in it, cannot be had.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("reading /sys/kernel/btf/vmlinux (Linux >= 5.4 with CONFIG_DEBUG_INFO_BTF)")]
    NoBtf(#[source] Arc<std::io::Error>),
    #[error("reading the kernel's BTF: {0}")]
    Malformed(String),
    #[error("this kernel's BTF has no {0}")]
    Missing(String),
    #[error("{0} is a bitfield")]
    Bitfield(String),
}

#[derive(Debug, Clone, Copy)]
struct Member {
    name: u32,
    ty: u32,
    bits: u32,
}

#[derive(Debug)]
struct Type {
    kind: u32,
    name: u32,
    /// The referenced type of a typedef or qualifier.
    refers: u32,
    /// A struct's or union's members.
    members: Vec<Member>,
    /// An enum's enumerators: (name, value).
    values: Vec<(u32, u32)>,
}

/// The types of one BTF blob.
pub struct Types {
    /// By type id (id 0 is `void`).
    types: Vec<Type>,
    strings: Vec<u8>,
    /// Named structs by name (the first of a name).
    structs: HashMap<String, u32>,
}

impl Types {
    /// This kernel's ([`VMLINUX_BTF`]).
    ///
    /// # Errors
    /// [`Error::NoBtf`] when the file cannot be read, [`Error::Malformed`] when it is not BTF.
    pub fn of_kernel() -> Result<Types, Error> {
        Types::parse(&std::fs::read(VMLINUX_BTF).map_err(|error| Error::NoBtf(Arc::new(error)))?)
    }

    /// Reads a raw BTF blob (native byte order).
    ///
    /// # Errors
    /// [`Error::Malformed`] when the blob is truncated or not BTF.
    pub fn parse(blob: &[u8]) -> Result<Types, Error> {
        let bad = |what: &str| Error::Malformed(what.to_owned());
        let u32_at = |at: usize| -> Result<u32, Error> {
            blob.get(at..at + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])).ok_or_else(|| bad("truncated"))
        };
        if blob.len() < 24 || u16::from_ne_bytes([blob[0], blob[1]]) != MAGIC {
            return Err(bad("not a BTF blob (bad magic)"));
        }
        let header = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings =
            blob.get(header + str_off..header + str_off + str_len).ok_or_else(|| bad("truncated strings"))?.to_vec();
        // Type ids start at 1: 0 is void.
        let mut types = vec![Type { kind: 0, name: 0, refers: 0, members: Vec::new(), values: Vec::new() }];
        let mut at = header + type_off;
        let end = at + type_len;
        while at < end {
            let (name, info, size_or_type) = (u32_at(at)?, u32_at(at + 4)?, u32_at(at + 8)?);
            let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31 == 1);
            at += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                4 | 5 | 15 | 19 => 12 * vlen,
                6 | 13 => 8 * vlen,
                2 | 7..=12 | 16 | 18 => 0,
                other => return Err(Error::Malformed(format!("unknown BTF kind {other}"))),
            };
            let (mut members, mut values) = (Vec::new(), Vec::new());
            if kind == KIND_STRUCT || kind == KIND_UNION {
                for member in 0..vlen {
                    let base = at + 12 * member;
                    let offset = u32_at(base + 8)?;
                    // With kind_flag the top byte is a bitfield's size.
                    let bits = if kind_flag { offset & 0x00ff_ffff } else { offset };
                    members.push(Member { name: u32_at(base)?, ty: u32_at(base + 4)?, bits });
                }
            } else if kind == KIND_ENUM {
                for value in 0..vlen {
                    let base = at + 8 * value;
                    values.push((u32_at(base)?, u32_at(base + 4)?));
                }
            }
            types.push(Type { kind, name, refers: size_or_type, members, values });
            at += extra;
        }
        let mut parsed = Types { types, strings, structs: HashMap::new() };
        for (id, ty) in parsed.types.iter().enumerate() {
            let name = parsed.name(ty.name);
            if ty.kind == KIND_STRUCT && !name.is_empty() && !parsed.structs.contains_key(name) {
                let id = u32::try_from(id).map_err(|_| bad("too many types"))?;
                parsed.structs.insert(name.to_owned(), id);
            }
        }
        Ok(parsed)
    }

    fn name(&self, offset: u32) -> &str {
        let tail = self.strings.get(offset as usize..).unwrap_or_default();
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        std::str::from_utf8(&tail[..end]).unwrap_or_default()
    }

    /// The struct or union behind typedefs and qualifiers.
    fn aggregate(&self, mut id: u32) -> Option<&Type> {
        // A bounded walk: BTF from a broken kernel could loop.
        for _ in 0..16 {
            let ty = self.types.get(id as usize)?;
            match ty.kind {
                KIND_STRUCT | KIND_UNION => return Some(ty),
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => id = ty.refers,
                _ => return None,
            }
        }
        None
    }

    /// `name`'s bit offset and type in `ty`, looking into its anonymous members too.
    fn find(&self, ty: &Type, name: &str, depth: u32) -> Option<(u32, u32)> {
        if let Some(found) = ty.members.iter().find(|m| self.name(m.name) == name) {
            return Some((found.bits, found.ty));
        }
        if depth >= 8 {
            return None;
        }
        ty.members.iter().filter(|m| m.name == 0 || self.name(m.name).is_empty()).find_map(|anonymous| {
            let inner = self.aggregate(anonymous.ty)?;
            self.find(inner, name, depth + 1).map(|(bits, ty)| (anonymous.bits + bits, ty))
        })
    }

    /// The byte offset of `path` (`"sk_buff.network_header"`, `"inet_connection_sock.icsk_ack.lrcvtime"`):
    /// a named struct, then members, each (but the last) a struct or union; each member may sit
    /// in anonymous structs and unions.
    ///
    /// # Errors
    /// [`Error::Missing`] naming the path this kernel lacks, [`Error::Bitfield`] when the member
    /// does not start on a byte.
    pub fn offset(&self, path: &str) -> Result<u32, Error> {
        let missing = || Error::Missing(path.to_owned());
        let mut parts = path.split('.');
        let first = parts.next().ok_or_else(missing)?;
        let mut ty = self.structs.get(first).and_then(|&id| self.types.get(id as usize)).ok_or_else(missing)?;
        let mut bits = 0;
        let mut parts = parts.peekable();
        while let Some(part) = parts.next() {
            let (offset, member) = self.find(ty, part, 0).ok_or_else(missing)?;
            bits += offset;
            if parts.peek().is_some() {
                ty = self.aggregate(member).ok_or_else(missing)?;
            }
        }
        if bits % 8 != 0 {
            return Err(Error::Bitfield(path.to_owned()));
        }
        Ok(bits / 8)
    }

    /// The byte offset of `member` in struct `strukt`: [`Types::offset`] of `strukt.member`.
    ///
    /// # Errors
    /// As [`Types::offset`].
    pub fn member(&self, strukt: &str, member: &str) -> Result<u32, Error> {
        self.offset(&format!("{strukt}.{member}"))
    }

    /// Whether the BTF has a function named `name`.
    pub fn has_function(&self, name: &str) -> bool {
        self.types.iter().any(|ty| ty.kind == KIND_FUNC && self.name(ty.name) == name)
    }

    /// The value of `enumerator` in enum `enumeration` (the first enum of that name).
    pub fn enumerator(&self, enumeration: &str, enumerator: &str) -> Option<u32> {
        let ty = self.types.iter().find(|ty| ty.kind == KIND_ENUM && self.name(ty.name) == enumeration)?;
        ty.values.iter().find(|(name, _)| self.name(*name) == enumerator).map(|&(_, value)| value)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Lays out a BTF blob as the kernel writes it; type ids count from 1 in `put` order.
    #[derive(Default)]
    pub(crate) struct Builder {
        strings: Vec<u8>,
        types: Vec<u8>,
    }

    impl Builder {
        pub(crate) fn new() -> Builder {
            Builder { strings: vec![0], types: Vec::new() }
        }

        pub(crate) fn intern(&mut self, s: &str) -> u32 {
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            at
        }

        pub(crate) fn put(&mut self, words: &[u32]) {
            words.iter().for_each(|w| self.types.extend_from_slice(&w.to_ne_bytes()));
        }

        pub(crate) fn build(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_ne_bytes());
            out.extend_from_slice(&[1, 0]);
            let (types, strings) = (self.types.len() as u32, self.strings.len() as u32);
            for word in [24u32, 0, types, types, strings] {
                out.extend_from_slice(&word.to_ne_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A BTF blob with one INT, one PTR and the given structs (`name`, members as
    /// (`name`, bit offset)).
    pub(crate) fn blob(structs: &[(&str, &[(&str, u32)])]) -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.intern("int");
        b.put(&[int, 1 << 24, 4, 32]);
        b.put(&[0, 2 << 24, 1]);
        for (name, members) in structs {
            let name = b.intern(name);
            b.put(&[name, (KIND_STRUCT << 24) | members.len() as u32, 64]);
            for (member, bits) in *members {
                let member = b.intern(member);
                b.put(&[member, 1, *bits]);
            }
        }
        b.build()
    }

    /// A blob: an INT (id 1); struct `outer` (id 2) with `a` at byte 4 and an anonymous union
    /// (id 3) at byte 8 holding an anonymous struct (id 4) whose `deep` is at byte 2, and
    /// `named` (a typedef, id 5, of struct `inner`, id 6, with `x` at byte 12) at byte 16; then
    /// function `f` (id 7, of no prototype) and enum `e` (id 8) with `E_ONE` = 1, `E_TWO` = 2.
    pub(crate) fn nested_blob() -> Vec<u8> {
        let mut b = Builder::new();
        let (int, outer, a, deep, named, inner, x, inner_t) = (
            b.intern("int"),
            b.intern("outer"),
            b.intern("a"),
            b.intern("deep"),
            b.intern("named"),
            b.intern("inner"),
            b.intern("x"),
            b.intern("inner_t"),
        );
        let (f, e, one, two) = (b.intern("f"), b.intern("e"), b.intern("E_ONE"), b.intern("E_TWO"));
        b.put(&[int, 1 << 24, 4, 32]);
        b.put(&[outer, (KIND_STRUCT << 24) | 3, 64, a, 1, 32, 0, 3, 64, named, 5, 128]);
        b.put(&[0, (KIND_UNION << 24) | 1, 8, 0, 4, 0]);
        b.put(&[0, (KIND_STRUCT << 24) | 1, 8, deep, 1, 16]);
        b.put(&[inner_t, KIND_TYPEDEF << 24, 6]);
        b.put(&[inner, (KIND_STRUCT << 24) | 1, 16, x, 1, 96]);
        b.put(&[f, KIND_FUNC << 24, 0]);
        b.put(&[e, (KIND_ENUM << 24) | 2, 4, one, 1, two, 2]);
        b.build()
    }

    #[test]
    fn finds_member_offsets_of_named_structs() {
        let blob = blob(&[("other", &[("x", 0)]), ("sock", &[("a", 0), ("sk_cgrp_data", 5376)])]);
        let types = Types::parse(&blob).expect("parses");
        assert_eq!(types.member("sock", "sk_cgrp_data").expect("offset"), 672);
        assert_eq!(types.member("other", "x").expect("offset"), 0);
        let missing = types.member("other", "y").expect_err("no y");
        assert!(missing.to_string().contains("other.y"), "{missing}");
        let bitfield = Types::parse(&self::blob(&[("s", &[("b", 3)])])).expect("parses");
        assert!(matches!(bitfield.member("s", "b"), Err(Error::Bitfield(_))));
    }

    #[test]
    fn paths_go_through_anonymous_and_typedefd_members() {
        let types = Types::parse(&nested_blob()).expect("parses");
        assert_eq!(types.offset("outer.a").expect("a"), 4);
        assert_eq!(types.offset("outer.deep").expect("deep"), 10);
        assert_eq!(types.member("outer", "deep").expect("deep"), 10);
        assert_eq!(types.offset("outer.named.x").expect("x"), 28);
        let missing = types.offset("outer.named.y").expect_err("no y");
        assert!(missing.to_string().contains("outer.named.y"), "{missing}");
        assert!(types.offset("nothing.a").is_err());
        assert!(types.offset("outer.a.x").is_err(), "a is not a struct");
    }

    #[test]
    fn functions_and_enumerators() {
        let types = Types::parse(&nested_blob()).expect("parses");
        assert!(types.has_function("f"));
        assert!(!types.has_function("g") && !types.has_function("outer"));
        assert_eq!(types.enumerator("e", "E_TWO"), Some(2));
        assert_eq!(types.enumerator("e", "E_THREE"), None);
        assert_eq!(types.enumerator("outer", "a"), None);
    }

    #[test]
    fn rejects_what_is_not_btf() {
        let error = Types::parse(b"not btf at all, not at all").err().expect("not BTF");
        assert!(error.to_string().contains("bad magic"), "{error}");
        let mut truncated = blob(&[("sock", &[("a", 0)])]);
        truncated.truncate(40);
        assert!(Types::parse(&truncated).is_err());
    }

    /// What the workloads, the socket reads and the firewall read on this kernel.
    #[test]
    fn this_kernels_btf_has_what_the_programs_read() {
        let types = match Types::of_kernel() {
            Ok(types) => types,
            Err(Error::NoBtf(_)) => {
                let skip =
                    rst_lab::skip::skip("this_kernels_btf_has_what_the_programs_read", &format!("no {VMLINUX_BTF}"));
                skip.expect("CI=true: this test must run");
                return;
            }
            Err(error) => panic!("{error}"),
        };
        let sock_cgroup = types.member("sock", "sk_cgrp_data").expect("sock")
            + types.member("sock_cgroup_data", "cgroup").expect("sock_cgroup_data");
        assert!(sock_cgroup > 0);
        for (strukt, member) in [
            ("cgroup", "kn"),
            ("kernfs_node", "id"),
            ("sk_buff", "head"),
            ("sk_buff", "network_header"),
            ("sk_buff", "transport_header"),
            ("sk_buff", "dev"),
            ("sk_buff", "_skb_refdst"),
            ("rtable", "rt_flags"),
            ("rt6_info", "rt6i_flags"),
            ("sock", "sk_ack_backlog"),
            ("sock", "sk_max_ack_backlog"),
            ("tcp_sock", "lsndtime"),
        ] {
            let offset = types.member(strukt, member).unwrap_or_else(|e| panic!("{e}"));
            eprintln!("{strukt}.{member}: {offset}");
        }
        assert!(types.member("sk_buff", "network_header").expect("nh") > types.member("sk_buff", "dev").expect("dev"));
        let lrcvtime = types.offset("inet_connection_sock.icsk_ack.lrcvtime").expect("lrcvtime");
        assert!(types.offset("tcp_sock.lsndtime").expect("lsndtime") > lrcvtime);
        assert_eq!(
            types.member("sock", "sk_max_ack_backlog").expect("max"),
            types.member("sock", "sk_ack_backlog").expect("backlog") + 4
        );
        eprintln!("sock cgroup: {sock_cgroup}, icsk_ack.lrcvtime: {lrcvtime}");
        eprintln!(
            "nf_send_reset: {}, nf_send_reset6: {}, SKB_DROP_REASON_NETFILTER_DROP: {:?}",
            types.has_function("nf_send_reset"),
            types.has_function("nf_send_reset6"),
            types.enumerator("skb_drop_reason", "SKB_DROP_REASON_NETFILTER_DROP")
        );
        assert!(types.has_function("tcp_v4_rcv"), "a function every kernel has");
    }
}

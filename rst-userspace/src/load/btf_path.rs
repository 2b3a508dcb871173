//! A member's byte offset by path (`inet_connection_sock.icsk_ack.lrcvtime`) in the kernel's
//! BTF, through nested and anonymous structs and unions (`sk_buff`'s `network_header` sits in
//! an unnamed struct inside an unnamed union): what the socket-reading parts of the tracepoint
//! programs need, which the named-struct lookup of [`crate::model::workload::btf`] does not
//! reach.

use std::collections::HashMap;

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;

/// Why a member's offset cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading /sys/kernel/btf/vmlinux (Linux >= 5.4 with CONFIG_DEBUG_INFO_BTF)")]
    NoBtf(#[source] std::io::Error),
    #[error("the kernel's BTF: {0}")]
    Malformed(&'static str),
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
}

/// The types of one BTF blob, enough to walk member paths.
pub struct Types {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs: HashMap<String, u32>,
}

impl Types {
    /// This kernel's (`/sys/kernel/btf/vmlinux`).
    ///
    /// # Errors
    /// [`Error::NoBtf`] when the file cannot be read, [`Error::Malformed`] when it is not BTF.
    pub fn of_kernel() -> Result<Types, Error> {
        Types::parse(&std::fs::read("/sys/kernel/btf/vmlinux").map_err(Error::NoBtf)?)
    }

    /// Reads a raw BTF blob (native byte order).
    ///
    /// # Errors
    /// [`Error::Malformed`] when the blob is truncated or not BTF.
    pub fn parse(blob: &[u8]) -> Result<Types, Error> {
        let u32_at = |at: usize| -> Result<u32, Error> {
            blob.get(at..at + 4)
                .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or(Error::Malformed("truncated"))
        };
        if blob.len() < 24 || u16::from_ne_bytes([blob[0], blob[1]]) != MAGIC {
            return Err(Error::Malformed("not a BTF blob (bad magic)"));
        }
        let header = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = blob
            .get(header + str_off..header + str_off + str_len)
            .ok_or(Error::Malformed("truncated strings"))?
            .to_vec();
        // Type ids start at 1: 0 is void.
        let mut types = vec![Type { kind: 0, name: 0, refers: 0, members: Vec::new() }];
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
                _ => return Err(Error::Malformed("unknown BTF kind")),
            };
            let mut members = Vec::new();
            if kind == KIND_STRUCT || kind == KIND_UNION {
                for member in 0..vlen {
                    let base = at + 12 * member;
                    let offset = u32_at(base + 8)?;
                    // With kind_flag the top byte is a bitfield's size.
                    let bits = if kind_flag { offset & 0x00ff_ffff } else { offset };
                    members.push(Member { name: u32_at(base)?, ty: u32_at(base + 4)?, bits });
                }
            }
            types.push(Type { kind, name, refers: size_or_type, members });
            at += extra;
        }
        let mut parsed = Types { types, strings, structs: HashMap::new() };
        for (id, ty) in parsed.types.iter().enumerate() {
            let name = parsed.name(ty.name);
            if ty.kind == KIND_STRUCT && !name.is_empty() && !parsed.structs.contains_key(name) {
                let id = u32::try_from(id).map_err(|_| Error::Malformed("too many types"))?;
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
    fn member(&self, ty: &Type, name: &str, depth: u32) -> Option<(u32, u32)> {
        if let Some(found) = ty.members.iter().find(|m| self.name(m.name) == name) {
            return Some((found.bits, found.ty));
        }
        if depth >= 8 {
            return None;
        }
        ty.members.iter().filter(|m| m.name == 0 || self.name(m.name).is_empty()).find_map(|anonymous| {
            let inner = self.aggregate(anonymous.ty)?;
            self.member(inner, name, depth + 1).map(|(bits, ty)| (anonymous.bits + bits, ty))
        })
    }

    /// The byte offset of `path` (`"sk_buff.network_header"`, `"inet_connection_sock.icsk_ack.lrcvtime"`):
    /// a named struct, then members, each (but the last) a struct or union.
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
            let (offset, member) = self.member(ty, part, 0).ok_or_else(missing)?;
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
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A blob: an INT (id 1); struct `outer` (id 2) with `a` at byte 4 and an anonymous union
    /// (id 3) at byte 8 holding an anonymous struct (id 4) whose `deep` is at byte 2, and
    /// `named` (a typedef, id 5, of struct `inner`, id 6, with `x` at byte 12) at byte 16.
    pub(crate) fn blob() -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut intern = |s: &str| {
            let at = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            at
        };
        let (int, outer, a, deep, named, inner, x, inner_t) = (
            intern("int"),
            intern("outer"),
            intern("a"),
            intern("deep"),
            intern("named"),
            intern("inner"),
            intern("x"),
            intern("inner_t"),
        );
        let mut types = Vec::new();
        let mut put = |words: &[u32]| words.iter().for_each(|w| types.extend_from_slice(&w.to_ne_bytes()));
        put(&[int, 1 << 24, 4, 32]);
        put(&[outer, (KIND_STRUCT << 24) | 3, 64, a, 1, 32, 0, 3, 64, named, 5, 128]);
        put(&[0, (KIND_UNION << 24) | 1, 8, 0, 4, 0]);
        put(&[0, (KIND_STRUCT << 24) | 1, 8, deep, 1, 16]);
        put(&[inner_t, KIND_TYPEDEF << 24, 6]);
        put(&[inner, (KIND_STRUCT << 24) | 1, 16, x, 1, 96]);
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC.to_ne_bytes());
        out.extend_from_slice(&[1, 0]);
        for word in [24u32, 0, types.len() as u32, types.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&word.to_ne_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(&strings);
        out
    }

    #[test]
    fn paths_go_through_anonymous_and_typedefd_members() {
        let types = Types::parse(&blob()).expect("parses");
        assert_eq!(types.offset("outer.a").expect("a"), 4);
        assert_eq!(types.offset("outer.deep").expect("deep"), 10);
        assert_eq!(types.offset("outer.named.x").expect("x"), 28);
        let missing = types.offset("outer.named.y").expect_err("no y");
        assert!(missing.to_string().contains("outer.named.y"), "{missing}");
        assert!(types.offset("nothing.a").is_err());
        assert!(types.offset("outer.a.x").is_err(), "a is not a struct");
    }

    #[test]
    fn this_kernels_socket_members() {
        let Ok(types) = Types::of_kernel() else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux");
            return;
        };
        for path in [
            "sk_buff.head",
            "sk_buff.network_header",
            "sk_buff.transport_header",
            "sock.sk_ack_backlog",
            "sock.sk_max_ack_backlog",
            "inet_connection_sock.icsk_ack.lrcvtime",
            "tcp_sock.lsndtime",
        ] {
            let offset = types.offset(path).expect(path);
            eprintln!("{path}: {offset}");
        }
    }
}

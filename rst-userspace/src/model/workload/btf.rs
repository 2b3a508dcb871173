//! Just enough of the BTF format (`Documentation/bpf/btf.rst`) to find a member's byte offset
//! in a named struct of `/sys/kernel/btf/vmlinux`: where the kernel keeps a socket's cgroup.
//! aya parses BTF too but keeps struct members private.

use std::collections::HashMap;

use super::Error;

const MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;

/// The members (name → bit offset) of the named structs of one BTF blob.
#[derive(Debug, Default)]
pub struct Structs {
    members: HashMap<String, HashMap<String, u32>>,
}

impl Structs {
    /// Reads the structs named in `wanted` from a raw BTF blob (native byte order).
    ///
    /// # Errors
    /// [`Error::Btf`] when the blob is truncated or not BTF.
    pub fn parse(blob: &[u8], wanted: &[&str]) -> Result<Structs, Error> {
        let bad = |what: &str| Error::Btf(what.to_owned());
        let u32_at = |at: usize| -> Result<u32, Error> {
            blob.get(at..at + 4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]])).ok_or_else(|| bad("truncated"))
        };
        if blob.len() < 24 || u16::from_ne_bytes([blob[0], blob[1]]) != MAGIC {
            return Err(bad("not a BTF blob (bad magic)"));
        }
        let header = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = blob.get(header + str_off..header + str_off + str_len).ok_or_else(|| bad("truncated strings"))?;
        let name = |offset: u32| -> &str {
            let tail = strings.get(offset as usize..).unwrap_or_default();
            let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
            std::str::from_utf8(&tail[..end]).unwrap_or_default()
        };
        let mut structs = Structs::default();
        let mut at = header + type_off;
        let end = at + type_len;
        while at < end {
            let (name_off, info) = (u32_at(at)?, u32_at(at + 4)?);
            let (kind, vlen, kind_flag) = ((info >> 24) & 0x1f, (info & 0xffff) as usize, info >> 31 == 1);
            at += 12;
            let extra = match kind {
                1 | 14 | 17 => 4,
                3 => 12,
                4 | 5 | 15 | 19 => 12 * vlen,
                6 | 13 => 8 * vlen,
                2 | 7..=12 | 16 | 18 => 0,
                other => return Err(Error::Btf(format!("unknown BTF kind {other}"))),
            };
            let type_name = name(name_off);
            if kind == KIND_STRUCT && wanted.contains(&type_name) && !structs.members.contains_key(type_name) {
                let mut members = HashMap::new();
                for member in 0..vlen {
                    let base = at + 12 * member;
                    let offset = u32_at(base + 8)?;
                    // With kind_flag the top byte is a bitfield's size.
                    let bits = if kind_flag { offset & 0x00ff_ffff } else { offset };
                    members.insert(name(u32_at(base)?).to_owned(), bits);
                }
                structs.members.insert(type_name.to_owned(), members);
            }
            at += extra;
        }
        Ok(structs)
    }

    /// The byte offset of `member` in `strukt`.
    ///
    /// # Errors
    /// [`Error::Btf`] naming what this kernel lacks.
    pub fn offset(&self, strukt: &str, member: &str) -> Result<u32, Error> {
        let bits = self
            .members
            .get(strukt)
            .and_then(|members| members.get(member))
            .ok_or_else(|| Error::Btf(format!("this kernel's BTF has no {strukt}.{member}")))?;
        if bits % 8 != 0 {
            return Err(Error::Btf(format!("{strukt}.{member} is a bitfield")));
        }
        Ok(bits / 8)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A BTF blob with one INT, one PTR and the given structs (`name`, members as
    /// (`name`, bit offset)), laid out as the kernel writes it.
    pub(crate) fn blob(structs: &[(&str, &[(&str, u32)])]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut intern = |s: &str| {
            let at = strings.len() as u32;
            strings.extend_from_slice(s.as_bytes());
            strings.push(0);
            at
        };
        let mut types = Vec::new();
        let mut put = |words: &[u32]| words.iter().for_each(|w| types.extend_from_slice(&w.to_ne_bytes()));
        let int = intern("int");
        put(&[int, 1 << 24, 4, 32]);
        put(&[0, 2 << 24, 1]);
        for (name, members) in structs {
            let name = intern(name);
            put(&[name, (KIND_STRUCT << 24) | members.len() as u32, 64]);
            for (member, bits) in *members {
                let member = intern(member);
                put(&[member, 1, *bits]);
            }
        }
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
    fn finds_member_offsets_of_wanted_structs() {
        let blob = blob(&[("other", &[("x", 0)]), ("sock", &[("a", 0), ("sk_cgrp_data", 5376)])]);
        let structs = Structs::parse(&blob, &["sock"]).expect("parses");
        assert_eq!(structs.offset("sock", "sk_cgrp_data").expect("offset"), 672);
        let missing = structs.offset("other", "x").expect_err("not wanted");
        assert!(missing.to_string().contains("other.x"), "{missing}");
    }

    #[test]
    fn rejects_what_is_not_btf() {
        assert!(Structs::parse(b"not btf at all, not at all", &["sock"]).is_err());
        let mut truncated = blob(&[("sock", &[("a", 0)])]);
        truncated.truncate(40);
        assert!(Structs::parse(&truncated, &["sock"]).is_err());
    }

    #[test]
    fn this_kernels_btf_has_the_socket_cgroup_path() {
        let Ok(blob) = std::fs::read("/sys/kernel/btf/vmlinux") else {
            eprintln!("skipped: no /sys/kernel/btf/vmlinux");
            return;
        };
        let structs = Structs::parse(&blob, &["sock", "sock_cgroup_data", "cgroup", "kernfs_node"]).expect("parses");
        assert!(structs.offset("sock", "sk_cgrp_data").expect("sock") > 0);
        structs.offset("kernfs_node", "id").expect("kernfs_node.id");
    }
}

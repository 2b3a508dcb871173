//! Workloads: which service, container or pod sent or received each reset, and whether a
//! socket or the kernel alone sent it.
//!
//! The kernel side (`rst-ebpf/src/workload.rs`) reads the socket's cgroup id in the two reset
//! tracepoints; this module finds the offsets it reads at ([`crate::load::btf`], the format files), attaches
//! `tcp:tcp_receive_reset`, and names cgroups ([`names`], pure; [`resolve`], the filesystem,
//! caching in [`recent`] maps that forget what goes unused).
//! Needs what kernel reasons need (tracefs, CAP_PERFMON) and a readable `/sys/kernel/btf/vmlinux`.

pub mod names;
pub mod netns;
pub mod recent;
pub mod resolve;

use std::path::PathBuf;

use anyhow::Context as _;
use aya::{programs::TracePoint, Ebpf, EbpfLoader};
use rst_common::wire::{
    GLOBAL_CGROUP_KN_OFFSET, GLOBAL_KERNFS_NODE_ID_OFFSET, GLOBAL_RECEIVE_RESET_DADDR_OFFSET,
    GLOBAL_RECEIVE_RESET_DADDR_V6_OFFSET, GLOBAL_RECEIVE_RESET_DPORT_OFFSET, GLOBAL_RECEIVE_RESET_FAMILY_OFFSET,
    GLOBAL_RECEIVE_RESET_SADDR_OFFSET, GLOBAL_RECEIVE_RESET_SADDR_V6_OFFSET, GLOBAL_RECEIVE_RESET_SKADDR_OFFSET,
    GLOBAL_RECEIVE_RESET_SPORT_OFFSET, GLOBAL_SEND_RESET_SKADDR_OFFSET, GLOBAL_SEND_RESET_STATE_OFFSET,
    GLOBAL_SOCK_CGROUP_OFFSET, GLOBAL_WORKLOADS_ON, PROG_RECEIVE_RESET,
};

pub use self::resolve::{Resolver, DEFAULT_POD_LOGS};

use crate::{availability::Availability, load::btf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Btf(#[from] btf::Error),
    #[error("tracepoint {0}: {1}")]
    Format(&'static str, String),
    #[error("reading /proc/self/mountinfo")]
    Mountinfo(#[source] std::io::Error),
    #[error("no cgroup2 hierarchy is mounted")]
    NoCgroup2,
}

/// Where the kernel keeps what the workload programs read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    pub send_skaddr: u32,
    pub send_state: u32,
    pub receive: ReceiveFormat,
    pub sock_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
}

/// The fields of `tcp:tcp_receive_reset` rstwatch reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveFormat {
    pub skaddr: u32,
    pub sport: u32,
    pub dport: u32,
    pub family: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub saddr_v6: u32,
    pub daddr_v6: u32,
}

impl ReceiveFormat {
    /// The fields' offsets from `tcp:tcp_receive_reset`'s format file.
    pub fn parse(format: &str) -> Result<ReceiveFormat, Error> {
        let field = |name, size| field("tcp_receive_reset", format, name, size);
        Ok(ReceiveFormat {
            skaddr: field("skaddr", 8)?,
            sport: field("sport", 2)?,
            dport: field("dport", 2)?,
            family: field("family", 2)?,
            saddr: field("saddr", 4)?,
            daddr: field("daddr", 4)?,
            saddr_v6: field("saddr_v6", 16)?,
            daddr_v6: field("daddr_v6", 16)?,
        })
    }

    /// Sets where the `tcp:tcp_receive_reset` programs read the fields, for every part that
    /// reads them (the workloads, the idle gaps): the same values from the same format file.
    pub fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        let ReceiveFormat { skaddr, sport, dport, family, saddr, daddr, saddr_v6, daddr_v6 } = self;
        loader
            .override_global(GLOBAL_RECEIVE_RESET_SKADDR_OFFSET, skaddr, true)
            .override_global(GLOBAL_RECEIVE_RESET_SPORT_OFFSET, sport, true)
            .override_global(GLOBAL_RECEIVE_RESET_DPORT_OFFSET, dport, true)
            .override_global(GLOBAL_RECEIVE_RESET_FAMILY_OFFSET, family, true)
            .override_global(GLOBAL_RECEIVE_RESET_SADDR_OFFSET, saddr, true)
            .override_global(GLOBAL_RECEIVE_RESET_DADDR_OFFSET, daddr, true)
            .override_global(GLOBAL_RECEIVE_RESET_SADDR_V6_OFFSET, saddr_v6, true)
            .override_global(GLOBAL_RECEIVE_RESET_DADDR_V6_OFFSET, daddr_v6, true);
    }
}

fn read_format(event: &'static str) -> Result<String, Error> {
    crate::load::tracefs::tcp_format(event).map_err(|crate::load::tracefs::NoFormat { denied }| {
        Error::Format(
            event,
            if denied {
                // tracefs is root's, mode 0700: CAP_BPF and CAP_PERFMON do not open it.
                "tracefs is not readable by this user: run as uid 0 (with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON \
                 only, as in a container), or grant CAP_DAC_READ_SEARCH"
                    .into()
            } else {
                "no format file (is tracefs mounted at /sys/kernel/tracing?)".into()
            },
        )
    })
}

/// The offset of field `name` (of `size` bytes) in a tracepoint format file.
pub fn field(event: &'static str, format: &str, name: &str, size: u32) -> Result<u32, Error> {
    crate::load::tracefs::field(format, name, size).map_err(|error| {
        Error::Format(
            event,
            match error {
                crate::load::tracefs::FieldError::Size => format!("field {name} is not {size} bytes"),
                crate::load::tracefs::FieldError::Missing => format!("no field {name}"),
            },
        )
    })
}

impl Offsets {
    /// From this kernel's BTF ([`btf::Types::of_kernel`], read once per load) and format files.
    ///
    /// # Errors
    /// What this kernel or mount lacks, to be said once.
    pub fn read(btf: Result<&btf::Types, &btf::Error>) -> Result<Offsets, Error> {
        let types = btf.map_err(Clone::clone)?;
        Offsets::parse(&read_format("tcp_send_reset")?, &read_format("tcp_receive_reset")?, types)
    }

    pub fn parse(send_format: &str, receive_format: &str, types: &btf::Types) -> Result<Offsets, Error> {
        let send = |name, size| field("tcp_send_reset", send_format, name, size);
        Ok(Offsets {
            send_skaddr: send("skaddr", 8)?,
            send_state: send("state", 4)?,
            receive: ReceiveFormat::parse(receive_format)?,
            sock_cgroup: types.member("sock", "sk_cgrp_data")? + types.member("sock_cgroup_data", "cgroup")?,
            cgroup_kn: types.member("cgroup", "kn")?,
            kn_id: types.member("kernfs_node", "id")?,
        })
    }

    /// Sets the programs' globals, workloads on.
    pub fn apply<'a>(&'a self, loader: &mut EbpfLoader<'a>) {
        let Offsets { send_skaddr, send_state, receive, sock_cgroup, cgroup_kn, kn_id } = self;
        receive.apply(loader);
        loader
            .override_global(GLOBAL_WORKLOADS_ON, &1u32, true)
            .override_global(GLOBAL_SEND_RESET_SKADDR_OFFSET, send_skaddr, true)
            .override_global(GLOBAL_SEND_RESET_STATE_OFFSET, send_state, true)
            .override_global(GLOBAL_SOCK_CGROUP_OFFSET, sock_cgroup, true)
            .override_global(GLOBAL_CGROUP_KN_OFFSET, cgroup_kn, true)
            .override_global(GLOBAL_KERNFS_NODE_ID_OFFSET, kn_id, true);
    }
}

/// Whether a live run names workloads: off, or on with the kubelet's pod log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Setting {
    Off,
    On { pod_logs: PathBuf, cgroup_root: Option<PathBuf> },
}

/// Attaches `tcp:tcp_receive_reset` (the sent side rides on `tcp:tcp_send_reset`) and makes
/// the resolver; when that is not possible, why, for the caller to say once.
pub fn start(ebpf: &mut Ebpf, offsets_loaded: &Availability, setting: &Setting) -> Result<Resolver, String> {
    let Setting::On { pod_logs, cgroup_root } = setting else {
        return Err("off (--no-workloads)".into());
    };
    if let Some(why) = offsets_loaded.why_not() {
        return Err(why.to_owned());
    }
    let mut attach = || -> anyhow::Result<Resolver> {
        let program: &mut TracePoint = ebpf
            .program_mut(PROG_RECEIVE_RESET)
            .ok_or_else(|| anyhow::anyhow!("the eBPF object has no program {PROG_RECEIVE_RESET}"))?
            .try_into()?;
        program.load().context("loading the tcp:tcp_receive_reset program")?;
        program.attach("tcp", "tcp_receive_reset").context("attaching to tcp:tcp_receive_reset")?;
        Ok(match cgroup_root {
            Some(root) => Resolver::new(root.clone(), pod_logs.clone(), PathBuf::from("/proc")),
            None => Resolver::for_host(pod_logs)?,
        })
    };
    attach().map_err(|error| format!("{error:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND: &str = "\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n";
    const RECEIVE: &str = "\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
        \tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;\n\tfield:__u16 dport;\toffset:18;\tsize:2;\tsigned:0;\n\
        \tfield:__u16 family;\toffset:20;\tsize:2;\tsigned:0;\n\tfield:__u8 saddr[4];\toffset:22;\tsize:4;\tsigned:0;\n\
        \tfield:__u8 daddr[4];\toffset:26;\tsize:4;\tsigned:0;\n\tfield:__u8 saddr_v6[16];\toffset:30;\tsize:16;\tsigned:0;\n\
        \tfield:__u8 daddr_v6[16];\toffset:46;\tsize:16;\tsigned:0;\n";

    #[test]
    fn offsets_come_from_the_formats_and_btf() {
        let btf = btf::tests::blob(&[
            ("sock", &[("sk_cgrp_data", 5376)]),
            ("sock_cgroup_data", &[("cgroup", 0)]),
            ("cgroup", &[("kn", 2048)]),
            ("kernfs_node", &[("id", 768)]),
        ]);
        let btf = btf::Types::parse(&btf).expect("blob");
        let offsets = Offsets::parse(SEND, RECEIVE, &btf).expect("offsets");
        assert_eq!((offsets.send_skaddr, offsets.send_state), (16, 24));
        assert_eq!((offsets.receive.saddr, offsets.receive.daddr_v6), (22, 46));
        assert_eq!((offsets.sock_cgroup, offsets.cgroup_kn, offsets.kn_id), (672, 256, 96));
        let old = Offsets::parse(SEND, &RECEIVE.replace("family", "fam"), &btf).expect_err("no family");
        assert!(old.to_string().contains("tcp_receive_reset: no field family"), "{old}");
        let no_kn = btf::Types::parse(&btf::tests::blob(&[("sock", &[("sk_cgrp_data", 5376)])])).expect("blob");
        let no_kn = Offsets::parse(SEND, RECEIVE, &no_kn).expect_err("no cgroup");
        assert_eq!(no_kn.to_string(), "this kernel's BTF has no sock_cgroup_data.cgroup");
        let no_btf = btf::Types::parse(b"not btf at all, not at all").err().expect("not BTF");
        let no_btf = Offsets::read(Err(&no_btf)).expect_err("no BTF");
        assert_eq!(no_btf.to_string(), "reading the kernel's BTF: not a BTF blob (bad magic)");
    }
}

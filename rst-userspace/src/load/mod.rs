//! Loading the eBPF object and attaching its programs: XDP (or TC ingress) and TC egress on
//! each interface, and the `tcp:tcp_send_reset` tracepoint once.
//!
//! Minimum kernel: 5.18 (multi-buffer XDP); the attachments are bpf_links (5.9+; tcx 6.6+), so a
//! crashed or killed rstwatch leaves nothing behind: the kernel detaches when the last link fd
//! closes. Without tcx (before 6.6) rstwatch counts received resets only and says so; without
//! the tracepoint's `reason` (before 6.10) or tracefs it reports no kernel reasons and says so.
//!
//! By concern: `caps` (what loading and attaching need), `counting` (PREEMPT_RT and how the
//! programs count), `object` (loading: maps sized, globals set), `tail_call` (the payload
//! programs' wiring), `interfaces` (`-i` names and patterns), `attach` (XDP, tcx, clsact),
//! [`kernel_events`] (the `tcp:tcp_send_reset` program), [`firewall`] (netfilter's `reject with tcp
//! reset`: fentry, or the `skb:kfree_skb` fallback), [`netlink`], [`tracefs`], and
//! [`testrun`] (the object under BPF_PROG_TEST_RUN). Their items keep their `load::` paths.

pub mod btf;
pub mod firewall;
pub mod kernel_events;
pub mod netlink;
pub mod socket_reads;
pub mod testrun;
pub mod tracefs;

mod attach;
mod caps;
mod counting;
mod interfaces;
mod object;
mod tail_call;

// Each concern lives in its own module; their items keep their `load::` paths.
pub use attach::{
    attach, attach_all, attach_tc, attach_tc_egress, attach_tc_with, attach_xdp, AttachOptions, Attachment, Hook,
    HookChoice, TcLink, TcLinkChoice, XdpMode, XdpModeChoice,
};
pub use caps::check_capabilities;
pub use counting::{is_preempt_rt, Counting, CountingMode};
pub use firewall::{attach_firewall, log_firewall, start_firewall, FirewallHook, FirewallOffsets, FirewallTargets};
pub use interfaces::{is_pattern, pattern_matches, resolve_interface, resolve_targets};
// The tracepoint program's part of loading lives in its own module, too.
pub use kernel_events::{
    attach_kernel_events, parse_reason_names, reset_reason_names, start_kernel_events, warn_kernel_events,
    SendResetFormat,
};
pub use object::{
    load, load_counting, load_with, load_with_ports, overflow_sources_for, tc_egress_program, tc_program, xdp_program,
    CaptureLoad, LoadedObject,
};
pub use socket_reads::{attach_receive_reset, warn_socket_reads, SocketReads};

/// The XDP object built by `build.rs` (aya-build), embedded so the binary is self-contained.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rst-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("at most 4 extra {kind} ports ({count} given)")]
    TooManyTunnelPorts { kind: &'static str, count: usize },
    #[error("missing capability {capability} ({why}); {}", caps::grant_hint(.short))]
    MissingCapability { capability: &'static str, short: &'static str, why: &'static str },
    #[error("invalid interface name {name:?}: {why}")]
    InvalidInterfaceName { name: String, why: &'static str },
    #[error("unknown interface {name:?} (see `ip link`)")]
    UnknownInterface { name: String },
    #[error("interface {iface} already has an XDP program attached{holder}; rstwatch never replaces another program: watch beside it with --hook tc")]
    AlreadyAttached { iface: String, holder: String },
    #[error("the driver of {iface} does not support native XDP; use --xdp-mode skb (or auto)")]
    NativeUnsupported { iface: String },
    #[error("attaching XDP to {iface} ({mode}) failed")]
    Attach {
        iface: String,
        mode: XdpMode,
        #[source]
        source: crate::sys::Error,
    },
    #[error("attaching to the TC {direction} hook of {iface} failed")]
    AttachTc {
        iface: String,
        direction: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("loading the eBPF object failed")]
    Load(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("interface {name:?} given more than once")]
    DuplicateInterface { name: String },
    #[error("the eBPF object has no program {0}")]
    MissingProgram(String),
    #[error("the eBPF object has no map {0}")]
    MissingMap(String),
    #[error(transparent)]
    Program(#[from] aya::programs::ProgramError),
    #[error(transparent)]
    Map(#[from] aya::maps::MapError),
    /// A payload program that would not go into the program array its counting program
    /// tail-calls.
    #[error("putting {program} into {array}")]
    TailCall {
        program: String,
        array: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading the possible CPUs")]
    PossibleCpus(#[source] crate::collect::flow_table::Error),
    #[error("more CPUs than a u32 counts")]
    TooManyCpus,
    /// Why `tcp:tcp_send_reset` cannot give the kernel's reasons (no tracefs, an older kernel).
    #[error("{0}")]
    Tracepoint(String),
    /// Loading or attaching a tracepoint program (`what` says which).
    #[error("{what}")]
    TracepointProgram {
        what: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Why this host's firewall resets cannot be traced (no BTF, no reject function built in).
    #[error("{0}")]
    Firewall(String),
    /// Loading or attaching a firewall program (`what` says which, `function` where);
    /// `refused` when the kernel said EPERM although rstwatch holds CAP_BPF and CAP_PERFMON: it
    /// does not run fentry programs at all (no BPF trampolines, as in some VM kernels).
    #[error("{what} {function}{}: {source}", if *refused { " (this kernel refuses fentry programs even to a privileged loader: no BPF trampolines)" } else { "" })]
    FirewallProgram {
        what: &'static str,
        function: &'static str,
        refused: bool,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

//! Loading the eBPF object and attaching its programs: XDP (or TC ingress) and TC egress on
//! each interface, and the `tcp:tcp_send_reset` tracepoint once.
//!
//! Minimum kernel: 5.18 (multi-buffer XDP); the attachments are bpf_links (5.9+; tcx 6.6+), so a
//! crashed or killed rstwatch leaves nothing behind: the kernel detaches when the last link fd
//! closes. Without tcx (before 6.6) rstwatch counts received resets only and says so; without
//! the tracepoint's `reason` (before 6.10) or tracefs it reports no kernel reasons and says so.

pub mod kernel_events;
pub mod netlink;
pub mod testrun;
pub mod tracefs;

use std::{
    ffi::CString,
    fmt, io,
    os::fd::{AsFd as _, OwnedFd},
};

use anyhow::Context as _;
use aya::{
    maps::ProgramArray,
    programs::{
        tc::{SchedClassifierLink, TcAttachOptions},
        LinkOrder, SchedClassifier, TcAttachType, Xdp,
    },
    Ebpf, EbpfLoader,
};
use caps::{CapSet, Capability};
use rst_common::wire::{
    CountingPrograms, DIRECTION_RX, DIRECTION_TX, GLOBAL_CAPTURE_BUDGET, GLOBAL_CAPTURE_HANDSHAKES,
    GLOBAL_CAPTURE_REASONS, GLOBAL_CAPTURE_SNAPLEN, GLOBAL_EVICTION_LOG_SLOTS, GLOBAL_FLOW_TABLE_BITS,
    GLOBAL_SEND_RESET_DADDR_OFFSET, GLOBAL_SEND_RESET_REASON_OFFSET, GLOBAL_SEND_RESET_SADDR_OFFSET,
    MAP_CAPTURE_REASONS, MAP_CONNECTIONS, MAP_CONN_FINGERPRINTS, MAP_EVICTION_LOG, MAP_FLOW_BLOCKS, MAP_FLOW_TABLE,
    MAP_OVERFLOW_SOURCES, MAP_PAYLOAD_TC_PROGRAMS, MAP_PAYLOAD_XDP_PROGRAMS, MAP_SERVICES, MAP_STACK_RESETS,
    MAP_WORKLOADS,
};

// The tracepoint program's part of loading lives in its own module; its functions keep their
// `load::` paths.
pub use crate::load::kernel_events::{
    attach_kernel_events, parse_reason_names, reset_reason_names, start_kernel_events, warn_kernel_events,
    SendResetFormat,
};

/// The XDP object built by `build.rs` (aya-build), embedded so the binary is self-contained.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rst-ebpf"));

/// Linux's IFNAMSIZ minus the terminating NUL.
const MAX_IFACE_NAME: usize = 15;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "missing capability {capability} ({why}); run as root or grant it, e.g. `--cap-add {short}` in a container"
    )]
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
}

/// Where to count: XDP (the earliest hook, one program per interface), or TC ingress through a
/// tcx link, which coexists with other programs (an XDP-based load balancer or DDoS filter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HookChoice {
    Xdp,
    Tc,
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

fn has_capability(capability: Capability) -> bool {
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

/// Capacity of the overflow-source tables for a given flow-table capacity: a quarter of it, so
/// memory stays proportional to what the operator asked for, within sane bounds.
pub fn overflow_sources_for(max_flows: u32) -> u32 {
    (max_flows / 4).clamp(256, 262_144)
}

/// Loads the object with both epochs' flow tables sized to hold `max_flows` flows each at half
/// load ([`rst_common::table::flow_table_bits`]), the connection table to as many slots as
/// one epoch's flow table, the overflow-source tables to [`overflow_sources_for`], services
/// and kernel events to a quarter of it, and loads the XDP and TC programs. The tracepoint program is loaded by
/// [`attach_kernel_events`].
pub fn load(max_flows: u32) -> anyhow::Result<LoadedObject> {
    load_counting(max_flows, Counting::Auto)
}

/// How the programs count. Their per-CPU counters, flow cache and eviction logs are exact only
/// while two programs on one CPU never interleave: true where softirqs and the BPF programs in
/// them run with preemption off, which is every kernel but PREEMPT_RT (there softirqs are
/// preemptible threads, and since 2025 the per-CPU softirq lock that serialized them is optional:
/// `CONFIG_PREEMPT_RT_NEEDS_BH_LOCK`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Counting {
    /// `atomic` on a PREEMPT_RT kernel, `per-cpu` elsewhere.
    #[default]
    Auto,
    /// Plain adds to per-CPU counters and the per-CPU flow cache in front of the classifier.
    PerCpu,
    /// Atomic adds only, every RST classified and added to the shared flow table: exact on
    /// every kernel, dearer per RST.
    Atomic,
}

impl Counting {
    /// What the choice means on this kernel.
    pub fn resolve(self) -> CountingMode {
        match self {
            Counting::Auto if this_kernel_is_preempt_rt() => CountingMode::Atomic,
            Counting::Auto | Counting::PerCpu => CountingMode::PerCpu,
            Counting::Atomic => CountingMode::Atomic,
        }
    }
}

/// How the loaded programs count: what [`Counting`] resolved to when they were loaded. Its
/// serialized names are the summary's `counting` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CountingMode {
    PerCpu,
    Atomic,
}

impl CountingMode {
    /// `"per-cpu"` or `"atomic"`, as the run summary says it.
    pub fn as_str(self) -> &'static str {
        match self {
            CountingMode::PerCpu => "per-cpu",
            CountingMode::Atomic => "atomic",
        }
    }

    /// The programs that count this way.
    pub fn programs(self) -> CountingPrograms {
        CountingPrograms::new(self == CountingMode::Atomic)
    }
}

/// The loaded object together with how its programs count, decided once by [`load_counting`]
/// so that nothing has to guess it back from which programs have a file descriptor.
///
/// It derefs to the [`Ebpf`]: maps and programs are taken from it as from any aya object.
pub struct LoadedObject {
    ebpf: Ebpf,
    counting: CountingMode,
    /// Whether the workload programs found their offsets (`Err`: why not).
    workload_offsets: Result<(), String>,
    /// Whether the capturing programs were loaded (`--capture`).
    capturing: bool,
    /// Whether the payload programs are in place (see `install_payload_programs`).
    reads_payloads: bool,
}

impl LoadedObject {
    pub fn counting(&self) -> CountingMode {
        self.counting
    }

    /// Whether the programs record workloads (`Err`: why not).
    pub fn workload_offsets(&self) -> &Result<(), String> {
        &self.workload_offsets
    }

    /// The counting programs that were loaded.
    pub fn programs(&self) -> CountingPrograms {
        programs_for(self.counting, self.capturing)
    }

    /// Whether the counting programs hand RSTs with data to the payload ring (not when
    /// capturing: the capture hands over every RST's frame).
    pub fn reads_payloads(&self) -> bool {
        self.reads_payloads
    }
}

fn programs_for(counting: CountingMode, capturing: bool) -> CountingPrograms {
    if capturing {
        CountingPrograms::capturing(counting == CountingMode::Atomic)
    } else {
        counting.programs()
    }
}

/// What the capturing programs are loaded with (`--capture`, see [`crate::output::capture`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureLoad {
    /// RSTs per second handed to the ring.
    pub budget: u32,
    /// Bytes of each frame.
    pub snaplen: u32,
    pub handshakes: bool,
}

impl std::ops::Deref for LoadedObject {
    type Target = Ebpf;

    fn deref(&self) -> &Ebpf {
        &self.ebpf
    }
}

impl std::ops::DerefMut for LoadedObject {
    fn deref_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }
}

fn this_kernel_is_preempt_rt() -> bool {
    is_preempt_rt(
        std::fs::read_to_string("/sys/kernel/realtime").ok().as_deref(),
        &std::fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default(),
    )
}

/// PREEMPT_RT kernels have `/sys/kernel/realtime` reading 1 (mainline since 6.12, the RT patch
/// set before) and say `PREEMPT_RT` in their version string (`uname -v`).
pub fn is_preempt_rt(sys_kernel_realtime: Option<&str>, version: &str) -> bool {
    sys_kernel_realtime.is_some_and(|value| value.trim() == "1")
        || version.split_whitespace().any(|word| word == "PREEMPT_RT")
}

/// [`load`], counting as `counting` says.
pub fn load_counting(max_flows: u32, counting: Counting) -> anyhow::Result<LoadedObject> {
    load_with(max_flows, counting, true, None)
}

/// [`load_counting`], with the workload programs' recording on or off (`--no-workloads`: the
/// reset tracepoints then skip it, a constant the verifier prunes), and the capturing programs
/// instead of the plain ones when `capture` is given.
pub fn load_with(
    max_flows: u32,
    counting: Counting,
    workloads: bool,
    capture: Option<CaptureLoad>,
) -> anyhow::Result<LoadedObject> {
    let mode = counting.resolve();
    match (counting, mode) {
        (Counting::Auto, CountingMode::Atomic) => tracing::info!(
            "PREEMPT_RT kernel: counting with atomic adds and no per-CPU flow cache, so that programs \
             preempting each other on one CPU lose nothing (each RST costs more)"
        ),
        (Counting::Atomic, _) => {
            tracing::info!("counting with atomic adds and no per-CPU flow cache (--counting atomic)")
        }
        (Counting::PerCpu, _) if this_kernel_is_preempt_rt() => tracing::warn!(
            "--counting per-cpu on a PREEMPT_RT kernel: programs preempting each other on one CPU can lose counts"
        ),
        _ => {}
    }
    let programs = programs_for(mode, capture.is_some());
    let max_sources = overflow_sources_for(max_flows);
    let offsets = SendResetFormat::read();
    let workload_offsets = if workloads {
        crate::model::workload::Offsets::read().map_err(|e| format!("{e:#}"))
    } else {
        Err("off".to_owned())
    };
    let table_bits = rst_common::table::flow_table_bits(max_flows);
    let cpu_ids = crate::collect::flow_table::possible_cpu_ids().context("reading the possible CPUs")?;
    let cpus = u32::try_from(cpu_ids.len()).context("more CPUs than a u32 counts")?;
    let log_slots = rst_common::table::eviction_log_slots(max_flows, cpus);
    let log_runs = 2 * crate::collect::flow_table::eviction_log_cpus(&cpu_ids);
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(MAP_FLOW_TABLE, 2 << table_bits)
        .map_max_entries(MAP_FLOW_BLOCKS, rst_common::table::flow_block_words(table_bits))
        .override_global(GLOBAL_FLOW_TABLE_BITS, &table_bits, true)
        .map_max_entries(MAP_EVICTION_LOG, log_runs * log_slots)
        .override_global(GLOBAL_EVICTION_LOG_SLOTS, &log_slots, true)
        .map_max_entries(MAP_OVERFLOW_SOURCES[0], max_sources)
        .map_max_entries(MAP_OVERFLOW_SOURCES[1], max_sources)
        .map_max_entries(MAP_CONNECTIONS, 1 << table_bits)
        .map_max_entries(MAP_CONN_FINGERPRINTS, rst_common::table::conn_fingerprint_words(table_bits))
        .map_max_entries(MAP_SERVICES[0], max_sources)
        .map_max_entries(MAP_SERVICES[1], max_sources)
        .map_max_entries(MAP_STACK_RESETS[0], max_sources)
        .map_max_entries(MAP_STACK_RESETS[1], max_sources)
        .map_max_entries(MAP_WORKLOADS[0], max_sources)
        .map_max_entries(MAP_WORKLOADS[1], max_sources);
    if let Ok(workload) = &workload_offsets {
        workload.apply(&mut loader);
    }
    if let Ok(format) = &offsets {
        loader
            .override_global(GLOBAL_SEND_RESET_REASON_OFFSET, &format.reason, true)
            .override_global(GLOBAL_SEND_RESET_SADDR_OFFSET, &format.saddr, true)
            .override_global(GLOBAL_SEND_RESET_DADDR_OFFSET, &format.daddr, true);
    }
    let capture_globals =
        capture.map(|CaptureLoad { budget, snaplen, handshakes }| (budget, snaplen, u32::from(handshakes)));
    if let Some((budget, snaplen, handshakes)) = &capture_globals {
        loader
            .override_global(GLOBAL_CAPTURE_BUDGET, budget, true)
            .override_global(GLOBAL_CAPTURE_SNAPLEN, snaplen, true)
            .override_global(GLOBAL_CAPTURE_HANDSHAKES, handshakes, true)
            .override_global(GLOBAL_CAPTURE_REASONS, &1u32, true);
    } else {
        // Nothing writes it without the capture: no kernel memory for its preallocated entries.
        loader.map_max_entries(MAP_CAPTURE_REASONS, 1);
    }
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(|error| load_error(Box::new(error)))?;
    let xdp: &mut Xdp = ebpf
        .program_mut(programs.xdp)
        .ok_or_else(|| anyhow::anyhow!("the eBPF object has no program {}", programs.xdp))?
        .try_into()?;
    xdp.load().map_err(|error| load_error(Box::new(error)))?;
    for name in [programs.tc, programs.tc_egress] {
        classifier(&mut ebpf, name)?.load().map_err(|error| load_error(Box::new(error)))?;
    }
    // Without them every RST still counts, in the counting program (its tail call finds no
    // program): a kernel that refuses them costs the payloads, not the run.
    let reads_payloads = capture.is_none()
        && match install_payload_programs(&mut ebpf, CountingPrograms::payload(mode == CountingMode::Atomic)) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!("RST payloads will not be read (rst_payload stays null): {error:#}");
                false
            }
        };
    let workload_offsets = workload_offsets.map(|_| ());
    Ok(LoadedObject { ebpf, counting: mode, workload_offsets, capturing: capture.is_some(), reads_payloads })
}

fn load_error(error: Box<dyn std::error::Error + Send + Sync>) -> anyhow::Error {
    let denied = {
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
        let mut denied = false;
        while let Some(current) = source {
            if let Some(io) = current.downcast_ref::<io::Error>() {
                denied |= matches!(io.raw_os_error(), Some(libc::EPERM | libc::EACCES));
            }
            source = current.source();
        }
        denied
    };
    if denied && !has_capability(Capability::CAP_PERFMON) && !has_capability(Capability::CAP_SYS_ADMIN) {
        return Error::MissingCapability {
            capability: "CAP_PERFMON",
            short: "PERFMON",
            why: "without it the verifier refuses the program's packet-pointer comparisons",
        }
        .into();
    }
    Error::Load(error).into()
}

/// The XDP program that counts, of the set the object was loaded with.
pub fn xdp_program(object: &mut LoadedObject) -> anyhow::Result<&mut Xdp> {
    let name = object.programs().xdp;
    let program = object.program_mut(name).ok_or_else(|| anyhow::anyhow!("the eBPF object has no program {name}"))?;
    Ok(program.try_into()?)
}

pub fn tc_program(object: &mut LoadedObject) -> anyhow::Result<&mut SchedClassifier> {
    let name = object.programs().tc;
    classifier(object, name)
}

pub fn tc_egress_program(object: &mut LoadedObject) -> anyhow::Result<&mut SchedClassifier> {
    let name = object.programs().tc_egress;
    classifier(object, name)
}

/// Loads the programs that count an RST with a payload (see `rst-ebpf/src/payload.rs`) and puts
/// them where the counting programs tail-call them. The program arrays stay in `ebpf`: the
/// kernel empties a program array when userspace closes its last descriptor of it.
fn install_payload_programs(ebpf: &mut Ebpf, programs: CountingPrograms) -> anyhow::Result<()> {
    let CountingPrograms { xdp, tc, tc_egress } = programs;
    let xdp_program: &mut Xdp =
        ebpf.program_mut(xdp).ok_or_else(|| anyhow::anyhow!("the eBPF object has no program {xdp}"))?.try_into()?;
    xdp_program.load().map_err(|error| load_error(Box::new(error)))?;
    let xdp_fd = xdp_program.fd()?.try_clone()?;
    let mut tc_fds = Vec::with_capacity(2);
    for (direction, name) in [(DIRECTION_RX, tc), (DIRECTION_TX, tc_egress)] {
        let program = classifier(ebpf, name)?;
        program.load().map_err(|error| load_error(Box::new(error)))?;
        tc_fds.push((direction, program.fd()?.try_clone()?));
    }
    let mut slots = ProgramArray::try_from(program_array(ebpf, MAP_PAYLOAD_XDP_PROGRAMS)?)?;
    slots.set(0, &xdp_fd, 0).with_context(|| format!("putting {xdp} into {MAP_PAYLOAD_XDP_PROGRAMS}"))?;
    let mut slots = ProgramArray::try_from(program_array(ebpf, MAP_PAYLOAD_TC_PROGRAMS)?)?;
    for (direction, fd) in &tc_fds {
        slots
            .set(u32::from(*direction), fd, 0)
            .with_context(|| format!("putting the TC payload programs into {MAP_PAYLOAD_TC_PROGRAMS}"))?;
    }
    Ok(())
}

fn program_array<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut aya::maps::Map> {
    ebpf.map_mut(name).ok_or_else(|| anyhow::anyhow!("the eBPF object has no map {name}"))
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    let program = ebpf.program_mut(name).ok_or_else(|| anyhow::anyhow!("the eBPF object has no program {name}"))?;
    Ok(program.try_into()?)
}

/// Resolves every `-i` up front (before anything touches the kernel): one ifindex each, no
/// interface twice.
pub fn resolve_targets(names: &[String]) -> anyhow::Result<Vec<(String, u32)>> {
    let mut seen = std::collections::HashSet::new();
    let mut targets = Vec::new();
    // Patterns match interfaces as they come (see `live`), none of them need exist at the start.
    if !names.iter().any(|name| name == LOOPBACK) {
        if let Some(pattern) = names.iter().find(|name| is_pattern(name) && glob(name, LOOPBACK)) {
            tracing::info!("-i '{pattern}' leaves out {LOOPBACK}: watch it with -i {LOOPBACK}");
        }
    }
    for name in names.iter().filter(|name| !is_pattern(name)) {
        let ifindex = resolve_interface(name)?;
        if !seen.insert(ifindex) {
            anyhow::bail!("interface {name:?} given more than once");
        }
        targets.push((name.clone(), ifindex));
    }
    Ok(targets)
}

/// Attaches the chosen hook's program to one interface.
pub fn attach(
    ebpf: &mut LoadedObject,
    hook: HookChoice,
    xdp_mode: XdpModeChoice,
    iface: &str,
    ifindex: u32,
) -> anyhow::Result<Attachment> {
    let mut attachment = match hook {
        HookChoice::Xdp => attach_xdp(xdp_program(ebpf)?, iface, ifindex, xdp_mode)?,
        HookChoice::Tc => attach_tc(tc_program(ebpf)?, iface, ifindex)?,
    };
    match attach_tc_egress(tc_egress_program(ebpf)?, iface) {
        Ok(link) => attachment.egress = Some(link),
        Err(error) => tracing::warn!("{:#}; counting only the resets {iface} receives", anyhow::Error::from(error)),
    }
    let ingress = match (attachment.hook, TcLink::for_this_kernel()) {
        (Hook::TcIngress, TcLink::Clsact) => "clsact ingress".to_owned(),
        (hook, _) => hook.to_string(),
    };
    let egress = match (attachment.egress.is_some(), TcLink::for_this_kernel()) {
        (false, _) => "",
        (true, TcLink::Tcx) => " + tcx egress",
        (true, TcLink::Clsact) => " + clsact egress",
    };
    tracing::info!("attached to {iface} (ifindex {ifindex}, {ingress}{egress})");
    Ok(attachment)
}

/// Attaches to every target; if one fails, those before it are dropped (detached) on the way out.
pub fn attach_all(
    ebpf: &mut LoadedObject,
    hook: HookChoice,
    xdp_mode: XdpModeChoice,
    targets: &[(String, u32)],
) -> anyhow::Result<Vec<Attachment>> {
    targets.iter().map(|(iface, ifindex)| attach(ebpf, hook, xdp_mode, iface, *ifindex)).collect()
}

/// Whether `-i` names a pattern (`'veth*'`, `'cali?'`) rather than one interface.
pub fn is_pattern(name: &str) -> bool {
    name.contains(['*', '?'])
}

/// The loopback interface: a pattern never matches it.
const LOOPBACK: &str = "lo";

/// Shell-style matching of an interface name: `*` any run of characters, `?` any one; never
/// [`LOOPBACK`], which is watched only when `-i lo` names it (a `'*'` meant "every device",
/// not the host's own local traffic).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    name != LOOPBACK && glob(pattern, name)
}

fn glob(pattern: &str, name: &str) -> bool {
    let (pattern, name) = (pattern.as_bytes(), name.as_bytes());
    let (mut p, mut n) = (0, 0);
    // Where the last `*` was, and the name position it matched up to: backtrack there.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((at, matched)) => {
                    p = at + 1;
                    n = matched + 1;
                    star = Some((at, matched + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Resolves an interface name the way the kernel would, with errors an operator can act on.
pub fn resolve_interface(name: &str) -> Result<u32, Error> {
    let invalid = |why| Error::InvalidInterfaceName { name: name.to_owned(), why };
    if name.is_empty() {
        return Err(invalid("empty"));
    }
    if name.len() > MAX_IFACE_NAME {
        return Err(invalid("longer than 15 bytes"));
    }
    if name.contains(['/', ':']) || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("contains '/', ':', whitespace or control characters"));
    }
    let c_name = CString::new(name).map_err(|_| invalid("contains a NUL byte"))?;
    crate::sys::netdev::index_of(&c_name).ok_or_else(|| Error::UnknownInterface { name: name.to_owned() })
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
    let link = attach_tcx(program, iface, TcAttachType::Ingress)?;
    Ok(Attachment { iface: iface.to_owned(), ifindex, hook: Hook::TcIngress, _link: Link::Tc(link), egress: None })
}

/// Attaches the egress program to `iface` through a tcx link, first in line.
///
/// # Errors
/// As [`attach_tc`].
pub fn attach_tc_egress(program: &mut SchedClassifier, iface: &str) -> Result<SchedClassifierLink, Error> {
    attach_tcx(program, iface, TcAttachType::Egress)
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
    /// tcx on kernels that have it. `RSTWATCH_TC_LINK=clsact` forces the older way (tests use
    /// it to exercise the path on new kernels).
    pub fn for_this_kernel() -> TcLink {
        if std::env::var_os("RSTWATCH_TC_LINK").is_some_and(|v| v == "clsact") {
            return TcLink::Clsact;
        }
        match aya::util::KernelVersion::current() {
            Ok(version) if version < aya::util::KernelVersion::new(6, 6, 0) => TcLink::Clsact,
            _ => TcLink::Tcx,
        }
    }
}

fn attach_tcx(
    program: &mut SchedClassifier,
    iface: &str,
    direction: TcAttachType,
) -> Result<SchedClassifierLink, Error> {
    attach_tc_with(program, iface, direction, TcLink::for_this_kernel())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_patterns_match_like_the_shell() {
        assert!(is_pattern("veth*") && is_pattern("cali?") && !is_pattern("eth0"));
        for (pattern, name) in
            [("veth*", "veth1a2b"), ("veth*", "veth"), ("*", "eth0"), ("c?li*", "cali12"), ("*a*b", "xxaab")]
        {
            assert!(pattern_matches(pattern, name), "{pattern} {name}");
        }
        for (pattern, name) in [("veth*", "eth0"), ("cali?", "cali12"), ("*a*b", "xxaba"), ("veth", "veth0")] {
            assert!(!pattern_matches(pattern, name), "{pattern} {name}");
        }
    }

    #[test]
    fn no_pattern_matches_loopback_and_its_name_is_not_a_pattern() {
        for pattern in ["*", "l*", "lo*", "?o", "l?", "*o", "??"] {
            assert!(!pattern_matches(pattern, "lo"), "{pattern}");
        }
        // Only loopback itself is left out.
        for name in ["lo0", "lob", "xlo", "lo1"] {
            assert!(pattern_matches("*", name) && pattern_matches("*lo*", name), "{name}");
        }
        assert!(pattern_matches("??", "ab") && glob("*", LOOPBACK), "the shell would match it");
        // `-i lo` is a name: resolved and attached like any other.
        assert!(!is_pattern(LOOPBACK));
    }

    #[test]
    fn preempt_rt_is_told_by_sys_kernel_realtime_or_the_version_string() {
        const RT_VERSION: &str = "#1 SMP PREEMPT_RT Thu Oct  2 10:00:00 UTC 2025\n";
        const THIS_VM: &str = "#1 SMP PREEMPT_DYNAMIC @0\n";
        assert!(is_preempt_rt(Some("1\n"), THIS_VM));
        assert!(is_preempt_rt(None, RT_VERSION));
        assert!(!is_preempt_rt(None, THIS_VM));
        assert!(!is_preempt_rt(Some("0\n"), "#1 SMP PREEMPT Mon Jan  1 00:00:00 UTC 2024"));
        // A word that merely starts with it is not the flag.
        assert!(!is_preempt_rt(None, "#1 SMP PREEMPT_RTX"));
    }
}

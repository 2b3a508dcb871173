//! `--capture FILE`: the resets as a pcapng for Wireshark. The capturing programs hand every
//! RST they count to a BPF ring buffer within a per-second budget (see `rst-ebpf/src/capture.rs`);
//! a thread here drains it into the file, one interface block per watched interface, each
//! packet with its direction and a comment with rstwatch's reading. Every counted RST is either
//! written or dropped (by the budget, a full ring, or a capture that had to stop), and the run's
//! summary says how many of each.
//!
//! When the file cannot be written (removed, disk full, …) the capture says so once and stops;
//! counting goes on and the run ends with [`Stopped`].

pub mod comment;
pub mod files;
pub mod pcapng;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf};
use rst_common::{
    parse::{Observation, TCP_SYN},
    wire::{
        CaptureCounters, CaptureReason, CaptureReasonKey, CaptureRecord, ConnKey, FlowKey, TunnelKey,
        CAPTURE_HANDSHAKE, CAPTURE_REASON_MAX_AGE_NS, CAPTURE_RST, DIRECTION_RX, DIRECTION_TX, MAP_CAPTURE_COUNTERS,
        MAP_CAPTURE_REASONS, MAP_CAPTURE_RING,
    },
};

use self::files::{Files, Layout};
use crate::model::aggregate::{
    model::{CaptureSummary, Run, ServiceTunnel},
    payload,
    tunnels::{FrameFlow, FrameTunnel, TunnelPortSet},
};
use crate::model::{
    kernel_reason::ReasonNames,
    verdict::{Cause, Finding, ServiceAddr, Verdict},
};

/// Why the capture cannot start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the eBPF object has no map {0}")]
    MissingMap(String),
    #[error("{what}")]
    Map {
        what: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading the monotonic clock")]
    Clock(#[source] crate::sys::Error),
    #[error("starting the capture thread")]
    Thread(#[source] std::io::Error),
    #[error(transparent)]
    Files(#[from] files::Error),
}

/// What `--capture` and its options ask for.
#[derive(Debug, Clone)]
pub struct Options {
    pub layout: Layout,
    pub snaplen: u32,
    /// RSTs per second the kernel hands over.
    pub budget: u32,
    /// Also SYN / SYN+ACK segments of connections that were then reset.
    pub handshakes: bool,
}

/// The capture could not go on; the run's counts are complete, its file is not.
#[derive(Debug, thiserror::Error)]
#[error("the capture stopped early: {0}")]
pub struct Stopped(pub String);

/// Handshake segments kept for connections not (yet) reset: at most this many connections,
/// the oldest forgotten first.
const MAX_HELD_CONNECTIONS: usize = 16_384;
/// How often the thread checks that its file is still there.
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// How long the thread sleeps when the ring is empty: the ring holds well over a second of
/// the default budget.
const IDLE: Duration = Duration::from_millis(10);
/// Records per pass over the ring before the file checks.
const DRAIN_AT_MOST: usize = 16_384;

/// What the run knows that the comments can use: the verdict on each service, by address, port
/// and tunnel (a tenant's), and the clients found scanning. (The kernel's reason comes with each
/// record.)
#[derive(Debug, Default)]
pub struct Known {
    pub verdicts: HashMap<(IpAddr, u16, Option<ServiceTunnel>), Cause>,
    /// A scan's resets are the scanner's verdict, whichever service answered them.
    pub scanners: HashSet<(IpAddr, Option<ServiceTunnel>)>,
}

impl Known {
    pub fn from_verdicts(verdicts: &[Verdict]) -> Known {
        let mut known = Known::default();
        for verdict in verdicts {
            match verdict.finding {
                Finding::Scan(counts) => {
                    known.scanners.insert((counts.client, verdict.service.tunnel));
                }
                // The clients' resets go to the backend, not to the service they talked to.
                Finding::NatLost { backend } => {
                    known.verdicts.insert((backend.addr, backend.port, backend.tunnel), verdict.cause());
                    let ServiceAddr { addr, port, tunnel } = verdict.service;
                    known.verdicts.insert((addr, port, tunnel), verdict.cause());
                }
                _ => {
                    let ServiceAddr { addr, port, tunnel } = verdict.service;
                    known.verdicts.insert((addr, port, tunnel), verdict.cause());
                }
            }
        }
        known
    }
}

/// What the session and the thread share.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    /// ifindex → interface name, for the interface blocks.
    names: Mutex<HashMap<u32, String>>,
    known: Mutex<Known>,
    /// Per flow (its `flow_id`), the last RST payload written since the session took them:
    /// its first bytes and its length.
    payloads: Mutex<HashMap<FrameFlow, (Vec<u8>, usize)>>,
}

/// Flows whose payloads are kept between two intervals; more wait for the next.
const MAX_PAYLOAD_FLOWS: usize = 65_536;

/// A running capture.
pub struct Capture {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<Writer>>,
    counters: PerCpuArray<MapData, CaptureCounters>,
    file: String,
}

/// Creates the first file: before anything is loaded, so a path that cannot be written stops
/// the run with nothing attached.
pub fn create(options: &Options) -> Result<Files, files::Error> {
    Files::create(options.layout.clone())
}

impl Capture {
    /// Takes the ring and counters from the object and starts the thread that writes `files`;
    /// `reason_names` name the kernel's reset reasons (index = code), as the summary does.
    pub fn start(
        ebpf: &mut aya::Ebpf,
        files: Files,
        options: &Options,
        interfaces: &[(String, u32)],
        reason_names: ReasonNames,
        ports: TunnelPortSet,
    ) -> Result<Capture, Error> {
        let mut take = |name: &str| ebpf.take_map(name).ok_or_else(|| Error::MissingMap(name.to_owned()));
        let map = |what| move |source| Error::Map { what, source };
        let ring = RingBuf::try_from(take(MAP_CAPTURE_RING)?).map_err(map("opening the capture ring buffer"))?;
        let counters =
            PerCpuArray::try_from(take(MAP_CAPTURE_COUNTERS)?).map_err(map("opening the capture counters"))?;
        let reasons =
            BpfHashMap::try_from(take(MAP_CAPTURE_REASONS)?).map_err(map("opening the capture's kernel reasons"))?;
        let shared = Arc::new(Shared::default());
        {
            let mut names = shared.names.lock().unwrap_or_else(PoisonError::into_inner);
            for (name, ifindex) in interfaces {
                names.insert(*ifindex, name.clone());
            }
        }
        let file = options.layout.path.display().to_string();
        let mut writer = Writer::new(
            files,
            options.snaplen,
            Arc::clone(&shared),
            Reasons { map: reasons, names: reason_names },
            ports,
        )?;
        writer.begin_file();
        let thread = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                let mut ring = ring;
                writer.run(&mut ring);
                writer
            })
            .map_err(Error::Thread)?;
        Ok(Capture { shared, thread: Some(thread), counters, file })
    }

    /// A watched interface (again, perhaps under a new ifindex).
    pub fn add_interface(&self, name: &str, ifindex: u32) {
        self.shared.names.lock().unwrap_or_else(PoisonError::into_inner).insert(ifindex, name.to_owned());
    }

    /// Where the RST payloads the capture reads are taken from, each interval.
    pub fn payloads(&self) -> CapturedPayloads {
        CapturedPayloads(Arc::clone(&self.shared))
    }

    /// What the run knows now, for the comments of what is written from here on.
    pub fn update_known(&self, known: Known) {
        *self.shared.known.lock().unwrap_or_else(PoisonError::into_inner) = known;
    }

    /// Ends the capture after the programs are detached and their last runs are over (the
    /// collector's grace period): drains the ring, writes each interface's statistics and
    /// accounts for every RST of `run`.
    pub fn finish(mut self, run: &Run) -> anyhow::Result<CaptureSummary> {
        self.shared.stop.store(true, Ordering::Release);
        let mut writer = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(writer)) => writer,
            _ => anyhow::bail!("the capture thread panicked"),
        };
        let mut kernel = CaptureCounters::default();
        for cpu in self.counters.get(&0, 0).context("reading the capture counters")?.iter() {
            kernel.add(cpu);
        }
        if kernel.sent != writer.received {
            tracing::warn!(sent = kernel.sent, received = writer.received, "the capture ring lost track of records");
        }
        writer.end(run);
        let CaptureCounters { sent, over_budget, ring_full, unreadable } = kernel;
        let written = writer.written;
        let not_written = sent.saturating_sub(written);
        Ok(CaptureSummary {
            file: self.file.clone(),
            files: writer.files.as_ref().map(Files::paths).unwrap_or_else(|| writer.closed_paths.clone()),
            written,
            dropped: over_budget + ring_full + unreadable + not_written,
            over_budget,
            ring_full: ring_full + unreadable,
            not_written,
            error: writer.failure.clone(),
        })
    }
}

/// Each interval tells the writer what the run knows now; the end accounts for every RST.
impl crate::output::Output for Capture {
    fn interval(&mut self, tick: &crate::output::Tick<'_>) -> anyhow::Result<()> {
        self.update_known(Known::from_verdicts(&tick.aggregator.verdicts()));
        Ok(())
    }

    fn interface_added(&mut self, iface: &str, ifindex: u32) {
        self.add_interface(iface, ifindex);
    }

    fn finish(self: Box<Self>, run: &mut Run) -> anyhow::Result<()> {
        // After the collector's grace period: every program run that could still capture is over.
        run.capture = Some(Capture::finish(*self, run)?);
        Ok(())
    }
}

/// The capture's RST payloads, handed to the run each interval (see [`Capture::payloads`]).
pub struct CapturedPayloads(Arc<Shared>);

impl CapturedPayloads {
    /// The RST payloads read since the last call: per flow, the first bytes and the length.
    pub fn take(&self) -> HashMap<FrameFlow, (Vec<u8>, usize)> {
        std::mem::take(&mut *self.0.payloads.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A SYN or SYN+ACK kept until its connection is reset.
struct Held {
    time_ns: u64,
    ifindex: u32,
    wire_len: u32,
    direction: u8,
    data: Vec<u8>,
}

/// One frame to write, from the ring or held.
#[derive(Clone, Copy)]
struct Frame<'a> {
    ifindex: u32,
    time_ns: u64,
    data: &'a [u8],
    wire_len: u32,
    direction: u8,
}

/// The thread's side: the open file and what has gone into it.
struct Writer {
    /// `None` once the capture stopped.
    files: Option<Files>,
    /// The files on disk when the capture stopped.
    closed_paths: Vec<String>,
    failure: Option<String>,
    snaplen: u32,
    shared: Arc<Shared>,
    reasons: Reasons,
    /// Wall-clock minus monotonic nanoseconds: the records carry `bpf_ktime_get_ns`.
    offset_ns: i128,
    /// When the open file was started (wall-clock ns), for its statistics blocks.
    file_started_ns: u64,
    /// The open file's interface blocks, by ifindex, in order.
    interfaces: Vec<u32>,
    held: HashMap<ConnKey, Vec<Held>>,
    held_order: VecDeque<ConnKey>,
    /// RST records taken from the ring, and of them those written.
    received: u64,
    written: u64,
    written_by_interface: HashMap<u32, u64>,
    /// The interfaces of the RSTs in blocks not flushed yet: written once they are.
    unflushed: Vec<u32>,
    /// The run's tunnel ports, for walking the records again.
    ports: TunnelPortSet,
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Writer {
    fn new(
        files: Files,
        snaplen: u32,
        shared: Arc<Shared>,
        reasons: Reasons,
        ports: TunnelPortSet,
    ) -> Result<Writer, Error> {
        let monotonic = crate::sys::clock::monotonic_ns().map_err(Error::Clock)?;
        Ok(Writer {
            ports,
            files: Some(files),
            closed_paths: Vec::new(),
            failure: None,
            snaplen,
            shared,
            reasons,
            offset_ns: i128::from(wall_ns()) - i128::from(monotonic),
            file_started_ns: wall_ns(),
            interfaces: Vec::new(),
            held: HashMap::new(),
            held_order: VecDeque::new(),
            received: 0,
            written: 0,
            written_by_interface: HashMap::new(),
            unflushed: Vec::new(),
        })
    }

    fn run(&mut self, ring: &mut RingBuf<MapData>) {
        let mut last_check = Instant::now();
        loop {
            // Read before draining: what the programs submitted before the stop is all there.
            let stopping = self.shared.stop.load(Ordering::Acquire);
            let mut drained = 0;
            // Bounded, so a flood that keeps the ring full still lets the checks below run.
            while drained < DRAIN_AT_MOST {
                let Some(item) = ring.next() else { break };
                if let Some(record) = read_record(&item) {
                    self.record(&record);
                }
                drained += 1;
            }
            // What was drained reaches the file before the thread sleeps or ends.
            self.flush();
            if stopping && drained < DRAIN_AT_MOST {
                return;
            }
            if last_check.elapsed() >= CHECK_EVERY {
                last_check = Instant::now();
                if let Some(Err(error)) = self.files.as_ref().map(Files::check_present) {
                    self.fail(&anyhow::Error::from(error));
                }
            }
            if drained < DRAIN_AT_MOST {
                std::thread::sleep(IDLE);
            }
        }
    }

    fn record(&mut self, record: &CaptureRecord) {
        let data = &record.data[..usize::from(record.captured).min(record.data.len())];
        let mut tunnel = FrameTunnel::new(&self.ports);
        let observation = rst_common::inspect_tunnels(data, DIRECTION_RX, || record.ifindex, &mut tunnel);
        let found = tunnel.found;
        let walked = rst_common::parse::walk_with(data, &tunnel);
        match (record.what, observation) {
            (CAPTURE_RST, observation) => {
                self.received += 1;
                let connection = match observation {
                    Observation::Reset(event) => Some(event.key.connection().0),
                    _ => None,
                };
                if let (Observation::Reset(event), Some((bytes, len))) = (observation, payload::of_frame(data, walked))
                {
                    let mut payloads = self.shared.payloads.lock().unwrap_or_else(PoisonError::into_inner);
                    let id = (event.key.flow_id(), found);
                    if payloads.len() < MAX_PAYLOAD_FLOWS || payloads.contains_key(&id) {
                        payloads.insert(id, (bytes.to_vec(), len));
                    }
                }
                if self.files.is_none() {
                    return;
                }
                if let Some(held) = connection.and_then(|c| self.held.remove(&c)) {
                    for segment in held {
                        let Held { time_ns, ifindex, wire_len, direction, data } = &segment;
                        let frame = Frame {
                            ifindex: *ifindex,
                            time_ns: *time_ns,
                            data,
                            wire_len: *wire_len,
                            direction: *direction,
                        };
                        self.write_packet(&frame, comment::HANDSHAKE, false);
                    }
                }
                let event_key = match observation {
                    Observation::Reset(event) => Some(event.key),
                    _ => None,
                };
                let reason = self.reasons.name(record, event_key.as_ref());
                let comment = {
                    let known = self.shared.known.lock().unwrap_or_else(PoisonError::into_inner);
                    comment::reset(
                        record.class,
                        record.direction,
                        record.rst_ttl,
                        record.peer_ttl,
                        comment::Known {
                            verdict: verdict_for(&known, record.class, event_key.as_ref(), found.as_ref()),
                            reason: reason.as_deref(),
                            tunnel: tunnel_of(walked),
                        },
                    )
                };
                let frame = Frame {
                    ifindex: record.ifindex,
                    time_ns: record.time_ns,
                    data,
                    wire_len: record.wire_len,
                    direction: record.direction,
                };
                self.write_packet(&frame, &comment, true);
            }
            (CAPTURE_HANDSHAKE, Observation::Control(event)) if event.flags & TCP_SYN != 0 => {
                let (connection, _) = event.key.connection();
                let segment = Held {
                    time_ns: record.time_ns,
                    ifindex: record.ifindex,
                    wire_len: record.wire_len,
                    direction: record.direction,
                    data: data.to_vec(),
                };
                match self.held.get_mut(&connection) {
                    // A SYN and a SYN+ACK (and a retransmission or two) are enough.
                    Some(segments) if segments.len() < 4 => segments.push(segment),
                    Some(_) => {}
                    None => {
                        if self.held_order.len() >= MAX_HELD_CONNECTIONS {
                            if let Some(oldest) = self.held_order.pop_front() {
                                self.held.remove(&oldest);
                            }
                        }
                        self.held_order.push_back(connection);
                        self.held.insert(connection, vec![segment]);
                    }
                }
            }
            _ => {}
        }
    }

    /// Writes one packet block (rotating first when the cap says so); false if the capture
    /// has stopped or stops now.
    fn write_packet(&mut self, frame: &Frame<'_>, text: &str, reset: bool) -> bool {
        let Frame { ifindex, time_ns, data, wire_len, direction } = *frame;
        let wall = (i128::from(time_ns) + self.offset_ns).max(0) as u64;
        let direction =
            if direction == DIRECTION_TX { pcapng::Direction::Outbound } else { pcapng::Direction::Inbound };
        let Some(files) = &self.files else { return false };
        let probe = pcapng::packet(0, wall, data, wire_len, direction, text);
        // Room for the statistics blocks that close the file, so it stays under the cap.
        if files.full_for(probe.len() + self.interfaces.len().max(1) * pcapng::STATISTICS_MAX_LEN) {
            self.close_file(None);
            let rotated = match &mut self.files {
                Some(files) => files.rotate(),
                None => return false,
            };
            if let Err(error) = rotated {
                self.fail(&anyhow::Error::from(error));
                return false;
            }
            self.begin_file();
        }
        let Some(id) = self.interface_id(ifindex) else { return false };
        let block = pcapng::packet(id, wall, data, wire_len, direction, text);
        if !self.write(&block, true) {
            return false;
        }
        if reset {
            self.unflushed.push(ifindex);
        }
        if self.files.as_ref().is_some_and(Files::should_flush) {
            self.flush();
        }
        self.files.is_some()
    }

    /// The interface block id of `ifindex` in the open file, writing the block if needed.
    fn interface_id(&mut self, ifindex: u32) -> Option<u32> {
        if let Some(id) = self.interfaces.iter().position(|&i| i == ifindex) {
            return Some(id as u32);
        }
        let name = self.shared.names.lock().unwrap_or_else(PoisonError::into_inner).get(&ifindex).cloned();
        let name = name.unwrap_or_else(|| format!("ifindex {ifindex}"));
        if !self.write(&pcapng::interface(&name, self.snaplen), false) {
            return None;
        }
        self.interfaces.push(ifindex);
        Some(self.interfaces.len() as u32 - 1)
    }

    /// The section header of a new file, and every watched interface's block.
    fn begin_file(&mut self) {
        self.interfaces.clear();
        self.file_started_ns = wall_ns();
        let header = pcapng::section_header(concat!("rstwatch ", env!("CARGO_PKG_VERSION")));
        if !self.write(&header, false) {
            return;
        }
        let mut watched: Vec<u32> =
            self.shared.names.lock().unwrap_or_else(PoisonError::into_inner).keys().copied().collect();
        watched.sort_unstable();
        for ifindex in watched {
            if self.interface_id(ifindex).is_none() {
                return;
            }
        }
    }

    /// The open file's statistics blocks: what was written to the capture for each interface
    /// so far, and with the run's counts at the end, what it received and dropped.
    fn close_file(&mut self, run: Option<&Run>) {
        // The counts below are of what reached the file.
        self.flush();
        let end_ns = wall_ns();
        let counted = run.and_then(counted_by_interface);
        for (id, ifindex) in self.interfaces.clone().into_iter().enumerate() {
            let delivered = self.written_by_interface.get(&ifindex).copied().unwrap_or(0);
            let received = counted.as_ref().map(|counted| counted.get(&ifindex).copied().unwrap_or(0));
            let stats = pcapng::Statistics {
                start_ns: self.file_started_ns,
                end_ns,
                received,
                dropped: received.map(|received| received.saturating_sub(delivered)),
                delivered,
            };
            if !self.write(&pcapng::statistics(id as u32, &stats), false) {
                return;
            }
        }
    }

    fn end(&mut self, run: &Run) {
        if self.files.is_some() {
            self.close_file(Some(run));
            self.flush();
        }
    }

    /// Writes the pending blocks; their RSTs count as written only once that succeeded.
    fn flush(&mut self) {
        let Some(files) = &mut self.files else { return };
        match files.flush() {
            Ok(()) => {
                for ifindex in self.unflushed.drain(..) {
                    self.written += 1;
                    *self.written_by_interface.entry(ifindex).or_default() += 1;
                }
            }
            Err(error) => {
                self.unflushed.clear();
                self.fail(&anyhow::Error::from(error));
            }
        }
    }

    fn write(&mut self, block: &[u8], packet: bool) -> bool {
        let Some(files) = &mut self.files else { return false };
        match files.write(block, packet) {
            Ok(()) => true,
            Err(error) => {
                self.fail(&anyhow::Error::from(error));
                false
            }
        }
    }

    fn fail(&mut self, error: &anyhow::Error) {
        let text = format!("{error:#}");
        tracing::error!("capture stopped: {text}; counting goes on");
        if let Some(files) = self.files.take() {
            self.closed_paths = files.paths();
        }
        self.failure = Some(text);
    }
}

/// The kernel's reasons for the RSTs this host's stack sent: the map `tcp:tcp_send_reset` fills
/// while capturing, and their names.
struct Reasons {
    map: BpfHashMap<MapData, CaptureReasonKey, CaptureReason>,
    names: ReasonNames,
}

impl Reasons {
    /// The reason the record carries (the capture program found it: the stack traced the RST
    /// before sending it, as it does for a segment that finds no socket), else the one the
    /// tracepoint wrote for the RST's tuple since: the stack traces the RSTs it sends on its
    /// own (an abort, SO_LINGER 0, a keepalive timeout) only after they went out, so a capture
    /// program sees those first. Either within [`CAPTURE_REASON_MAX_AGE_NS`] of the RST.
    fn name(&self, record: &CaptureRecord, key: Option<&FlowKey>) -> Option<String> {
        let code = record.kernel_reason().or_else(|| {
            let found = self.map.get(&CaptureReasonKey::of_flow(key?), 0).ok()?;
            (found.time_ns.abs_diff(record.time_ns) <= CAPTURE_REASON_MAX_AGE_NS).then_some(found.reason)
        })?;
        Some(self.names.name(code).into_owned())
    }
}

/// The verdict on this RST's service (the server side of the connection, inside `tunnel`'s
/// tenant), once the run has one.
fn verdict_for(known: &Known, class: u8, key: Option<&FlowKey>, tunnel: Option<&TunnelKey>) -> Option<Cause> {
    let key = key?;
    let tunnel = tunnel.map(ServiceTunnel::of);
    let server = rst_common::wire::ResetClass(class).server();
    let (service, client) = if server {
        ((key.src_ip(), key.sport, tunnel), key.dst_ip())
    } else {
        ((key.dst_ip(), key.dport, tunnel), key.src_ip())
    };
    if known.scanners.contains(&(client, tunnel)) {
        return Some(Cause::Scan);
    }
    known.verdicts.get(&service).copied()
}

/// The run's RSTs per interface, when every one is in a flow (an RST the flow table had no
/// room for has no interface).
fn counted_by_interface(run: &Run) -> Option<HashMap<u32, u64>> {
    if run.totals.overflow > 0 || run.unlisted.resets > 0 {
        return None;
    }
    let mut counted = HashMap::new();
    for flow in &run.flows {
        *counted.entry(flow.ifindex).or_default() += flow.resets;
    }
    Some(counted)
}

/// One ring record, copied out (records are fixed-size; anything else is not ours).
pub(crate) fn read_record(bytes: &[u8]) -> Option<CaptureRecord> {
    if bytes.len() < std::mem::size_of::<CaptureRecord>() {
        return None;
    }
    // SAFETY: `CaptureRecord` is a repr(C) aggregate of integers and bytes, valid for every bit
    // pattern, and `bytes` holds at least its size; read_unaligned makes no alignment demand.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<CaptureRecord>()) })
}

/// The tunnel an RST's frame came through, by the shared walk (with the run's tunnel ports):
/// its kind and VNI or GRE key.
fn tunnel_of(walked: rst_common::Walk) -> Option<(rst_common::wire::TunnelKind, Option<u32>)> {
    let rst_common::Walk::Tcp(segment) = walked else {
        return None;
    };
    let tunnel = segment.tunnel;
    let kind = rst_common::wire::TunnelKind::from_byte(tunnel.kind)?;
    Some((kind, tunnel.keyed.then_some(tunnel.key)))
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use rst_common::wire::{ResetClass, ResetKind, TunnelKey, TunnelKind, FAMILY_IPV4};

    use super::{verdict_for, Known};
    use crate::model::aggregate::model::ServiceTunnel;
    use crate::model::verdict::{Cause, Finding, ScanCounts, ServiceAddr, Verdict};

    fn verdict(finding: Finding, addr: &str, port: u16) -> Verdict {
        Verdict {
            finding,
            service: ServiceAddr::on_link(addr.parse().expect("addr"), port),
            resets: 1,
            connections: 1,
            side: None,
            kernel_reason: None,
        }
    }

    #[test]
    fn a_scanners_refusals_carry_the_scan_verdict_whichever_port_answered() {
        let scanner: IpAddr = "10.0.0.9".parse().expect("addr");
        let counts = ScanCounts { client: scanner, ports: 9, hosts: 1, refused: 9, open: 0, silent: 0, completed: 0 };
        let known = Known::from_verdicts(&[
            verdict(Finding::Scan(counts), "10.0.0.1", 0),
            verdict(Finding::NoListener, "10.0.0.1", 81),
        ]);
        let refusal = |client: [u8; 4], port: u16| {
            let mut key = rst_common::FlowKey { sport: port, dport: 40_000, family: FAMILY_IPV4, ..Default::default() };
            key.src[..4].copy_from_slice(&[10, 0, 0, 1]);
            key.dst[..4].copy_from_slice(&client);
            key
        };
        let class = ResetClass::new(ResetKind::Refused, true, true, true, true).0;
        assert_eq!(verdict_for(&known, class, Some(&refusal([10, 0, 0, 9], 22)), None), Some(Cause::Scan));
        assert_eq!(verdict_for(&known, class, Some(&refusal([10, 0, 0, 7], 81)), None), Some(Cause::NoListener));
        assert_eq!(verdict_for(&known, class, Some(&refusal([10, 0, 0, 7], 82)), None), None);
        // Inside a tunnel, the verdicts of its tenant only.
        let vxlan = |vni| TunnelKey { kind: TunnelKind::Vxlan as u8, keyed: 1, key: vni, ..TunnelKey::default() };
        let in_tenant = |vni| {
            let mut verdict = verdict(Finding::NoListener, "10.0.0.1", 81);
            verdict.service.tunnel = Some(ServiceTunnel::of(&vxlan(vni)));
            verdict
        };
        let known = Known::from_verdicts(&[in_tenant(42)]);
        let refused = refusal([10, 0, 0, 7], 81);
        assert_eq!(verdict_for(&known, class, Some(&refused), Some(&vxlan(42))), Some(Cause::NoListener));
        assert_eq!(verdict_for(&known, class, Some(&refused), Some(&vxlan(43))), None, "another tenant's");
        assert_eq!(verdict_for(&known, class, Some(&refused), None), None, "outside the tunnel");
    }
}

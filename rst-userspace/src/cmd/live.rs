//! One live run, whichever command shows it: load and attach, then one [`LiveSession::tick`]
//! per interval (interfaces followed, maps read, the model and the metrics updated), and
//! [`LiveSession::finish`] (detach, last read, the run's summary). `rstwatch` prints each
//! interval; `rstwatch top` draws it.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;
use rst_common::FlowKey;

use crate::{
    cli::LiveOptions,
    collect::payloads::Payloads,
    collect::{sockets::Sockets, Collector, Sample},
    load::{self, Attachment, HookChoice},
    model::aggregate::{
        model::{Interface, Interval, PeerNetns, Run},
        Aggregator,
    },
    output::capture::{self, Capture, CapturedPayloads},
    output::metrics::{self, Metrics},
    output::{Output, Tick},
};

/// What a live run is sized by.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Capacity of the kernel's flow tables.
    pub max_flows: u32,
    /// How many of each ranking an interval keeps.
    pub top: usize,
    /// Most flows the run keeps.
    pub summary_flows: u32,
    /// How long an interval lasts: a last read of under half of one that counted nothing is
    /// a stub ([`Tick::stub`]).
    pub interval: Duration,
}

/// Whether an interval's record carries its top N rankings.
#[derive(Clone, Copy)]
enum Ranking {
    TopN,
    Skip,
}

/// The last interval, read after detaching, and the whole run.
pub struct Finished {
    pub interval: Interval,
    pub run: Run,
}

pub struct LiveSession {
    options: LiveOptions,
    /// One per `-i`, in order; `None` while that interface is gone. Declared before `ebpf`:
    /// links go before the programs they hold.
    attachments: Vec<Option<Attachment>>,
    /// Per `-i`: whether its disappearance was reported and a re-attach failure logged.
    missing_since: Vec<Option<bool>>,
    /// Interfaces attached because a `-i` pattern matched them, with the pattern.
    matched: Vec<(String, Attachment)>,
    /// Interfaces a pattern matched whose attach failed: said once, retried every interval.
    failed: std::collections::HashSet<u32>,
    collector: Collector,
    ebpf: load::LoadedObject,
    aggregator: Aggregator,
    /// `--metrics`: also among `outputs`; kept for the run-time sampling the watch mode adds.
    metrics: Option<Arc<Metrics>>,
    interval_start: Instant,
    interval: Duration,
    /// What follows the run interval by interval (`--capture`'s writer, `--metrics`), in the
    /// order they were registered.
    outputs: Vec<Box<dyn Output>>,
    /// With `--capture`, the RST payloads come from the capture's frames.
    captured_payloads: Option<CapturedPayloads>,
    /// The RST payloads the counting programs hand over.
    payloads: Payloads,
    /// This kernel's code for a reset sent for no socket: such a reset from a port that holds a
    /// live connection elsewhere answered an untranslated reply (`nat_lost`).
    no_socket: Option<u32>,
}

impl LiveSession {
    /// Everything that can be checked without touching the kernel: the interfaces exist, the
    /// capabilities are there. Returns the interfaces' indexes for [`LiveSession::start`].
    pub fn preflight(options: &LiveOptions) -> crate::Result<Vec<(String, u32)>> {
        let targets = load::resolve_targets(&options.ifaces)?;
        load::check_capabilities()?;
        Ok(targets)
    }

    /// Loads, attaches to every `-i` (`targets` from [`LiveSession::preflight`]), and starts
    /// serving `metrics` (a bound listener, served on `runtime`) if given.
    pub fn start(
        options: &LiveOptions,
        targets: &[(String, u32)],
        settings: Settings,
        metrics: Option<(tokio::net::TcpListener, &tokio::runtime::Handle)>,
    ) -> crate::Result<LiveSession> {
        let workloads_on = options.workloads != crate::model::workload::Setting::Off;
        // The file first: a path that cannot be written stops the run before anything is loaded.
        let capture_files = options.capture.as_ref().map(capture::create).transpose()?;
        let capture_load = options.capture.as_ref().map(|capture::Options { snaplen, budget, handshakes, .. }| {
            load::CaptureLoad { budget: *budget, snaplen: *snaplen, handshakes: *handshakes }
        });
        let mut ebpf = load::load_with_ports(
            settings.max_flows,
            options.counting,
            workloads_on,
            capture_load,
            &options.tunnel_ports,
        )?;
        let counting = ebpf.counting();
        let collector = Collector::new(&mut ebpf)?;
        let reads_payloads = ebpf.reads_payloads();
        let tunnel_ports = crate::model::aggregate::tunnels::TunnelPortSet::new(
            &options.tunnel_ports.vxlan,
            &options.tunnel_ports.geneve,
        );
        let payloads = Payloads::open(&mut ebpf, reads_payloads, tunnel_ports.clone())?;
        // Before the interfaces: once "attached to" is logged, every reset's reason is recorded.
        let (kernel_events, reason_names) = load::start_kernel_events(&mut ebpf);
        let firewall = load::start_firewall(&mut ebpf);
        let capture = match (capture_files, &options.capture) {
            (Some(files), Some(capture_options)) => {
                Some(Capture::start(&mut ebpf, files, capture_options, targets, reason_names.clone(), tunnel_ports)?)
            }
            _ => None,
        };
        let offsets = ebpf.workload_offsets().clone();
        let workloads = crate::model::workload::start(&mut ebpf, &offsets, &options.workloads);
        // Received resets' idle gaps need tcp:tcp_receive_reset, which the workloads attach when on.
        let listen_resets = kernel_events.why_not().map_or_else(
            || ebpf.listen_resets().clone(),
            |why| crate::availability::Availability::Unavailable(why.to_owned()),
        );
        let idle_gaps = match (kernel_events.why_not(), ebpf.idle_gaps().why_not()) {
            (Some(why), _) | (None, Some(why)) => crate::availability::Availability::Unavailable(why.to_owned()),
            (None, None) => {
                crate::availability::Availability::of(load::attach_receive_reset(&mut ebpf, workloads.is_ok()))
            }
        };
        let attachments: Vec<Option<Attachment>> =
            load::attach_all(&mut ebpf, options.attach, targets)?.into_iter().map(Some).collect();
        let interfaces: Vec<Interface> =
            attachments.iter().flatten().map(|a| Interface::of(a, peer_netns(&a.iface, a.ifindex))).collect();
        let metrics = metrics.map(|(listener, runtime)| {
            let names: HashMap<u32, String> = interfaces.iter().map(|i| (i.ifindex, i.iface.clone())).collect();
            let metrics =
                Arc::new(Metrics::new(names, settings.max_flows, reason_names.clone()).tracking(settings.top));
            if let Ok(addr) = listener.local_addr() {
                tracing::info!("serving metrics on http://{addr}/metrics");
            }
            runtime.spawn(metrics::serve(listener, Arc::clone(&metrics)));
            metrics
        });
        let mut aggregator = Aggregator::new(interfaces, settings.top).limit_flows(settings.summary_flows);
        load::warn_kernel_events(&kernel_events);
        load::warn_socket_reads(&listen_resets, &idle_gaps);
        let no_socket = reason_names.code_of("NO_SOCKET");
        load::log_firewall(&firewall);
        aggregator.kernel_events(kernel_events, reason_names);
        aggregator.counting(counting);
        match workloads {
            Ok(resolver) => aggregator.workloads(resolver),
            Err(why) if options.workloads != crate::model::workload::Setting::Off => {
                tracing::warn!("workloads behind resets are unavailable: {why}")
            }
            Err(_) => {}
        }
        // The outputs, each registered once.
        let mut outputs: Vec<Box<dyn Output>> = Vec::new();
        let captured_payloads = capture.as_ref().map(Capture::payloads);
        if let Some(capture) = capture {
            outputs.push(Box::new(capture));
        }
        if let Some(metrics) = &metrics {
            outputs.push(Box::new(Arc::clone(metrics)));
        }
        let mut session = LiveSession {
            options: options.clone(),
            missing_since: vec![None; attachments.len()],
            matched: Vec::new(),
            failed: std::collections::HashSet::new(),
            attachments,
            collector,
            ebpf,
            aggregator,
            metrics,
            interval_start: Instant::now(),
            interval: settings.interval,
            outputs,
            captured_payloads,
            payloads,
            no_socket,
        };
        session.follow_patterns();
        session.set_tracker_origin();
        Ok(session)
    }

    /// Adds an output the command brings (the printer), after those [`LiveSession::start`]
    /// registered: it is finished last, when the run's summary holds everything the others
    /// added to it.
    pub fn add_output(&mut self, output: Box<dyn Output>) {
        self.outputs.push(output);
    }

    /// Starts the first interval now (after whatever set-up followed [`LiveSession::start`]).
    pub fn restart_clock(&mut self) {
        self.interval_start = Instant::now();
        self.set_tracker_origin();
    }

    /// The run starts now on the kernel's clock too (verdicts' `since_ms`).
    fn set_tracker_origin(&mut self) {
        match crate::sys::clock::monotonic_ms() {
            Ok(origin_ms) => self.aggregator.tracker_origin(origin_ms),
            // Then `since_ms` counts from boot rather than from the start: still ordered.
            Err(error) => tracing::warn!("{:#}", anyhow::Error::new(error)),
        }
    }

    /// Ends the interval: follows the interfaces, reads the maps, folds the sample in and
    /// ranks the interval (top N).
    pub fn tick(&mut self) -> anyhow::Result<Interval> {
        self.step(Ranking::TopN)
    }

    /// [`LiveSession::tick`] without ranking the interval: for a reader that follows the run
    /// through the aggregator (`rstwatch top`), the rankings would be thrown away.
    pub fn tick_unranked(&mut self) -> anyhow::Result<Interval> {
        self.step(Ranking::Skip)
    }

    fn step(&mut self, ranking: Ranking) -> anyhow::Result<Interval> {
        self.follow_interfaces();
        let sample = self.collect()?;
        tracing::debug!(read_ms = sample.read_time.as_secs_f64() * 1e3, flows = sample.flows.len(), "interval read");
        let now = Instant::now();
        let elapsed = now - self.interval_start;
        self.interval_start = now;
        self.fold(&sample, elapsed, ranking, false)
    }

    /// Reads the kernel's counts of the interval, and asks this namespace's socket table about
    /// the resets its stack sent for no socket.
    fn collect(&mut self) -> anyhow::Result<Sample> {
        let mut sample = self.collector.collect()?;
        let Some(no_socket) = self.no_socket else { return Ok(sample) };
        let mut orphans = sample.stack_resets.iter().filter(|(key, _)| key.reason == no_socket).peekable();
        if orphans.peek().is_none() {
            return Ok(sample);
        }
        let sockets = Sockets::read();
        let mut lost = Vec::new();
        for (key, _) in orphans {
            let flow = FlowKey {
                src: key.src,
                dst: key.dst,
                sport: key.sport,
                dport: key.dport,
                family: key.family,
                ..FlowKey::default()
            };
            if let Some((addr, port)) = sockets.peer_elsewhere((flow.src_ip(), key.sport), (flow.dst_ip(), key.dport)) {
                lost.push((flow, (address_bytes(addr), port)));
            }
        }
        sample.nat_lost.extend(lost);
        Ok(sample)
    }

    fn fold(&mut self, sample: &Sample, elapsed: Duration, ranking: Ranking, stub: bool) -> anyhow::Result<Interval> {
        let interval = match ranking {
            Ranking::TopN => self.aggregator.add(sample, elapsed, SystemTime::now()),
            Ranking::Skip => self.aggregator.fold(sample, elapsed, SystemTime::now()),
        };
        // After the fold: the flows they belong to are in the run now.
        let captured = self.captured_payloads.as_ref().map(CapturedPayloads::take).unwrap_or_default();
        self.payloads.drain(&mut self.aggregator, captured);
        let tick = Tick { sample, interval: &interval, elapsed, aggregator: &self.aggregator, stub };
        for output in &mut self.outputs {
            output.interval(&tick)?;
        }
        Ok(interval)
    }

    /// Detaches from every interface (also what dropping the session does), saying so once.
    pub fn detach(&mut self) {
        if self.attachments.is_empty() && self.matched.is_empty() {
            return;
        }
        let mut detached: Vec<String> = self.attachments.iter().flatten().map(|a| a.iface.clone()).collect();
        detached.extend(self.matched.iter().map(|(_, a)| a.iface.clone()));
        self.attachments.clear();
        self.matched.clear();
        tracing::info!("detached from {}", detached.join(", "));
    }

    /// Detaches before the last read, so the summary holds every RST that crossed the hook.
    pub fn finish(mut self) -> anyhow::Result<Finished> {
        self.detach();
        let sample = self.collect()?;
        let elapsed = self.interval_start.elapsed();
        let stub = !sample.counted_anything() && elapsed < self.interval / 2;
        let interval = self.fold(&sample, elapsed, Ranking::TopN, stub)?;
        let mut run = self.aggregator.summary();
        run.rst_payloads = self.payloads.summary();
        for output in std::mem::take(&mut self.outputs) {
            output.finish(&mut run)?;
        }
        Ok(Finished { interval, run })
    }

    /// The run so far.
    pub fn aggregator(&self) -> &Aggregator {
        &self.aggregator
    }

    /// `iface (mode)` of every interface attached at the start.
    pub fn described_interfaces(&self) -> String {
        let described: Vec<String> =
            self.attachments.iter().flatten().map(|a| format!("{} ({})", a.iface, a.hook.as_str())).collect();
        described.join(", ")
    }

    pub fn hook(&self) -> HookChoice {
        self.options.attach.hook
    }

    /// The counting program of the chosen hook, with its name, for run-time sampling.
    pub fn counting_program(&self) -> Option<(&'static str, &aya::programs::Program)> {
        let programs = self.ebpf.programs();
        let name = match self.options.attach.hook {
            HookChoice::Xdp => programs.xdp,
            HookChoice::Tc => programs.tc,
        };
        self.ebpf.program(name).map(|program| (name, program))
    }

    pub fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_deref()
    }

    /// Interfaces come and go: a deleted one is reported once and the others carry on; one that
    /// comes back under its name (with a new ifindex) is attached again.
    fn follow_interfaces(&mut self) {
        self.follow_patterns();
        // Owned: attaching borrows the session.
        let exact: Vec<String> = self.options.ifaces.iter().filter(|name| !load::is_pattern(name)).cloned().collect();
        for (index, name) in exact.iter().enumerate() {
            let current = load::resolve_interface(name).ok();
            let attached = self.attachments[index].as_ref().map(|a| a.ifindex);
            if attached.is_some() && attached == current {
                continue;
            }
            if let Some(gone) = attached {
                tracing::warn!("interface {name} (ifindex {gone}) disappeared; the others are still watched, and it will be attached again if it comes back");
                self.attachments[index] = None;
                self.missing_since[index] = Some(false);
            }
            let Some(ifindex) = current else { continue };
            match self.attach(name, ifindex) {
                Ok(attachment) => {
                    tracing::info!("interface {name} is back (ifindex {ifindex})");
                    let peer = peer_netns(name, ifindex);
                    self.register(&attachment, peer);
                    self.attachments[index] = Some(attachment);
                    self.missing_since[index] = None;
                }
                Err(error) => {
                    if self.missing_since[index] != Some(true) {
                        tracing::warn!(
                            "interface {name} is back but attaching failed: {error:#}; retrying every interval"
                        );
                        self.missing_since[index] = Some(true);
                    }
                }
            }
        }
    }
}

impl LiveSession {
    /// Attaches the session's hook to an interface that came after the start.
    fn attach(&mut self, iface: &str, ifindex: u32) -> anyhow::Result<Attachment> {
        Ok(load::attach(&mut self.ebpf, self.options.attach, iface, ifindex)?)
    }

    /// Registers a just-attached interface with the run and every output.
    fn register(&mut self, attachment: &Attachment, peer: Option<PeerNetns>) {
        self.aggregator.add_interface(Interface::of(attachment, peer));
        for output in &mut self.outputs {
            output.interface_added(&attachment.iface, attachment.ifindex);
        }
    }

    /// `-i` patterns: attaches every interface of this namespace that matches one and is not
    /// watched yet (interfaces that appeared since: a container's veth), and forgets those
    /// that are gone.
    fn follow_patterns(&mut self) {
        let patterns: Vec<String> = self.options.ifaces.iter().filter(|name| load::is_pattern(name)).cloned().collect();
        if patterns.is_empty() {
            return;
        }
        let present = match crate::sys::netdev::interfaces() {
            Ok(present) => present,
            Err(error) => {
                tracing::warn!("listing interfaces for -i patterns: {error:#}");
                return;
            }
        };
        self.matched.retain(|(_, attachment)| {
            let here =
                present.iter().any(|(name, ifindex)| *ifindex == attachment.ifindex && *name == attachment.iface);
            if !here {
                tracing::info!("interface {} (ifindex {}) is gone", attachment.iface, attachment.ifindex);
            }
            here
        });
        for (name, ifindex) in &present {
            let watched = self.attachments.iter().flatten().any(|a| a.ifindex == *ifindex)
                || self.matched.iter().any(|(_, a)| a.ifindex == *ifindex);
            let Some(pattern) = patterns.iter().find(|pattern| load::pattern_matches(pattern, name)) else {
                continue;
            };
            if watched {
                continue;
            }
            match self.attach(name, *ifindex) {
                Ok(attachment) => {
                    let peer = peer_netns(name, *ifindex);
                    let described = crate::model::workload::netns::describe(peer.as_ref());
                    tracing::info!("interface {name} matches -i '{pattern}'{described}");
                    self.register(&attachment, peer);
                    self.failed.remove(ifindex);
                    self.matched.push(((*pattern).clone(), attachment));
                }
                Err(error) => {
                    if self.failed.insert(*ifindex) {
                        tracing::warn!("interface {name} matches -i '{pattern}' but attaching failed: {error:#}; retrying every interval");
                    }
                }
            }
        }
    }
}

/// The namespace of a just-attached interface's peer, looked up once: a failed lookup is said
/// and leaves it unnamed.
fn peer_netns(iface: &str, ifindex: u32) -> Option<PeerNetns> {
    crate::model::workload::netns::peer_of(ifindex, &crate::model::workload::netns::Places::default()).unwrap_or_else(
        |error| {
            tracing::warn!("interface {iface}: {:#}", anyhow::Error::new(error));
            None
        },
    )
}

/// Binds the `--metrics` endpoint on `runtime` (before anything is loaded: a taken port fails
/// the start early).
pub fn bind_metrics(
    runtime: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("binding the metrics endpoint to {addr}"))
}

/// An address as flow keys hold it: IPv4 in the first four bytes.
fn address_bytes(addr: std::net::IpAddr) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    match addr {
        std::net::IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
        std::net::IpAddr::V6(v6) => bytes = v6.octets(),
    }
    bytes
}

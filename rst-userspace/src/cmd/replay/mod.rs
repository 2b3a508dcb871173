//! `rstwatch replay`: the same report from capture files, computed by the same classifier.
//!
//! Frames stream out of the files ([`capture`]), lose their link header ([`link`]) and go
//! through `rst-common`'s walk, exactly as in the XDP program; a host map takes the place of
//! the kernel's flow table. What a frame is by itself (its record, interface, and for a plain
//! segment its connection) is decided on a second thread ([`decode`]); this loop keeps what
//! depends on the frames before it. The report comes from the live [`Aggregator`] and [`Printer`] (an [`Output`]),
//! with intervals measured in capture time: a frame stamped at or after the end of the current
//! interval closes it. Needs no privileges, except `--kernel`.
//!
//! A file may be `-` (standard input) and may be gzip- or zstd-compressed ([`source`]); a long
//! run shows its progress on a terminal ([`progress`]); `--from` / `--to` keep a window of
//! capture time, as if the capture had been cut there. Captures are not strictly in time order
//! (interfaces merged, per-CPU buffers), so a file is read past `--to` until a frame is stamped
//! [`PAST_WINDOW`] or more after it: then it is clearly past the window, and its rest is not
//! read.

mod activity;
pub mod capture;
mod decode;
pub mod kernel;
pub mod link;
mod prefetch;
mod progress;
pub mod source;
mod timing;

use std::{
    collections::HashMap,
    io::{self, Write},
    mem,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use rst_common::{
    parse::TCP_RST,
    track,
    wire::{ServiceKey, ServiceValue},
    ConnTable as _, Counters, FlowKey, Observation, Tracked,
};

use self::{
    activity::Hash,
    capture::Stop,
    decode::{Batch, Interfaces, Item, Kind, Message, Settings},
    kernel::KernelCheck,
    link::Link,
    progress::Progress,
    source::Source,
    timing::Timings,
};
use crate::{
    cli::ReportOptions,
    collect::connections::HostConnections,
    collect::Sample,
    model::aggregate::{
        tunnels::{TunnelNumbers, TunnelPortSet},
        Aggregator, FastMap,
    },
    output::{self, Output, Printer, Tick},
};

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// pcap or pcapng files, read in order as one run; `-` reads standard input. gzip and zstd
    /// files are decompressed (told by their content, not their name).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Replay only frames stamped at or after this time: RFC 3339 (`2024-05-01T12:00:00Z`,
    /// UTC) or Unix seconds (`1714564800.5`).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub from: Option<u64>,
    /// Replay only frames stamped before this time (same forms as `--from`). A file is read no
    /// further than its first frame stamped a minute or more after TIME: a frame before TIME
    /// that comes after that one (a capture out of order by more than a minute) is left out.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub to: Option<u64>,
    /// No progress line (it is shown on stderr only when stderr is a terminal).
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub report: ReportOptions,
    /// On a broken file, report the error, keep what was read before the break and go on with
    /// the next file; the summary is printed and the exit status is still non-zero.
    #[arg(long)]
    pub keep_going: bool,
    /// Also run every frame through the XDP program (BPF_PROG_TEST_RUN) and check that the
    /// kernel's counts equal replay's; needs root.
    #[arg(long)]
    pub kernel: bool,
    #[command(flatten)]
    pub tunnel_ports: crate::cli::TunnelPorts,
}

pub fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    match run_to(args, io::stdout().lock()) {
        // `rstwatch replay … | head` is not an error.
        Err(error) if output::is_broken_pipe(&error) => Ok(()),
        other => other,
    }
}

/// Replays `args.files` and writes the report to `out`.
pub fn run_to<W: Write>(args: &ReplayArgs, out: W) -> anyhow::Result<()> {
    let ReportOptions { interval, top, format, summary_flows, by } = args.report;
    let kernel = if args.kernel { Some(KernelCheck::new(&args.tunnel_ports)?) } else { None };
    let (from, to) = (args.from.unwrap_or(0), args.to.unwrap_or(u64::MAX));
    anyhow::ensure!(from < to, "--from must be before --to: the window would hold no frame");
    let mut replay = Replay {
        // A pcapng file may declare an interface after packets of another: each is added to the
        // aggregator when met.
        aggregator: Aggregator::new(Vec::new(), top as usize).limit_flows(summary_flows),
        outputs: vec![Box::new(Printer::new(out, format, top as usize, by))],
        interval_ns: u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX),
        tally: Tally {
            connections: HostConnections::with_capacity(REPLAY_CONNECTIONS).watching_data(),
            ..Tally::default()
        },
        window: None,
        new_file: false,
        interfaces: Interfaces::default(),
        kernel,
        payloads: FastMap::default(),
        range: from..to,
        past: args.to.map(|to| to.saturating_add(PAST_WINDOW.as_nanos() as u64)),
        ports: TunnelPortSet::new(&args.tunnel_ports.vxlan, &args.tunnel_ports.geneve),
        map_files: !args.keep_going,
        progress: Progress::new(args.quiet, args.files.len(), total_size(&args.files)),
        tunnels: TunnelNumbers::new(&args.tunnel_ports.vxlan, &args.tunnel_ports.geneve),
    };
    let mut broken = 0usize;
    for path in &args.files {
        match replay.file(path) {
            Ok(()) => {}
            Err(Stop::Capture(error)) => {
                let error = anyhow::Error::new(error).context(path.display().to_string());
                if !args.keep_going {
                    return Err(error);
                }
                replay.progress.suspend(|| {
                    eprintln!("rstwatch: error: {error:#} (--keep-going: reporting what was read)");
                });
                broken += 1;
            }
            Err(Stop::Sink(error)) => return Err(error.context(path.display().to_string())),
            // `Replay::file` ends a file it has enough of without an error.
            Err(Stop::Enough) => {}
        }
    }
    replay.progress.finish();
    replay.finish()?;
    if let Some(check) = replay.kernel.take() {
        let parity = check.finish()?;
        eprintln!("rstwatch: {}", parity.describe());
        if !parity.agrees() {
            anyhow::bail!("the kernel and replay disagree on the same frames");
        }
    }
    if broken > 0 {
        anyhow::bail!("{broken} of {} files could not be read to the end (errors above)", args.files.len());
    }
    Ok(())
}

/// Counts frames with the same `rst_common::count` and `track` the kernel programs use. Only
/// the tables differ: host maps have no capacity limit, so the overflow counters stay zero.
pub struct Tally {
    pub counters: Counters,
    pub flows: FastMap<FlowKey, u64>,
    pub services: HashMap<ServiceKey, ServiceValue>,
    /// Lives across intervals, as the kernel's does.
    pub connections: HostConnections,
    /// Replay's own times (capture time, ms), bounded like `connections`; the kernel check's
    /// tally, which sees no data, keeps none.
    timings: Timings,
}

/// How far past `--to` a file's frames may be stamped before it is read no further: out of order
/// by less than this, a frame inside the window is still replayed.
pub const PAST_WINDOW: Duration = Duration::from_secs(60);

/// How many frames ahead of the one replayed the activity table's line of a plain segment is
/// fetched: enough for the load to arrive, few enough that it is still there.
const PREFETCH_AHEAD: usize = 8;

/// Connections replay remembers: captures are read once, so a generous bound costs little.
const REPLAY_CONNECTIONS: usize = 1 << 20;

impl Default for Tally {
    fn default() -> Self {
        Tally {
            counters: Counters::default(),
            flows: FastMap::default(),
            services: HashMap::new(),
            connections: HostConnections::with_capacity(REPLAY_CONNECTIONS),
            timings: Timings::with_capacity(REPLAY_CONNECTIONS),
        }
    }
}

impl Tally {
    #[inline]
    pub fn count(&mut self, observation: &Observation) {
        let Some(event) = rst_common::count(&mut self.counters, observation) else {
            return;
        };
        // Times are replay's own: the kernel check's tally, which sees no data, keeps none.
        let timed = self.connections.watches_data();
        let now_ms = self.connections.clock_ms();
        if timed && event.flags & TCP_RST == 0 {
            self.timings.control(event, now_ms);
        }
        match track(&mut self.connections, event) {
            Tracked::Reset(key, service) => {
                if timed {
                    self.timings.reset(&key, &mut self.connections, now_ms);
                }
                self.counters.resets += 1;
                *self.flows.entry(key).or_default() += 1;
                if let Some(change) = service {
                    self.connections.count_service(&mut self.services, &change);
                }
            }
            Tracked::Service(change) => self.connections.count_service(&mut self.services, &change),
            Tracked::Nothing => {}
        }
    }
}

/// The interval being filled, in capture time (ns since the Unix epoch).
struct Window {
    start: u64,
    /// The latest timestamp counted in it.
    latest: u64,
}

struct Replay<'w> {
    aggregator: Aggregator,
    /// What the run is reported to, interval by interval: the printer.
    outputs: Vec<Box<dyn Output + 'w>>,
    interval_ns: u64,
    tally: Tally,
    window: Option<Window>,
    /// Set when a file after the first begins: its first frame decides whether the timeline
    /// goes on (the next file of a rotated capture) or a new stretch of time begins.
    new_file: bool,
    /// Interfaces met so far, lent to each file's decoding thread.
    interfaces: Interfaces,
    kernel: Option<KernelCheck>,
    /// The interval's last RST payload per flow (`flow_id`): first bytes and length.
    payloads: FastMap<FlowKey, (Vec<u8>, usize)>,
    /// Capture time replayed (`--from`, `--to`), ns since the Unix epoch.
    range: std::ops::Range<u64>,
    /// A frame stamped at or after this (`--to` and [`PAST_WINDOW`]) ends its file.
    past: Option<u64>,
    /// The run's tunnel ports, for the decoding thread's walk.
    ports: TunnelPortSet,
    /// Regular files are mapped, not read, unless `--keep-going`: a mapped file that shrinks
    /// while it is read can end the run (SIGBUS) before its error is reported and the next file
    /// read.
    map_files: bool,
    progress: Progress,
    /// Tunnels numbered as the kernel numbers them.
    tunnels: TunnelNumbers,
}

impl Replay<'_> {
    fn file(&mut self, path: &Path) -> Result<(), Stop<anyhow::Error>> {
        let source = Source::open(path, self.map_files)?;
        let name = if path.as_os_str() == "-" { "standard input".to_owned() } else { path.display().to_string() };
        self.progress.file(&name, source.size, Arc::clone(&source.consumed));
        self.new_file = self.window.is_some();
        let settings = Settings { ports: self.ports.clone(), range: self.range.clone(), past: self.past };
        let (decoded, thread) = decode::spawn(source, path, settings, mem::take(&mut self.interfaces))
            .context("starting the decoding thread")
            .map_err(Stop::Sink)?;
        for message in decoded {
            match message {
                Message::Batch(batch) => self.batch(&batch)?,
                Message::End { interfaces, result } => {
                    self.interfaces = interfaces;
                    return match result {
                        Err(Stop::Enough) => Ok(()),
                        other => other,
                    };
                }
            }
        }
        // The thread ended without a word: it panicked, and the run ends as if this one had.
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
        Err(Stop::Sink(anyhow::anyhow!("the decoding thread stopped before the end of the file")))
    }

    /// A batch's frames, in file order.
    fn batch(&mut self, batch: &Batch) -> Result<(), Stop<anyhow::Error>> {
        let mut frame = batch.first_frame;
        // Plain segments' connections are hashed here, a few frames ahead, and their line of the
        // activity table fetched meanwhile (hashing on the decoding thread made it the slower).
        let hasher = self.tally.timings.hasher();
        let mut hashes = [Hash::default(); PREFETCH_AHEAD];
        for (hash, item) in hashes.iter_mut().zip(&batch.items) {
            *hash = hasher.hash(&item.conn);
        }
        for (at, item) in batch.items.iter().enumerate() {
            let hash = hashes[at % PREFETCH_AHEAD];
            if let Some(ahead) = batch.items.get(at + PREFETCH_AHEAD).filter(|ahead| ahead.kind == Kind::Plain) {
                let next = hasher.hash(&ahead.conn);
                self.tally.timings.prefetch(next);
                hashes[at % PREFETCH_AHEAD] = next;
            }
            let replayed = match item.kind {
                Kind::Interface => {
                    if let Some(interface) = batch.interface(item) {
                        self.aggregator.add_interface(interface.clone());
                    }
                    continue;
                }
                Kind::Outside => Ok(()),
                _ => self.item(batch, item, hash),
            };
            replayed.with_context(|| format!("frame {frame}")).map_err(Stop::Sink)?;
            frame += 1;
        }
        self.progress.frames(batch.frames);
        Ok(())
    }

    /// One frame inside the window.
    #[inline]
    fn item(&mut self, batch: &Batch, item: &Item, hash: Hash) -> anyhow::Result<()> {
        let timestamp_ns = item.timestamp_ns;
        self.advance_clock(timestamp_ns)?;
        let now_ms = timestamp_ns / 1_000_000;
        self.tally.connections.set_clock_ms(now_ms);
        match item.kind {
            Kind::Plain => {
                let Tally { timings, connections, .. } = &mut self.tally;
                timings.segment(connections, &item.conn, hash, item.sender_is_lo, item.data, now_ms);
                self.tally.count(&Observation::Segment);
            }
            Kind::Counted(counted) => self.tally.count(&counted.observation()),
            _ => return self.packet(item.link, item.ifindex, timestamp_ns, batch.frame(item)),
        }
        if let Some(check) = &mut self.kernel {
            check.frame(item.link, batch.frame(item))?;
        }
        Ok(())
    }

    /// A frame whose observation depends on the frames before it ([`Kind::Stateful`]), its
    /// interval's clock already advanced.
    fn packet(&mut self, link: Link, ifindex: u32, timestamp_ns: u64, frame: &[u8]) -> anyhow::Result<()> {
        let Tally { timings, connections, .. } = &mut self.tally;
        let observation = link.inspect_segment(frame, ifindex, &mut self.tunnels, |conn, sender_is_lo, data| {
            let hash = timings.hasher().hash(conn);
            timings.segment(connections, conn, hash, sender_is_lo, data, timestamp_ns / 1_000_000);
        });
        if let Observation::Reset(event) = &observation {
            if let Some((bytes, len)) = link.rst_payload(frame, &self.tunnels) {
                // A flow's later RSTs overwrite its payload in place: no allocation per RST.
                let (kept, kept_len) = self.payloads.entry(event.key.flow_id()).or_default();
                kept.clear();
                kept.extend_from_slice(bytes);
                *kept_len = len;
            }
        }
        self.tally.count(&observation);
        if let Some(check) = &mut self.kernel {
            check.frame(link, frame)?;
        }
        Ok(())
    }

    /// Closes the intervals that end at or before `timestamp`.
    #[inline]
    fn advance_clock(&mut self, timestamp: u64) -> anyhow::Result<()> {
        let interval = self.interval_ns;
        let Some(window) = &mut self.window else {
            // The run starts at the first frame, for the service tracker's clock too.
            self.aggregator.tracker_origin(timestamp / 1_000_000);
            self.window = Some(Window { start: timestamp, latest: timestamp });
            return Ok(());
        };
        let end = window.start.saturating_add(interval);
        if mem::take(&mut self.new_file) && !(window.start..end).contains(&timestamp) {
            // The next file does not continue this interval: close it where its frames ended
            // and start over, so the time between unrelated captures counts for nothing.
            let (start, latest) = (window.start, window.latest);
            self.window = Some(Window { start: timestamp, latest: timestamp });
            return self.flush(latest - start, latest);
        }
        // (`end` saturates only for stamps centuries away: such a file's frames stay in one
        // interval rather than each closing one.)
        if timestamp < end || end == u64::MAX {
            // Out-of-order stamps (merged interfaces) count where they are read.
            window.latest = window.latest.max(timestamp);
            return Ok(());
        }
        // Whole intervals without a frame become one idle record, not thousands.
        let idle = (timestamp - end) / interval;
        let next = end + idle * interval;
        self.window = Some(Window { start: next, latest: timestamp });
        self.flush(interval, end)?;
        if idle > 0 {
            self.flush(idle * interval, next)?;
        }
        Ok(())
    }

    /// Reports what was counted since the last flush as one interval of `elapsed_ns`.
    fn flush(&mut self, elapsed_ns: u64, ended_ns: u64) -> anyhow::Result<()> {
        let sample = Sample {
            counters: mem::take(&mut self.tally.counters),
            tunnels: self.tunnels.take_new(),
            flows: self.tally.flows.drain().collect(),
            services: self.tally.services.drain().collect(),
            close_gaps: self.tally.timings.measured.close_gaps.drain().collect(),
            idle_before_close: self.tally.timings.measured.idle_before_close.drain().collect(),
            pauses: self.tally.timings.measured.pauses.drain().collect(),
            nat_lost: self.tally.timings.measured.nat_lost.drain().collect(),
            read_time: Duration::ZERO,
            // A capture shows the firewall's resets on the wire, never netfilter's call.
            firewall_resets: Vec::new(),
            // Nothing overflows a host map; listener resets and idle gaps are read from live
            // sockets only (left empty).
            ..Sample::default()
        };
        let ended = SystemTime::UNIX_EPOCH + Duration::from_nanos(ended_ns);
        let elapsed = Duration::from_nanos(elapsed_ns);
        let record = self.aggregator.add(&sample, elapsed, ended);
        for (id, (bytes, len)) in self.payloads.drain() {
            self.aggregator.rst_payload(&id, &bytes, len);
        }
        let tick = Tick { sample: &sample, interval: &record, elapsed, aggregator: &self.aggregator, stub: false };
        // A report on the terminal the progress line is drawn on would be torn by its redraws.
        let (outputs, progress) = (&mut self.outputs, &self.progress);
        progress.suspend(|| outputs.iter_mut().try_for_each(|output| output.interval(&tick)))?;
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        if let Some(window) = self.window.take() {
            self.flush(window.latest - window.start, window.latest)?;
        }
        let mut run = self.aggregator.summary();
        for output in mem::take(&mut self.outputs) {
            output.finish(&mut run)?;
        }
        Ok(())
    }
}

/// The stored size of all `files`, when every one is a regular file (not `-`, a pipe or a
/// device): the progress line's total.
fn total_size(files: &[PathBuf]) -> Option<u64> {
    files
        .iter()
        .map(|path| {
            let metadata = (path.as_os_str() != "-").then(|| std::fs::metadata(path).ok()).flatten()?;
            metadata.is_file().then_some(metadata.len())
        })
        .sum()
}

/// A `--from` / `--to` time: Unix seconds (with a fraction, if any) or RFC 3339 in UTC. In ns
/// since the Unix epoch, as frames are stamped.
fn parse_time(text: &str) -> Result<u64, String> {
    let seconds = |whole: &str, fraction: &str| -> Option<u64> {
        if whole.is_empty()
            || !whole.bytes().all(|b| b.is_ascii_digit())
            || !fraction.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        // Nanoseconds: the fraction's first nine digits, padded.
        let mut nanos = 0u64;
        for i in 0..9 {
            nanos = nanos * 10 + fraction.as_bytes().get(i).map_or(0, |d| u64::from(d - b'0'));
        }
        whole.parse::<u64>().ok()?.checked_mul(1_000_000_000)?.checked_add(nanos)
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if let Some(ns) = seconds(whole, fraction) {
        return Ok(ns);
    }
    let time = humantime::parse_rfc3339_weak(text)
        .map_err(|e| format!("{e}: expected Unix seconds (1714564800.5) or RFC 3339 (2024-05-01T12:00:00Z)"))?;
    let since = time.duration_since(SystemTime::UNIX_EPOCH).map_err(|_| "before 1970".to_owned())?;
    u64::try_from(since.as_nanos()).map_err(|_| "too far in the future".to_owned())
}

#[cfg(test)]
mod tests {
    use super::parse_time;

    #[test]
    fn times_are_unix_seconds_or_rfc3339() {
        assert_eq!(parse_time("1700000000"), Ok(1_700_000_000_000_000_000));
        assert_eq!(parse_time("1700000000.25"), Ok(1_700_000_000_250_000_000));
        assert_eq!(parse_time("1700000000.0000000019"), Ok(1_700_000_000_000_000_001));
        assert_eq!(parse_time("2023-11-14T22:13:20Z"), Ok(1_700_000_000_000_000_000));
        assert_eq!(parse_time("2023-11-14 22:13:20.5"), Ok(1_700_000_000_500_000_000));
        for bad in ["", ".5", "yesterday", "1700000000.x", "-5"] {
            assert!(parse_time(bad).is_err(), "{bad:?}");
        }
    }
}

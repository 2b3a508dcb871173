//! Differential fuzzing of rstwatch's header walk: the real XDP object under
//! `BPF_PROG_TEST_RUN` against a reference parser built on etherparse's header types.
//!
//! The engine of `rstwatch-fuzz` (`cargo xtask fuzz`) and of the quick slice in
//! rst-userspace's `tests/fuzz.rs`. Needs root (CAP_BPF + CAP_PERFMON).
//!
//! Frames come from four generators ([`generate`]): random bytes, frames built at random with
//! rst-craft's frame builder, and mutations (flipped flags, cut lengths, bogus IHL / data offset /
//! extension-header lengths, VLAN stacks, fragments…) of the corpus captures, the replay
//! fixtures and the crafted case table. Every frame goes through
//!
//! - the reference ([`reference()`]): is it a counted RST, and for which flow;
//! - rst-common's `inspect` on the host (the code the kernel runs, compiled for x86): cheap, per
//!   frame, and the only check for frames shorter than 14 bytes, which a test run refuses;
//! - the XDP program, once (`repeat = 1`, so no dispatcher swap), which must return `XDP_PASS`.
//!   Every `batch` frames, rstwatch's own `Collector` ends the epoch and the batch's per-flow
//!   counts, frame count and reset count must equal the reference's. A batch that differs is
//!   bisected (run half, collect, compare) down to the frames that disagree.
//!
//! Disagreements are printed as hex and, with `--findings DIR`, written there one file per
//! frame in the format of rst-userspace's `tests/regressions/` (see its `tests/fuzz.rs`).

pub mod generate;
pub mod reference;

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
pub use generate::{generate, Rng, Seeds};
pub use reference::{host, reference, AH_ZERO_AS_8_BYTES};
use rst_common::{wire::FAMILY_IPV4, FlowKey};
use rstwatch::{
    load::testrun::{sample_flows, Harness, LOOPBACK_IFINDEX, MIN_FRAME},
    load::Counting,
};

/// What a test run without `ctx_in` reports as the ingress interface (the loopback).
pub const IFINDEX: u32 = LOOPBACK_IFINDEX;
/// Longest frame the generators make: one page, so every test run is single-buffer and cheap.
const MAX_FRAME: usize = 1500;

// ---------------------------------------------------------------------------------------------
// The kernel side: rstwatch's harness ([`Harness`]), the object as rstwatch loads it

/// One test run (`repeat = 1`); the program must return `XDP_PASS`.
fn run_frame(kernel: &Harness, frame: &[u8]) -> anyhow::Result<()> {
    kernel.run(frame, 1).with_context(|| format!("frame {}", hex(frame)))?;
    Ok(())
}

/// The kernel's count of the frames that ran since the last collect.
fn collect(kernel: &mut Harness) -> anyhow::Result<Tally> {
    let sample = kernel.collect()?;
    if sample.counters.overflow != 0 {
        bail!("{} resets overflowed the flow table: batch larger than --max-flows", sample.counters.overflow);
    }
    // The classifier's verdict is left out: the reference does not compute it (the header walk
    // is what is fuzzed; classification has tests of its own).
    tally(&sample)
}

/// A sample's counts, each tunnel's number made canonical ([`reference::canonical`]): the
/// kernel numbers tunnels its own way, and says which is which in the samples.
fn tally(sample: &rstwatch::collect::Sample) -> anyhow::Result<Tally> {
    let mut numbers = KERNEL_TUNNELS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let numbers = numbers.get_or_insert_with(std::collections::HashMap::new);
    numbers.extend(sample.tunnels.iter().copied());
    let mut flows = BTreeMap::new();
    for (key, resets) in sample_flows(sample)? {
        *flows.entry(reference::canonical(key, numbers)).or_default() += resets;
    }
    Ok(Tally { frames: sample.counters.frames, resets: sample.counters.resets, flows })
}

/// The kernel's tunnel numbers, as its collects report them (see [`reference::canonical`]).
static KERNEL_TUNNELS: std::sync::Mutex<Option<std::collections::HashMap<u32, rst_common::wire::TunnelKey>>> =
    std::sync::Mutex::new(None);

/// Runs `frames` and collects: the kernel's frame count, reset count and per-flow counts.
fn run_and_collect(kernel: &mut Harness, frames: &[&[u8]]) -> anyhow::Result<Tally> {
    for frame in frames {
        run_frame(kernel, frame)?;
    }
    collect(kernel)
}

/// Counts of one batch, kernel's or reference's.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    frames: u64,
    resets: u64,
    flows: BTreeMap<FlowKey, u64>,
}

impl Tally {
    fn expected<'a>(frames: impl IntoIterator<Item = &'a [u8]>) -> Tally {
        let mut tally = Tally::default();
        for frame in frames {
            tally.frames += 1;
            if let Some(key) = reference(frame, IFINDEX) {
                tally.resets += 1;
                *tally.flows.entry(key).or_default() += 1;
            }
        }
        tally
    }
}

// ---------------------------------------------------------------------------------------------
// Disagreements

/// Which side disagreed with the reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// rst-common's `inspect` on the host.
    Host,
    /// The XDP program.
    Kernel,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Host => "host",
            Side::Kernel => "kernel",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Disagreement {
    pub origin: String,
    pub frame: Vec<u8>,
    pub reference: Option<FlowKey>,
    pub side: Side,
    /// What that side said.
    pub got: String,
}

impl Disagreement {
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {} bytes): reference {}, {} {}\n  {}",
            self.side.as_str(),
            self.origin,
            self.frame.len(),
            describe_key(self.reference.as_ref()),
            self.side.as_str(),
            self.got,
            hex(&self.frame)
        )
    }

    /// The file format of `tests/regressions/`: `#` comments, then the frame as hex.
    pub fn regression_file(&self) -> String {
        format!(
            "# found by the differential fuzzer ({}): {} said {}, the reference {}\n{}\n",
            self.origin,
            self.side.as_str(),
            self.got,
            describe_key(self.reference.as_ref()),
            hex(&self.frame)
        )
    }
}

pub fn describe_key(key: Option<&FlowKey>) -> String {
    match key {
        None => "not a counted RST".into(),
        Some(key) => {
            let addr = |bytes: &[u8; 16]| -> String {
                if key.family == FAMILY_IPV4 {
                    std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]).to_string()
                } else {
                    std::net::Ipv6Addr::from(*bytes).to_string()
                }
            };
            format!("RST {}:{} -> {}:{} (if {})", addr(&key.src), key.sport, addr(&key.dst), key.dport, key.ifindex)
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

pub fn unhex(text: &str) -> anyhow::Result<Vec<u8>> {
    let text: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if !text.len().is_multiple_of(2) {
        bail!("odd number of hex digits");
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).with_context(|| format!("bad hex at {i}")))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The run

#[derive(Clone, Debug)]
pub struct Config {
    pub frames: u64,
    pub seed: u64,
    /// Frames between collects; must stay below `max_flows`.
    pub batch: usize,
    pub capture_dirs: Vec<PathBuf>,
    /// Keep (and bisect for) at most this many disagreements; the rest are only counted.
    pub max_disagreements: usize,
    pub progress: bool,
}

impl Config {
    pub fn default_capture_dirs() -> Vec<PathBuf> {
        let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
        let corpus = std::env::var_os("RSTWATCH_CORPUS")
            .map(PathBuf::from)
            .unwrap_or_else(|| manifest.join("../../shared/corpus"));
        // rst-userspace's replay fixtures.
        vec![corpus, manifest.join("../rst-userspace/tests/data")]
    }
}

#[derive(Debug, Default)]
pub struct Report {
    pub frames: u64,
    /// Frames that went through the kernel (the rest are shorter than 14 bytes).
    pub kernel_frames: u64,
    /// Frames the reference calls counted RSTs.
    pub resets: u64,
    pub distinct_flows_max_batch: usize,
    pub by_origin: BTreeMap<&'static str, u64>,
    pub collects: u64,
    pub bisections: u64,
    pub seed_frames: (usize, usize),
    pub disagreements: Vec<Disagreement>,
    /// Every disagreement, also those beyond `max_disagreements`.
    pub disagreement_count: u64,
    pub elapsed: Duration,
}

pub const MAX_FLOWS: u32 = 65_536;

pub fn run(config: &Config) -> anyhow::Result<Report> {
    let started = Instant::now();
    let seeds = Seeds::load(&config.capture_dirs)?;
    let mut kernel = Harness::load(MAX_FLOWS, Counting::Auto)?;
    // Anything left over from the load (nothing, normally) is not part of the first batch.
    kernel.collect()?;
    let mut rng = Rng::new(config.seed);
    let mut report = Report { seed_frames: (seeds.corpus_frames, seeds.case_frames), ..Report::default() };
    let mut batch: Vec<(&'static str, Vec<u8>)> = Vec::with_capacity(config.batch);
    let mut last_progress = Instant::now();
    while report.frames < config.frames {
        let (origin, frame) = generate(&mut rng, &seeds);
        report.frames += 1;
        *report.by_origin.entry(origin).or_default() += 1;
        let expected = reference(&frame, IFINDEX);
        report.resets += u64::from(expected.is_some());
        let host = host(&frame, IFINDEX);
        if host != expected {
            report.disagreement_count += 1;
        }
        if host != expected && report.disagreements.len() < config.max_disagreements {
            report.disagreements.push(Disagreement {
                origin: origin.into(),
                frame: frame.clone(),
                reference: expected,
                side: Side::Host,
                got: describe_key(host.as_ref()),
            });
        }
        if frame.len() < MIN_FRAME {
            continue;
        }
        run_frame(&kernel, &frame)?;
        report.kernel_frames += 1;
        batch.push((origin, frame));
        if batch.len() >= config.batch || report.frames >= config.frames {
            check_batch(&mut kernel, &mut batch, &mut report, config.max_disagreements)?;
        }
        if config.progress && last_progress.elapsed() >= Duration::from_secs(5) {
            last_progress = Instant::now();
            eprintln!(
                "fuzz: {} frames, {} disagreements, {:.0} frames/s",
                report.frames,
                report.disagreement_count,
                report.frames as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    check_batch(&mut kernel, &mut batch, &mut report, config.max_disagreements)?;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// The batch already ran; collect and compare, bisect if it differs.
fn check_batch(
    kernel: &mut Harness,
    batch: &mut Vec<(&'static str, Vec<u8>)>,
    report: &mut Report,
    max_disagreements: usize,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let sample = kernel.collect()?;
    report.collects += 1;
    let got = tally(&sample)?;
    let expected = Tally::expected(batch.iter().map(|(_, f)| f.as_slice()));
    report.distinct_flows_max_batch = report.distinct_flows_max_batch.max(expected.flows.len());
    if sample.counters.overflow != 0 || got != expected {
        report.bisections += 1;
        if report.disagreements.len() >= max_disagreements {
            // Enough examples kept: count the batch's differing resets without bisecting.
            report.disagreement_count += got.resets.abs_diff(expected.resets).max(1);
            batch.clear();
            return Ok(());
        }
        let frames: Vec<&[u8]> = batch.iter().map(|(_, f)| f.as_slice()).collect();
        let mut bad = Vec::new();
        bisect(kernel, &frames, 0, &mut bad)?;
        if bad.is_empty() {
            bail!(
                "a batch of {} frames differed (kernel {} frames / {} resets / {} flows, reference {} / {} / {}), \
                 but no frame differs on its own",
                frames.len(),
                got.frames,
                got.resets,
                got.flows.len(),
                expected.frames,
                expected.resets,
                expected.flows.len()
            );
        }
        report.disagreement_count += bad.len() as u64;
        for (index, said) in bad {
            let (origin, frame) = &batch[index];
            report.disagreements.push(Disagreement {
                origin: (*origin).into(),
                frame: frame.clone(),
                reference: reference(frame, IFINDEX),
                side: Side::Kernel,
                got: said,
            });
        }
    }
    batch.clear();
    Ok(())
}

/// Finds the frames of `frames` (indices from `base`) the kernel counts differently.
fn bisect(kernel: &mut Harness, frames: &[&[u8]], base: usize, bad: &mut Vec<(usize, String)>) -> anyhow::Result<()> {
    let got = run_and_collect(kernel, frames)?;
    let expected = Tally::expected(frames.iter().copied());
    if got == expected {
        return Ok(());
    }
    if frames.len() == 1 {
        let said = match (got.resets, got.flows.keys().next()) {
            (0, _) => "not a counted RST".to_owned(),
            (_, key) => describe_key(key),
        };
        bad.push((base, said));
        return Ok(());
    }
    let mid = frames.len() / 2;
    bisect(kernel, &frames[..mid], base, bad)?;
    bisect(kernel, &frames[mid..], base + mid, bad)
}

/// Checks one frame on every side; for regression files and single cases.
pub fn check_one(kernel: &mut Harness, frame: &[u8]) -> anyhow::Result<Vec<String>> {
    let expected = reference(frame, IFINDEX);
    let mut problems = Vec::new();
    let host = host(frame, IFINDEX);
    if host != expected {
        problems.push(format!("host: {}, reference: {}", describe_key(host.as_ref()), describe_key(expected.as_ref())));
    }
    if frame.len() >= MIN_FRAME {
        let got = run_and_collect(kernel, &[frame])?;
        let want = Tally::expected([frame]);
        if got != want {
            problems.push(format!(
                "kernel: {}, reference: {}",
                if got.resets == 0 { "not a counted RST".into() } else { describe_key(got.flows.keys().next()) },
                describe_key(expected.as_ref())
            ));
        }
    }
    Ok(problems)
}

/// The run's one JSON object (`rstwatch-fuzz` prints it, `cargo xtask fuzz` passes it on).
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub frames: u64,
    pub kernel_frames: u64,
    pub host_only_frames: u64,
    pub reference_resets: u64,
    pub disagreements: u64,
    pub disagreements_kept: usize,
    pub disagreements_host: usize,
    pub disagreements_kernel: usize,
    pub collects: u64,
    pub bisected_batches: u64,
    pub seed: u64,
    pub ah_zero_as_8_bytes: bool,
    pub seed_frames: SeedFrames,
    pub by_origin: BTreeMap<&'static str, u64>,
    pub seconds: f64,
    pub frames_per_second: f64,
}

#[derive(Debug, serde::Serialize)]
pub struct SeedFrames {
    pub captures: usize,
    pub cases: usize,
}

impl Report {
    pub fn summary(&self, config: &Config) -> Summary {
        let kept = |side| self.disagreements.iter().filter(|d| d.side == side).count();
        Summary {
            frames: self.frames,
            kernel_frames: self.kernel_frames,
            host_only_frames: self.frames - self.kernel_frames,
            reference_resets: self.resets,
            disagreements: self.disagreement_count,
            disagreements_kept: self.disagreements.len(),
            disagreements_host: kept(Side::Host),
            disagreements_kernel: kept(Side::Kernel),
            collects: self.collects,
            bisected_batches: self.bisections,
            seed: config.seed,
            ah_zero_as_8_bytes: AH_ZERO_AS_8_BYTES.load(std::sync::atomic::Ordering::Relaxed),
            seed_frames: SeedFrames { captures: self.seed_frames.0, cases: self.seed_frames.1 },
            by_origin: self.by_origin.clone(),
            seconds: self.elapsed.as_secs_f64(),
            frames_per_second: self.frames as f64 / self.elapsed.as_secs_f64(),
        }
    }
}

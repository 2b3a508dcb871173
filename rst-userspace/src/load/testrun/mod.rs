//! The real eBPF object under `BPF_PROG_TEST_RUN`: the one harness the kernel tests, the
//! differential fuzzer, the benchmarks and `rstwatch replay --kernel` share.
//!
//! [`Harness`] loads the object the way live mode does ([`load::load_counting`]), builds the
//! real [`Collector`] before any frame runs (its traffic baseline is taken there), runs frames
//! through the counting programs or any other program of the object (the benchmarks' empty
//! baselines), and insists on the verdict rstwatch promises: `XDP_PASS`, TC "next". It also keeps
//! a second handle on the maps it must read after every single frame ([`probe`]): the per-frame
//! counter deltas say how the kernel classified each frame, so a disagreement names the frame,
//! not just a total.

mod context;
pub mod probe;

use std::time::Duration;

use anyhow::Context as _;
use aya::{
    maps::{Map, MapData, MapError},
    programs::{ProgramError, SchedClassifier, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
pub use context::XdpMd;
pub use probe::{expected_sample, sample_flows, Verdict};
use rst_common::{
    wire::{
        CaptureReason, CaptureReasonKey, CaptureRecord, CountingPrograms, MAP_CAPTURE_REASONS, PROG_PAUSES,
        PROG_PAUSES_EGRESS, PROG_TC_BASELINE, PROG_XDP_BASELINE,
    },
    FlowKey,
};

use crate::{
    collect::{Collector, Sample},
    load::{self, Counting},
};

/// `XDP_PASS` (include/uapi/linux/bpf.h): what rstwatch's XDP programs return for every frame.
pub const XDP_PASS: u32 = 2;
/// `XDP_TX`: what the benchmarks' flood generator returns, to send each frame back out.
pub const XDP_TX: u32 = 3;
/// `TCX_NEXT` / `TC_ACT_UNSPEC`: what rstwatch's TC programs return for every packet.
pub const TC_NEXT: i32 = -1;
/// The loopback's ifindex in every network namespace: what a test run without `ctx_in`
/// reports as the ingress interface.
pub const LOOPBACK_IFINDEX: u32 = 1;
/// `BPF_PROG_TEST_RUN` refuses XDP input shorter than an Ethernet header (`ETH_HLEN`).
pub const MIN_FRAME: usize = 14;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("a test run needs at least {MIN_FRAME} bytes, got {0}")]
    ShortFrame(usize),
    #[error("the eBPF object has no program {0}")]
    NoProgram(String),
    #[error("the eBPF object has no map {0}")]
    NoMap(String),
    #[error("program {name}")]
    Program {
        name: String,
        #[source]
        source: ProgramError,
    },
    #[error("map {name}")]
    Map {
        name: String,
        #[source]
        source: MapError,
    },
    #[error("BPF_PROG_TEST_RUN of {name} with a {len}-byte frame")]
    Run {
        name: String,
        len: usize,
        #[source]
        source: ProgramError,
    },
    #[error("{name} returned {returned} instead of {expected} for a {len}-byte frame")]
    Verdict { name: String, returned: i64, expected: &'static str, len: usize },
}

/// The object as live mode loads it, its collector, and a second look at its maps.
pub struct Harness {
    ebpf: load::LoadedObject,
    collector: Collector,
    programs: CountingPrograms,
    probe: probe::Probe,
    /// Every map's kernel id, taken before the collector took the maps out of `ebpf`.
    map_ids: Vec<(String, u32)>,
    /// With the capturing programs: their ring, emptied at every collect.
    capture_ring: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    /// With the capturing programs: the kernel reasons `tcp:tcp_send_reset` would record.
    capture_reasons: Option<aya::maps::HashMap<MapData, CaptureReasonKey, CaptureReason>>,
}

impl Harness {
    /// Loads the object with room for `max_flows` flows per epoch and the counting programs
    /// `counting` picks.
    pub fn load(max_flows: u32, counting: Counting) -> anyhow::Result<Self> {
        Self::load_with(max_flows, counting, None)
    }

    /// [`Harness::load`] with the capturing programs when `capture` is given (`--capture`).
    pub fn load_with(max_flows: u32, counting: Counting, capture: Option<load::CaptureLoad>) -> anyhow::Result<Self> {
        Self::load_with_ports(max_flows, counting, capture, &crate::cli::TunnelPorts::default())
    }

    /// [`Harness::load_with`], walking into VXLAN and Geneve on `tunnel_ports` too.
    pub fn load_with_ports(
        max_flows: u32,
        counting: Counting,
        capture: Option<load::CaptureLoad>,
        tunnel_ports: &crate::cli::TunnelPorts,
    ) -> anyhow::Result<Self> {
        let mut ebpf = load::load_with_ports(max_flows, counting, true, capture, tunnel_ports)
            .context("loading the eBPF object for test runs")?;
        let programs = ebpf.programs();
        let mut map_ids = Vec::new();
        for (name, map) in ebpf.maps() {
            if let Some(data) = readable(map) {
                map_ids.push((name.to_owned(), data.info().map_err(map_error(name))?.id()));
            }
        }
        let probe = probe::Probe::open(|name| second_handle(&map_ids, name), max_flows)?;
        let collector = Collector::new(&mut ebpf)?;
        let (capture_ring, capture_reasons) = match capture {
            Some(_) => {
                let ring = ebpf.take_map(rst_common::wire::MAP_CAPTURE_RING).context("the capture ring")?;
                let reasons = ebpf.take_map(MAP_CAPTURE_REASONS).context("the capture's kernel reasons")?;
                (
                    Some(aya::maps::RingBuf::try_from(ring).context("opening the capture ring")?),
                    Some(aya::maps::HashMap::try_from(reasons).context("opening the capture's kernel reasons")?),
                )
            }
            None => (None, None),
        };
        Ok(Self { ebpf, collector, programs, probe, map_ids, capture_ring, capture_reasons })
    }

    /// Also loads the empty XDP and TC programs of the object, the floor cost measurements
    /// subtract.
    pub fn load_baselines(&mut self) -> Result<(), Error> {
        let xdp: &mut Xdp = program_mut(&mut self.ebpf, PROG_XDP_BASELINE)?;
        xdp.load().map_err(|source| Error::Program { name: PROG_XDP_BASELINE.to_owned(), source })?;
        let tc: &mut SchedClassifier = program_mut(&mut self.ebpf, PROG_TC_BASELINE)?;
        tc.load().map_err(|source| Error::Program { name: PROG_TC_BASELINE.to_owned(), source })?;
        Ok(())
    }

    /// Also loads `--idle-gaps`' programs ([`PROG_PAUSES`], [`PROG_PAUSES_EGRESS`]).
    pub fn load_pauses(&mut self) -> Result<(), Error> {
        for name in [PROG_PAUSES, PROG_PAUSES_EGRESS] {
            let tc: &mut SchedClassifier = program_mut(&mut self.ebpf, name)?;
            tc.load().map_err(|source| Error::Program { name: name.to_owned(), source })?;
        }
        Ok(())
    }

    /// The counting programs loaded: the per-CPU set, or the atomic one.
    pub fn programs(&self) -> CountingPrograms {
        self.programs
    }

    /// `"per-cpu"` or `"atomic"`: which counting programs were loaded.
    pub fn counting_mode(&self) -> &'static str {
        self.ebpf.counting().as_str()
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    /// The counting XDP program, for test runs from several threads at once ([`run_xdp`]).
    pub fn program(&self) -> Result<&Xdp, Error> {
        self.xdp(self.programs.xdp)
    }

    /// Any XDP program of the object, by name.
    pub fn xdp(&self, name: &str) -> Result<&Xdp, Error> {
        program(&self.ebpf, name)
    }

    /// Any TC program of the object, by name.
    pub fn tc(&self, name: &str) -> Result<&SchedClassifier, Error> {
        program(&self.ebpf, name)
    }

    /// Runs `frame` through the counting XDP program `repeat` times, as arriving on the
    /// loopback; returns the kernel-reported time per run.
    pub fn run(&self, frame: &[u8], repeat: u32) -> Result<Duration, Error> {
        run_xdp(self.program()?, frame, None, repeat)
    }

    /// Runs `frame` once as arriving on `ifindex` (which must exist in this network namespace).
    pub fn run_on(&self, frame: &[u8], ifindex: u32) -> Result<Duration, Error> {
        run_xdp(self.program()?, frame, Some(ifindex), 1)
    }

    /// Runs one frame and reports how the kernel classified it. For a reset, also checks that
    /// `expected_key`'s entry grew by exactly one.
    pub fn classify(&self, frame: &[u8], expected_key: Option<&FlowKey>) -> anyhow::Result<Verdict> {
        self.probe.classify(|| self.run(frame, 1).map(drop), expected_key)
    }

    /// Ends the epoch the test runs wrote to and returns what it counted.
    pub fn collect(&mut self) -> anyhow::Result<Sample> {
        if let Some(ring) = &mut self.capture_ring {
            while ring.next().is_some() {}
        }
        Ok(self.collector.collect()?)
    }

    /// With the capturing programs: the records in the ring, taken out of it.
    pub fn capture_records(&mut self) -> Vec<CaptureRecord> {
        let mut records = Vec::new();
        if let Some(ring) = &mut self.capture_ring {
            while let Some(item) = ring.next() {
                records.extend(crate::output::capture::read_record(&item));
            }
        }
        records
    }

    /// With the capturing programs: what `tcp:tcp_send_reset` records for an RST this host's
    /// stack sends, written as the tracepoint would.
    pub fn record_kernel_reason(&mut self, key: &CaptureReasonKey, reason: &CaptureReason) -> anyhow::Result<()> {
        let map = self.capture_reasons.as_mut().context("loaded without the capturing programs")?;
        map.insert(key, reason, 0).context("writing the capture's kernel reasons")?;
        Ok(())
    }

    /// In `epoch`: eviction-log entries used, all CPUs, and flow-table slots used.
    pub fn log_and_table_use(&self, epoch: u32) -> anyhow::Result<(u64, usize)> {
        self.probe.log_and_table_use(epoch)
    }

    /// Resets held in the per-CPU flow cache, both epochs, all CPUs.
    pub fn cached_resets(&self) -> anyhow::Result<u64> {
        self.probe.cached_resets()
    }

    /// A new file descriptor for one of the object's maps, so it can be read (or written) while
    /// the collector holds the original.
    pub fn second_handle(&self, name: &str) -> Result<MapData, Error> {
        second_handle(&self.map_ids, name)
    }
}

fn program<'a, P>(ebpf: &'a Ebpf, name: &str) -> Result<&'a P, Error>
where
    &'a P: TryFrom<&'a aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program(name).ok_or_else(|| Error::NoProgram(name.to_owned()))?;
    program.try_into().map_err(|source| Error::Program { name: name.to_owned(), source })
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P, Error>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf.program_mut(name).ok_or_else(|| Error::NoProgram(name.to_owned()))?;
    program.try_into().map_err(|source| Error::Program { name: name.to_owned(), source })
}

/// The maps a second handle can read: arrays and hash maps. Others (a ring buffer, say) belong
/// to the collector alone, and asking for one is [`Error::NoMap`].
fn readable(map: &Map) -> Option<&MapData> {
    match map {
        Map::HashMap(data) | Map::PerCpuArray(data) | Map::Array(data) | Map::PerCpuHashMap(data) => Some(data),
        _ => None,
    }
}

fn map_error(name: &str) -> impl Fn(MapError) -> Error + '_ {
    move |source| Error::Map { name: name.to_owned(), source }
}

fn second_handle(map_ids: &[(String, u32)], name: &str) -> Result<MapData, Error> {
    let (_, id) = map_ids.iter().find(|(n, _)| n == name).ok_or_else(|| Error::NoMap(name.to_owned()))?;
    MapData::from_id(*id).map_err(map_error(name))
}

/// One XDP test run of `repeat` runs that must return `XDP_PASS`; the kernel-reported time per
/// run. With `ifindex`, a `struct xdp_md` context sets the ingress interface; without, the
/// kernel uses the loopback.
pub fn run_xdp(program: &Xdp, frame: &[u8], ifindex: Option<u32>, repeat: u32) -> Result<Duration, Error> {
    if frame.len() < MIN_FRAME {
        return Err(Error::ShortFrame(frame.len()));
    }
    let context = ifindex.map(|ifindex| XdpMd::arriving(frame.len(), ifindex));
    let context_bytes = context.as_ref().map(XdpMd::as_bytes);
    let name = || program.info().ok().and_then(|info| info.name_as_str().map(str::to_owned)).unwrap_or_default();
    let result = program
        .test_run(TestRunOptions { data_in: Some(frame), ctx_in: context_bytes, repeat, ..TestRunOptions::new() })
        .map_err(|source| Error::Run { name: name(), len: frame.len(), source })?;
    if result.return_value != XDP_PASS {
        return Err(Error::Verdict {
            name: name(),
            returned: i64::from(result.return_value),
            expected: "XDP_PASS",
            len: frame.len(),
        });
    }
    Ok(result.duration)
}

/// One TC test run of `repeat` runs (the frame as an skb) that must return "next"; the
/// kernel-reported time per run.
pub fn run_tc(program: &SchedClassifier, frame: &[u8], repeat: u32) -> Result<Duration, Error> {
    let name = || program.info().ok().and_then(|info| info.name_as_str().map(str::to_owned)).unwrap_or_default();
    let result = program
        .test_run(TestRunOptions { data_in: Some(frame), repeat, ..TestRunOptions::new() })
        .map_err(|source| Error::Run { name: name(), len: frame.len(), source })?;
    // The kernel hands the program's int back as a u32: reinterpret, do not convert.
    let returned = result.return_value as i32;
    if returned != TC_NEXT {
        return Err(Error::Verdict {
            name: name(),
            returned: i64::from(returned),
            expected: "TC next",
            len: frame.len(),
        });
    }
    Ok(result.duration)
}

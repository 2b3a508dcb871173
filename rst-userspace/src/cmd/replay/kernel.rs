//! `rstwatch replay --kernel`: the same frames through the real XDP program, for comparison.
//!
//! Every frame replay classifies also goes through `BPF_PROG_TEST_RUN` on the embedded object,
//! loaded exactly as live mode loads it, and the kernel's counts are read with the live
//! [`crate::collect::Collector`]. At the end, the kernel's counters and per-flow reset counts must equal
//! replay's for the same frames. Test runs arrive on the loopback (ifindex 1) whatever capture
//! interface a frame came from, so replay's side of the comparison walks each frame again as if
//! on the loopback (tunnels numbered by that interface too, as the kernel numbers them: one
//! tunnel met on two capture interfaces is one), and flows are compared by 5-tuple, direction and classification, services
//! by address and port with every count of [`ServiceValue`] (the open connections at accepts
//! and turn-aways included, and the turn-aways of the run a service ended in; not when that run
//! began, which each side stamps with its own clock).

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use anyhow::Context as _;
use rst_common::{
    wire::{ServiceValue, DEFAULT_MAX_FLOWS},
    Counters, FlowKey, Observation,
};

use super::{link::Link, Tally};
use crate::{
    cli::TunnelPorts,
    load::testrun::{Harness, LOOPBACK_IFINDEX},
    load::Counting,
    model::aggregate::tunnels::TunnelNumbers,
};

/// One direction of a 5-tuple, without the interface, with the classifier's verdict
/// (`FlowKey::class`, `peer_ttl`, `context`).
pub type Direction = (IpAddr, u16, IpAddr, u16, u8, u8, u8);

/// A service without the interface: address and port.
pub type Service = (IpAddr, u16);

pub struct KernelCheck {
    /// The object loaded exactly as live mode loads it, with the live collector.
    harness: Harness,
    /// What replay counted for the frames that went to the kernel.
    host: Counters,
    host_flows: BTreeMap<Direction, u64>,
    /// Replay's count of the frames the kernel also saw, with connection state of its own.
    host_tally: Tally,
    host_services: BTreeMap<Service, ServiceValue>,
    /// Replay's numbering of the tunnels the test runs meet, on the loopback.
    host_tunnels: TunnelNumbers,
    kernel: Counters,
    kernel_flows: BTreeMap<Direction, u64>,
    kernel_services: BTreeMap<Service, ServiceValue>,
    /// Frames a test run cannot take (see [`Link::kernel_frame`]).
    left_out: u64,
    left_out_not_malformed: u64,
    resets_since_collect: u64,
    scratch: Vec<u8>,
}

/// The outcome of a comparison.
#[derive(Debug)]
pub struct Parity {
    pub host: Counters,
    pub kernel: Counters,
    pub host_flows: BTreeMap<Direction, u64>,
    pub kernel_flows: BTreeMap<Direction, u64>,
    pub host_services: BTreeMap<Service, ServiceValue>,
    pub kernel_services: BTreeMap<Service, ServiceValue>,
    /// Frames too short for a test run; replay must call them malformed.
    pub left_out: u64,
    pub left_out_not_malformed: u64,
}

impl KernelCheck {
    /// With the object walking into VXLAN and Geneve on `tunnel_ports` too, as replay does.
    pub fn new(tunnel_ports: &TunnelPorts) -> anyhow::Result<Self> {
        // The collector's traffic baseline is taken here, before any frame runs.
        let harness = Harness::load_with_ports(DEFAULT_MAX_FLOWS, Counting::Auto, None, tunnel_ports)
            .context("--kernel runs every frame through the XDP program with BPF_PROG_TEST_RUN, which needs root (CAP_BPF, CAP_PERFMON)")?;
        Ok(Self {
            harness,
            host: Counters::default(),
            host_flows: BTreeMap::new(),
            host_tally: Tally::default(),
            host_services: BTreeMap::new(),
            host_tunnels: TunnelNumbers::new(&tunnel_ports.vxlan, &tunnel_ports.geneve),
            kernel: Counters::default(),
            kernel_flows: BTreeMap::new(),
            kernel_services: BTreeMap::new(),
            left_out: 0,
            left_out_not_malformed: 0,
            resets_since_collect: 0,
            scratch: Vec::new(),
        })
    }

    /// Runs one frame through the kernel and replay's walk, both on the loopback.
    pub fn frame(&mut self, link: Link, frame: &[u8]) -> anyhow::Result<()> {
        let host = link.inspect(frame, LOOPBACK_IFINDEX, &mut self.host_tunnels);
        let Some(input) = link.kernel_frame(frame, &mut self.scratch) else {
            self.left_out += 1;
            if host != Observation::Malformed {
                self.left_out_not_malformed += 1;
            }
            return Ok(());
        };
        self.harness.run(input, 1)?;
        self.host_tally.count(&host);
        self.host.accumulate(&std::mem::take(&mut self.host_tally.counters));
        for (key, counts) in self.host_tally.services.drain() {
            self.host_services.entry((key.ip(), key.port)).or_default().merge(&counts);
        }
        if matches!(host, Observation::Reset(_)) {
            for (key, resets) in self.host_tally.flows.drain() {
                *self.host_flows.entry(direction(&key)).or_default() += resets;
            }
            self.resets_since_collect += 1;
            // Drain before the kernel's flow table could fill: every reset adds at most one
            // entry, so half the table leaves a wide margin.
            if self.resets_since_collect >= u64::from(DEFAULT_MAX_FLOWS / 2) {
                self.collect()?;
            }
        }
        Ok(())
    }

    fn collect(&mut self) -> anyhow::Result<()> {
        let sample = self.harness.collect()?;
        self.kernel.accumulate(&sample.counters);
        for (key, resets) in &sample.flows {
            *self.kernel_flows.entry(direction(key)).or_default() += resets;
        }
        // Intervals in order, so the latest SYN+ACK's TTL stays the latest.
        for (key, counts) in &sample.services {
            self.kernel_services.entry((key.ip(), key.port)).or_default().merge(counts);
        }
        self.resets_since_collect = 0;
        Ok(())
    }

    pub fn finish(mut self) -> anyhow::Result<Parity> {
        self.collect()?;
        Ok(Parity {
            host: self.host,
            kernel: self.kernel,
            host_flows: self.host_flows,
            kernel_flows: self.kernel_flows,
            host_services: self.host_services,
            kernel_services: self.kernel_services,
            left_out: self.left_out,
            left_out_not_malformed: self.left_out_not_malformed,
        })
    }
}

impl Parity {
    pub fn agrees(&self) -> bool {
        self.host == self.kernel
            && self.host_flows == self.kernel_flows
            && same_services(&self.host_services, &self.kernel_services)
            && self.left_out_not_malformed == 0
    }

    /// One line when they agree, the differences when they do not.
    pub fn describe(&self) -> String {
        if self.agrees() {
            return format!(
                "kernel parity: {} frames through BPF_PROG_TEST_RUN ({} too short for a test run and malformed in both), \
                 {} resets in {} directions, {} services: identical",
                self.kernel.frames,
                self.left_out,
                self.kernel.resets,
                self.kernel_flows.len(),
                self.kernel_services.len()
            );
        }
        let mut text = String::from("kernel parity: replay and the kernel DISAGREE");
        if self.host != self.kernel {
            let _ = write!(text, "\n  counters: replay {:?}\n            kernel {:?}", self.host, self.kernel);
        }
        if self.left_out_not_malformed > 0 {
            let _ = write!(
                text,
                "\n  {} frames too short for a test run were not malformed to replay",
                self.left_out_not_malformed
            );
        }
        let directions =
            self.host_flows.keys().chain(self.kernel_flows.keys().filter(|k| !self.host_flows.contains_key(*k)));
        for direction in directions {
            let host = self.host_flows.get(direction).copied().unwrap_or(0);
            let kernel = self.kernel_flows.get(direction).copied().unwrap_or(0);
            if host != kernel {
                let (src, sport, dst, dport, class, peer_ttl, context) = direction;
                let _ = write!(
                    text,
                    "\n  {src}:{sport} -> {dst}:{dport} (class {class:#04x}, peer TTL {peer_ttl}, context {context:#04x}): replay {host}, kernel {kernel}"
                );
            }
        }
        let services = self
            .host_services
            .keys()
            .chain(self.kernel_services.keys().filter(|k| !self.host_services.contains_key(*k)));
        for service @ (addr, port) in services {
            let host = self.host_services.get(service).copied().unwrap_or_default();
            let kernel = self.kernel_services.get(service).copied().unwrap_or_default();
            if host.decoded() != kernel.decoded() {
                let _ =
                    write!(text, "\n  service {addr}:{port}: replay {host:?}\n  {:>w$}kernel {kernel:?}", "", w = 10);
            }
        }
        text
    }
}

/// Every decoded count alike (the down run's start, on two clocks, left out).
fn same_services(host: &BTreeMap<Service, ServiceValue>, kernel: &BTreeMap<Service, ServiceValue>) -> bool {
    host.len() == kernel.len()
        && host.iter().zip(kernel).all(|((h_key, h), (k_key, k))| h_key == k_key && h.decoded() == k.decoded())
}

fn direction(key: &FlowKey) -> Direction {
    (key.src_ip(), key.sport, key.dst_ip(), key.dport, key.class, key.peer_ttl, key.context)
}

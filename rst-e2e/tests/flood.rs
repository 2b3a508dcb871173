//! The exactness invariant under a real flood: sum of per-flow counts + overflow == the kernel's
//! RST total == RSTs sent, at every interval and over the run.
//!
//! A live-frames generator (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`, an XDP_TX
//! program of its own) pushes RSTs out of one end of a veth; the release `rstwatch` watches the
//! other end. Needs root, the release binary (`cargo xtask build`, or RSTWATCH_BIN) and the
//! bench example (built here unless BENCH_BIN names one).

use std::collections::BTreeMap;

use anyhow::{ensure, Context as _, Result};
use rst_lab::flood::{self, FloodLab, GenLength, GenPlan};
use rst_lab::Need;

fn lab() -> Result<FloodLab> {
    let rstwatch = flood::rstwatch_bin();
    ensure!(rstwatch.is_file(), "{} does not exist: run `cargo xtask build` (or set RSTWATCH_BIN)", rstwatch.display());
    flood::build_bench()?;
    FloodLab::new()
}

/// Fast flows (many frames per test run) and a sweep of 4096 flows (four times the per-CPU
/// cache, so flows are evicted into the table and drained from both), at 200 ms intervals so
/// epoch flips land in the middle of the flood.
#[test]
fn every_reset_of_a_flood_is_counted_once_in_its_flow() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"));
    flood_counted_once_in_its_flow(&[])
}

/// The same with the programs a PREEMPT_RT kernel gets (atomic adds, every RST into the shared
/// table).
#[test]
fn every_reset_of_a_flood_is_counted_once_with_atomic_counting() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"));
    flood_counted_once_in_its_flow(&["--counting", "atomic"])
}

fn flood_counted_once_in_its_flow(counting: &[&str]) -> Result<()> {
    let lab = lab()?;
    let xdp_before = lab.xdp_received()?;
    let rstwatch = flood::start_rstwatch(&lab, &[&["--interval", "200ms"], counting].concat())?;
    let fast = flood::generate(&lab, &GenPlan { flows: 16, first: 0, repeat: 50_000, length: GenLength::Passes(1) })?;
    let sweep = flood::generate(&lab, &GenPlan { flows: 4096, first: 1000, repeat: 1, length: GenLength::Passes(2) })?;
    let out = flood::stop_rstwatch(rstwatch)?;
    if !counting.is_empty() {
        assert_eq!(out.summary["counting"], "atomic", "the atomic programs counted");
    }

    assert_eq!(fast.sent + sweep.sent, 16 * 50_000 + 2 * 4096);
    // On a loaded machine the peer's ring may refuse frames before any hook sees them; the
    // generator reads the veth's own drop counter around each run (one flow per run), so the
    // expected per-flow counts are what arrived, and the peer's XDP statistics must agree.
    let delivered = fast.delivered + sweep.delivered;
    let sent = fast.sent + sweep.sent;
    if delivered < sent {
        eprintln!("the veth's ring refused {} of {sent} frames before any hook", sent - delivered);
    }
    let received = lab.xdp_received()? - xdp_before;
    // The peer also sees its neighbour's own IPv6 chatter (a few frames), never fewer.
    assert!(
        received >= delivered && received - delivered < 100,
        "the peer received {received} XDP frames, the generator delivered {delivered}"
    );
    let mut expected: BTreeMap<_, u64> = fast.expected;
    for (flow, count) in sweep.expected {
        *expected.entry(flow).or_default() += count;
    }
    let exact = flood::check_exact(&out, delivered, &expected)?;
    assert_eq!(exact.overflow, 0, "{exact:?}");
    assert_eq!(exact.flows, 16 + 4096);
    assert!(exact.intervals >= 3, "the flood must span several intervals: {exact:?}");
    Ok(())
}

/// A flood of RSTs inside VXLAN, as an overlay node's underlay carries it: every inner RST
/// counts once in its inner flow, each flow with the tunnel's VNI, nothing malformed.
#[test]
fn a_flood_of_vxlan_encapsulated_rsts_is_counted_once_in_its_inner_flow() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"));
    let lab = lab()?;
    let rstwatch = flood::start_rstwatch(&lab, &["--interval", "200ms"])?;
    let plan = GenPlan { flows: 16, first: 0, repeat: 50_000, length: GenLength::Passes(1) };
    let fast = flood::generate_with(&lab, &plan, &["--vxlan", "42"])?;
    let sweep = flood::generate_with(
        &lab,
        &GenPlan { flows: 4096, first: 1000, repeat: 1, length: GenLength::Passes(2) },
        &["--vxlan", "42"],
    )?;
    let out = flood::stop_rstwatch(rstwatch)?;
    let delivered = fast.delivered + sweep.delivered;
    let mut expected: BTreeMap<_, u64> = fast.expected;
    for (flow, count) in sweep.expected {
        *expected.entry(flow).or_default() += count;
    }
    let exact = flood::check_exact(&out, delivered, &expected)?;
    assert_eq!(exact.overflow, 0, "{exact:?}");
    assert_eq!(exact.flows, 16 + 4096);
    for flow in out.summary["flows"].as_array().context("flows")? {
        assert_eq!(flow["tunnel"]["type"], "vxlan", "{flow}");
        assert_eq!(flow["tunnel"]["vni"], 42, "{flow}");
    }
    assert_eq!(out.summary["totals"]["malformed"], 0);
    Ok(())
}

/// RSTs with text inside VXLAN: the payload, read again from the frame on the host, goes to
/// the inner flow under its tunnel's number, never to another flow.
#[test]
fn vxlan_encapsulated_rsts_with_text_show_it_in_their_inner_flow() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"));
    const TEXT: &str = "policy deny";
    let lab = lab()?;
    let rstwatch = flood::start_rstwatch(&lab, &["--interval", "200ms"])?;
    let plan = GenPlan { flows: 16, first: 0, repeat: 2_000, length: GenLength::Passes(1) };
    let gen = flood::generate_with(&lab, &plan, &["--vxlan", "42", "--payload", TEXT])?;
    let out = flood::stop_rstwatch(rstwatch)?;
    let exact = flood::check_exact(&out, gen.delivered, &gen.expected)?;
    assert_eq!(exact.overflow, 0, "{exact:?}");
    let flows = out.summary["flows"].as_array().context("summary flows")?;
    assert!(flows.iter().all(|flow| flow["tunnel"]["vni"] == 42), "every flow inside VNI 42");
    let with_text = flows.iter().filter(|flow| flow["rst_payload"] == TEXT).count();
    assert!(with_text > 0, "no flow shows the payload: {}", out.summary["rst_payloads"]);
    assert!(flows.iter().all(|flow| flow["rst_payload"].is_null() || flow["rst_payload"] == TEXT));
    Ok(())
}

/// A flood of RSTs that all carry text goes through the payload programs (a tail call from the
/// counting program, which then counts in their place): every RST still counts once in its
/// flow, and every one is either handed over or counted as dropped when the ring is full —
/// nothing lost without a number.
#[test]
fn a_flood_of_rsts_with_text_is_counted_once_and_every_payload_accounted_for() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"));
    const TEXT: &str = "policy deny";
    let lab = lab()?;
    let rstwatch = flood::start_rstwatch(&lab, &["--interval", "200ms"])?;
    let plan = GenPlan { flows: 16, first: 0, repeat: 20_000, length: GenLength::Passes(1) };
    let fast = flood::generate_with(&lab, &plan, &["--payload", TEXT])?;
    let sweep = flood::generate_with(
        &lab,
        &GenPlan { flows: 2048, first: 3000, repeat: 1, length: GenLength::Passes(1) },
        &["--payload", TEXT],
    )?;
    let out = flood::stop_rstwatch(rstwatch)?;
    let delivered = fast.delivered + sweep.delivered;
    let mut expected: BTreeMap<_, u64> = fast.expected;
    for (flow, count) in sweep.expected {
        *expected.entry(flow).or_default() += count;
    }
    let exact = flood::check_exact(&out, delivered, &expected)?;
    assert_eq!(exact.overflow, 0, "{exact:?}");
    let payloads = &out.summary["rst_payloads"];
    eprintln!("{delivered} RSTs with text delivered; rst_payloads {payloads}; generator {}", fast.json);
    let field =
        |name: &str| payloads[name].as_u64().with_context(|| format!("summary rst_payloads.{name}: {payloads}"));
    assert_eq!(field("handed_over")? + field("dropped")?, delivered, "{payloads}");
    assert!(field("handed_over")? > 0, "{payloads}");
    let flows = out.summary["flows"].as_array().context("summary flows")?;
    let with_text = flows.iter().filter(|flow| flow["rst_payload"] == TEXT).count();
    assert!(with_text > 0, "no flow shows the payload");
    // Whatever the ring dropped, a flow shows this payload or none: never another flow's.
    assert!(flows.iter().all(|flow| flow["rst_payload"].is_null() || flow["rst_payload"] == TEXT));
    Ok(())
}

/// A flow table of 64 entries against 4096 flows: most RSTs overflow, and still every one is in
/// the totals, and every one is either in its flow or in `overflow`.
#[test]
fn a_flood_that_overflows_the_table_still_adds_up() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"));
    let lab = lab()?;
    let xdp_before = lab.xdp_received()?;
    let rstwatch = flood::start_rstwatch(&lab, &["--interval", "300ms", "--max-flows", "64"])?;
    let sweep = flood::generate(&lab, &GenPlan { flows: 4096, first: 0, repeat: 1, length: GenLength::Passes(3) })?;
    let fast =
        flood::generate(&lab, &GenPlan { flows: 4, first: 50_000, repeat: 20_000, length: GenLength::Passes(1) })?;
    let out = flood::stop_rstwatch(rstwatch)?;

    let delivered = sweep.delivered + fast.delivered;
    let sent = fast.sent + sweep.sent;
    if delivered < sent {
        eprintln!("the veth's ring refused {} of {sent} frames before any hook", sent - delivered);
    }
    let mut expected: BTreeMap<_, u64> = sweep.expected;
    for (flow, count) in fast.expected {
        *expected.entry(flow).or_default() += count;
    }
    let received = lab.xdp_received()? - xdp_before;
    assert!(
        received >= delivered && received - delivered < 100,
        "the peer received {received} XDP frames, the generator delivered {delivered}"
    );
    let totals = &out.summary["totals"];
    let count = |field: &str| totals[field].as_u64().with_context(|| format!("summary totals.{field}"));
    let sent_by_peer = totals["tx"]["frames"].as_u64().context("summary totals.tx.frames")?;
    // The peer's own frames (neighbour discovery) leave through TC egress: they are no XDP frames.
    assert_eq!(
        count("frames")? - sent_by_peer,
        received,
        "rstwatch saw a different number of received frames than reached the peer's XDP hook"
    );
    let exact = flood::check_exact(&out, delivered, &expected)?;
    assert!(exact.overflow > 0, "4096 flows must overflow a 64-entry table: {exact:?}");
    assert!(exact.in_flows > 0, "the table still holds flows: {exact:?}");
    Ok(())
}

/// Frames the veth's ring refuses never reach a hook; the generator reads the veth's drop
/// counter around each run, so every flow's count must still be exactly what arrived.
#[test]
fn frames_the_veth_drops_before_the_hook_are_told_apart_exactly() -> Result<()> {
    rst_lab::require!(Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"));
    let lab = lab()?;
    lab.threaded_napi()?;
    let xdp_before = lab.xdp_received()?;
    let rstwatch = flood::start_rstwatch(&lab, &["--interval", "200ms"])?;
    let gen = flood::generate(&lab, &GenPlan { flows: 8, first: 7000, repeat: 100_000, length: GenLength::Passes(1) })?;
    let out = flood::stop_rstwatch(rstwatch)?;
    let received = lab.xdp_received()? - xdp_before;
    assert!(
        gen.delivered < gen.sent,
        "with the NAPI poll in a thread the ring must refuse some of {} frames",
        gen.sent
    );
    assert!(
        received >= gen.delivered && received - gen.delivered < 100,
        "the peer received {received} XDP frames, the generator delivered {}",
        gen.delivered
    );
    let exact = flood::check_exact(&out, gen.delivered, &gen.expected)?;
    assert_eq!(exact.overflow, 0, "{exact:?}");
    Ok(())
}

//! The differential fuzzer's quick slice, its regressions, and checks of the reference itself.
//!
//! The engine is `rst_tools::fuzz` (the full run: `cargo xtask fuzz`). Kernel tests need root.
//!
//! `tests/regressions/*.hex`: frames the fuzzer once found the XDP program (or rst-common's
//! walk) and the reference disagreeing on. `#` lines are comments; the rest is the frame as hex.
//! Each must now produce the same answer everywhere.

use std::path::Path;

use engine::{check_one, describe_key, host, reference, unhex, Config, IFINDEX, MAX_FLOWS};
use rst_common::{
    parse::{TCP_ACK, TCP_RST},
    Observation,
};
use rst_craft::{cases, ipv6_chain, tcp_v4, tcp_v6, vlan_ipv4_options_rst, Ipv6Ext, VlanKind};
use rst_tools::fuzz as engine;
use rstwatch::{load::testrun::Harness, load::Counting};

/// Frames in the quick slice; `RSTWATCH_FUZZ_FRAMES` overrides.
const QUICK_FRAMES: u64 = 200_000;

fn regressions() -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/regressions");
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(&dir)?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    paths.sort();
    for path in paths.into_iter().filter(|p| p.extension().is_some_and(|e| e == "hex")) {
        let text = std::fs::read_to_string(&path)?;
        let hex: String = text.lines().filter(|l| !l.trim_start().starts_with('#')).collect();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let frame = unhex(&hex).map_err(|e| anyhow::anyhow!("{name}: {e:#}"))?;
        out.push((name, frame));
    }
    Ok(out)
}

/// The reference must itself agree with the hand-written expectations of the case table, or a
/// zero-disagreement run would prove nothing.
#[test]
fn reference_agrees_with_the_case_table() {
    let mut failures = Vec::new();
    for case in cases(IFINDEX) {
        let expected = match case.expected {
            Observation::Reset(event) => Some(event.key),
            _ => None,
        };
        let got = reference(&case.frame, IFINDEX);
        if got != expected {
            failures.push(format!(
                "{}: reference {}, table {}",
                case.name,
                describe_key(got.as_ref()),
                describe_key(expected.as_ref())
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The reference walks into tunnels on its own: a reset inside each kind counts, under the
/// tunnel (not the underlay), and so does every cut of it once its TCP header is whole; the
/// same inside a second tunnel does not count at all.
#[test]
fn reference_walks_one_level_into_tunnels() {
    use rst_common::wire::{tunnel_number, TUNNEL_INTERFACE};
    use rst_craft::tunnel::{Encapsulation, Outer, Tunnel};

    let (a, b) = ([198, 51, 100, 1], [198, 51, 100, 2]);
    let mut v6 = ([0u8; 16], [0u8; 16]);
    v6.0[..2].copy_from_slice(&[0xfd, 0x77]);
    v6.1[..2].copy_from_slice(&[0xfd, 0x77]);
    v6.1[15] = 1;
    let tunnels = [
        Tunnel::vxlan(Outer::V4(a, b), 42),
        Tunnel::new(Outer::V6(v6.0, v6.1), Encapsulation::Geneve { vni: 3, port: 6081, options: 12, ethernet: false }),
        Tunnel::new(
            Outer::V4(a, b),
            Encapsulation::Gre { key: Some(1), checksum: true, sequence: Some(2), ethernet: true },
        ),
        Tunnel::new(Outer::V6(v6.0, v6.1), Encapsulation::Ip).encap_limit(4).outer_vlan(7),
    ];
    let inner = tcp_v6().vlan(VlanKind::Dot1Q, 5).flags(TCP_RST | TCP_ACK).build();
    for tunnel in &tunnels {
        let frame = tunnel.wrap(&inner);
        let key = reference(&frame, IFINDEX).unwrap_or_else(|| panic!("{tunnel:?}: not counted"));
        assert!(tunnel_number(key.ifindex).is_some(), "{tunnel:?}: counted on the underlay");
        assert_eq!(key.ifindex & TUNNEL_INTERFACE, TUNNEL_INTERFACE);
        for len in 0..=frame.len() {
            let cut = &frame[..len];
            assert_eq!(host(cut, IFINDEX), reference(cut, IFINDEX), "{tunnel:?} cut at {len}: {}", engine::hex(cut));
        }
        for outer in &tunnels {
            let twice = outer.wrap_bytes(&frame, Some(tunnel.outer_l3()));
            assert_eq!(reference(&twice, IFINDEX), None, "{tunnel:?} in {outer:?}");
            assert_eq!(host(&twice, IFINDEX), None, "{tunnel:?} in {outer:?}");
        }
    }
}

/// Every cut of a few RSTs, host side (this also covers the lengths below 14 bytes, which
/// only the host can take): reference and rst-common's walk agree at every length.
#[test]
fn reference_and_host_agree_on_every_truncation() {
    let frames = [
        vlan_ipv4_options_rst().build().into_bytes(),
        tcp_v6().vlan(VlanKind::Dot1Ad, 1).vlan(VlanKind::Dot1Q, 2).flags(TCP_RST | TCP_ACK).build().into_bytes(),
        ipv6_chain(8).flags(TCP_RST).build().into_bytes(),
        tcp_v6()
            .ipv6_ext(Ipv6Ext::Fragment { offset: 0, more: true })
            .ipv6_ext(Ipv6Ext::Auth { icv_len: 12 })
            .flags(TCP_RST)
            .build()
            .into_bytes(),
        tcp_v4().ipv4_fragment(0, true).flags(TCP_RST).build().into_bytes(),
    ];
    for frame in frames {
        for len in 0..=frame.len() {
            let cut = &frame[..len];
            assert_eq!(host(cut, IFINDEX), reference(cut, IFINDEX), "cut at {len}: {}", engine::hex(cut));
        }
    }
}

/// Frames once found disagreeing, through host and kernel, one by one.
#[test]
fn regressions_agree_with_the_reference() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    let mut kernel = Harness::load(MAX_FLOWS, Counting::Auto)?;
    let mut failures = Vec::new();
    let regressions = regressions()?;
    assert!(!regressions.is_empty(), "tests/regressions holds no .hex file");
    for (name, frame) in &regressions {
        for problem in check_one(&mut kernel, frame)? {
            failures.push(format!("{name}: {problem}"));
        }
    }
    assert!(failures.is_empty(), "{} regression(s) disagree:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

/// A slice of the full differential run (`cargo xtask fuzz` does ten million).
#[test]
fn quick_differential_slice_has_no_disagreement() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    let frames = std::env::var("RSTWATCH_FUZZ_FRAMES").ok().and_then(|v| v.parse().ok()).unwrap_or(QUICK_FRAMES);
    // A seed of its own, so the slice does not just repeat the first frames of the full run.
    let config = Config {
        frames,
        seed: 0x5eed_0007,
        batch: 32_768,
        capture_dirs: Config::default_capture_dirs(),
        max_disagreements: 20,
        progress: false,
    };
    let report = engine::run(&config)?;
    eprintln!(
        "fuzz slice: {} frames ({} through the kernel), {} reference RSTs, {} disagreements, {:.1} s",
        report.frames,
        report.kernel_frames,
        report.resets,
        report.disagreement_count,
        report.elapsed.as_secs_f64()
    );
    assert!(report.seed_frames.1 > 0, "no crafted seed frames");
    assert!(report.resets > report.frames / 20, "too few RSTs generated to mean anything: {}", report.resets);
    let shown: Vec<String> = report.disagreements.iter().map(|d| d.describe()).collect();
    assert_eq!(
        report.disagreement_count,
        0,
        "kernel / host and the reference disagree (first {}):\n{}",
        shown.len(),
        shown.join("\n")
    );
    Ok(())
}

//! What the verifier made of every counting and payload program: each must load (which
//! `load_with` already requires) within the instruction limit; the counts are printed for
//! BENCHMARKS.md ("Tunnels").

use rstwatch::load::{self, CaptureLoad, Counting};

/// The verifier's instruction count of every program of each set, printed one per line as
/// `verified <program> <instructions>`.
#[test]
fn every_program_set_loads_within_the_verifier_limit() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    let capture = || Some(CaptureLoad { budget: 100, snaplen: 128, handshakes: true });
    for (counting, capture) in [
        (Counting::PerCpu, None),
        (Counting::Atomic, None),
        (Counting::PerCpu, capture()),
        (Counting::Atomic, capture()),
    ] {
        let object = load::load_with(super::MAX_FLOWS, counting, true, capture)?;
        let ebpf: &aya::Ebpf = &object;
        for (name, program) in ebpf.programs() {
            let Ok(info) = program.info() else { continue };
            let Some(verified) = info.verified_instruction_count() else { continue };
            if name.starts_with("rstwatch_xdp") || name.starts_with("rstwatch_tc") {
                println!("verified {name} {verified}");
                assert!(verified < 1_000_000, "{name}: {verified}");
            }
        }
    }
    Ok(())
}

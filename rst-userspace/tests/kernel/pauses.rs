//! `--idle-gaps`' programs under `BPF_PROG_TEST_RUN`: the pause before an RST of a connection
//! the counting program saw open, from real waits between the segments' runs.

use std::{thread, time::Duration};

use rst_common::{
    parse::{TCP_ACK, TCP_RST, TCP_SYN},
    wire::{IdleKey, DIRECTION_RX, FAMILY_IPV4, PROG_PAUSES},
};
use rst_craft::FrameBuilder;
use rstwatch::load::{
    testrun::{run_tc, Harness},
    Counting,
};

use super::MAX_FLOWS;

const CLIENT: [u8; 4] = [10, 9, 0, 1];
const SERVER: [u8; 4] = [10, 9, 0, 2];
const PAUSE: Duration = Duration::from_millis(400);

fn to_server(sport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    FrameBuilder::ipv4(CLIENT, SERVER).ports(sport, 443).flags(flags).seq_ack(seq, ack).build().into_bytes()
}

fn to_client(dport: u16, flags: u8, seq: u32, ack: u32) -> Vec<u8> {
    FrameBuilder::ipv4(SERVER, CLIENT).ports(443, dport).flags(flags).seq_ack(seq, ack).build().into_bytes()
}

/// The server's RST of client port `port`, as the idle-gap table keys it.
fn rst_key(port: u16) -> IdleKey {
    let mut key =
        IdleKey { sport: 443, dport: port, family: FAMILY_IPV4, direction: DIRECTION_RX, ..IdleKey::default() };
    key.src[..4].copy_from_slice(&SERVER);
    key.dst[..4].copy_from_slice(&CLIENT);
    key
}

#[test]
fn the_pauses_program_times_the_silence_before_a_known_connections_reset() -> anyhow::Result<()> {
    rst_lab::require!(rst_lab::Need::Bpf);
    let mut harness = Harness::load(MAX_FLOWS, Counting::PerCpu)?;
    harness.load_pauses()?;
    // Each segment as attached: the counting program first, then the pauses program.
    let segment = |harness: &Harness, frame: &[u8]| -> anyhow::Result<()> {
        harness.run(frame, 1)?;
        run_tc(harness.tc(PROG_PAUSES)?, frame, 1)?;
        Ok(())
    };
    // A connection the counting program sees open, quiet for PAUSE, then used and reset.
    let (idle, reopened, stranger) = (40_001, 40_002, 40_003);
    for frame in [
        to_server(idle, TCP_SYN, 1000, 0),
        to_client(idle, TCP_SYN | TCP_ACK, 9000, 1001),
        to_server(idle, TCP_ACK, 1001, 9001),
    ] {
        segment(&harness, &frame)?;
    }
    // A connection quiet as long, whose port then opens a new connection: its silence is not
    // the new one's.
    segment(&harness, &to_server(reopened, TCP_SYN, 5000, 0))?;
    segment(&harness, &to_client(reopened, TCP_SYN | TCP_ACK, 7000, 5001))?;
    thread::sleep(PAUSE);
    segment(&harness, &to_server(idle, TCP_ACK, 1001, 9001))?;
    segment(&harness, &to_client(idle, TCP_RST, 9001, 0))?;
    segment(&harness, &to_server(reopened, TCP_SYN, 6000, 0))?;
    segment(&harness, &to_client(reopened, TCP_RST | TCP_ACK, 0, 6001))?;
    // The RST of a connection the table never held has no pause.
    segment(&harness, &to_client(stranger, TCP_RST, 1, 0))?;

    let sample = harness.collect()?;
    let pause_of = |port| sample.idle_gaps.iter().find(|(key, _)| *key == rst_key(port)).map(|(_, gap)| gap.pause_ms());
    let pause = pause_of(idle).expect("the idle connection's RST has its pause");
    let want = PAUSE.as_millis() as u64;
    // One jiffy's resolution, and a test run's scheduling: never shorter than the sleep.
    assert!(pause + 10 >= want && pause < want + 200, "pause {pause} ms, slept {want} ms");
    let reopened_pause = pause_of(reopened).expect("the refused reopening's RST has its pause");
    assert!(reopened_pause < 50, "a new SYN begins anew: {reopened_pause} ms");
    assert_eq!(pause_of(stranger), None, "a connection never seen has no pause: {:?}", sample.idle_gaps);
    Ok(())
}

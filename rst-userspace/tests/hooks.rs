//! Attaching and detaching, as the kernel sees it, on a veth pair in a network namespace of the
//! test's own thread (gone when the thread ends). Also the TC program's verdict: always "next".
//! The per-CPU programs throughout, so the names checked do not depend on the kernel.

#![allow(clippy::expect_used)] // test helpers: a panic is the failure report

use std::process::Command;

use aya::programs::{SchedClassifier, TcAttachType, TestRun, TestRunOptions};
use rst_common::{
    parse::{TCP_ACK, TCP_RST},
    wire::{PROG_TC, PROG_TC_EGRESS},
};
use rst_craft::tcp_v4;
use rstwatch::{
    collect::Collector,
    load::netlink,
    load::{self, Counting, Hook, LoadedObject, TcLink, XdpMode, XdpModeChoice},
};

/// Whether the test can run: root, for a network namespace of its own and BPF; otherwise it
/// skips with its reason, or fails under CI=true (`rst_lab::skip`).
fn ready() -> bool {
    let needs = [rst_lab::Need::Root("a network namespace of its own, BPF, XDP and TC")];
    rst_lab::skip::require(&rst_lab::skip::current_test(), &needs).expect("CI=true: this test must run")
}

/// Moves this test thread into a fresh network namespace holding the veth pair `a` — `b`.
/// Children spawned from this thread inherit the namespace, so `ip` configures it.
fn private_veth(a: &str, b: &str) -> u32 {
    // SAFETY: unshare(CLONE_NEWNET) only changes the calling thread's network namespace.
    let ret = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(ret, 0, "unshare(CLONE_NEWNET) needs root: {}", std::io::Error::last_os_error());
    for args in [
        vec!["link", "add", a, "type", "veth", "peer", "name", b],
        vec!["link", "set", a, "up"],
        vec!["link", "set", b, "up"],
    ] {
        let status = Command::new("ip").args(&args).status().expect("ip runs");
        assert!(status.success(), "ip {args:?}");
    }
    load::resolve_interface(a).expect("the veth exists")
}

/// Past [`ready`]: the veth pair `a` — `b` of [`private_veth`] and the per-CPU programs loaded;
/// `None` where the test skips.
fn programs_on_private_veth(a: &str, b: &str) -> Option<(u32, LoadedObject)> {
    if !ready() {
        return None;
    }
    let ifindex = private_veth(a, b);
    Some((ifindex, load::load_counting(1024, Counting::PerCpu).expect("load")))
}

fn tcx_ingress_programs(iface: &str) -> Vec<String> {
    let (_, programs) = SchedClassifier::query_tcx(iface, TcAttachType::Ingress).expect("tcx query");
    programs.iter().map(|info| info.name_as_str().unwrap_or("?").to_owned()).collect()
}

#[test]
fn tc_attachment_is_a_tcx_link_that_goes_with_its_owner() {
    let Some((ifindex, mut ebpf)) = programs_on_private_veth("rwhook0", "rwhook1") else { return };
    let attachment =
        load::attach_tc(load::tc_program(&mut ebpf).expect("program"), "rwhook0", ifindex).expect("attach tc");
    assert_eq!(attachment.hook, Hook::TcIngress);
    assert_eq!(tcx_ingress_programs("rwhook0"), [PROG_TC]);
    drop(attachment);
    assert!(tcx_ingress_programs("rwhook0").is_empty(), "still attached after the link was dropped");
}

fn tc_filters(iface: &str, direction: &str) -> String {
    let output = Command::new("tc").args(["filter", "show", "dev", iface, direction]).output().expect("tc runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Kernels before 6.6 have no tcx: egress (and `--hook tc` ingress) go through a clsact qdisc and
/// a netlink filter, removed when the attachment is dropped.
#[test]
fn clsact_attachment_for_older_kernels_is_removed_with_its_owner() {
    let Some((_ifindex, mut ebpf)) = programs_on_private_veth("rwhook4", "rwhook5") else { return };
    let program = load::tc_egress_program(&mut ebpf).expect("program");
    let link = load::attach_tc_with(program, "rwhook4", TcAttachType::Egress, TcLink::Clsact).expect("attach clsact");
    let listed = tc_filters("rwhook4", "egress");
    assert!(listed.contains(PROG_TC_EGRESS), "the filter names the program: {listed}");
    let (_, tcx) = SchedClassifier::query_tcx("rwhook4", TcAttachType::Egress).expect("tcx query");
    assert!(tcx.is_empty(), "a netlink filter, not a tcx link");
    drop(link);
    let listed = tc_filters("rwhook4", "egress");
    assert!(!listed.contains(PROG_TC_EGRESS), "still attached after the link was dropped: {listed}");
}

#[test]
fn xdp_attachment_goes_with_its_owner_and_blocks_a_second_one() {
    let Some((ifindex, mut ebpf)) = programs_on_private_veth("rwhook2", "rwhook3") else { return };
    let attachment =
        load::attach_xdp(load::xdp_program(&mut ebpf).expect("program"), "rwhook2", ifindex, XdpModeChoice::Auto)
            .expect("attach xdp");
    assert_eq!(attachment.hook, Hook::Xdp(XdpMode::Native), "veth supports native XDP");
    let held = netlink::attached_xdp(ifindex).expect("rtnetlink").expect("an XDP program is attached");
    assert_eq!(netlink::program_name(held.program_id).as_deref(), Some("rstwatch_xdp"));

    let mut second = load::load_counting(1024, Counting::PerCpu).expect("load");
    let refused =
        load::attach_xdp(load::xdp_program(&mut second).expect("program"), "rwhook2", ifindex, XdpModeChoice::Skb)
            .expect_err("the hook is taken");
    let message = refused.to_string();
    assert!(
        message.contains("already has an XDP program") && message.contains(&held.program_id.to_string()),
        "{message}"
    );

    drop(attachment);
    assert_eq!(netlink::attached_xdp(ifindex).expect("rtnetlink"), None);
}

#[test]
fn tc_program_counts_like_xdp_and_always_says_next() {
    if !ready() {
        return;
    }
    let mut ebpf = load::load_counting(1024, Counting::PerCpu).expect("load");
    let mut collector = Collector::new(&mut ebpf).expect("collector");
    let program = load::tc_program(&mut ebpf).expect("program");
    let reset = tcp_v4().flags(TCP_RST | TCP_ACK);
    for frame in [reset.build().bytes, tcp_v4().flags(TCP_ACK).build().bytes] {
        let result =
            program.test_run(TestRunOptions { data_in: Some(&frame), ..TestRunOptions::new() }).expect("test run");
        assert_eq!(result.return_value as i32, -1, "TC programs must return TCX_NEXT / TC_ACT_UNSPEC");
    }
    let sample = collector.collect().expect("collect");
    assert_eq!((sample.counters.frames, sample.counters.tcp, sample.counters.resets), (2, 2, 1));
    assert_eq!(sample.flows.len(), 1);
    let (key, count) = sample.flows[0];
    assert_eq!(count, 1);
    assert_eq!((key.src_ip(), key.sport, key.dst_ip(), key.dport), {
        let expected = reset.flow_key(key.ifindex);
        (expected.src_ip(), expected.sport, expected.dst_ip(), expected.dport)
    });
}

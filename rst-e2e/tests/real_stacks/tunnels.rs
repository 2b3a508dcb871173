//! Resets inside VXLAN (the kernel's driver, over an IPv4 and an IPv6 underlay) between two
//! namespaces: the stacks inside refuse and abort connections, rstwatch on the underlay veth
//! counts each inner 5-tuple's resets exactly as tshark does in the capture of the same wire,
//! both ways (XDP ingress, TC egress), with the tunnel's type, VNI and outer addresses; replay
//! of the capture counts the same. Two tenants at one inner address are two flows and get
//! verdicts of their own.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    process::Command,
    thread,
};

use anyhow::{ensure, Context as _, Result};
use rst_lab::{
    diag_lab::{accept, listener},
    lab::{Iface, Lab, Netns},
    traffic::in_netns,
};
use serde_json::Value;

use super::{
    support::*,
    userspace_tunnel::{configure, End, Pumps},
};

/// One underlay and the VXLAN device over it in each namespace.
struct Overlay {
    vni: u32,
    underlay: [IpAddr; 2],
    /// The overlay addresses of the two ends (inner IPv4 and IPv6).
    inner4: [Ipv4Addr; 2],
    inner6: [Ipv6Addr; 2],
    device: &'static str,
}

const CLOSED_PORT: u16 = 7401;
const ABORT_PORT: u16 = 7402;
const REFUSED: usize = 3;
const ABORTED: usize = 2;

fn overlays() -> [Overlay; 2] {
    [
        Overlay {
            vni: 42,
            underlay: [IpAddr::from([192, 168, 77, 1]), IpAddr::from([192, 168, 77, 2])],
            inner4: [Ipv4Addr::new(10, 210, 0, 1), Ipv4Addr::new(10, 210, 0, 2)],
            inner6: ["fd78::1".parse().expect("literal"), "fd78::2".parse().expect("literal")],
            device: "vx4",
        },
        Overlay {
            vni: 4_660_000 & 0xff_ffff,
            underlay: ["fd77::1".parse().expect("literal"), "fd77::2".parse().expect("literal")],
            inner4: [Ipv4Addr::new(10, 211, 0, 1), Ipv4Addr::new(10, 211, 0, 2)],
            inner6: ["fd79::1".parse().expect("literal"), "fd79::2".parse().expect("literal")],
            device: "vx6",
        },
    ]
}

fn vxlan(ns: &Netns, underlay: &Iface, overlay: &Overlay, end: usize) -> Result<()> {
    let (local, remote) = (overlay.underlay[end].to_string(), overlay.underlay[1 - end].to_string());
    let vni = overlay.vni.to_string();
    ns.ip([
        "link",
        "add",
        overlay.device,
        "type",
        "vxlan",
        "id",
        &vni,
        "local",
        &local,
        "remote",
        &remote,
        "dstport",
        "4789",
        "dev",
        &underlay.name,
    ])?;
    ns.ip(["link", "set", overlay.device, "up"])?;
    ns.ip(["addr", "add", &format!("{}/24", overlay.inner4[end]), "dev", overlay.device])?;
    ns.ip(["-6", "addr", "add", &format!("{}/64", overlay.inner6[end]), "dev", overlay.device, "nodad"])?;
    Ok(())
}

/// An inner (src, sport, dst, dport) and the VNI around it.
type Inner = (String, u16, String, u16, u32);

/// Inner (src, sport, dst, dport) of every RST inside VXLAN in `pcap`, with its VNI.
fn tshark_resets(pcap: &Path) -> Result<BTreeMap<Inner, u64>> {
    let mut resets = BTreeMap::new();
    for ((src, sport, dst, dport, vni), count) in tshark_tunnelled_resets(pcap)? {
        if let Some(vni) = vni {
            *resets.entry((src, sport, dst, dport, vni)).or_default() += count;
        }
    }
    Ok(resets)
}

/// Each RST's VNI and packet comment in a pcapng rstwatch wrote.
fn captured_comments(pcapng: &Path) -> Result<Vec<(u32, String)>> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcapng)
        .args([
            "-Y",
            "tcp.flags.reset == 1",
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "vxlan.vni",
            "-e",
            "frame.comment",
        ])
        .output()
        .context("running tshark")?;
    ensure!(out.status.success(), "tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let (vni, comment) = line.split_once('|').with_context(|| format!("tshark line {line:?}"))?;
            Ok((vni.parse().with_context(|| format!("VNI in {line:?}"))?, comment.to_owned()))
        })
        .collect()
}

/// The summary's flows inside tunnels as tshark's keys, checking each one's tunnel against
/// the overlays' (type, VNI, outer addresses the right way round).
fn rstwatch_resets(summary: &Value, overlays: &[Overlay]) -> Result<BTreeMap<Inner, u64>> {
    let mut resets = BTreeMap::new();
    for flow in summary["flows"].as_array().context("no flows")? {
        let tunnel = &flow["tunnel"];
        if tunnel.is_null() {
            continue;
        }
        ensure!(tunnel["type"] == "vxlan", "flow {flow}: not vxlan");
        let vni = tunnel["vni"].as_u64().context("a VXLAN tunnel has a VNI")? as u32;
        let overlay = overlays.iter().find(|o| o.vni == vni).with_context(|| format!("flow {flow}: unknown VNI"))?;
        let outer = |field: &str| -> Result<IpAddr> { Ok(tunnel[field].as_str().context("outer")?.parse()?) };
        let src: IpAddr = flow["src"].as_str().context("src")?.parse()?;
        // The inner source sits behind the outer source: end 0's addresses are behind end 0's.
        let end = usize::from(src != IpAddr::V4(overlay.inner4[0]) && src != IpAddr::V6(overlay.inner6[0]));
        ensure!(
            outer("outer_src")? == overlay.underlay[end] && outer("outer_dst")? == overlay.underlay[1 - end],
            "flow {flow}: outer addresses"
        );
        let key = (
            src.to_string(),
            flow["sport"].as_u64().context("sport")? as u16,
            flow["dst"].as_str().context("dst")?.to_owned(),
            flow["dport"].as_u64().context("dport")? as u16,
            vni,
        );
        *resets.entry(key).or_default() += flow["resets"].as_u64().context("resets")?;
    }
    Ok(resets)
}

/// Refusals (a closed port) and aborts (SO_LINGER 0 after accept) from `a` to `b` inside the
/// overlay, over inner IPv4 and IPv6; `b` aborts half of the accepted connections, `a` the
/// other half, so resets go both ways over the wire.
fn traffic(a: &Netns, b: &Netns, overlay: &Overlay) -> Result<()> {
    let inner: [(IpAddr, IpAddr); 2] =
        [(overlay.inner4[0].into(), overlay.inner4[1].into()), (overlay.inner6[0].into(), overlay.inner6[1].into())];
    for (client_ip, server_ip) in inner {
        for _ in 0..REFUSED {
            in_netns(a, || {
                let refused = connect(client_ip, SocketAddr::new(server_ip, CLOSED_PORT));
                ensure!(refused.is_err(), "{server_ip}:{CLOSED_PORT} accepted a connection");
                Ok(())
            })?;
        }
        let server = in_netns(b, || listener(SocketAddr::new(server_ip, ABORT_PORT)))?;
        for i in 0..ABORTED * 2 {
            let (client, _) = in_netns(a, || connect(client_ip, SocketAddr::new(server_ip, ABORT_PORT)))?;
            let accepted = accept(&server)?;
            let aborting = if i % 2 == 0 { &accepted } else { &client };
            aborting.set_linger(Some(std::time::Duration::ZERO))?;
            if i % 2 == 0 {
                drop(accepted);
                // The client's socket sees the reset; closing it after sends nothing.
                thread::sleep(std::time::Duration::from_millis(50));
                drop(client);
            } else {
                drop(client);
                thread::sleep(std::time::Duration::from_millis(50));
                drop(accepted);
            }
        }
    }
    Ok(())
}

#[test]
fn resets_inside_vxlan_are_counted_per_inner_tuple_with_their_vni() -> Result<()> {
    run_test("resets_inside_vxlan_are_counted_per_inner_tuple_with_their_vni", &["tshark"], |dir| {
        let mut lab = Lab::new()?;
        let a = lab.add_ns("vxa")?;
        let b = lab.add_ns("vxb")?;
        let (a_if, b_if) = lab.add_veth(&a, &b)?;
        let overlays = overlays();
        for overlay in &overlays {
            a_if.add_addr(overlay.underlay[0], if overlay.underlay[0].is_ipv4() { 24 } else { 64 })?;
            b_if.add_addr(overlay.underlay[1], if overlay.underlay[1].is_ipv4() { 24 } else { 64 })?;
        }
        for overlay in &overlays {
            vxlan(&a, &a_if, overlay, 0)?;
            vxlan(&b, &b_if, overlay, 1)?;
        }
        let captured = dir.join("rstwatch.pcapng");
        let capture_arg = captured.to_string_lossy().into_owned();
        let vantages = watch_all_ip(dir, &[("underlay", &a_if, &["--capture", &capture_arg])])?;
        for overlay in &overlays {
            traffic(&a, &b, overlay)?;
        }
        let seen = stop(dir, vantages)?;
        let underlay = vantage(&seen, "underlay")?;
        let witness = tshark_resets(&dir.join("underlay.pcap"))?;
        // Each overlay, each inner family: the refusals, and one reset per abort.
        let expected_resets = (REFUSED + ABORTED * 2) * 2 * overlays.len();
        ensure!(
            witness.values().sum::<u64>() as usize == expected_resets,
            "tshark saw {} resets inside VXLAN, the lab made {expected_resets}: {witness:#?}",
            witness.values().sum::<u64>()
        );
        let live = rstwatch_resets(&underlay.live, &overlays)?;
        ensure!(live == witness, "live counts differ from tshark's:\n live {live:#?}\n tshark {witness:#?}");
        let replay = rstwatch_resets(&underlay.replay, &overlays)?;
        ensure!(replay == witness, "replay counts differ from tshark's:\n replay {replay:#?}\n tshark {witness:#?}");
        // Both directions: the underlay's end sent (TC egress) and received (XDP) resets.
        let directions: Vec<&str> = underlay.live["flows"]
            .as_array()
            .context("flows")?
            .iter()
            .filter(|f| !f["tunnel"].is_null())
            .filter_map(|f| f["direction"].as_str())
            .collect();
        ensure!(directions.contains(&"rx") && directions.contains(&"tx"), "directions {directions:?}");
        ensure!(underlay.live["totals"]["malformed"] == 0, "malformed: {}", underlay.live["totals"]);
        // Each tenant's closed port is its own verdict, named with its tunnel.
        for (view, summary) in [("live", &underlay.live), ("replay", &underlay.replay)] {
            for overlay in &overlays {
                for server in [IpAddr::from(overlay.inner4[1]), IpAddr::from(overlay.inner6[1])] {
                    let named = summary["verdicts"].as_array().context("verdicts")?.iter().any(|v| {
                        v["cause"] == "no_listener"
                            && v["addr"] == server.to_string()
                            && v["port"] == CLOSED_PORT
                            && v["tunnel"]["type"] == "vxlan"
                            && v["tunnel"]["vni"] == overlay.vni
                    });
                    ensure!(
                        named,
                        "{view}: no no_listener verdict for {server}:{CLOSED_PORT} in VNI {}: {:#}",
                        overlay.vni,
                        summary["verdicts"]
                    );
                }
            }
        }
        // --capture wrote each of them as it was on the wire, outer headers and all, its
        // comment naming the tunnel and VNI.
        let written = tshark_resets(&captured)?;
        ensure!(written == witness, "--capture differs from tshark's:\n capture {written:#?}\n tshark {witness:#?}");
        let comments = captured_comments(&captured)?;
        for overlay in &overlays {
            let inside = format!("inside vxlan VNI {}", overlay.vni);
            let named =
                comments.iter().filter(|(vni, comment)| *vni == overlay.vni && comment.contains(&inside)).count();
            ensure!(
                named == (REFUSED + ABORTED * 2) * 2,
                "VNI {}: {named} comments say {inside:?}: {comments:?}",
                overlay.vni
            );
        }
        Ok(())
    })
}

/// Two tenants of one VXLAN underlay, VNIs 42 and 43, each a pair of namespaces of its own with
/// the same inner addresses (each VXLAN device moved into its tenant's namespace, its socket
/// left on the underlay). In 42 the port is closed; in 43 it listens, and its server aborts a
/// connection from the very client port 42's refusals went to. rstwatch on the underlay veth
/// counts one inner 5-tuple as two flows, and names 42's closed port without 43's accepts
/// hiding it.
#[test]
fn two_tenants_at_one_inner_address_are_two_flows_and_their_own_verdicts() -> Result<()> {
    const CLIENT_PORT: u16 = 45_000;
    run_test("two_tenants_at_one_inner_address_are_two_flows_and_their_own_verdicts", &[], |dir| {
        let mut lab = Lab::new()?;
        let (ua, ub) = (lab.add_ns("vta")?, lab.add_ns("vtb")?);
        let (a_if, b_if) = lab.add_veth(&ua, &ub)?;
        let underlay = [IpAddr::from([192, 168, 78, 1]), IpAddr::from([192, 168, 78, 2])];
        a_if.add_addr(underlay[0], 24)?;
        b_if.add_addr(underlay[1], 24)?;
        let inner = [Ipv4Addr::new(10, 212, 0, 1), Ipv4Addr::new(10, 212, 0, 2)];
        let mut tenants = Vec::new();
        for vni in [42u32, 43] {
            let mut ends = Vec::new();
            for (end, (ns, iface)) in [(&ua, &a_if), (&ub, &b_if)].into_iter().enumerate() {
                let tenant = lab.add_ns(&format!("t{vni}{end}"))?;
                let device = format!("vt{vni}");
                let (local, remote) = (underlay[end].to_string(), underlay[1 - end].to_string());
                let id = vni.to_string();
                let dev = &iface.name;
                ns.ip([
                    "link", "add", &device, "type", "vxlan", "id", &id, "local", &local, "remote", &remote, "dstport",
                    "4789", "dev", dev,
                ])?;
                ns.ip(["link", "set", &device, "netns", tenant.name()])?;
                tenant.ip(["link", "set", "lo", "up"])?;
                tenant.ip(["link", "set", &device, "up"])?;
                tenant.ip(["addr", "add", &format!("{}/24", inner[end]), "dev", &device])?;
                ends.push(tenant);
            }
            tenants.push((vni, ends));
        }
        let vantages = watch_all_ip(dir, &[("underlay", &a_if, &[])])?;
        let server = SocketAddr::new(inner[1].into(), CLOSED_PORT);
        let client = SocketAddr::new(inner[0].into(), CLIENT_PORT);
        let bound = || -> Result<socket2::Socket> {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            sock.set_reuse_address(true)?;
            sock.bind(&client.into())?;
            Ok(sock)
        };
        let (_, closed) = &tenants[0];
        for _ in 0..REFUSED {
            in_netns(&closed[0], || {
                let refused = bound()?.connect_timeout(&server.into(), std::time::Duration::from_secs(2));
                ensure!(refused.is_err(), "VNI 42: {server} accepted a connection");
                Ok(())
            })?;
        }
        let (_, open) = &tenants[1];
        let listening = in_netns(&open[1], || listener(server))?;
        let sock = in_netns(&open[0], || {
            let sock = bound()?;
            sock.connect_timeout(&server.into(), std::time::Duration::from_secs(2))?;
            Ok(sock)
        })?;
        let accepted = accept(&listening)?;
        accepted.set_linger(Some(std::time::Duration::ZERO))?;
        drop(accepted);
        thread::sleep(std::time::Duration::from_millis(50));
        drop(sock);
        let seen = stop(dir, vantages)?;
        let underlay_seen = vantage(&seen, "underlay")?;
        for (view, summary) in [("live", &underlay_seen.live), ("replay", &underlay_seen.replay)] {
            let flows: BTreeMap<u64, u64> = summary["flows"]
                .as_array()
                .context("flows")?
                .iter()
                .filter(|f| f["src"] == inner[1].to_string() && f["sport"] == CLOSED_PORT && f["dport"] == CLIENT_PORT)
                .map(|f| (f["tunnel"]["vni"].as_u64().unwrap_or(0), f["resets"].as_u64().unwrap_or(0)))
                .collect();
            ensure!(
                flows == BTreeMap::from([(42, REFUSED as u64), (43, 1)]),
                "{view}: one inner 5-tuple, two tenants: {flows:?}\n{:#}",
                summary["flows"]
            );
            let verdicts = summary["verdicts"].as_array().context("verdicts")?;
            let of = |vni: u32| -> Vec<&str> {
                verdicts.iter().filter(|v| v["tunnel"]["vni"] == vni).filter_map(|v| v["cause"].as_str()).collect()
            };
            ensure!(of(42) == ["no_listener"], "{view}: VNI 42's verdicts {:?}: {}", of(42), show(verdicts));
            ensure!(!of(43).contains(&"no_listener"), "{view}: VNI 43 listens: {}", show(verdicts));
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Tunnels this kernel has no driver for, encapsulated in userspace as the drivers do

/// A tunnel kind as rstwatch must report it: the type by the inner family, and the VNI or key.
struct Kind {
    name: &'static str,
    encapsulation: rst_craft::tunnel::Encapsulation,
    outer_v6: bool,
    /// `tunnel.type` for inner IPv4, for inner IPv6.
    types: [&'static str; 2],
    vni: Option<u32>,
}

fn userspace_kinds() -> Vec<Kind> {
    use rst_craft::tunnel::Encapsulation::{Geneve, Gre, Ip};
    let gre = |key, ethernet| Gre { key, checksum: false, sequence: None, ethernet };
    vec![
        Kind {
            name: "geneve",
            encapsulation: Geneve { vni: 5000, port: 6081, options: 8, ethernet: true },
            outer_v6: false,
            types: ["geneve", "geneve"],
            vni: Some(5000),
        },
        Kind {
            name: "gre",
            encapsulation: gre(Some(77), false),
            outer_v6: false,
            types: ["gre", "gre"],
            vni: Some(77),
        },
        Kind {
            name: "gretap",
            encapsulation: gre(None, true),
            outer_v6: false,
            types: ["gretap", "gretap"],
            vni: None,
        },
        Kind { name: "ipip-sit", encapsulation: Ip, outer_v6: false, types: ["ipip", "sit"], vni: None },
        Kind { name: "ip6tnl", encapsulation: Ip, outer_v6: true, types: ["ipip6", "ip6ip6"], vni: None },
        Kind {
            name: "ip6gre",
            encapsulation: gre(Some(9), false),
            outer_v6: true,
            types: ["ip6gre", "ip6gre"],
            vni: Some(9),
        },
        Kind {
            name: "ip6gretap",
            encapsulation: gre(None, true),
            outer_v6: true,
            types: ["ip6gretap", "ip6gretap"],
            vni: None,
        },
    ]
}

/// Inner (src, sport, dst, dport) of every RST in `pcap`, however tunnelled.
fn tshark_inner_resets(pcap: &Path) -> Result<BTreeMap<(String, u16, String, u16), u64>> {
    let mut resets = BTreeMap::new();
    for ((src, sport, dst, dport, _), count) in tshark_tunnelled_resets(pcap)? {
        *resets.entry((src, sport, dst, dport)).or_default() += count;
    }
    Ok(resets)
}

/// An inner (src, sport, dst, dport) and the VXLAN VNI around it, if any.
type Tunnelled = (String, u16, String, u16, Option<u32>);

/// Inner (src, sport, dst, dport) of every RST in `pcap`, however tunnelled, with the VXLAN
/// VNI around it if any: tshark's last IP header of the frame is the inner one, and the
/// protocol before `tcp` says its family (an IPv4 packet in an IPv6 underlay has both).
fn tshark_tunnelled_resets(pcap: &Path) -> Result<BTreeMap<Tunnelled, u64>> {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-d", "udp.port==6081,geneve", "-Y", "tcp.flags.reset == 1", "-T", "fields", "-E", "occurrence=l"])
        .args(["-E", "separator=|", "-e", "frame.protocols", "-e", "ip.src", "-e", "ipv6.src", "-e", "tcp.srcport"])
        .args(["-e", "ip.dst", "-e", "ipv6.dst", "-e", "tcp.dstport", "-e", "vxlan.vni"])
        .output()
        .context("running tshark")?;
    ensure!(out.status.success(), "tshark failed: {}", String::from_utf8_lossy(&out.stderr));
    let mut resets = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split('|').collect();
        ensure!(f.len() == 8, "tshark line {line:?}");
        let inner_v6 = f[0].contains("ipv6:tcp");
        let (src, dst) = if inner_v6 { (f[2], f[5]) } else { (f[1], f[4]) };
        let vni = if f[7].is_empty() { None } else { Some(f[7].parse()?) };
        *resets.entry((src.to_owned(), f[3].parse()?, dst.to_owned(), f[6].parse()?, vni)).or_default() += 1;
    }
    Ok(resets)
}

#[test]
fn resets_inside_tunnels_without_a_driver_are_counted_per_inner_tuple() -> Result<()> {
    run_test("resets_inside_tunnels_without_a_driver_are_counted_per_inner_tuple", &["tshark"], |dir| {
        let mut failures = Vec::new();
        for kind in userspace_kinds() {
            let dir = dir.join(kind.name);
            std::fs::create_dir_all(&dir)?;
            if let Err(error) = userspace_tunnel_case(&dir, &kind) {
                failures.push(format!("{}: {error:#}", kind.name));
            }
        }
        ensure!(failures.is_empty(), "{}", failures.join("\n"));
        Ok(())
    })
}

fn userspace_tunnel_case(dir: &Path, kind: &Kind) -> Result<()> {
    use rst_craft::tunnel::{Outer, Tunnel};
    let mut lab = Lab::new()?;
    let a = lab.add_ns("tna")?;
    let b = lab.add_ns("tnb")?;
    let (a_if, b_if) = lab.add_veth(&a, &b)?;
    // Outer addresses no namespace owns: the stacks never see the wrapped frames as theirs.
    let outer = |end: u8| -> (Outer, Outer) {
        if kind.outer_v6 {
            let addr = |last: u8| {
                let mut a = [0u8; 16];
                a[..2].copy_from_slice(&[0xfd, 0x90]);
                a[15] = last;
                a
            };
            (Outer::V6(addr(end), addr(3 - end)), Outer::V6(addr(3 - end), addr(end)))
        } else {
            (Outer::V4([172, 31, 0, end], [172, 31, 0, 3 - end]), Outer::V4([172, 31, 0, 3 - end], [172, 31, 0, end]))
        }
    };
    let (a_outer, b_outer) = outer(1);
    let mut a_sends = Tunnel::new(a_outer, kind.encapsulation);
    let mut b_sends = Tunnel::new(b_outer, kind.encapsulation);
    if kind.outer_v6 {
        // What an ip6 tunnel adds by default (Geneve and GRE over IPv6 the same here).
        a_sends = a_sends.encap_limit(4);
        b_sends = b_sends.encap_limit(4);
    }
    let captured = dir.join("rstwatch.pcapng");
    let capture_arg = captured.to_string_lossy().into_owned();
    let vantages = watch_all_ip(dir, &[("underlay", &a_if, &["--capture", &capture_arg])])?;
    let pumps = Pumps::start([
        End { ns: a.clone(), underlay: a_if.clone(), tun_name: "otun", sends: a_sends },
        End { ns: b.clone(), underlay: b_if.clone(), tun_name: "otun", sends: b_sends },
    ])?;
    configure(&a, "otun", "10.220.0.1/24", "fd80::1/64")?;
    configure(&b, "otun", "10.220.0.2/24", "fd80::2/64")?;
    let overlay = Overlay {
        vni: 0,
        underlay: [IpAddr::from([0, 0, 0, 0]), IpAddr::from([0, 0, 0, 0])],
        inner4: [Ipv4Addr::new(10, 220, 0, 1), Ipv4Addr::new(10, 220, 0, 2)],
        inner6: ["fd80::1".parse()?, "fd80::2".parse()?],
        device: "otun",
    };
    let traffic_result = traffic(&a, &b, &overlay);
    let seen = stop(dir, vantages)?;
    pumps.stop()?;
    traffic_result?;
    let underlay = vantage(&seen, "underlay")?;
    let witness = tshark_inner_resets(&dir.join("underlay.pcap"))?;
    let expected_resets = (REFUSED + ABORTED * 2) * 2;
    ensure!(
        witness.values().sum::<u64>() as usize == expected_resets,
        "tshark saw {} resets inside, the lab made {expected_resets}: {witness:#?}",
        witness.values().sum::<u64>()
    );
    for (what, summary) in [("live", &underlay.live), ("replay", &underlay.replay)] {
        let mut counted = BTreeMap::new();
        for flow in summary["flows"].as_array().context("flows")? {
            let tunnel = &flow["tunnel"];
            ensure!(!tunnel.is_null(), "{what}: flow {flow} outside the tunnel");
            let src: IpAddr = flow["src"].as_str().context("src")?.parse()?;
            let want_type = kind.types[usize::from(src.is_ipv6())];
            ensure!(tunnel["type"] == want_type, "{what}: flow {flow}: want type {want_type}");
            ensure!(
                tunnel["vni"].as_u64().map(|v| v as u32) == kind.vni,
                "{what}: flow {flow}: want VNI {:?}",
                kind.vni
            );
            let key = (
                src.to_string(),
                flow["sport"].as_u64().context("sport")? as u16,
                flow["dst"].as_str().context("dst")?.to_owned(),
                flow["dport"].as_u64().context("dport")? as u16,
            );
            *counted.entry(key).or_default() += flow["resets"].as_u64().context("resets")?;
        }
        ensure!(counted == witness, "{what} differs from tshark:\n {what} {counted:#?}\n tshark {witness:#?}");
        ensure!(summary["totals"]["malformed"] == 0, "{what}: malformed {}", summary["totals"]);
    }
    let written = tshark_inner_resets(&captured)?;
    ensure!(written == witness, "--capture differs from tshark:\n {written:#?}\n {witness:#?}");
    drop(lab);
    Ok(())
}

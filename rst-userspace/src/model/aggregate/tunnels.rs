//! Tunnels on the host: the numbers flows inside tunnels are counted under (see
//! [`rst_common::wire::TUNNEL_INTERFACE`]) turned back into the tunnel and its interface, and
//! replay's own numbering with the same walk as the kernel's.

use std::{collections::HashMap, net::IpAddr};

use rst_common::{
    parse::Tunnels,
    wire::{tunnel_number, FlowKey, TunnelKey, FAMILY_IPV4, TUNNEL_UNRECORDED},
};

use super::model::{FlowTunnel, ServiceTunnel, TunnelType};

/// The tunnels numbered so far, by number: what the kernel's `TUNNELS` map (or replay's
/// [`TunnelNumbers`]) said.
#[derive(Clone, Debug, Default)]
pub struct KnownTunnels {
    by_number: HashMap<u32, TunnelKey>,
}

impl KnownTunnels {
    pub fn learn(&mut self, tunnels: &[(u32, TunnelKey)]) {
        self.by_number.extend(tunnels.iter().copied());
    }

    /// The number of `tunnel`, if numbered.
    pub fn number_of(&self, tunnel: &TunnelKey) -> Option<u32> {
        self.by_number.iter().find(|(_, known)| *known == tunnel).map(|(number, _)| *number)
    }

    /// The interface a key's `ifindex` stands for: itself, or its tunnel's underlay; 0 for a
    /// tunnel no table had room for.
    pub fn underlay(&self, ifindex: u32) -> u32 {
        match tunnel_number(ifindex) {
            None => ifindex,
            Some(number) => self.by_number.get(&number).map_or(0, |tunnel| tunnel.ifindex),
        }
    }

    /// The tunnel a flow was counted inside, if any.
    pub fn of(&self, key: &FlowKey) -> Option<FlowTunnel> {
        let number = tunnel_number(key.ifindex)?;
        let Some(tunnel) = self.by_number.get(&number).filter(|_| number != TUNNEL_UNRECORDED) else {
            return Some(FlowTunnel { kind: TunnelType::Unrecorded, vni: None, outer_src: None, outer_dst: None });
        };
        let (src, dst) = tunnel.outer(key.outer_swapped != 0);
        Some(FlowTunnel {
            kind: tunnel.tunnel_kind().map_or(TunnelType::Unrecorded, TunnelType::Known),
            vni: (tunnel.keyed != 0).then_some(tunnel.key),
            outer_src: Some(address(tunnel.family, &src)),
            outer_dst: Some(address(tunnel.family, &dst)),
        })
    }
}

impl KnownTunnels {
    /// The tunnel of a service counted under `ifindex`, if any.
    pub fn of_service(&self, ifindex: u32) -> Option<ServiceTunnel> {
        let number = tunnel_number(ifindex)?;
        let tunnel = self.by_number.get(&number).filter(|_| number != TUNNEL_UNRECORDED);
        Some(tunnel.map_or(ServiceTunnel { kind: TunnelType::Unrecorded, vni: None }, ServiceTunnel::of))
    }
}

/// A flow as a frame read again on the host shows it: its key (the tunnel's number not yet
/// known, see [`FrameTunnel`]) and the tunnel it came through.
pub type FrameFlow = (FlowKey, Option<TunnelKey>);

/// The UDP ports VXLAN and Geneve are walked into: the well-known ones and the run's
/// `--vxlan-port` / `--geneve-port`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TunnelPortSet {
    vxlan: Vec<u16>,
    geneve: Vec<u16>,
}

impl TunnelPortSet {
    pub fn new(vxlan: &[u16], geneve: &[u16]) -> Self {
        TunnelPortSet { vxlan: vxlan.to_vec(), geneve: geneve.to_vec() }
    }

    // Asked for every UDP datagram replay reads: the well-known ports compared inline, the
    // run's own (usually none) only when there are some (a slice search is a call).
    #[inline(always)]
    fn vxlan_port(&self, port: u16) -> bool {
        let [a, b] = rst_common::parse::VXLAN_PORTS;
        port == a || port == b || (!self.vxlan.is_empty() && self.vxlan.contains(&port))
    }

    #[inline(always)]
    fn geneve_port(&self, port: u16) -> bool {
        port == rst_common::parse::GENEVE_PORT || (!self.geneve.is_empty() && self.geneve.contains(&port))
    }
}

/// Walks a frame again (a payload's or a captured RST's) with the run's ports, noting the
/// tunnel instead of numbering it: the run's tunnel table gives the number later
/// ([`super::Aggregator::rst_payload_of`]).
pub struct FrameTunnel<'a> {
    pub found: Option<TunnelKey>,
    ports: &'a TunnelPortSet,
}

impl<'a> FrameTunnel<'a> {
    pub fn new(ports: &'a TunnelPortSet) -> Self {
        FrameTunnel { found: None, ports }
    }
}

impl Tunnels for FrameTunnel<'_> {
    fn vxlan_port(&self, port: u16) -> bool {
        self.ports.vxlan_port(port)
    }

    fn geneve_port(&self, port: u16) -> bool {
        self.ports.geneve_port(port)
    }

    fn number(&mut self, tunnel: &TunnelKey) -> u32 {
        self.found = Some(*tunnel);
        TUNNEL_UNRECORDED
    }
}

fn address(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    } else {
        IpAddr::from(*bytes)
    }
}

/// Replay's numbering of tunnels, the kernel's in memory: the first tunnel seen is 0, and
/// so on, up to the kernel's table size.
#[derive(Clone, Debug)]
pub struct TunnelNumbers {
    numbers: HashMap<TunnelKey, u32>,
    /// Numbered since [`TunnelNumbers::take_new`] last ran.
    new: Vec<(u32, TunnelKey)>,
    ports: TunnelPortSet,
}

impl TunnelNumbers {
    /// With VXLAN and Geneve on `vxlan_ports` and `geneve_ports` besides the well-known ones.
    pub fn new(vxlan_ports: &[u16], geneve_ports: &[u16]) -> Self {
        TunnelNumbers { numbers: HashMap::new(), new: Vec::new(), ports: TunnelPortSet::new(vxlan_ports, geneve_ports) }
    }

    /// The tunnels numbered since the last call.
    pub fn take_new(&mut self) -> Vec<(u32, TunnelKey)> {
        std::mem::take(&mut self.new)
    }
}

impl Default for TunnelNumbers {
    fn default() -> Self {
        TunnelNumbers::new(&[], &[])
    }
}

impl Tunnels for TunnelNumbers {
    #[inline(always)]
    fn vxlan_port(&self, port: u16) -> bool {
        self.ports.vxlan_port(port)
    }

    #[inline(always)]
    fn geneve_port(&self, port: u16) -> bool {
        self.ports.geneve_port(port)
    }

    fn number(&mut self, tunnel: &TunnelKey) -> u32 {
        if let Some(&number) = self.numbers.get(tunnel) {
            return number;
        }
        let number = self.numbers.len() as u32;
        if number >= rst_common::wire::MAX_TUNNELS {
            return TUNNEL_UNRECORDED;
        }
        self.numbers.insert(*tunnel, number);
        self.new.push((number, *tunnel));
        number
    }
}

#[cfg(test)]
mod tests {
    use rst_common::wire::{TunnelKind, FAMILY_IPV6, TUNNEL_INTERFACE};

    use super::*;

    #[test]
    fn a_frame_walked_again_finds_its_tunnel_on_the_runs_extra_port_only() {
        use rst_craft::tunnel::{Encapsulation, Outer, Tunnel};
        let inner = rst_craft::tcp_v4().flags(rst_common::parse::TCP_RST).build();
        let outer = Outer::V4([192, 0, 2, 1], [192, 0, 2, 2]);
        let frame = Tunnel::new(outer, Encapsulation::Vxlan { vni: 42, port: 4790 }).wrap(&inner);
        let found = |ports: &TunnelPortSet| {
            let mut tunnel = FrameTunnel::new(ports);
            let observation = rst_common::inspect_tunnels(&frame[..], 0, || 1, &mut tunnel);
            (matches!(observation, rst_common::Observation::Reset(_)), tunnel.found.map(|t| (t.kind, t.key)))
        };
        assert_eq!(found(&TunnelPortSet::default()), (false, None), "4790 is plain UDP by default");
        let ports = TunnelPortSet::new(&[4790], &[]);
        assert_eq!(found(&ports), (true, Some((TunnelKind::Vxlan as u8, 42))), "--vxlan-port 4790");
        let walked = rst_common::parse::walk_with(&frame[..], &FrameTunnel::new(&ports));
        assert!(matches!(walked, rst_common::Walk::Tcp(_)), "the payload's walk sees the segment too");
    }

    #[test]
    fn a_number_reads_back_as_its_tunnel_the_right_way_round() {
        let (lo, hi) = ([0xfd; 16], [0xfe; 16]);
        let tunnel = TunnelKey {
            lo,
            hi,
            ifindex: 7,
            key: 42,
            kind: TunnelKind::Vxlan as u8,
            family: FAMILY_IPV6,
            keyed: 1,
            _pad: 0,
        };
        let mut known = KnownTunnels::default();
        known.learn(&[(3, tunnel)]);
        let key = FlowKey { ifindex: TUNNEL_INTERFACE | 3, outer_swapped: 1, ..FlowKey::default() };
        assert_eq!(known.underlay(key.ifindex), 7);
        assert_eq!(known.underlay(5), 5, "a plain interface is itself");
        assert_eq!(known.underlay(TUNNEL_INTERFACE | 4), 0, "a number no table holds has no interface");
        let flow = known.of(&key).expect("a tunnelled flow");
        assert_eq!(
            (flow.kind, flow.vni, flow.outer_src, flow.outer_dst),
            (TunnelType::Known(TunnelKind::Vxlan), Some(42), Some(IpAddr::from(hi)), Some(IpAddr::from(lo)))
        );
        assert_eq!(flow.describe(), "vxlan 42");
        assert_eq!(known.of(&FlowKey { ifindex: 5, ..key }), None);
        let unrecorded = known.of(&FlowKey { ifindex: TUNNEL_INTERFACE | TUNNEL_UNRECORDED, ..key }).expect("tunnel");
        assert_eq!((unrecorded.kind.name(), unrecorded.outer_src), ("unrecorded", None));
        let service = known.of_service(key.ifindex).expect("a tunnelled service");
        assert_eq!(service.describe(), "vxlan 42");
        let gre = ServiceTunnel { kind: TunnelType::Known(TunnelKind::Gre), vni: Some(7) };
        assert_eq!(gre.describe(), "gre key 7");
    }

    #[test]
    fn replay_numbers_tunnels_once_each_in_the_order_met() {
        let mut numbers = TunnelNumbers::new(&[4790], &[]);
        let a = TunnelKey { kind: 1, ..TunnelKey::default() };
        let b = TunnelKey { kind: 2, ..TunnelKey::default() };
        assert_eq!((numbers.number(&a), numbers.number(&b), numbers.number(&a)), (0, 1, 0));
        assert_eq!(numbers.take_new(), vec![(0, a), (1, b)]);
        assert!(numbers.take_new().is_empty());
        assert!(numbers.vxlan_port(4790) && numbers.vxlan_port(8472) && !numbers.vxlan_port(4791));
        assert!(numbers.geneve_port(6081) && !numbers.geneve_port(4790));
    }
}

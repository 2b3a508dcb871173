//! Tenants behind tunnels: one inner address in two VNIs is two services and two clients, whose
//! evidence never adds up; one VNI reached over several underlay paths is one tenant.

use rst_common::wire::{FlowKey, TunnelKey, TunnelKind, FAMILY_IPV4, TUNNEL_INTERFACE};

use super::{causes, handshakes, refusal, service, Cause, Evidence, ServiceSample, IFINDEX};
use crate::model::aggregate::{
    model::{ServiceTunnel, TunnelType},
    tunnels::KnownTunnels,
};

/// The tunnels' numbers: VNI 42 over two pairs of underlay endpoints, VNI 43 over one.
const VNI_42: u32 = 0;
const VNI_42_OTHER_PATH: u32 = 1;
const VNI_43: u32 = 2;

fn vxlan(vni: u32, outer_last_octet: u8) -> TunnelKey {
    let mut tunnel = TunnelKey {
        ifindex: IFINDEX,
        key: vni,
        kind: TunnelKind::Vxlan as u8,
        family: FAMILY_IPV4,
        keyed: 1,
        ..TunnelKey::default()
    };
    tunnel.lo[..4].copy_from_slice(&[192, 0, 2, 1]);
    tunnel.hi[..4].copy_from_slice(&[192, 0, 2, outer_last_octet]);
    tunnel
}

/// One interval of `flows` (a reset each) and `samples`, with the tenants' tunnels numbered.
fn feed_tenants(evidence: &mut Evidence, samples: &[ServiceSample], flows: &[FlowKey]) {
    let mut tunnels = KnownTunnels::default();
    tunnels.learn(&[(VNI_42, vxlan(42, 2)), (VNI_42_OTHER_PATH, vxlan(42, 3)), (VNI_43, vxlan(43, 2))]);
    evidence.interval(0, samples, flows.iter().map(|key| (key, 1)), &tunnels);
}

fn inside(number: u32, key: FlowKey) -> FlowKey {
    FlowKey { ifindex: TUNNEL_INTERFACE | number, ..key }
}

fn scope(vni: u32) -> Option<ServiceTunnel> {
    Some(ServiceTunnel { kind: TunnelType::Known(TunnelKind::Vxlan), vni: Some(vni) })
}

/// `sample` as the aggregator hands it over for a service counted inside tunnel `number`.
fn sample_inside(number: u32, vni: u32, sample: ServiceSample) -> ServiceSample {
    let service = super::ServiceAddr { tunnel: scope(vni), ..sample.service };
    ServiceSample { service, ifindex: TUNNEL_INTERFACE | number, ..sample }
}

#[test]
fn a_tenants_closed_port_is_not_hidden_by_another_tenants_open_one_at_the_same_address() {
    let mut evidence = Evidence::new(4096);
    let refused = [
        inside(VNI_42, refusal(81, 40_000)),
        inside(VNI_42, refusal(81, 40_001)),
        inside(VNI_42_OTHER_PATH, refusal(81, 40_002)),
    ];
    let samples = [
        sample_inside(VNI_42, 42, handshakes(81, 2, 0)),
        sample_inside(VNI_42_OTHER_PATH, 42, handshakes(81, 1, 0)),
        sample_inside(VNI_43, 43, handshakes(81, 5, 5)),
    ];
    feed_tenants(&mut evidence, &samples, &refused);
    let verdicts = evidence.verdicts();
    // One evidence for both would hold VNI 43's accepts: a port that accepts has a listener.
    assert_eq!(causes(&verdicts), [(Cause::NoListener, 81, 3)], "{verdicts:#?}");
    assert_eq!(verdicts[0].service.tunnel, scope(42), "both underlay paths of VNI 42, and only VNI 42");
    assert_eq!(verdicts[0].service.addr, service(81).addr);
    assert!(verdicts[0].text().contains("nothing listens on 10.0.2.10:81 in vxlan 42"), "{}", verdicts[0].text());
}

#[test]
fn one_address_probing_in_two_tenants_is_two_clients_not_one_scan() {
    // Five refused targets make a scan; here they are three of one tenant's client and two of
    // another's, at the same inner address.
    let mut split = Evidence::new(4096);
    let flows: Vec<FlowKey> =
        (1..=5u16).map(|port| inside(if port <= 3 { VNI_42 } else { VNI_43 }, refusal(port, 50_000))).collect();
    feed_tenants(&mut split, &[], &flows);
    let verdicts = split.verdicts();
    assert!(verdicts.iter().all(|verdict| verdict.cause() == Cause::NoListener), "{verdicts:#?}");
    let scoped: Vec<_> = verdicts.iter().map(|verdict| (verdict.service.port, verdict.service.tunnel)).collect();
    assert_eq!(scoped.len(), 5);
    assert!(scoped.contains(&(1, scope(42))) && scoped.contains(&(5, scope(43))), "{scoped:?}");

    // The same five in one tenant are one.
    let mut one = Evidence::new(4096);
    let flows: Vec<FlowKey> = (1..=5u16).map(|port| inside(VNI_42, refusal(port, 50_000))).collect();
    feed_tenants(&mut one, &[], &flows);
    let verdicts = one.verdicts();
    assert_eq!(causes(&verdicts), [(Cause::Scan, 0, 5)], "{verdicts:#?}");
    assert_eq!(verdicts[0].service.tunnel, scope(42));
}

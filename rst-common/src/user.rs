//! Host-only additions: `aya::Pod` for the map types and address formatting.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::{
    table::FlowSlot,
    wire::{
        CacheSlot, CaptureBudget, CaptureCounters, CaptureReason, CaptureReasonKey, ConnKey, ConnState, Counters,
        FirewallResetKey, FlowKey, FlowValue, IdleKey, IdleValue, ListenKey, ListenValue, LoggedFlow, PayloadCounters,
        ResetCounters, ServiceKey, ServiceValue, SourceKey, StackResetKey, TrafficCounters, WorkloadKey, FAMILY_IPV4,
    },
};

// SAFETY: plain repr(C) integer aggregates with explicit padding; every bit pattern is valid.
unsafe impl aya::Pod for FlowKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowValue {}
// SAFETY: as above.
unsafe impl aya::Pod for Counters {}
// SAFETY: as above.
unsafe impl aya::Pod for TrafficCounters {}
// SAFETY: as above.
unsafe impl aya::Pod for SourceKey {}
// SAFETY: as above.
unsafe impl aya::Pod for crate::wire::TunnelKey {}
// SAFETY: as above.
unsafe impl aya::Pod for CacheSlot {}
// SAFETY: as above.
unsafe impl aya::Pod for ResetCounters {}
// SAFETY: as above.
unsafe impl aya::Pod for LoggedFlow {}
// SAFETY: as above.
unsafe impl aya::Pod for ConnKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ConnState {}
// SAFETY: as above.
unsafe impl aya::Pod for ServiceKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ServiceValue {}
// SAFETY: as above.
unsafe impl aya::Pod for StackResetKey {}
// SAFETY: as above.
unsafe impl aya::Pod for FlowSlot {}
// SAFETY: as above.
unsafe impl aya::Pod for WorkloadKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ListenKey {}
// SAFETY: as above.
unsafe impl aya::Pod for ListenValue {}
// SAFETY: as above.
unsafe impl aya::Pod for IdleKey {}
// SAFETY: as above.
unsafe impl aya::Pod for IdleValue {}
// SAFETY: as above.
unsafe impl aya::Pod for CaptureCounters {}
// SAFETY: as above.
unsafe impl aya::Pod for CaptureBudget {}
// SAFETY: as above.
unsafe impl aya::Pod for PayloadCounters {}
// SAFETY: as above.
unsafe impl aya::Pod for CaptureReasonKey {}
// SAFETY: as above.
unsafe impl aya::Pod for CaptureReason {}
// SAFETY: as above.
unsafe impl aya::Pod for FirewallResetKey {}

impl FirewallResetKey {
    /// The RST's source: the rejected segment's destination.
    pub fn src_ip(&self) -> IpAddr {
        to_ip(self.family, &self.src)
    }

    /// The RST's destination: the rejected segment's source.
    pub fn dst_ip(&self) -> IpAddr {
        to_ip(self.family, &self.dst)
    }
}

impl FlowKey {
    pub fn src_ip(&self) -> IpAddr {
        to_ip(self.family, &self.src)
    }

    pub fn dst_ip(&self) -> IpAddr {
        to_ip(self.family, &self.dst)
    }
}

impl SourceKey {
    pub fn src_ip(&self) -> IpAddr {
        to_ip(self.family, &self.src)
    }
}

impl crate::wire::ListenKey {
    pub fn ip(&self) -> IpAddr {
        to_ip(self.family, &self.addr)
    }
}

impl ServiceKey {
    pub fn ip(&self) -> IpAddr {
        to_ip(self.family, &self.addr)
    }
}

impl StackResetKey {
    pub fn src_ip(&self) -> IpAddr {
        to_ip(self.family, &self.src)
    }

    pub fn dst_ip(&self) -> IpAddr {
        to_ip(self.family, &self.dst)
    }
}

impl WorkloadKey {
    pub fn src_ip(&self) -> IpAddr {
        to_ip(self.family, &self.src)
    }

    pub fn dst_ip(&self) -> IpAddr {
        to_ip(self.family, &self.dst)
    }
}

fn to_ip(family: u8, bytes: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*bytes))
    }
}

//! The packet comment: rstwatch's reading of one captured RST, from the kernel's own
//! classification (the class byte and TTLs it counted the RST under) and the run's verdicts.

use std::fmt::Write as _;

use rst_common::wire::{ResetClass, TunnelKind, DIRECTION_TX};

use crate::{model::aggregate::model::Side, model::verdict::Cause};

/// What the comment says about an RST beyond its class: the verdict on its service, where the
/// run already has one, and the kernel's reason for a reset this host's stack sent (from the
/// capture's own record of `tcp:tcp_send_reset`, see `rstwatch::output::capture`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Known<'a> {
    pub verdict: Option<Cause>,
    pub reason: Option<&'a str>,
    /// The tunnel the RST came through, read from the frame: its kind and VNI or GRE key.
    pub tunnel: Option<(TunnelKind, Option<u32>)>,
}

/// `rstwatch: refused; side=server (observed); first; ack; verdict=no_listener`.
pub fn reset(class: u8, direction: u8, rst_ttl: u8, peer_ttl: u8, known: Known<'_>) -> String {
    let class = ResetClass(class);
    let side = if class.server() { Side::Server } else { Side::Client };
    let mut text = format!(
        "rstwatch: {}; side={} ({}); ",
        class.kind().name(),
        side.name(),
        if class.side_observed() { "observed" } else { "from the ports" }
    );
    text.push_str(if class.first() { "first" } else { "not first" });
    if class.ack() {
        text.push_str("; ack");
    }
    text.push_str(if direction == DIRECTION_TX { "; sent by this host" } else { "; received" });
    match known.tunnel {
        Some((kind, Some(vni))) if kind == TunnelKind::Vxlan || kind == TunnelKind::Geneve => {
            let _ = write!(text, "; inside {} VNI {vni}", kind.name());
        }
        Some((kind, Some(key))) => {
            let _ = write!(text, "; inside {} key {key}", kind.name());
        }
        Some((kind, None)) => {
            let _ = write!(text, "; inside {}", kind.name());
        }
        None => {}
    }
    if peer_ttl != 0 && crate::model::verdict::forged(rst_ttl, peer_ttl) {
        let _ = write!(text, "; middlebox: TTL {rst_ttl}, its claimed sender's handshake had {peer_ttl}");
    }
    if let Some(reason) = known.reason {
        let _ = write!(text, "; kernel reason={reason}");
    }
    if let Some(verdict) = known.verdict {
        let _ = write!(text, "; verdict={}", verdict.name());
    }
    text
}

/// For a SYN or SYN+ACK kept because its connection was reset.
pub const HANDSHAKE: &str = "rstwatch: handshake of a connection reset later";

#[cfg(test)]
mod tests {
    use rst_common::wire::{ResetKind, DIRECTION_RX};

    use super::*;

    #[test]
    fn the_comment_names_the_tunnel_and_its_vni_or_key() {
        let class = ResetClass::new(ResetKind::Refused, true, true, true, true).0;
        let inside = |tunnel| reset(class, DIRECTION_RX, 64, 0, Known { tunnel: Some(tunnel), ..Known::default() });
        assert_eq!(
            inside((TunnelKind::Vxlan, Some(42))),
            "rstwatch: refused; side=server (observed); first; ack; received; inside vxlan VNI 42"
        );
        assert!(inside((TunnelKind::Gre, Some(7))).ends_with("; inside gre key 7"));
        assert!(inside((TunnelKind::Ipip, None)).ends_with("; inside ipip"));
    }

    #[test]
    fn the_comment_names_kind_side_first_and_a_middlebox() {
        let class = ResetClass::new(ResetKind::Refused, true, true, true, true).0;
        let text =
            reset(class, DIRECTION_RX, 64, 63, Known { verdict: Some(Cause::NoListener), reason: None, tunnel: None });
        assert_eq!(
            text,
            "rstwatch: refused; side=server (observed); first; ack; received; \
             middlebox: TTL 64, its claimed sender's handshake had 63; verdict=no_listener"
        );
        let class = ResetClass::new(ResetKind::Established, false, false, false, false).0;
        let text = reset(class, DIRECTION_TX, 64, 0, Known { verdict: None, reason: Some("NO_SOCKET"), tunnel: None });
        assert_eq!(
            text,
            "rstwatch: established; side=client (from the ports); not first; sent by this host; kernel reason=NO_SOCKET"
        );
        // Both, in that order: the stack's own reason for this RST, then the service's verdict.
        let class = ResetClass::new(ResetKind::Refused, true, true, true, true).0;
        let known = Known { verdict: Some(Cause::NoListener), reason: Some("NO_SOCKET"), tunnel: None };
        assert_eq!(
            reset(class, DIRECTION_TX, 64, 0, known),
            "rstwatch: refused; side=server (observed); first; ack; sent by this host; kernel reason=NO_SOCKET; \
             verdict=no_listener"
        );
    }
}

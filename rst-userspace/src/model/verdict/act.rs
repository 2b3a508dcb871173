//! What an RST did to its connection, read from its classification and context: the step
//! between the classifier's kinds and the causes.

use rst_common::wire::{ResetClass, ResetContext, ResetKind};

use super::{Cause, Finding};

/// What an RST did to its connection, as far as the causes care.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum Act {
    /// The server side refused a SYN, or reset the connection inside the handshake.
    TurnAway,
    /// Without ACK, by a side that had accepted the connection and not closed it: its sender
    /// answered as if it did not know the connection.
    Stateless,
    /// With ACK after data, before any FIN: a stateful abort.
    Abort,
    /// A client's reset right after the handshake (a health check's, if steady). Never in a
    /// [`Bucket`]: such resets go to the client–service pair's [`CheckPattern`].
    Check,
    /// A connection already being closed: after the peer's FIN (`after_peer_fin`), or after the
    /// sender's own FIN answering the peer's late segments, which carried no data.
    Teardown { after_peer_fin: bool },
    /// After the sender's own FIN, answering data its peer still wrote, not having closed: a
    /// keep-alive connection closed as the peer reused it. Told only where data is watched
    /// (replay); live, the kernel's reason says it for resets this host sends.
    Race,
    /// Nothing in the connection says why: no handshake seen (a lone RST), a client giving up
    /// its own unanswered SYN, a closed connection written to unseen. Kept only so a forged TTL
    /// still shows.
    Unexplained,
}

impl Act {
    /// What an RST did, from its classification and what its connection had seen; `None`: no
    /// cause of the service's (a client's RST answering a SYN it did not send).
    pub(super) fn of(class: ResetClass, context: ResetContext) -> Option<Act> {
        if !class.side_observed() {
            return Some(Act::Unexplained);
        }
        let (server, ack) = (class.server(), class.ack());
        Some(match class.kind() {
            ResetKind::Refused if server => Act::TurnAway,
            ResetKind::Refused => return None,
            // Accepted, acknowledged (an RST without ACK takes its sequence number from the
            // segment it answers: the SYN+ACK's, ISN + 1), then not known.
            ResetKind::Handshake if server && context.answered() && !ack => Act::Stateless,
            ResetKind::Handshake if server => Act::TurnAway,
            ResetKind::Handshake if context.answered() => Act::Check,
            ResetKind::Handshake => Act::Unexplained,
            ResetKind::Established if ack => Act::Abort,
            ResetKind::Established => Act::Stateless,
            ResetKind::Closing if context.peer_closed() => Act::Teardown { after_peer_fin: true },
            ResetKind::Closing if context.sender_closed() && context.data_watched() && !context.peer_late_data() => {
                Act::Teardown { after_peer_fin: false }
            }
            ResetKind::Closing if context.sender_closed() && context.peer_late_data() => Act::Race,
            ResetKind::Closing => Act::Unexplained,
        })
    }

    /// The act of a flow's RSTs this host's stack sent, from what the flow record keeps (most
    /// of its RSTs' kind and ACK flag; not their context): keyed like [`Act::of_cause`].
    pub(super) fn of_sent(kind: ResetKind, server: bool, ack: bool) -> Option<Act> {
        Some(match (kind, server, ack) {
            (ResetKind::Refused, true, _) | (ResetKind::Handshake, true, true) => Act::TurnAway,
            (ResetKind::Refused, false, _) => return None,
            (ResetKind::Handshake, false, _) => Act::Check,
            (ResetKind::Handshake | ResetKind::Established, _, false) => Act::Stateless,
            (ResetKind::Established, _, true) => Act::Abort,
            (ResetKind::Closing, _, _) => Act::Teardown { after_peer_fin: true },
        })
    }

    /// The act whose resets `cause` explains.
    pub(super) fn of_cause(cause: Cause) -> Option<Act> {
        match cause {
            Cause::NoListener | Cause::WentDown | Cause::ConnectionLimit | Cause::Scan => Some(Act::TurnAway),
            Cause::StateLost => Some(Act::Stateless),
            Cause::AppAbort => Some(Act::Abort),
            Cause::HealthCheck => Some(Act::Check),
            Cause::Teardown => Some(Act::Teardown { after_peer_fin: true }),
            Cause::KeepaliveRace => Some(Act::Race),
            // A reset this host's stack sent is not forged in between; an idle timeout's resets
            // are of several acts; a lost NAT's, an overflow's and the firewall's are told by
            // their own events.
            Cause::Middlebox | Cause::IdleTimeout | Cause::NatLost | Cause::ListenOverflow | Cause::LocalFirewall => {
                None
            }
        }
    }

    /// The finding this act's genuine resets name, where the act alone names one (a teardown's
    /// counts are summed per side first).
    pub(super) fn finding(self) -> Option<Finding> {
        match self {
            Act::Stateless => Some(Finding::StateLost),
            Act::Abort => Some(Finding::AppAbort),
            Act::Race => Some(Finding::KeepaliveRace { idle_ms: None }),
            Act::TurnAway | Act::Check | Act::Teardown { .. } | Act::Unexplained => None,
        }
    }
}

//! The classifier's verdict on an RST, as packed into [`super::FlowKey::class`].

/// A packed byte's flags, declared once each: its bit and its getter, with the doc on both.
macro_rules! flags {
    ($ty:ident { $($(#[$doc:meta])* $bit:ident = $value:expr => $getter:ident;)+ }) => {
        impl $ty {
            $($(#[$doc])* const $bit: u8 = $value;)+
            $($(#[$doc])* pub const fn $getter(self) -> bool {
                self.0 & Self::$bit != 0
            })+
        }
    };
}

/// What kind of reset, by the state of its connection when it was seen.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResetKind {
    /// Answers a SYN: the server side turned the connection away (port closed, listener gone,
    /// a balancer at its limit).
    Refused = 0,
    /// After the SYN+ACK (or a SYN), before any byte moved.
    Handshake = 1,
    /// Data moved (or the connection predates what rstwatch saw).
    Established = 2,
    /// After a FIN was seen.
    Closing = 3,
}

impl ResetKind {
    pub const ALL: [ResetKind; 4] =
        [ResetKind::Refused, ResetKind::Handshake, ResetKind::Established, ResetKind::Closing];

    pub const fn name(self) -> &'static str {
        match self {
            ResetKind::Refused => "refused",
            ResetKind::Handshake => "handshake",
            ResetKind::Established => "established",
            ResetKind::Closing => "closing",
        }
    }
}

/// The classifier's verdict on one RST, packed into [`FlowKey::class`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResetClass(pub u8);

flags!(ResetClass {
    /// The RST had ACK set.
    ACK = 1 << 2 => ack;
    /// Its sender is the connection's server (else the client).
    SERVER = 1 << 3 => server;
    /// The side is known from a SYN / SYN+ACK seen, not inferred from the ports.
    SIDE_OBSERVED = 1 << 4 => side_observed;
    /// The first RST rstwatch saw in this connection on this interface.
    FIRST = 1 << 5 => first;
});

impl ResetClass {
    const KIND: u8 = 0b11;

    #[inline(always)]
    pub const fn new(kind: ResetKind, ack: bool, server: bool, side_observed: bool, first: bool) -> Self {
        ResetClass(
            kind as u8
                | if ack { Self::ACK } else { 0 }
                | if server { Self::SERVER } else { 0 }
                | if side_observed { Self::SIDE_OBSERVED } else { 0 }
                | if first { Self::FIRST } else { 0 },
        )
    }

    pub const fn kind(self) -> ResetKind {
        match self.0 & Self::KIND {
            0 => ResetKind::Refused,
            1 => ResetKind::Handshake,
            2 => ResetKind::Established,
            _ => ResetKind::Closing,
        }
    }
}

/// What the connection had seen when an RST came, packed into [`FlowKey::context`]: the
/// evidence that tells an ordinary teardown from a lost connection, and a side's first reset
/// from its answers to the peer's late segments. All false when no handshake was seen.
///
/// [`FlowKey::context`]: super::FlowKey::context
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResetContext(pub u8);

flags!(ResetContext {
    /// The server's SYN+ACK was seen: the connection was accepted.
    ANSWERED = 1 << 0 => answered;
    /// The RST's sender had sent a FIN before it.
    SENDER_CLOSED = 1 << 1 => sender_closed;
    /// The RST's peer had sent a FIN before it.
    PEER_CLOSED = 1 << 2 => peer_closed;
    /// The sender had already reset this connection: this RST answers the peer's late segments.
    SENDER_RESET = 1 << 3 => sender_reset;
    /// The peer sent data after the sender's FIN (a connection the sender closed, written to).
    PEER_LATE_DATA = 1 << 4 => peer_late_data;
    /// The connection's data segments were watched (replay), so [`Self::peer_late_data`] false
    /// means none came; in the kernel they are not.
    DATA_WATCHED = 1 << 5 => data_watched;
});

impl ResetContext {
    #[inline(always)]
    pub const fn new(
        answered: bool,
        sender_closed: bool,
        peer_closed: bool,
        sender_reset: bool,
        peer_late_data: bool,
        data_watched: bool,
    ) -> Self {
        Self::from_bits(
            answered as u8,
            sender_closed as u8,
            peer_closed as u8,
            sender_reset as u8,
            peer_late_data as u8,
            data_watched as u8,
        )
    }

    /// [`Self::new`] from 0 / 1 values, without a branch: the kernel programs build it on every
    /// RST, where each branch multiplies the states the verifier walks.
    #[inline(always)]
    pub const fn from_bits(
        answered: u8,
        sender_closed: u8,
        peer_closed: u8,
        sender_reset: u8,
        peer_late_data: u8,
        data_watched: u8,
    ) -> Self {
        ResetContext(
            (answered * Self::ANSWERED)
                | (sender_closed * Self::SENDER_CLOSED)
                | (peer_closed * Self::PEER_CLOSED)
                | (sender_reset * Self::SENDER_RESET)
                | (peer_late_data * Self::PEER_LATE_DATA)
                | (data_watched * Self::DATA_WATCHED),
        )
    }
}

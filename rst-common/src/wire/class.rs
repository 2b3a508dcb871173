//! The classifier's verdict on an RST, as packed into [`super::FlowKey::class`].

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

impl ResetClass {
    const KIND: u8 = 0b11;
    /// The RST had ACK set.
    const ACK: u8 = 1 << 2;
    /// Its sender is the connection's server (else the client).
    const SERVER: u8 = 1 << 3;
    /// The side is known from a SYN / SYN+ACK seen, not inferred from the ports.
    const SIDE_OBSERVED: u8 = 1 << 4;
    /// The first RST rstwatch saw in this connection on this interface.
    const FIRST: u8 = 1 << 5;

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

    pub const fn ack(self) -> bool {
        self.0 & Self::ACK != 0
    }

    pub const fn server(self) -> bool {
        self.0 & Self::SERVER != 0
    }

    pub const fn side_observed(self) -> bool {
        self.0 & Self::SIDE_OBSERVED != 0
    }

    pub const fn first(self) -> bool {
        self.0 & Self::FIRST != 0
    }
}

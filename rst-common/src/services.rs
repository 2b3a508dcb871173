//! What a tracked segment changes about its service (the server's address and port): the
//! per-interval counts ([`ServiceValue`]) and the connections it holds open across intervals.
//!
//! The kernel and the host share this: [`crate::track`] says what happened, [`service_counts`]
//! moves the open count in an [`OpenConnections`] store (the kernel's `SERVICE_OPEN` map, a
//! bounded map on the host) and says what to add to the interval's [`ServiceValue`]; the caller
//! adds it (atomically in the kernel, with [`ServiceValue::merge`] on the host).
//!
//! Across intervals the store also keeps each service's down word
//! ([`crate::wire::down_after_turnaway`]): its turn-aways since its latest accept, each made
//! with nothing else open, and the time of the first — reset by the next accept. It orders an
//! interval's accepts and refusals, which the interval's counts cannot: a service that accepts
//! and then dies inside one interval ends it in a run. Only accepts and turn-aways touch it.
//!
//! "Open" counts connections from their first SYN+ACK to the first FIN or RST either side sent.
//! A connection whose SYN+ACK went by before the run is not counted, at its close either (the
//! tracker only reports closes of connections it saw accepted), and a count never goes below 0.
//! Limitations: a connection the connection table forgets while open (its pair of slots taken by
//! two newer connections) stays counted, since its close no longer finds it; and the kernel's
//! store keeps a service once counted for the whole run (a count of 0 is not removed, which
//! could race with an accept), so once [`crate::wire::DEFAULT_MAX_SERVICES`] services have
//! accepted, new ones go uncounted (their accepts carry no open count, `None`).

use crate::wire::{ServiceKey, ServiceValue};

/// What a segment did to its service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServiceEvent {
    /// A SYN without ACK: an attempt to connect. `reopens`: it replaces a connection of the same
    /// client on the same 4-tuple that was still open (its close went unseen), which closes it.
    Attempt { reopens: bool },
    /// The first SYN+ACK of a connection (a retransmission, same ISN, is not reported), with the
    /// TTL / hop limit it arrived with; `reopens` as for [`ServiceEvent::Attempt`].
    Accepted { ttl: u8, reopens: bool },
    /// The first FIN or RST of a connection that had a SYN+ACK.
    Closed,
    /// The server's first RST of a connection it never served: classified `refused` (no SYN+ACK)
    /// or `handshake` (right after it). `closes`: the connection had a SYN+ACK and is closed by it.
    TurnedAway { closes: bool },
}

/// One service's [`ServiceEvent`].
///
/// The event is held as a word every byte of which is set: as the enum, the bytes a variant
/// has no field for are undefined, and LLVM then stores whatever register it likes there when
/// the kernel programs build the change on their stack, a packet pointer's low byte as soon as
/// one is at hand, which the verifier refuses ("invalid size of register spill").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceChange {
    pub service: ServiceKey,
    event: u32,
}

impl ServiceChange {
    #[inline(always)]
    pub fn new(service: ServiceKey, event: ServiceEvent) -> Self {
        ServiceChange { service, event: Self::word_of(event) }
    }

    /// The word that holds `event`.
    #[inline(always)]
    pub const fn word_of(event: ServiceEvent) -> u32 {
        match event {
            ServiceEvent::Attempt { reopens } => (reopens as u32) << 16,
            ServiceEvent::Accepted { ttl, reopens } => 1 | ((ttl as u32) << 8) | ((reopens as u32) << 16),
            ServiceEvent::Closed => 2,
            ServiceEvent::TurnedAway { closes } => 3 | ((closes as u32) << 16),
        }
    }

    /// A change whose event is held as [`ServiceChange::word_of`] says.
    #[inline(always)]
    pub const fn from_word(service: ServiceKey, event: u32) -> Self {
        ServiceChange { service, event }
    }

    #[inline(always)]
    pub fn event(&self) -> ServiceEvent {
        let flag = (self.event >> 16) & 1 != 0;
        match self.event & 0xff {
            0 => ServiceEvent::Attempt { reopens: flag },
            1 => ServiceEvent::Accepted { ttl: (self.event >> 8) as u8, reopens: flag },
            2 => ServiceEvent::Closed,
            _ => ServiceEvent::TurnedAway { closes: flag },
        }
    }
}

/// What an accept found in the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Connections open before it; `None` when there is no room for the service (or the kernel
    /// could not read the count): it is then not counted.
    pub before: Option<u32>,
    /// The down word it ended (0: none).
    pub ended_down: u64,
}

/// What a turn-away found in the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TurnAway {
    /// Connections the service held open besides the one turned away.
    pub open: u32,
    /// The down word after it: 0 unless nothing else was open and the store holds the service.
    pub down: u64,
}

/// Where open-connection counts live across intervals: the kernel's `SERVICE_OPEN` map, or a
/// bounded map on the host.
pub trait OpenConnections {
    /// Counts one more open connection and ends the service's down run, if any.
    fn open(&mut self, service: &ServiceKey) -> Opened;
    /// A turn-away: closes the connection first when `closes`, then, if nothing else is open,
    /// moves the down word on ([`crate::wire::down_after_turnaway`], at the store's clock). A
    /// service the store does not hold (it never accepted in the run) has no down word.
    fn turn_away(&mut self, service: &ServiceKey, closes: bool) -> TurnAway;
    /// Counts one fewer, never going below 0.
    fn close(&mut self, service: &ServiceKey);
    /// How many are open now (0 for a service the store does not hold).
    fn open_now(&mut self, service: &ServiceKey) -> u32;
}

/// Applies `change` to the open counts and returns what to add to its service's interval
/// counts (`None`: nothing).
#[inline(always)]
pub fn service_counts<O: OpenConnections + ?Sized>(open: &mut O, change: &ServiceChange) -> Option<ServiceValue> {
    let service = &change.service;
    match change.event() {
        ServiceEvent::Attempt { reopens } => {
            if reopens {
                open.close(service);
            }
            Some(ServiceValue::ATTEMPT)
        }
        ServiceEvent::Accepted { ttl, reopens } => {
            if reopens {
                open.close(service);
            }
            let Opened { before, ended_down } = open.open(service);
            Some(ServiceValue::accepted(before, ttl, ended_down))
        }
        ServiceEvent::Closed => {
            open.close(service);
            None
        }
        ServiceEvent::TurnedAway { closes } => {
            // The turned-away connection itself does not count: what the service held besides.
            let TurnAway { open, down } = open.turn_away(service, closes);
            Some(ServiceValue::turned_away(open, down))
        }
    }
}

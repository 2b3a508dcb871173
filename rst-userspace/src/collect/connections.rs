//! The host's [`ConnTable`] and [`OpenConnections`]: connection state and open connections per
//! service for replay and tests, bounded like the kernel's.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
};

use rst_common::{
    service_counts,
    wire::{
        down_after_accept, down_after_turnaway, down_in_run, ConnKey, ConnState, OpenValue, ServiceKey, ServiceValue,
        DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_SERVICES,
    },
    ConnTable, OpenConnections, Opened, ServiceChange, TurnAway,
};

use crate::model::aggregate::FastMap;

/// A [`ConnKey`] hashed as six words instead of field by field. Replay looks a connection up for
/// every SYN, FIN and RST, and for the data of a connection that may have closed (its timings
/// keep a table of their own); with SipHash over the derived field-by-field hash that lookup was
/// the largest cost of a replay (a third of its time on 5 M frames).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ConnId(pub(crate) ConnKey);

impl Hash for ConnId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let k = &self.0;
        let word = |bytes: &[u8; 16], half: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&bytes[half * 8..half * 8 + 8]);
            u64::from_ne_bytes(w)
        };
        state.write_u64(word(&k.lo, 0));
        state.write_u64(word(&k.lo, 1));
        state.write_u64(word(&k.hi, 0));
        state.write_u64(word(&k.hi, 1));
        state.write_u64(u64::from(k.ifindex) | u64::from(k.lo_port) << 32 | u64::from(k.hi_port) << 48);
        // `_pad` is left out: it is zero in every key `connection()` makes, and hashing less than
        // equality compares still hashes equal keys alike.
        state.write_u8(k.family);
    }
}

/// A bounded map of connection state, and the open-connection count of each service.
///
/// Where the kernel's connection table forgets the older connection of a pair of slots, this
/// forgets all of them at once when full: cheaper, and equally harmless, since forgotten state
/// only turns observed classifications into inferred ones. The open counts are bounded as the
/// kernel's `SERVICE_OPEN` map is: a service that finds no room is not counted. Its clock,
/// for the services' down words, is what the caller last set ([`HostConnections::set_clock_ms`]):
/// capture time in replay.
#[derive(Debug)]
pub struct HostConnections {
    states: FastMap<ConnId, ConnState>,
    capacity: usize,
    open: FastMap<ServiceKey, OpenValue>,
    services_capacity: usize,
    now_ms: u64,
    /// Every data segment goes through [`rst_common::track_data`] (replay).
    watch_data: bool,
}

impl HostConnections {
    pub fn with_capacity(capacity: usize) -> Self {
        HostConnections {
            states: FastMap::default(),
            capacity: capacity.max(1),
            open: FastMap::default(),
            services_capacity: DEFAULT_MAX_SERVICES as usize,
            now_ms: 0,
            watch_data: false,
        }
    }

    /// The caller hands every data segment to [`rst_common::track_data`], so resets can tell
    /// whether their peer wrote after their sender closed.
    pub fn watching_data(self) -> Self {
        HostConnections { watch_data: true, ..self }
    }

    /// The time of the segments tracked next, in ms (on whatever clock the run's origin is on).
    pub fn set_clock_ms(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    /// The time last set with [`HostConnections::set_clock_ms`].
    pub fn clock_ms(&self) -> u64 {
        self.now_ms
    }

    /// Applies a tracked service change to the open counts and adds what it counts to
    /// `services`, as the kernel programs do to the interval's service table.
    pub fn count_service(&mut self, services: &mut HashMap<ServiceKey, ServiceValue>, change: &ServiceChange) {
        if let Some(counts) = service_counts(self, change) {
            services.entry(change.service).or_default().merge(&counts);
        }
    }
}

impl Default for HostConnections {
    fn default() -> Self {
        Self::with_capacity(DEFAULT_MAX_CONNECTIONS as usize)
    }
}

impl ConnTable for HostConnections {
    fn get(&mut self, key: &ConnKey) -> Option<&mut ConnState> {
        self.states.get_mut(&ConnId(*key))
    }

    fn put(&mut self, key: &ConnKey, state: &ConnState) {
        let key = ConnId(*key);
        if self.states.len() >= self.capacity && !self.states.contains_key(&key) {
            self.states.clear();
        }
        self.states.insert(key, *state);
    }

    fn watches_data(&self) -> bool {
        self.watch_data
    }
}

impl OpenConnections for HostConnections {
    fn open(&mut self, service: &ServiceKey) -> Opened {
        if self.open.len() >= self.services_capacity && !self.open.contains_key(service) {
            return Opened::default();
        }
        let value = self.open.entry(*service).or_default();
        let before = value.open.min(u64::from(u32::MAX)) as u32;
        value.open = value.open.saturating_add(1);
        let ended_down = if down_in_run(value.down) { value.down } else { 0 };
        value.down = down_after_accept(value.down);
        Opened { before: Some(before), ended_down }
    }

    fn close(&mut self, service: &ServiceKey) {
        if let Some(value) = self.open.get_mut(service) {
            value.open = value.open.saturating_sub(1);
        }
    }

    fn turn_away(&mut self, service: &ServiceKey, closes: bool) -> TurnAway {
        let now_ms = self.now_ms;
        let Some(value) = self.open.get_mut(service) else { return TurnAway::default() };
        if closes {
            value.open = value.open.saturating_sub(1);
        }
        let open = value.open.min(u64::from(u32::MAX)) as u32;
        if open != 0 {
            return TurnAway { open, down: 0 };
        }
        value.down = down_after_turnaway(value.down, now_ms);
        TurnAway { open, down: value.down }
    }

    fn open_now(&mut self, service: &ServiceKey) -> u32 {
        self.open.get(service).map_or(0, |value| value.open.min(u64::from(u32::MAX)) as u32)
    }
}

#[cfg(test)]
mod tests {
    use rst_common::wire::DownRun;

    use super::*;

    fn service(port: u16) -> ServiceKey {
        ServiceKey { port, ..ServiceKey::default() }
    }

    #[test]
    fn open_counts_never_go_below_zero_and_a_full_store_counts_no_new_service() {
        let mut host = HostConnections { services_capacity: 2, ..HostConnections::default() };
        host.close(&service(1));
        assert_eq!(host.open_now(&service(1)), 0, "a close of nothing counted");
        assert_eq!(host.open(&service(1)).before, Some(0));
        assert_eq!(host.open(&service(1)).before, Some(1));
        for _ in 0..3 {
            host.close(&service(1));
        }
        assert_eq!(host.open_now(&service(1)), 0, "three closes of two connections");
        assert_eq!(host.open(&service(1)).before, Some(0), "and the next accept finds none open");
        assert_eq!(host.open(&service(2)).before, Some(0));
        assert_eq!(host.open(&service(3)), Opened::default(), "no room for a third service");
        assert_eq!(host.open_now(&service(3)), 0);
        assert_eq!(host.turn_away(&service(3), false), TurnAway::default(), "nor a down word");
        assert_eq!(host.open(&service(2)).before, Some(1), "the services it holds still count");
    }

    #[test]
    fn a_down_run_begins_at_the_first_idle_turn_away_and_the_next_accept_ends_it() {
        let mut host = HostConnections::default();
        host.set_clock_ms(1_000);
        assert_eq!(host.turn_away(&service(1), false), TurnAway::default(), "never accepted: no run");
        host.open(&service(1));
        host.set_clock_ms(1_010);
        assert_eq!(host.turn_away(&service(1), false), TurnAway { open: 1, down: 0 }, "one open: no run");
        host.set_clock_ms(1_020);
        let first = host.turn_away(&service(1), true);
        assert_eq!((first.open, DownRun::of(first.down)), (0, DownRun { since_ms: 1_020, turnaways: 1 }));
        host.set_clock_ms(1_500);
        let second = host.turn_away(&service(1), false);
        assert_eq!(DownRun::of(second.down), DownRun { since_ms: 1_020, turnaways: 2 }, "the run keeps its start");
        assert!(second.down > first.down);
        let back = host.open(&service(1));
        assert_eq!(back, Opened { before: Some(0), ended_down: second.down });
        host.close(&service(1));
        host.set_clock_ms(2_000);
        let again = host.turn_away(&service(1), false);
        assert_eq!(DownRun::of(again.down), DownRun { since_ms: 2_000, turnaways: 1 }, "a new run after the accept");
        assert!(again.down > back.ended_down, "later runs have larger words");
        // Back and down again within the same ms: the new run starts 1 ms later, still ordered.
        let back = host.open(&service(1));
        host.close(&service(1));
        let quick = host.turn_away(&service(1), false);
        assert_eq!(DownRun::of(quick.down), DownRun { since_ms: 2_001, turnaways: 1 });
        assert!(quick.down > back.ended_down);
        assert_eq!(host.open(&service(1)).ended_down, quick.down, "an accept ends the run it was in");
        assert_eq!(host.open(&service(1)).ended_down, 0, "and the next one ends nothing");
    }
}

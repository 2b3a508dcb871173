//! Stable, bounded label sets for the per-resetter and per-service counters.
//!
//! A gauge refilled with each interval's top N forgets a resetter the moment it drops out, so
//! `rate()` across a fleet has nothing to work with. A counter needs a series that lives: here a
//! key gets one of `capacity` slots the first interval it shows up with room left, and keeps it
//! until it has been idle for `idle_after`; then its series is removed and the slot reused. At
//! most `capacity` series exist whatever the traffic (a scan fills the slots, which empty again
//! once it is over).

use std::{collections::HashMap, hash::Hash, time::Duration};

/// Keys holding a slot, each with the time it was last active.
#[derive(Debug)]
pub struct Slots<K> {
    capacity: usize,
    idle_after: Duration,
    /// Run time so far: the sum of the intervals seen.
    clock: Duration,
    held: HashMap<K, Duration>,
}

impl<K: Hash + Eq + Clone> Slots<K> {
    pub fn new(capacity: usize, idle_after: Duration) -> Self {
        Slots { capacity, idle_after, clock: Duration::ZERO, held: HashMap::with_capacity(capacity) }
    }

    /// Starts an interval of length `elapsed`: returns the keys whose slot was freed because they
    /// were idle for `idle_after` (the caller removes their series).
    pub fn tick(&mut self, elapsed: Duration) -> Vec<K> {
        self.clock += elapsed;
        let (clock, idle_after) = (self.clock, self.idle_after);
        let idle: Vec<K> =
            self.held.iter().filter(|(_, &last)| clock - last >= idle_after).map(|(key, _)| key.clone()).collect();
        for key in &idle {
            self.held.remove(key);
        }
        idle
    }

    /// Marks `key` active in this interval; false if it holds no slot and none is free. Offer
    /// the interval's keys in rank order: the largest get the free slots.
    pub fn admit(&mut self, key: &K) -> bool {
        if let Some(last) = self.held.get_mut(key) {
            *last = self.clock;
            return true;
        }
        if self.held.len() >= self.capacity {
            return false;
        }
        self.held.insert(key.clone(), self.clock);
        true
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn keys_keep_their_slot_while_active_and_no_more_than_capacity_get_one() {
        let mut slots = Slots::new(2, 10 * SECOND);
        slots.tick(SECOND);
        assert!(slots.admit(&"a"));
        assert!(slots.admit(&"b"));
        assert!(!slots.admit(&"c"), "both slots are taken");
        for _ in 0..9 {
            assert!(slots.tick(SECOND).is_empty(), "nobody idle for 10 s yet");
            assert!(slots.admit(&"a"), "an active key keeps its slot");
        }
        assert_eq!(slots.tick(SECOND), vec!["b"], "b idled out after 10 s");
        assert!(slots.admit(&"a"), "a was active 1 s ago");
        assert!(slots.admit(&"c"), "its slot went to the next key");
        assert!(!slots.admit(&"d"));
    }

    #[test]
    fn an_idle_key_is_returned_once_for_its_series_to_be_removed() {
        let mut slots = Slots::new(1, 3 * SECOND);
        slots.tick(SECOND);
        assert!(slots.admit(&7));
        assert!(slots.tick(SECOND).is_empty());
        assert!(slots.tick(SECOND).is_empty());
        assert_eq!(slots.tick(SECOND), vec![7]);
        assert!(slots.tick(SECOND).is_empty());
        assert!(slots.is_empty());
    }
}

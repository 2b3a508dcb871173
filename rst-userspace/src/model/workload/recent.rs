//! A map by cgroup id that forgets: each entry remembers when it was last used, on the run's
//! clock (the aggregator's elapsed time, so tests pass it in), those unused for longer than a
//! window can be dropped, and beyond a cap the least recently used one goes. Pure: no clock,
//! no filesystem.

use std::{collections::HashMap, time::Duration};

pub struct Recent<V> {
    entries: HashMap<u64, Entry<V>>,
    cap: usize,
}

struct Entry<V> {
    value: V,
    used: Duration,
}

impl<V> Recent<V> {
    /// Holds at most `cap` entries (at least one).
    pub fn new(cap: usize) -> Recent<V> {
        Recent { entries: HashMap::new(), cap: cap.max(1) }
    }

    /// The entry of `id`, not counted as a use: reports read names they already used.
    pub fn get(&self, id: u64) -> Option<&V> {
        self.entries.get(&id).map(|entry| &entry.value)
    }

    /// Marks `id` used at `now`; whether it is here.
    pub fn touch(&mut self, id: u64, now: Duration) -> bool {
        match self.entries.get_mut(&id) {
            Some(entry) => {
                entry.used = entry.used.max(now);
                true
            }
            None => false,
        }
    }

    /// Adds or replaces `id`, used at `now`. A new entry at the cap first evicts the least
    /// recently used one: a scan of the map, paid only when something new is named (which
    /// reads the filesystem anyway), never when a known id is used.
    pub fn insert(&mut self, id: u64, value: V, now: Duration) {
        if self.entries.len() >= self.cap && !self.entries.contains_key(&id) {
            let oldest = self.entries.iter().min_by_key(|(_, entry)| entry.used).map(|(id, _)| *id);
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(id, Entry { value, used: now });
    }

    /// Drops the entries not used for longer than `window` before `now`, in place.
    pub fn forget_unused(&mut self, now: Duration, window: Duration) {
        self.entries.retain(|_, entry| now.saturating_sub(entry.used) <= window);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn an_entry_unused_past_the_window_goes_and_a_used_one_stays() {
        let mut recent = Recent::new(10);
        recent.insert(1, "idle", at(0));
        recent.insert(2, "busy", at(0));
        recent.insert(3, "late", at(1800));
        assert!(recent.touch(2, at(3000)));
        assert!(!recent.touch(9, at(3000)), "nothing to touch");
        // Reading is not using: 1 stays idle.
        assert_eq!(recent.get(1), Some(&"idle"));
        recent.forget_unused(at(3600), HOUR);
        assert_eq!(recent.len(), 3, "exactly the window is still inside it");
        recent.forget_unused(at(3601), HOUR);
        assert_eq!((recent.get(1), recent.get(2), recent.get(3)), (None, Some(&"busy"), Some(&"late")));
        recent.forget_unused(at(5401), HOUR);
        assert_eq!((recent.get(2), recent.get(3)), (Some(&"busy"), None));
        // A touch never moves an entry back in time.
        assert!(recent.touch(2, at(10)));
        recent.forget_unused(at(6601), HOUR);
        assert!(recent.is_empty());
    }

    #[test]
    fn the_cap_holds_and_evicts_the_least_recently_used() {
        let mut recent = Recent::new(3);
        for id in 1..=3 {
            recent.insert(id, id * 10, at(id));
        }
        recent.touch(1, at(4));
        recent.insert(4, 40, at(5));
        assert_eq!(recent.len(), 3);
        assert_eq!(
            (recent.get(1), recent.get(2), recent.get(3), recent.get(4)),
            (Some(&10), None, Some(&30), Some(&40))
        );
        // Replacing a present id evicts nothing.
        recent.insert(3, 31, at(6));
        assert_eq!((recent.len(), recent.get(1), recent.get(3)), (3, Some(&10), Some(&31)));
        for id in 100..200 {
            recent.insert(id, id, at(id));
            assert!(recent.len() <= 3);
        }
        assert_eq!((recent.get(197), recent.get(198), recent.get(199)), (Some(&197), Some(&198), Some(&199)));
    }
}

//! Replay's per-connection activity table ([`Seen`] by connection), the lookup every TCP
//! segment of a replay makes.
//!
//! An open-addressed table of its own rather than a `HashMap`: one slot is one 64-byte line
//! holding the whole key and its value, so a lookup touches one line (a `HashMap` bucket of the
//! same pair took 80 bytes, often two lines, plus its control bytes), and the key is hashed once
//! per segment. Bounded like the other tables of replay: a full table is forgotten at once.

use std::hash::BuildHasher as _;

use rst_common::{wire::ConnKey, Activity};

/// What replay keeps of one connection's segments (see `Timings`). Laid out to fill a
/// [`Slot`] with its key: the data time as two words, so that nothing is 8-aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen {
    pub activity: Activity,
    /// Its latest data, ms, low and high word; [`NO_DATA`] when none was seen.
    last_data_ms: [u32; 2],
    /// A FIN (or an RST) of the connection may have been seen since the connection table last
    /// said it had none (see `Timings::segment`).
    pub unsettled: bool,
    /// The slot holding it is taken (a free slot's key is no key: zeros are a key like any other).
    used: bool,
}

/// No data seen: capture time in ms never reaches it (ns since 1970 over 10^6).
const NO_DATA: u64 = u64::MAX;

impl Seen {
    pub fn new(activity: Activity, unsettled: bool) -> Seen {
        Seen { activity, last_data_ms: [u32::MAX; 2], unsettled, used: true }
    }

    pub fn last_data_ms(&self) -> Option<u64> {
        let ms = u64::from(self.last_data_ms[0]) | u64::from(self.last_data_ms[1]) << 32;
        (ms != NO_DATA).then_some(ms)
    }

    pub fn set_last_data_ms(&mut self, ms: Option<u64>) {
        let ms = ms.unwrap_or(NO_DATA);
        self.last_data_ms = [ms as u32, (ms >> 32) as u32];
    }
}

/// One connection: key and value in one cache line.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Slot {
    key: ConnKey,
    seen: Seen,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 64);

const EMPTY: Slot = Slot {
    key: ConnKey { lo: [0; 16], hi: [0; 16], ifindex: 0, lo_port: 0, hi_port: 0, family: 0, _pad: [0; 3] },
    seen: Seen { activity: Activity { last: 0, pause: 0 }, last_data_ms: [u32::MAX; 2], unsettled: false, used: false },
};

/// Slots of a new table: 64 KiB, grown by doubling.
const FIRST_SLOTS: usize = 1 << 10;

/// A key's hash ([`ConnHasher::hash`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hash(u64);

/// The table's hash function with its per-run seeds: a copy hashes keys ahead of their lookup
/// (see `Replay::batch`) exactly as the table would.
#[derive(Clone, Copy, Debug)]
pub struct ConnHasher {
    /// Keyed per run: a capture made to collide would otherwise turn every lookup into a scan.
    seeds: [u64; 4],
}

/// Connections and what was seen of them, at most `capacity`; linear probing, at most half
/// full, so a probe rarely goes past the first line.
pub struct ActivityTable {
    slots: Vec<Slot>,
    len: usize,
    capacity: usize,
    hasher: ConnHasher,
}

impl std::fmt::Debug for ActivityTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActivityTable").field("len", &self.len).field("capacity", &self.capacity).finish()
    }
}

/// The 128-bit product's halves folded: foldhash's mixing step.
#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let product = u128::from(a) * u128::from(b);
    (product as u64) ^ ((product >> 64) as u64)
}

impl ConnHasher {
    /// Read in 4-byte words, as [`ConnKey`]s are built, and paired with words that are not
    /// their neighbours: a wider load of a key just built waits for its narrower stores
    /// (paired neighbours were merged into one).
    #[inline(always)]
    pub fn hash(&self, key: &ConnKey) -> Hash {
        let word = |bytes: &[u8], at: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&bytes[at..at + 4]);
            u64::from(u32::from_ne_bytes(w))
        };
        let [s0, s1, s2, s3] = self.seeds;
        let pair = |bytes: &[u8], first: usize| word(bytes, first) | word(bytes, first + 8) << 32;
        let ports = u64::from(key.ifindex) | u64::from(key.family) << 32;
        let tail = u64::from(key.lo_port)
            | u64::from(key.hi_port) << 16
            | u64::from_ne_bytes([0, 0, 0, 0, key._pad[0], key._pad[1], key._pad[2], 0]);
        let lo = fold(pair(&key.lo, 0) ^ s0, pair(&key.lo, 4) ^ s1);
        let hi = fold(pair(&key.hi, 0) ^ s2, pair(&key.hi, 4) ^ s3);
        let rest = fold(ports ^ s1, tail ^ s2);
        Hash(fold(lo ^ hi.rotate_left(23) ^ rest.rotate_left(47), s3))
    }
}

impl ActivityTable {
    /// A table that holds at most `capacity` connections (at least one).
    pub fn with_capacity(capacity: usize) -> ActivityTable {
        let state = std::collections::hash_map::RandomState::new();
        let hasher = ConnHasher { seeds: [0u64, 1, 2, 3].map(|i| state.hash_one(i) | 1) };
        ActivityTable { slots: vec![EMPTY; FIRST_SLOTS], len: 0, capacity: capacity.max(1), hasher }
    }

    /// Connections held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    /// The table's hash function, for keys hashed elsewhere.
    pub fn hasher(&self) -> ConnHasher {
        self.hasher
    }

    #[inline(always)]
    fn hash(&self, key: &ConnKey) -> Hash {
        self.hasher.hash(key)
    }

    /// Starts loading the line `hash`'s key would be looked up in first, for a lookup a few
    /// frames later: the table is beyond the nearest caches, and its line was the lookup's wait.
    #[inline(always)]
    pub fn prefetch(&self, hash: Hash) {
        super::prefetch::prefetch(&self.slots[self.home(hash)]);
    }

    #[inline(always)]
    fn home(&self, hash: Hash) -> usize {
        hash.0 as usize & (self.slots.len() - 1)
    }

    /// `key`'s value (its `hash` from [`ActivityTable::hash`]), and whether it was there: a new
    /// key gets `new`'s value, the table forgotten first when it holds `capacity` keys.
    ///
    /// Inlined whole: the caller has just built the key, word by word, and a lookup behind a
    /// call read it back from memory in wider loads than it was stored with, which waited for
    /// the stores (a third of the lookup's time).
    #[inline(always)]
    pub fn get_or_insert(&mut self, key: &ConnKey, hash: Hash, new: impl FnOnce() -> Seen) -> (&mut Seen, bool) {
        let at = self.find(key, hash);
        if self.slots[at].seen.used {
            return (&mut self.slots[at].seen, true);
        }
        (self.insert(at, key, hash, new()), false)
    }

    /// Puts a new `key` where [`ActivityTable::find`] left off (`at`).
    #[cold]
    #[inline(never)]
    fn insert(&mut self, mut at: usize, key: &ConnKey, hash: Hash, seen: Seen) -> &mut Seen {
        if self.len >= self.capacity {
            self.clear();
            at = self.find(key, hash);
        } else if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
            at = self.find(key, hash);
        }
        self.slots[at] = Slot { key: *key, seen: Seen { used: true, ..seen } };
        self.len += 1;
        &mut self.slots[at].seen
    }

    /// The value of `key`, if the table holds it.
    #[cfg(test)]
    fn get(&self, key: &ConnKey) -> Option<Seen> {
        let slot = &self.slots[self.find(key, self.hash(key))];
        slot.seen.used.then_some(slot.seen)
    }

    /// The slot holding `key`, or the free slot where it would go.
    #[inline(always)]
    fn find(&self, key: &ConnKey, hash: Hash) -> usize {
        let mask = self.slots.len() - 1;
        let mut at = self.home(hash);
        loop {
            let slot = &self.slots[at];
            if !slot.seen.used || slot.key == *key {
                return at;
            }
            at = (at + 1) & mask;
        }
    }

    fn clear(&mut self) {
        self.slots.fill(EMPTY);
        self.len = 0;
    }

    fn grow(&mut self) {
        let doubled = vec![EMPTY; self.slots.len() * 2];
        let old = std::mem::replace(&mut self.slots, doubled);
        for slot in old.into_iter().filter(|slot| slot.seen.used) {
            let at = self.find(&slot.key, self.hash(&slot.key));
            self.slots[at] = slot;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn key(i: u32) -> ConnKey {
        let mut key =
            ConnKey { ifindex: i % 3, lo_port: i as u16, hi_port: (i >> 16) as u16, family: 4, ..ConnKey::default() };
        key.lo[..4].copy_from_slice(&i.to_be_bytes());
        key.hi[12..].copy_from_slice(&(i / 7).to_le_bytes());
        key
    }

    fn seen(i: u32) -> Seen {
        let mut seen = Seen::new(Activity::begun(i), i.is_multiple_of(2));
        seen.set_last_data_ms((!i.is_multiple_of(3)).then_some(u64::from(i) << 20));
        seen
    }

    /// The table against a `HashMap` under the same rule: a new key when `capacity` are held
    /// empties the map first.
    #[test]
    fn behaves_as_a_hash_map_forgotten_when_full() {
        for capacity in [1, 5, 1000, 3000] {
            let mut table = ActivityTable::with_capacity(capacity);
            let mut model: HashMap<ConnKey, Seen> = HashMap::new();
            let mut clears = 0;
            let mut state = 0x2545_f491_4f6c_dd1du64;
            for step in 0..20_000u32 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                // Keys from a range a little wider than the largest capacity: hits, misses, clears.
                let k = key((state % 4000) as u32);
                let (value, found) = table.get_or_insert(&k, table.hash(&k), || seen(step));
                let expected_found = model.contains_key(&k);
                if !expected_found && model.len() >= capacity {
                    model.clear();
                    clears += 1;
                }
                let expected = model.entry(k).or_insert_with(|| seen(step));
                assert_eq!((*value, found), (*expected, expected_found), "capacity {capacity}, step {step}");
                // Change the value in place: the next lookup must see it.
                value.activity.touch(step);
                value.unsettled = !value.unsettled;
                expected.activity.touch(step);
                expected.unsettled = !expected.unsettled;
                assert_eq!(table.len(), model.len());
            }
            if capacity < 4000 {
                assert!(clears > 0, "capacity {capacity}: the table never filled");
            }
            for (k, v) in &model {
                assert_eq!(table.get(k), Some(*v));
            }
            assert_eq!(table.get(&key(1_000_000)), None);
        }
    }

    #[test]
    fn grows_past_its_first_slots_and_keeps_every_key() {
        let mut table = ActivityTable::with_capacity(1 << 20);
        let n = (FIRST_SLOTS * 4) as u32;
        for i in 0..n {
            let k = key(i);
            let (_, found) = table.get_or_insert(&k, table.hash(&k), || seen(i));
            assert!(!found);
        }
        assert_eq!(table.len(), n as usize);
        assert!(table.slots.len() >= 2 * n as usize, "at most half full");
        for i in 0..n {
            assert_eq!(table.get(&key(i)), Some(seen(i)), "{i}");
        }
    }

    #[test]
    fn keys_differing_in_any_field_are_apart_and_no_data_is_none() {
        let base = key(9);
        let mut others = vec![base];
        for at in 0..16 {
            let mut k = base;
            k.lo[at] ^= 1;
            others.push(k);
            let mut k = base;
            k.hi[at] ^= 1;
            others.push(k);
        }
        others.push(ConnKey { ifindex: base.ifindex + 1, ..base });
        others.push(ConnKey { lo_port: base.lo_port + 1, ..base });
        others.push(ConnKey { hi_port: base.hi_port + 1, ..base });
        others.push(ConnKey { family: 6, ..base });
        others.push(ConnKey::default());
        let mut table = ActivityTable::with_capacity(100);
        for (i, k) in others.iter().enumerate() {
            table.get_or_insert(k, table.hash(k), || seen(i as u32));
        }
        assert_eq!(table.len(), others.len());
        for (i, k) in others.iter().enumerate() {
            assert_eq!(table.get(k), Some(seen(i as u32)));
        }
        let mut fresh = Seen::new(Activity::begun(0), false);
        assert_eq!(fresh.last_data_ms(), None);
        fresh.set_last_data_ms(Some(u64::from(u32::MAX) + 5));
        assert_eq!(fresh.last_data_ms(), Some(u64::from(u32::MAX) + 5));
    }
}

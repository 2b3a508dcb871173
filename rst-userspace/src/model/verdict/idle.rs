//! The idle-timeout rule: established connections reset on their first use after an idle gap,
//! the gaps clustering near one value — what a balancer, firewall or NAT that forgets idle
//! connections leaves. A few resets after pauses of every length are not one timeout.

/// Resets whose idle gaps a service keeps (the first ones: a timeout shows in its first few).
pub(super) const MAX_IDLE_RESETS: usize = 256;
/// Connections whose gaps must cluster before a timeout is named: one late reset is not a
/// pattern.
pub const IDLE_MIN_CONNECTIONS: usize = 3;
/// The shortest gap that counts as idle: request/response pauses are shorter.
pub const IDLE_MIN_MS: u64 = 1_000;
/// How far from the median a gap may be and still be the same timeout (a device's timer
/// fires within a scan interval of its setting; the next use comes when the client decides).
pub const IDLE_SPREAD_PERCENT: u64 = 25;
/// The share of the idle gaps that must be the cluster's.
pub const IDLE_MIN_CLUSTER_PERCENT: u64 = 75;

/// The gaps of a service's idle-candidate resets, with what to take them from when they make
/// a timeout: `B` a bucket of the service's resets.
#[derive(Clone, Debug)]
pub(super) struct IdleResets<B> {
    /// (interval, gap ms, bucket, resets, connections) of the first resets with a gap.
    resets: Vec<(u64, u64, B, u64, u64)>,
}

impl<B> Default for IdleResets<B> {
    fn default() -> Self {
        IdleResets { resets: Vec::new() }
    }
}

/// A cluster: its median gap and the resets it takes, per bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Cluster<B> {
    pub idle_ms: u64,
    pub members: Vec<(B, u64, u64)>,
}

impl<B: Copy + PartialEq> IdleResets<B> {
    pub fn add(&mut self, interval: u64, gap_ms: u64, bucket: B, resets: u64, connections: u64) {
        if self.resets.len() < MAX_IDLE_RESETS {
            self.resets.push((interval, gap_ms, bucket, resets, connections));
        }
    }

    /// The timeout the gaps show, over the whole run or `only` one interval's resets (a cluster
    /// found in the run's gaps; the interval's members of it).
    pub fn cluster(&self, only: Option<u64>) -> Option<Cluster<B>> {
        let idle: Vec<&(u64, u64, B, u64, u64)> =
            self.resets.iter().filter(|(_, gap, ..)| *gap >= IDLE_MIN_MS).collect();
        let idle_ms = clustered_median(idle.iter().map(|(_, gap, ..)| *gap))?;
        let members = idle
            .into_iter()
            .filter(|(interval, gap, ..)| near(*gap, idle_ms) && only.is_none_or(|only| *interval == only))
            .map(|&(_, _, bucket, resets, connections)| (bucket, resets, connections))
            .collect::<Vec<_>>();
        (!members.is_empty()).then_some(Cluster { idle_ms, members })
    }
}

fn near(gap: u64, median: u64) -> bool {
    gap.abs_diff(median) * 100 <= median * IDLE_SPREAD_PERCENT
}

/// The median of `gaps` when at least [`IDLE_MIN_CONNECTIONS`] of them, and
/// [`IDLE_MIN_CLUSTER_PERCENT`] of all, lie within [`IDLE_SPREAD_PERCENT`] of it: then the median
/// of those.
pub fn clustered_median(gaps: impl Iterator<Item = u64>) -> Option<u64> {
    let mut gaps: Vec<u64> = gaps.collect();
    if gaps.len() < IDLE_MIN_CONNECTIONS {
        return None;
    }
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    let cluster: Vec<u64> = gaps.iter().copied().filter(|gap| near(*gap, median)).collect();
    let enough = cluster.len() >= IDLE_MIN_CONNECTIONS
        && cluster.len() as u64 * 100 >= gaps.len() as u64 * IDLE_MIN_CLUSTER_PERCENT;
    enough.then(|| cluster[cluster.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_near_one_value_cluster_and_others_do_not() {
        assert_eq!(clustered_median([350_000, 351_200, 349_000].into_iter()), Some(350_000));
        assert_eq!(clustered_median([350_000, 351_200].into_iter()), None, "two are not a pattern");
        assert_eq!(clustered_median([1_000, 3_000, 10_000, 30_000].into_iter()), None, "an order of magnitude");
        // One stray among many still leaves the timeout; two of five do not.
        assert_eq!(clustered_median([4_000, 4_100, 3_900, 4_050, 60_000].into_iter()), Some(4_050));
        assert_eq!(clustered_median([4_000, 4_100, 3_900, 60_000, 90_000].into_iter()), None);
        // The edges: 25 % off the median is in, more is out.
        assert_eq!(clustered_median([4_000, 5_000, 3_000].into_iter()), Some(4_000));
        assert_eq!(clustered_median([4_000, 5_001, 2_999].into_iter()), None);
    }

    #[test]
    fn only_idle_gaps_count_and_an_interval_takes_its_own_members() {
        let mut resets = IdleResets::default();
        for (interval, gap) in [(1, 200), (1, 300), (2, 5_000), (2, 5_100), (3, 4_900), (3, 80)] {
            resets.add(interval, gap, 'a', 1, 1);
        }
        let whole = resets.cluster(None).expect("three idle gaps near 5 s");
        assert_eq!(whole.idle_ms, 5_000);
        assert_eq!(whole.members.len(), 3, "short pauses are not idle and stay out");
        let third = resets.cluster(Some(3)).expect("the interval's member");
        assert_eq!(third.members, [('a', 1, 1)]);
        assert_eq!(resets.cluster(Some(1)), None);
        let mut single = IdleResets::default();
        single.add(1, 350_000, 'a', 1, 1);
        assert_eq!(single.cluster(None), None, "a single late reset is not a cluster");
    }
}

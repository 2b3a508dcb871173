//! The health-check rule: one client opening and resetting connections to a service right
//! after the handshake, at a steady pace.

use std::net::IpAddr;

use super::{evidence::Tally, Finding, ServiceAddr, Verdict};

/// A client's resets of one service right after the handshake: the intervals they fell in.
#[derive(Clone, Debug, Default)]
pub(super) struct CheckPattern {
    pub resets: u64,
    pub connections: u64,
    /// (interval, connections) of the latest intervals with any, oldest first.
    recent: Vec<(u64, u64)>,
    pub latest: Tally,
}

/// Intervals of a client–service pair remembered to judge the pace of its checks.
const CHECK_HISTORY: usize = 32;
/// Connections a client must open and reset before its pattern can be a health check.
const MIN_CHECKS: u64 = 3;

impl CheckPattern {
    /// `tally`: resets right after the handshake in `interval`.
    pub fn add(&mut self, interval: u64, tally: Tally) {
        self.resets += tally.resets;
        self.connections += tally.connections;
        self.latest.add(tally);
        match self.recent.last_mut() {
            Some((seen, connections)) if *seen == interval => *connections += tally.connections,
            _ => {
                if self.recent.len() == CHECK_HISTORY {
                    self.recent.remove(0);
                }
                self.recent.push((interval, tally.connections));
            }
        }
    }
}

/// A health check: at least [`MIN_CHECKS`] connections opened and reset right after the
/// handshake at a steady pace — every interval about as many, or one every so many intervals.
pub(super) fn health_check(
    client: IpAddr,
    service: ServiceAddr,
    pattern: &CheckPattern,
    tally: Tally,
) -> Option<Verdict> {
    if pattern.connections < MIN_CHECKS || !steady(&pattern.recent) {
        return None;
    }
    Some(Verdict::new(Finding::HealthCheck { client }, service, tally.counts()))
}

/// Whether checks at `recent` (interval, connections) come at a steady pace.
fn steady(recent: &[(u64, u64)]) -> bool {
    let (Some(&(first, _)), Some(&(last, _))) = (recent.first(), recent.last()) else { return false };
    let span = last - first + 1;
    let total: u64 = recent.iter().map(|&(_, n)| n).sum();
    if total >= span {
        // At least one check an interval: every interval of the span has some, none far off
        // the mean (an interval's edge may split a pair of checks). The first and last
        // intervals may be cut short (the checks began, or the run ended, inside them): only
        // too many there speaks against a steady pace.
        let mean = total as f64 / span as f64;
        let last_index = recent.len() - 1;
        return recent.len() as u64 == span
            && recent.iter().enumerate().all(|(i, &(_, n))| {
                let edge = i == 0 || i == last_index;
                (edge || n as f64 >= mean / 2.0) && n as f64 <= mean * 1.5 + 1.0
            });
    }
    // Slower than one an interval: one (or two, split by an edge) at a time, the gaps alike.
    if recent.len() < 3 || recent.iter().any(|&(_, n)| n > 2) {
        return false;
    }
    let mut gaps: Vec<u64> = recent.windows(2).map(|w| w[1].0 - w[0].0).collect();
    gaps.sort_unstable();
    let median = gaps[gaps.len() / 2];
    gaps.iter().all(|&gap| gap.abs_diff(median) <= 1)
}

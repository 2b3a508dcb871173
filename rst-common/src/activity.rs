//! A connection's pauses: how long it had been quiet before a reset.
//!
//! One rule for every vantage that times a connection's segments: replay (capture timestamps,
//! ms) and the programs that time every connection (`--idle-gaps`, jiffies) keep an
//! [`Activity`] per connection and ask it for the pause before each RST. A host's own sockets
//! need neither: the reset tracepoints read the sockets' own times.

use crate::parse::{TCP_RST, TCP_SYN};

/// When a connection was last active and the silence that activity ended, in one clock's ticks
/// (any unit; wrapping `u32`). Differences of 2^31 ticks or more read as none: a clock that
/// moved back (two CPUs stamping out of order, captures out of order) is not a pause; the
/// longest pause this holds is 2^31 − 1 ticks (24 days in ms, 99 days in jiffies at HZ=250).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// When the connection's latest segment was seen.
    pub last: u32,
    /// The silence before that segment: ticks since the one before it.
    pub pause: u32,
}

impl Activity {
    /// A connection first seen at `now`: no pause yet.
    #[inline(always)]
    pub fn begun(now: u32) -> Activity {
        Activity { last: now, pause: 0 }
    }

    /// A segment at `now`.
    #[inline(always)]
    pub fn touch(&mut self, now: u32) {
        self.pause = since(now, self.last);
        self.last = now;
    }

    /// The pause before an RST at `now`: the longer of the silence before the segment it
    /// answers (the first use after the pause, seen just before it) and the silence up to it
    /// (when that segment was not seen, or nothing broke the silence: a local abort).
    #[inline(always)]
    pub fn pause_before(&self, now: u32) -> u32 {
        let quiet = since(now, self.last);
        if quiet > self.pause {
            quiet
        } else {
            self.pause
        }
    }

    /// What one segment with TCP `flags` at `now` does to the connection's activity: a SYN or
    /// SYN+ACK begins it (a new connection on the 4-tuple: an earlier one's silence is not its
    /// own); an RST returns the pause before it, then counts as activity; anything else counts.
    #[inline(always)]
    pub fn segment(&mut self, flags: u8, now: u32) -> Option<u32> {
        if flags & TCP_RST != 0 {
            let pause = self.pause_before(now);
            self.touch(now);
            return Some(pause);
        }
        if flags & TCP_SYN != 0 {
            *self = Activity::begun(now);
        } else {
            self.touch(now);
        }
        None
    }
}

/// Ticks from `then` to `now`, 0 when `now` is (by wrapping) before `then`.
#[inline(always)]
fn since(now: u32, then: u32) -> u32 {
    let ticks = now.wrapping_sub(then);
    if ticks > i32::MAX as u32 {
        0
    } else {
        ticks
    }
}

wire_sizes!(Activity: 8);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::{TCP_ACK, TCP_FIN};

    #[test]
    fn the_pause_before_a_reset_is_the_silence_its_answered_segment_ended() {
        let mut activity = Activity::begun(1_000);
        assert_eq!(activity.segment(TCP_ACK, 1_010), None);
        // 350 s of silence, then the client's request, then the balancer's reset 1 ms later.
        assert_eq!(activity.segment(TCP_ACK, 351_010), None);
        assert_eq!(activity.segment(TCP_RST, 351_011), Some(350_000));
        // The reset counts as activity: a second reset right after it had no pause of its own
        // beyond the one its predecessor ended.
        assert_eq!(activity.segment(TCP_RST | TCP_ACK, 351_012), Some(1));
    }

    #[test]
    fn the_silence_up_to_a_reset_counts_when_nothing_broke_it() {
        let mut activity = Activity::begun(0);
        activity.segment(TCP_ACK, 10);
        assert_eq!(activity.segment(TCP_RST, 5_010), Some(5_000));
    }

    #[test]
    fn a_syn_begins_a_new_connection_without_the_old_ones_silence() {
        let mut activity = Activity::begun(0);
        activity.segment(TCP_ACK, 10);
        activity.segment(TCP_FIN | TCP_ACK, 20);
        assert_eq!(activity.segment(TCP_SYN, 90_000), None);
        assert_eq!(activity.segment(TCP_RST | TCP_ACK, 90_001), Some(1));
        let mut answered = Activity::begun(0);
        assert_eq!(answered.segment(TCP_SYN | TCP_ACK, 90_000), None);
        assert_eq!(answered, Activity::begun(90_000));
    }

    #[test]
    fn a_clock_that_wraps_still_measures_and_one_that_moved_back_is_no_pause() {
        let mut activity = Activity::begun(u32::MAX - 5);
        assert_eq!(activity.segment(TCP_RST, 4), Some(10));
        let mut reordered = Activity::begun(1_000);
        reordered.segment(TCP_ACK, 2_000);
        // Stamped by another CPU (or a capture's out-of-order timestamp) before `last`.
        assert_eq!(reordered.segment(TCP_RST, 1_999), Some(1_000));
        let mut backwards = Activity::begun(1_000);
        assert_eq!(backwards.segment(TCP_RST, 999), Some(0));
    }
}

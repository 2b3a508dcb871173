//! The counters: what the kernel keeps per CPU ([`TrafficCounters`], [`ResetCounters`]) and
//! what userspace reports per period ([`Counters`]).

/// Per-CPU, cumulative counts of everything the programs see (map `TRAFFIC`, one slot per
/// direction). Kept apart from the per-epoch reset counts so the path non-RST frames take never
/// reads the epoch. Each frame lands in exactly one field — one add per frame on the path
/// all traffic takes — and the frame count is their sum ([`TrafficCounters::frames`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub not_tcp: u64,
    pub tcp: u64,
    pub malformed: u64,
    pub fragments: u64,
}

impl TrafficCounters {
    /// Every frame counted (wrapping, like the counters).
    pub fn frames(&self) -> u64 {
        let TrafficCounters { not_tcp, tcp, malformed, fragments } = *self;
        not_tcp.wrapping_add(tcp).wrapping_add(malformed).wrapping_add(fragments)
    }
}

/// Per-CPU reset counts of one epoch (map `RESET_COUNTERS`, indexed by epoch). `overflow`
/// counts the resets that found no room in the flow table (they are in `resets` too);
/// `source_overflow` those of them that found no room in the overflow-source table either.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResetCounters {
    pub resets: u64,
    pub overflow: u64,
    pub source_overflow: u64,
    /// Handshake segments whose service found no room in the service table.
    pub service_overflow: u64,
    /// Kernel reset events that found no room in the stack-reset table.
    pub stack_overflow: u64,
    /// Of `resets`, those this host sent (TC egress).
    pub tx_resets: u64,
    /// Flow-table writes that passed a slot another CPU was filling (see
    /// [`crate::table::Added::Raced`]): while 0, every flow sits in one slot at most.
    pub table_races: u64,
    /// Entries of this CPU's run of `EVICTION_LOG` for this epoch in use (see [`LoggedFlow`]).
    pub logged: u64,
}

/// What userspace reports for a period: traffic deltas plus that period's reset counts.
/// Each frame lands in at most one of `tcp`, `malformed`, `fragments`; RSTs are TCP segments.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub frames: u64,
    pub tcp: u64,
    pub resets: u64,
    pub malformed: u64,
    pub fragments: u64,
    pub overflow: u64,
    pub source_overflow: u64,
    pub service_overflow: u64,
    pub stack_overflow: u64,
    /// Of `frames`, `tcp` and `resets`: what this host sent (TC egress).
    pub tx_frames: u64,
    pub tx_tcp: u64,
    pub tx_resets: u64,
}

/// `accumulate`, `since` and `sum`, field by field and wrapping (kernel counters never reset
/// but may wrap), for a struct of u64 counters. The field list is destructured
/// exhaustively, so a field added to the struct but not to the list is a compile error rather
/// than a count silently dropped.
macro_rules! field_wise {
    ($counters:ident: $($field:ident),+) => {
        impl $counters {
            /// Adds `other` field by field (wrapping).
            pub fn accumulate(&mut self, other: &$counters) {
                let $counters { $($field),+ } = *other;
                $(self.$field = self.$field.wrapping_add($field);)+
            }

            /// `self - earlier`, field by field (wrapping).
            pub fn since(&self, earlier: &$counters) -> $counters {
                let $counters { $($field),+ } = *earlier;
                $counters { $($field: self.$field.wrapping_sub($field)),+ }
            }

            /// The field-wise sum of `parts` (a per-CPU map value's CPUs, say).
            pub fn sum<'a>(parts: impl IntoIterator<Item = &'a $counters>) -> $counters {
                let mut total = $counters::default();
                for part in parts {
                    total.accumulate(part);
                }
                total
            }
        }
    };
}

field_wise!(TrafficCounters: not_tcp, tcp, malformed, fragments);
field_wise!(ResetCounters: resets, overflow, source_overflow, service_overflow, stack_overflow, tx_resets, table_races, logged);
field_wise!(Counters: frames, tcp, resets, malformed, fragments, overflow, source_overflow, service_overflow,
    stack_overflow, tx_frames, tx_tcp, tx_resets);

impl Counters {
    /// A period's report from the kernel's shapes: `traffic` (both directions) and `sent`, the
    /// period's traffic deltas, and `resets`, the epoch's reset counters summed over the CPUs.
    pub fn of_period(traffic: &TrafficCounters, sent: &TrafficCounters, resets: &ResetCounters) -> Counters {
        let TrafficCounters { not_tcp: _, tcp, malformed, fragments } = *traffic;
        let ResetCounters {
            resets,
            overflow,
            source_overflow,
            service_overflow,
            stack_overflow,
            tx_resets,
            // Reported beside the counters (`collector::Sample::table_races`), not in them.
            table_races: _,
            // Per CPU by nature: the drain reads each CPU's before the sum.
            logged: _,
        } = *resets;
        Counters {
            frames: traffic.frames(),
            tcp,
            resets,
            malformed,
            fragments,
            overflow,
            source_overflow,
            service_overflow,
            stack_overflow,
            tx_frames: sent.frames(),
            tx_tcp: sent.tcp,
            tx_resets,
        }
    }
}

impl crate::parse::FrameCounters for TrafficCounters {
    #[inline(always)]
    fn not_tcp(&mut self) {
        self.not_tcp += 1;
    }
    #[inline(always)]
    fn tcp(&mut self) {
        self.tcp += 1;
    }
    #[inline(always)]
    fn malformed(&mut self) {
        self.malformed += 1;
    }
    #[inline(always)]
    fn fragment(&mut self) {
        self.fragments += 1;
    }
}

impl crate::parse::FrameCounters for Counters {
    fn not_tcp(&mut self) {
        self.frames += 1;
    }
    fn tcp(&mut self) {
        self.frames += 1;
        self.tcp += 1;
    }
    fn malformed(&mut self) {
        self.frames += 1;
        self.malformed += 1;
    }
    fn fragment(&mut self) {
        self.frames += 1;
        self.fragments += 1;
    }
}

wire_sizes!(Counters: 96, TrafficCounters: 32, ResetCounters: 64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_differences_are_field_wise_and_wrap() {
        let a = ResetCounters { resets: 1, overflow: 2, table_races: 3, logged: u64::MAX, ..Default::default() };
        let b = ResetCounters { resets: 10, tx_resets: 4, logged: 2, ..Default::default() };
        let total = ResetCounters::sum([&a, &b]);
        assert_eq!(
            total,
            ResetCounters { resets: 11, overflow: 2, tx_resets: 4, table_races: 3, logged: 1, ..Default::default() }
        );
        assert_eq!(total.since(&b), a);
    }

    #[test]
    fn a_period_takes_every_reset_counter_it_reports() {
        let traffic = TrafficCounters { not_tcp: 1, tcp: 2, malformed: 3, fragments: 4 };
        let sent = TrafficCounters { not_tcp: 0, tcp: 5, malformed: 0, fragments: 1 };
        let resets = ResetCounters {
            resets: 6,
            overflow: 7,
            source_overflow: 8,
            service_overflow: 9,
            stack_overflow: 10,
            tx_resets: 11,
            table_races: 12,
            logged: 13,
        };
        let expected = Counters {
            frames: 10,
            tcp: 2,
            resets: 6,
            malformed: 3,
            fragments: 4,
            overflow: 7,
            source_overflow: 8,
            service_overflow: 9,
            stack_overflow: 10,
            tx_frames: 6,
            tx_tcp: 5,
            tx_resets: 11,
        };
        assert_eq!(Counters::of_period(&traffic, &sent, &resets), expected);
    }
}

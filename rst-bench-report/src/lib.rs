//! The results `rstwatch-bench` prints (one JSON object per subcommand, `"part"` naming it) and
//! `cargo xtask bench` turns into BENCHMARKS.md's tables, typed on both sides.
//!
//! Times are `f64`: medians of kernel-reported or wall-clock durations. A median of nothing is
//! NaN, which JSON cannot hold: it is written as `null` and read back as NaN ([`float`]).

use serde::{Deserialize, Serialize};

/// What one subcommand printed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "part", rename_all = "lowercase")]
pub enum Report {
    Kernel(KernelReport),
    Gen(GenReport),
    Pkt(PktReport),
    Drain(DrainReport),
    Latency(LatencyReport),
}

/// Which counting programs the object loaded (see `rstwatch::load::Counting`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CountingMode {
    PerCpu,
    Atomic,
}

/// Part 1: cost per packet of the counting programs over the empty ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelReport {
    pub trials: usize,
    pub repeat: u32,
    pub singles: u32,
    pub max_flows: u32,
    pub counting: CountingMode,
    /// The budget per frame at 10 Gb/s with 64-byte frames.
    pub budget_ns: f64,
    pub lines: Vec<KernelLine>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelLine {
    pub name: String,
    pub method: String,
    #[serde(with = "float")]
    pub prog_ns: f64,
    #[serde(with = "float")]
    pub baseline_ns: f64,
    #[serde(with = "float")]
    pub over_empty_ns: f64,
    #[serde(with = "float")]
    pub budget_share: f64,
    pub trial_deltas_ns: Vec<f64>,
}

/// One flow's count of frames the peer received: `(src, sport, dst, dport, frames)`, the
/// addresses as rstwatch's JSON prints them.
pub type FlowCount = (String, u16, String, u16, u64);

/// Part 2: one run of the live-frames flood generator.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenReport {
    pub iface: String,
    pub ifindex: u32,
    pub flows: u32,
    pub repeat: u32,
    pub calls: u64,
    pub sent: u64,
    /// What the peer's full ring refused before any hook saw it.
    pub dropped_by_veth: u64,
    pub delivered: u64,
    pub elapsed_s: f64,
    #[serde(with = "float")]
    pub wall_rate_pps: f64,
    #[serde(with = "float")]
    pub kernel_ns_per_frame: f64,
    #[serde(with = "float")]
    pub kernel_rate_pps: f64,
    pub frame_bytes: usize,
    /// Per flow, what arrived (with `--list 1`).
    pub expected: Option<Vec<FlowCount>>,
}

/// The paced AF_PACKET flood of many distinct flows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PktReport {
    pub flows: u32,
    pub sent: u64,
    pub elapsed_s: f64,
    #[serde(with = "float")]
    pub rate_pps: f64,
}

/// Part 3: the userspace read cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrainReport {
    pub trials: usize,
    #[serde(with = "float")]
    pub grace_period_ms: f64,
    #[serde(with = "float")]
    pub empty_collect_ms: f64,
    #[serde(with = "float")]
    pub cache_read_ms: f64,
    #[serde(with = "float")]
    pub cache_clear_ms: f64,
    pub rows: Vec<DrainRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrainRow {
    pub flows: u32,
    #[serde(with = "float")]
    pub collect_ms: f64,
    #[serde(with = "float")]
    pub ns_per_entry: f64,
    #[serde(with = "float")]
    pub ns_per_entry_over_empty: f64,
    #[serde(with = "float")]
    pub fill_ms: f64,
    #[serde(with = "float")]
    pub scan_ms: f64,
    #[serde(with = "float")]
    pub scan_ns_per_entry: f64,
    pub with_full_logs_entries: f64,
    #[serde(with = "float")]
    pub with_full_logs_collect_ms: f64,
    #[serde(with = "float")]
    pub with_full_logs_ns_per_entry: f64,
}

/// The price of a dependent cache-line read in tables of a few sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyReport {
    pub rows: Vec<LatencyRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LatencyRow {
    pub mib: usize,
    pub ns_per_dependent_read: f64,
}

/// The median, NaN for no values.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.into_iter().collect();
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// An `f64` that may be NaN: `null` in JSON, as serde_json writes a non-finite float.
pub mod float {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(*value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_no_values() {
        assert_eq!(median([3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median([]).is_nan());
    }

    #[test]
    fn a_report_names_its_part_and_survives_a_nan() {
        let report = Report::Pkt(PktReport { flows: 3, sent: 10, elapsed_s: 1.0, rate_pps: f64::NAN });
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(text, r#"{"part":"pkt","flows":3,"sent":10,"elapsed_s":1.0,"rate_pps":null}"#);
        let back: PktReport = serde_json::from_str(&text).unwrap();
        assert!(back.rate_pps.is_nan() && back.sent == 10);
        let tagged: Report = serde_json::from_str(&text).unwrap();
        assert!(matches!(tagged, Report::Pkt(PktReport { flows: 3, .. })));
    }
}

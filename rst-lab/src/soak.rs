//! The soak behind `cargo xtask soak` and the short soak of the reliability suite: floods rstwatch
//! with RSTs for minutes, reusing the flood lab and its live-frames generator (`bench gen`: a
//! two-instruction XDP_TX program under `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`), in
//! rounds that each move to a new set of flows (churn), and checks every interval rstwatch
//! reports: flows plus overflow equal the kernel's total, intervals neither skipped nor late by
//! more than one interval, and rstwatch's resident memory flat after warm-up.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _, Result};
use serde_json::{json, Value};

use crate::flood as bench;

#[derive(Clone, Debug)]
pub struct SoakOptions {
    pub duration: Duration,
    /// rstwatch's `--interval`.
    pub interval: Duration,
    /// Flows per round; each round uses a new set.
    pub flows: u32,
    /// Frames per live test run (one flow per run).
    pub repeat: u32,
    /// Length of a round.
    pub round: Duration,
    /// Memory samples before this are warm-up.
    pub warmup: Duration,
    /// Alongside: a paced AF_PACKET flood (`bench pkt`) cycling through this many flows, one
    /// frame each in turn, so every interval sees tens of thousands of flows it never saw before.
    pub churn_flows: u32,
    /// Its frames per second (0: no churn flood).
    pub churn_rate: u32,
    /// Extra arguments for rstwatch (e.g. a small `--max-flows` to force overflow).
    pub rstwatch_args: Vec<String>,
}

impl SoakOptions {
    pub fn minutes(minutes: f64) -> SoakOptions {
        SoakOptions {
            duration: Duration::from_secs_f64(minutes * 60.0),
            interval: Duration::from_secs(1),
            flows: 4096,
            repeat: 4096,
            round: Duration::from_secs(10),
            warmup: Duration::from_secs(5),
            churn_flows: 200_000,
            churn_rate: 50_000,
            rstwatch_args: Vec::new(),
        }
    }
}

/// What the interval checks found.
#[derive(Clone, Debug, Default)]
pub struct IntervalCheck {
    pub intervals: usize,
    /// Intervals whose `flow_resets + totals.overflow != totals.resets`.
    pub sum_mismatches: Vec<u64>,
    /// Largest gap between consecutive interval timestamps, minus the interval (seconds).
    pub max_lateness_s: f64,
    /// Gaps longer than two intervals (an interval skipped or late by more than one).
    pub late: Vec<(u64, f64)>,
    /// Sequence numbers not following on from the previous one.
    pub seq_gaps: usize,
    pub resets: u64,
    pub overflow: u64,
    pub frames: u64,
    pub max_flows_seen: u64,
    pub max_rate: f64,
}

impl IntervalCheck {
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.sum_mismatches.is_empty() {
            out.push(format!("flow_resets + overflow != resets in intervals {:?}", self.sum_mismatches));
        }
        if !self.late.is_empty() {
            out.push(format!("intervals late by more than one interval (seq, gap s): {:?}", self.late));
        }
        if self.seq_gaps > 0 {
            out.push(format!("{} gaps in interval sequence numbers", self.seq_gaps));
        }
        out
    }
}

/// Checks rstwatch's `{"type":"interval"}` records.
pub fn check_intervals(intervals: &[Value], interval: Duration) -> Result<IntervalCheck> {
    let mut check = IntervalCheck { intervals: intervals.len(), ..IntervalCheck::default() };
    let interval_s = interval.as_secs_f64();
    let mut previous: Option<(u64, f64)> = None;
    for record in intervals {
        let seq = record["seq"].as_u64().context("interval without seq")?;
        let totals = &record["totals"];
        let resets = totals["resets"].as_u64().context("no totals.resets")?;
        let overflow = totals["overflow"].as_u64().context("no totals.overflow")?;
        let flow_resets = record["flow_resets"].as_u64().context("no flow_resets")?;
        if flow_resets + overflow != resets {
            check.sum_mismatches.push(seq);
        }
        check.resets += resets;
        check.overflow += overflow;
        check.frames += totals["frames"].as_u64().unwrap_or(0);
        check.max_flows_seen = check.max_flows_seen.max(record["flows_seen"].as_u64().unwrap_or(0));
        check.max_rate = check.max_rate.max(record["rate"].as_f64().unwrap_or(0.0));
        let time = record["time"].as_str().context("no time")?;
        let at = rfc3339_seconds(time).with_context(|| format!("unreadable time {time:?}"))?;
        if let Some((prev_seq, prev_at)) = previous {
            if seq != prev_seq + 1 {
                check.seq_gaps += 1;
            }
            let gap = at - prev_at;
            check.max_lateness_s = check.max_lateness_s.max(gap - interval_s);
            if gap > 2.0 * interval_s {
                check.late.push((seq, gap));
            }
        }
        previous = Some((seq, at));
    }
    Ok(check)
}

/// Seconds since the Unix epoch of `YYYY-MM-DDTHH:MM:SS[.fff]Z` (what rstwatch prints).
pub fn rfc3339_seconds(text: &str) -> Option<f64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?);
    let s: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + s)
}

#[derive(Debug)]
pub struct SoakReport {
    pub options: SoakOptions,
    pub elapsed: Duration,
    pub sent: u64,
    /// Of which the churn flood's.
    pub churn_sent: u64,
    pub rounds: u32,
    pub distinct_flows: u64,
    pub check: IntervalCheck,
    pub summary_resets: u64,
    /// (seconds since start, VmRSS KiB).
    pub rss: Vec<(f64, u64)>,
    pub rss_after_warmup: (u64, u64),
    pub rss_max_after_warmup: u64,
    pub vm_hwm_kb: u64,
}

impl SoakReport {
    /// RSS growth allowed (or 10 %, whichever is larger): the allocator settling, not a leak.
    /// Under the whole suite running in parallel, a 20 s run was seen settling by +2.8 MiB in
    /// its second half; the leak this guards against (an unbounded flow map) grows by ≈ 15 MiB
    /// in 10 s at the test's churn, and the 10-minute soak shows no growth at all.
    pub const RSS_SLACK_KB: u64 = 6 * 1024;

    pub fn problems(&self) -> Vec<String> {
        let mut out = self.check.problems();
        let expected_intervals = (self.elapsed.as_secs_f64() / self.options.interval.as_secs_f64()) as usize;
        if self.check.intervals + 2 < expected_intervals {
            out.push(format!(
                "{} intervals reported in {:.0?}, expected about {expected_intervals}",
                self.check.intervals, self.elapsed
            ));
        }
        // Flat: the last stretch of the run sits no higher than the first stretch after the
        // warm-up. Single samples swing with each interval's drain buffers (tens of thousands of
        // flows), so stretches are compared by their medians.
        let (first, last) = self.rss_medians();
        let allowed = first + (first / 10).max(Self::RSS_SLACK_KB);
        if last > allowed {
            out.push(format!("rstwatch's RSS grew: median {first} KiB after warm-up, {last} KiB at the end"));
        }
        if self.summary_resets != self.check.resets {
            out.push(format!(
                "the summary's resets ({}) differ from the intervals' sum ({})",
                self.summary_resets, self.check.resets
            ));
        }
        if self.sent == 0 || self.check.resets == 0 {
            out.push("nothing was sent or counted".into());
        }
        out
    }

    /// Medians of VmRSS over the first and the last fifth of the samples after warm-up (KiB).
    pub fn rss_medians(&self) -> (u64, u64) {
        let warm: Vec<u64> =
            self.rss.iter().filter(|(t, _)| *t >= self.options.warmup.as_secs_f64()).map(|(_, kb)| *kb).collect();
        if warm.is_empty() {
            return (0, 0);
        }
        let stretch = (warm.len() / 5).max(1);
        let median = |part: &[u64]| {
            let mut part = part.to_vec();
            part.sort_unstable();
            part[part.len() / 2]
        };
        (median(&warm[..stretch]), median(&warm[warm.len() - stretch..]))
    }

    pub fn to_json(&self) -> Value {
        let (rss_first, rss_last) = self.rss_medians();
        json!({
            "minutes": self.elapsed.as_secs_f64() / 60.0,
            "interval_s": self.options.interval.as_secs_f64(),
            "flows_per_round": self.options.flows,
            "repeat": self.options.repeat,
            "rounds": self.rounds,
            "distinct_flows": self.distinct_flows,
            "sent": self.sent,
            "churn_sent": self.churn_sent,
            "churn_flows": self.options.churn_flows,
            "churn_rate_target_pps": self.options.churn_rate,
            "counted_resets": self.check.resets,
            "counted_frames": self.check.frames,
            "overflow": self.check.overflow,
            "mean_rate_pps": self.check.resets as f64 / self.elapsed.as_secs_f64(),
            "max_interval_rate_pps": self.check.max_rate,
            "max_flows_in_an_interval": self.check.max_flows_seen,
            "intervals": self.check.intervals,
            "sum_mismatches": self.check.sum_mismatches.len(),
            "late_intervals": self.check.late.len(),
            "max_lateness_ms": self.check.max_lateness_s * 1e3,
            "rss_kb_after_warmup": self.rss_after_warmup.0,
            "rss_kb_end": self.rss_after_warmup.1,
            "rss_kb_max_after_warmup": self.rss_max_after_warmup,
            "rss_kb_median_first_fifth": rss_first,
            "rss_kb_median_last_fifth": rss_last,
            "rss_kb_every_10s": self.rss.iter().step_by(10).map(|(_, kb)| *kb).collect::<Vec<_>>(),
            "vm_hwm_kb": self.vm_hwm_kb,
            "problems": self.problems(),
        })
    }
}

/// Floods rstwatch for `options.duration` and checks what it reported.
pub fn soak(options: &SoakOptions) -> Result<SoakReport> {
    crate::signal::install()?;
    bench::build_bench()?;
    let lab = bench::FloodLab::new()?;
    let mut args = vec!["--interval".to_owned(), format!("{}ms", options.interval.as_millis())];
    args.extend(options.rstwatch_args.iter().cloned());
    let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = bench::start_rstwatch(&lab, &arg_refs)?;
    let pid = proc.id();
    let started = Instant::now();

    // Memory, once a second, on a thread of its own.
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (stop, samples) = (Arc::clone(&stop), Arc::clone(&samples));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if let (Ok(kb), Ok(mut s)) = (bench::status_kb(pid, "VmRSS"), samples.lock()) {
                    s.push((started.elapsed().as_secs_f64(), kb));
                }
                thread::sleep(Duration::from_secs(1));
            }
        })
    };

    let churn = if options.churn_rate > 0 {
        let mut pkt = lab.gen.exec(bench::bench_bin());
        pkt.args(["pkt", "--iface", &lab.gen_if.name, "--flows", &options.churn_flows.to_string()]).args([
            "--rate",
            &options.churn_rate.to_string(),
            "--seconds",
            &format!("{:.3}", options.duration.as_secs_f64()),
        ]);
        Some(crate::lab::Proc::spawn(&mut pkt)?)
    } else {
        None
    };
    let mut sent = 0u64;
    let mut rounds = 0u32;
    let mut outcome = Ok(());
    while started.elapsed() < options.duration && !crate::signal::stop_requested() {
        let left = options.duration.saturating_sub(started.elapsed());
        let seconds = left.min(options.round).as_secs_f64().max(0.5);
        let gen = bench::GenPlan {
            flows: options.flows,
            // A new set of flows every round: the churn.
            first: rounds * options.flows,
            repeat: options.repeat,
            length: bench::GenLength::Seconds(seconds),
        }
        .args(&lab.gen_if.name);
        match bench::bench_report::<rst_bench_report::GenReport>(Some(&lab.gen), &gen) {
            Ok(result) => {
                sent += result.sent;
                rounds += 1;
            }
            Err(error) => {
                outcome = Err(error);
                break;
            }
        }
        if proc_exited(pid) {
            outcome = Err(anyhow::anyhow!("rstwatch exited during the soak: {}", proc.stderr().trim()));
            break;
        }
    }
    let mut churn_sent = 0;
    if let Some(churn) = churn {
        let result = churn.finish(Duration::from_secs(60)).and_then(|fin| {
            ensure!(fin.status.success(), "the churn flood failed ({}): {}", fin.status, fin.stderr.trim());
            let v: Value = serde_json::from_str(fin.stdout.trim()).context("bench pkt printed no JSON")?;
            Ok(v["sent"].as_u64().unwrap_or(0))
        });
        match result {
            Ok(n) => churn_sent = n,
            Err(error) if outcome.is_ok() => outcome = Err(error),
            Err(_) => {}
        }
    }
    let elapsed = started.elapsed();
    // Let the last interval see the end of the flood.
    thread::sleep(options.interval + Duration::from_millis(200));
    let vm_hwm_kb = bench::vm_hwm_kb(pid).unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let output = bench::stop_rstwatch(proc);
    outcome?;
    let output = output?;
    let check = check_intervals(&output.intervals, options.interval)?;
    let rss = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let warm: Vec<u64> = rss.iter().filter(|(t, _)| *t >= options.warmup.as_secs_f64()).map(|(_, kb)| *kb).collect();
    ensure!(!warm.is_empty(), "no memory sample after the warm-up");
    Ok(SoakReport {
        options: options.clone(),
        elapsed,
        sent: sent + churn_sent,
        churn_sent,
        rounds,
        distinct_flows: u64::from(rounds) * u64::from(options.flows) + u64::from(options.churn_flows),
        summary_resets: output.summary["totals"]["resets"].as_u64().unwrap_or(0),
        check,
        rss_after_warmup: (warm[0], warm[warm.len() - 1]),
        rss_max_after_warmup: warm.iter().copied().max().unwrap_or(0),
        rss,
        vm_hwm_kb,
    })
}

fn proc_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // State is the field after the parenthesised command name; Z is a zombie.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_sizes_are_read_by_field_name() {
        let pid = std::process::id();
        let rss = bench::status_kb(pid, "VmRSS").unwrap();
        let hwm = bench::vm_hwm_kb(pid).unwrap();
        assert!(rss > 0 && hwm >= rss, "VmRSS {rss} kB, VmHWM {hwm} kB");
        // A prefix of a real field is not that field.
        assert!(bench::status_kb(pid, "VmRS").is_err());
    }

    #[test]
    fn rfc3339_times_parse() {
        assert_eq!(rfc3339_seconds("1970-01-01T00:00:00.000Z"), Some(0.0));
        assert_eq!(rfc3339_seconds("2000-03-01T00:00:01.500Z"), Some(951_868_801.5));
        assert_eq!(rfc3339_seconds("nonsense"), None);
    }

    #[test]
    fn interval_checks_catch_sums_and_lateness() {
        let record = |seq: u64, time: &str, resets: u64, flow_resets: u64, overflow: u64| {
            json!({"type":"interval","seq":seq,"time":time,"flow_resets":flow_resets,
                   "totals":{"resets":resets,"overflow":overflow,"frames":resets}})
        };
        let good = [record(1, "2026-01-01T00:00:01.000Z", 10, 7, 3), record(2, "2026-01-01T00:00:02.010Z", 5, 5, 0)];
        let check = check_intervals(&good, Duration::from_secs(1)).unwrap();
        assert!(check.problems().is_empty(), "{:?}", check.problems());
        let bad = [record(1, "2026-01-01T00:00:01.000Z", 10, 7, 0), record(3, "2026-01-01T00:00:04.000Z", 5, 5, 0)];
        let check = check_intervals(&bad, Duration::from_secs(1)).unwrap();
        assert_eq!(check.problems().len(), 3, "{:?}", check.problems());
    }
}

//! What one cache line read costs when it depends on the one before: the price of a random slot
//! in a table of that size, beside the flow table's sizes.

use std::time::Instant;

use rst_bench_report::{LatencyReport, LatencyRow};

/// What one cache line read costs when it depends on the one before (a pointer chase over a
/// random cycle of 64-byte lines): the price of a random slot in a table of that size.
pub fn memory_latency(sizes: &[usize]) -> anyhow::Result<LatencyReport> {
    const LINE_WORDS: usize = 8;
    let mut rows = Vec::new();
    for &mib in sizes {
        let lines = (mib << 20) / 64;
        anyhow::ensure!(lines > 1, "--mib must be positive");
        // A random cyclic order of the lines (Sattolo's shuffle: one cycle through all).
        let mut order: Vec<usize> = (0..lines).collect();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for i in (1..lines).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            order.swap(i, (state % i as u64) as usize);
        }
        let mut next = vec![0usize; lines * LINE_WORDS];
        for i in 0..lines {
            next[order[i] * LINE_WORDS] = order[(i + 1) % lines] * LINE_WORDS;
        }
        let steps = 2_000_000usize;
        let mut at = 0usize;
        let started = Instant::now();
        for _ in 0..steps {
            at = next[at];
        }
        let ns = started.elapsed().as_nanos() as f64 / steps as f64;
        std::hint::black_box(at);
        rows.push(LatencyRow { mib, ns_per_dependent_read: ns });
    }
    Ok(LatencyReport { rows })
}

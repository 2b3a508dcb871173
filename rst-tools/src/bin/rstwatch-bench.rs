//! Kernel-side measurements for `cargo xtask bench` (see [`rst_tools::bench`]); every
//! subcommand prints one JSON object on stdout.
//!
//! ```text
//! cargo build --release -p rst-tools --bin rstwatch-bench
//! target/release/rstwatch-bench kernel  [--trials 7] [--repeat 2000000] [--singles 20000] [--max-flows N] [--lines ACK,new flow]
//!                                       [--counting auto|per-cpu|atomic]
//! target/release/rstwatch-bench gen     --iface IF --flows K [--repeat R] [--passes P] [--seconds S] [--rate FPS]
//! target/release/rstwatch-bench pkt     --iface IF --flows K --rate PPS --seconds S
//! target/release/rstwatch-bench hold    --iface IF [--program rstwatch_xdp_pass]
//! target/release/rstwatch-bench drain   [--flows 1000,100000,1000000] [--trials 5]
//! target/release/rstwatch-bench latency [--mib 1,4,16,64]
//! ```

use clap::{Parser, Subcommand};
use rst_bench_report::Report;
use rst_tools::bench::{drain, flood, kernel, latency};

#[derive(Parser)]
#[command(name = "rstwatch-bench", about = "rstwatch's kernel-side measurements, one JSON object per run")]
struct Args {
    #[command(subcommand)]
    part: Part,
}

#[derive(Subcommand)]
enum Part {
    /// Cost per packet of the counting programs over the empty ones (BPF_PROG_TEST_RUN).
    Kernel(kernel::KernelArgs),
    /// The live-frames XDP_TX flood generator, out of one end of a veth.
    Gen(flood::GenArgs),
    /// A paced AF_PACKET flood of many distinct flows.
    Pkt(flood::PktArgs),
    /// Attaches one of the object's XDP programs until killed.
    Hold(flood::HoldArgs),
    /// The userspace read: collect() over tables of N flows.
    Drain {
        /// Table fills to time (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1000,100000,1000000")]
        flows: Vec<u32>,
        #[arg(long, default_value_t = 5)]
        trials: usize,
    },
    /// The price of a dependent cache-line read in tables of these sizes.
    Latency {
        /// Table sizes in MiB (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
        mib: Vec<usize>,
    },
}

fn main() -> anyhow::Result<()> {
    let report = match Args::parse().part {
        Part::Kernel(args) => Report::Kernel(kernel::kernel(&args)?),
        Part::Gen(args) => Report::Gen(flood::generate(&args)?),
        Part::Pkt(args) => Report::Pkt(flood::packet_flood(&args)?),
        Part::Hold(args) => return flood::hold(&args),
        Part::Drain { flows, trials } => Report::Drain(drain::drain(&flows, trials)?),
        Part::Latency { mib } => Report::Latency(latency::memory_latency(&mib)?),
    };
    // Through a `Value`, whose keys are sorted: the same text the bench always printed.
    println!("{}", serde_json::to_value(&report)?);
    Ok(())
}

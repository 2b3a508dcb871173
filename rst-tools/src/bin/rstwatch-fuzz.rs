//! Differential fuzzing of rstwatch's header walk (see [`rst_tools::fuzz`]): the real XDP object
//! under `BPF_PROG_TEST_RUN` and rst-common's walk on the host against a reference parser.
//!
//! ```sh
//! cargo run --release -p rst-tools --bin rstwatch-fuzz -- --frames 10000000 [--seed N] [--json]
//! ```
//! (`cargo xtask fuzz` runs exactly that.) Needs root (CAP_BPF + CAP_PERFMON). Exits non-zero
//! if anything disagreed.

use std::{path::PathBuf, process::ExitCode, sync::atomic::Ordering};

use anyhow::bail;
use clap::Parser;
use rst_tools::fuzz::{self, Config, AH_ZERO_AS_8_BYTES, MAX_FLOWS};

#[derive(Parser)]
#[command(name = "rstwatch-fuzz", about = "Differential fuzzing of rstwatch's header walk")]
struct Args {
    /// Frames to generate.
    #[arg(long, default_value_t = 10_000_000)]
    frames: u64,
    /// Seed of the generators.
    #[arg(long, default_value_t = 0x7257_6174_6368)]
    seed: u64,
    /// Frames between collects (below the harness's flow table size).
    #[arg(long, default_value_t = 32_768)]
    batch: usize,
    /// Write every disagreement there, one file per frame, in the format of tests/regressions.
    #[arg(long, value_name = "DIR")]
    findings: Option<PathBuf>,
    /// Print the summary as one line.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// Walk an AH with Payload Len 0 as 8 bytes, as rstwatch once did (to look past that finding).
    #[arg(long)]
    ah_zero_as_8_bytes: bool,
}

fn main() -> ExitCode {
    match fuzz_main(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("fuzz: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn fuzz_main(args: Args) -> anyhow::Result<bool> {
    if args.batch == 0 || args.batch as u64 >= u64::from(MAX_FLOWS) {
        bail!("--batch must be between 1 and {}", MAX_FLOWS - 1);
    }
    AH_ZERO_AS_8_BYTES.store(args.ah_zero_as_8_bytes, Ordering::Relaxed);
    let config = Config {
        frames: args.frames,
        seed: args.seed,
        batch: args.batch,
        capture_dirs: Config::default_capture_dirs(),
        max_disagreements: 100,
        progress: !args.quiet,
    };
    let report = fuzz::run(&config)?;
    for d in &report.disagreements {
        eprintln!("DISAGREEMENT {}", d.describe());
    }
    if let Some(dir) = &args.findings {
        std::fs::create_dir_all(dir)?;
        for (i, d) in report.disagreements.iter().enumerate() {
            let path = dir.join(format!("seed{}-{i:03}.hex", config.seed));
            std::fs::write(&path, d.regression_file())?;
        }
    }
    // Through a `Value`, whose keys are sorted: the same text the fuzzer always printed.
    let summary = serde_json::to_value(report.summary(&config))?;
    if args.json {
        println!("{summary}");
    } else {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(report.disagreement_count == 0)
}

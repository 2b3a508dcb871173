//! Developer and CI tasks for rstwatch: toolchain setup, builds, lint, the test runner, the demo,
//! the bench, fuzz and soak. The labs, the traffic generator and the flood lab they drive live in
//! rst-lab; the end-to-end suites in rst-e2e.
//!
//! Everything here shells out to the same tools a person would use (`rustup`, `cargo`, `apt-get`,
//! `ip`), so a failure message names a command that can be re-run by hand.

pub mod bench;
pub mod bench_capture;
pub mod bench_replay;
pub mod bench_top;
pub mod build;
pub mod cli;
pub mod demo;
pub mod image;
pub mod lint;
pub mod reliability;
pub mod setup;
pub mod testrun;

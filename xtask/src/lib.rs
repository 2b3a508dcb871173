//! Developer and CI tasks for rstwatch: toolchain setup, builds, the network-namespace lab, the
//! Rust traffic generator that drives it, the demo and the test runner.
//!
//! Everything here shells out to the same tools a person would use (`rustup`, `cargo`, `apt-get`,
//! `ip`), so a failure message names a command that can be re-run by hand.

pub mod bench;
pub mod bench_capture;
pub mod bench_top;
pub mod build;
pub mod cli;
pub mod cmd;
pub mod demo;
pub mod diag_lab;
pub mod lab;
pub mod lint;
pub mod reliability;
pub mod setup;
pub mod signal;
pub mod testrun;
pub mod traffic;
pub mod verdict_lab;

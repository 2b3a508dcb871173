//! The namespace labs, the Rust traffic generator and the flood lab that `cargo xtask demo`,
//! `cargo xtask bench`, `cargo xtask soak` and the end-to-end suites (crate rst-e2e) share, and
//! the test tiers' skip rule (`skip`, `require!`).
//!
//! Everything here shells out to the same tools a person would use (`ip`, `nft`, `tcpdump`,
//! `cargo`), so a failure message names a command that can be re-run by hand.

pub mod cmd;
pub mod diag_lab;
pub mod flood;
pub mod lab;
pub mod paths;
pub mod signal;
pub mod skip;
pub mod soak;
pub mod traffic;
pub mod traffic_cli;
pub mod verdict_lab;

pub use skip::Need;

//! rstwatch's userspace: load the eBPF object, attach it, read its maps, report.
//!
//! The modules follow the data: [`loader`] (object → kernel → interfaces), [`collector`] (maps →
//! one exact [`collector::Sample`] per interval), [`report`] (samples → table or JSON Lines).

pub mod collector;
pub mod connections;
pub mod flow_table;
pub mod kernel_events;
pub mod loader;
pub mod logsink;
pub mod metrics;
pub mod netlink;
pub mod replay;
pub mod report;
pub mod sys;
pub mod testrun;
pub mod tui;

/// The batch commands' old path, for code written against it.
pub use sys::map_batch as batch;

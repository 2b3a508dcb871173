//! rstwatch's userspace: load the eBPF object, attach it, read its maps, report.
//!
//! The modules follow the data: [`loader`] (object → kernel → interfaces), [`collector`] (maps →
//! one exact [`collector::Sample`] per interval), [`aggregate`] (samples → the run's typed
//! model), and the model's readers: [`output`] (table or JSON Lines), [`metrics`], [`tui`].

pub mod aggregate;
pub mod capture;
pub mod cli;
pub mod collector;
pub mod connections;
pub mod flow_table;
pub mod kernel_events;
pub mod live;
pub mod loader;
pub mod logsink;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod output;
pub mod payloads;
pub mod replay;
pub mod sys;
pub mod testrun;
pub mod tracefs;
pub mod tui;
pub mod verdict;
pub mod view;
pub mod watch;
pub mod workload;

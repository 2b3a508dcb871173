//! rstwatch's userspace: load the eBPF object, attach it, read its maps, report.
//!
//! The folders follow the data: [`load`] (object → kernel → interfaces, the raw syscalls under
//! [`sys`]), [`collect`] (maps → one exact [`collect::Sample`] per interval), [`model`] (samples
//! → the run's typed model: aggregate, verdict, workload), and the model's readers under
//! [`output`] (table, JSON Lines, metrics, `top`'s view, capture). [`cmd`] holds the commands
//! (watch, top, replay) that drive them; [`cli`] their options. Every module's error folds into
//! [`Error`].

pub use error::{Error, Result};

pub mod availability;
pub mod cli;
pub mod cmd;
pub mod collect;
pub mod error;
pub mod load;
pub mod logsink;
pub mod model;
pub mod output;
pub mod sys;

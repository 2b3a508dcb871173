//! Types and code shared by the kernel programs and everything on the host.
//!
//! The header walk in [`parse`] is the only packet parser in rstwatch: the XDP program, host
//! unit tests, fuzzers and offline replay all run it over their own [`Cursor`]. It is `no_std`,
//! allocation-free and written for the BPF verifier: every offset is bounded and every loop has
//! a fixed trip count.
#![no_std]

pub mod cursor;
pub mod diagnose;
pub mod parse;
pub mod services;
pub mod table;
pub mod wire;

pub use cursor::{Cursor, Header};
pub use diagnose::{track, ConnTable, Tracked};
pub use parse::{
    count, inspect, inspect_from, inspect_with, walk, walk_from, FrameCounters, Observation, Segment, TcpEvent, Walk,
};
pub use services::{service_counts, OpenConnections, ServiceChange, ServiceEvent};
pub use wire::{Counters, FlowKey, FlowValue};

#[cfg(feature = "user")]
mod user;

//! Types and code shared by the kernel programs and everything on the host.
//!
//! The header walk in [`parse`] is the only packet parser in rstwatch: the XDP program, host
//! unit tests, fuzzers and offline replay all run it over their own [`Cursor`]. It is `no_std`,
//! allocation-free and written for the BPF verifier: every offset is bounded and every loop has
//! a fixed trip count.
#![no_std]

/// Fails the build when a struct the kernel and the host share is not the size both sides were
/// written for: `wire_sizes!(FlowKey: 48, ConnKey: 44)`.
macro_rules! wire_sizes {
    ($($ty:ty: $bytes:literal),+ $(,)?) => {
        const _: () = {
            $(assert!(
                core::mem::size_of::<$ty>() == $bytes,
                concat!(stringify!($ty), " is not ", stringify!($bytes), " bytes, the size the other side expects")
            );)+
        };
    };
}

pub mod activity;
pub mod cause;
pub mod cursor;
pub mod diagnose;
pub mod parse;
pub mod services;
pub mod table;
pub mod wire;

pub use activity::Activity;
pub use cause::Cause;
pub use cursor::{Cursor, Header};
pub use diagnose::{track, track_data, ConnTable, Tracked};
pub use parse::{
    count, inspect, inspect_from, inspect_from_tunnels, inspect_tunnels, inspect_with, walk, walk_from, walk_with,
    Encap, FrameCounters, Observation, Segment, TcpEvent, Tunnels, Walk,
};
pub use services::{service_counts, OpenConnections, Opened, ServiceChange, ServiceEvent, TurnAway};
pub use wire::{Counters, FlowKey, FlowValue};

#[cfg(feature = "user")]
mod user;

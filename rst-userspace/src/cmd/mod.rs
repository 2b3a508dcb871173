//! The commands: [`watch`] (the default: a table or JSON Lines each interval), [`top`] (the live
//! terminal view, [`crate::output::tui`]) — both driven by [`live`]'s session — and [`replay`]
//! (capture files through the same walk, tracker and aggregator).

pub mod live;
pub mod replay;
pub mod top;
pub mod watch;

//! `cargo xtask`: see `xtask::cli` for the commands.
use std::process::ExitCode;

fn main() -> ExitCode {
    xtask::cli::main()
}

//! The nightly that builds the eBPF object, read from `rust-toolchain.toml` beside this file. The
//! one reader of that file: rst-userspace's build script builds the object with it and xtask
//! (`setup`, `lint`) installs it and runs its clippy, both through `#[path]` to this file; the
//! Dockerfile lets rustup read the file itself.

/// `rust-toolchain.toml`, as built in.
pub const FILE: &str = include_str!("rust-toolchain.toml");

/// The file's `channel = "..."` (the file is ours: one quoted value per line).
pub fn channel() -> Option<&'static str> {
    FILE.lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .find_map(|rest| rest.trim_start().strip_prefix('=')?.trim().strip_prefix('"')?.split('"').next())
}

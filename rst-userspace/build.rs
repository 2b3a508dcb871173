use anyhow::Context as _;
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../rst-ebpf");
    // The nightly is named once, in the eBPF crate's toolchain file; `cargo xtask setup` installs it.
    let toolchain_file = format!("{ebpf_dir}/rust-toolchain.toml");
    println!("cargo:rerun-if-changed={toolchain_file}");
    let toolchain_text =
        std::fs::read_to_string(&toolchain_file).with_context(|| format!("reading {toolchain_file}"))?;
    let toolchain = toolchain_text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("channel"))
        .find_map(|rest| rest.trim_start().strip_prefix('=')?.trim().strip_prefix('"')?.split('"').next())
        .with_context(|| format!("{toolchain_file} names no channel"))?;
    // The object also embeds rst-common's header walk.
    println!("cargo:rerun-if-changed={}", concat!(env!("CARGO_MANIFEST_DIR"), "/../rst-common/src"));
    aya_build::build_ebpf(
        [Package { name: "rst-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        Toolchain::Custom(toolchain),
    )
    .context("building the eBPF object (run `cargo xtask setup` if the toolchain is missing)")
}

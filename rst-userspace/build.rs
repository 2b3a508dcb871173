use anyhow::Context as _;
use aya_build::{Package, Toolchain};

// The nightly is named once, in the eBPF crate's toolchain file, and read once, here and in xtask.
#[path = "../rst-ebpf/toolchain.rs"]
mod toolchain;

fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../rst-ebpf");
    let toolchain_file = format!("{ebpf_dir}/rust-toolchain.toml");
    println!("cargo:rerun-if-changed={toolchain_file}");
    let toolchain = toolchain::channel().with_context(|| format!("{toolchain_file} names no channel"))?;
    // The object also embeds rst-common's header walk.
    println!("cargo:rerun-if-changed={}", concat!(env!("CARGO_MANIFEST_DIR"), "/../rst-common/src"));
    aya_build::build_ebpf(
        [Package { name: "rst-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        Toolchain::Custom(toolchain),
    )
    .context("building the eBPF object (run `cargo xtask setup` if the toolchain is missing)")
}

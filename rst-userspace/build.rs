use anyhow::Context as _;
use aya_build::{Package, Toolchain};

/// The nightly that builds the eBPF object; `cargo xtask setup` installs exactly this one.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let ebpf_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../rst-ebpf");
    // The object also embeds rst-common's header walk.
    println!("cargo:rerun-if-changed={}", concat!(env!("CARGO_MANIFEST_DIR"), "/../rst-common/src"));
    aya_build::build_ebpf(
        [Package { name: "rst-ebpf", root_dir: ebpf_dir, ..Default::default() }],
        Toolchain::Custom(EBPF_TOOLCHAIN),
    )
    .context("building the eBPF object (run `cargo xtask setup` if the toolchain is missing)")
}

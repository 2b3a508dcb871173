//! rstwatch's measuring and fuzzing tools, as libraries for their binaries and tests:
//! [`bench`] (`rstwatch-bench`, driven by `cargo xtask bench`) and [`fuzz`] (`rstwatch-fuzz`,
//! `cargo xtask fuzz`, and the quick slice in rst-userspace's `tests/fuzz.rs`). Both run the
//! real eBPF object through `rstwatch::load::testrun::Harness`.

pub mod bench;
pub mod fuzz;

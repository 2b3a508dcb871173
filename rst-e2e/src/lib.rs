//! The end-to-end suites live in `tests/`; this crate holds nothing else but the `rst-traffic`
//! binary they run (`src/bin/rst-traffic.rs`). Their labs, generator and skip rule are rst-lab's.

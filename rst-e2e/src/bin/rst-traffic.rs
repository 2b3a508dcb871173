//! `rst-traffic`: the lab's traffic generator between two existing namespaces, its account as
//! JSON (`rst_lab::traffic_cli`). The suites run it as `CARGO_BIN_EXE_rst-traffic`.
use std::process::ExitCode;

fn main() -> ExitCode {
    rst_lab::traffic_cli::main()
}

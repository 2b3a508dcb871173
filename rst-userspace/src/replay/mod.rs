//! `rstwatch replay`: the same report from capture files, computed by the same classifier.

use std::path::PathBuf;

use crate::report::ReportOptions;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// pcap or pcapng files, read in order.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub report: ReportOptions,
}

pub fn run(args: &ReplayArgs) -> anyhow::Result<()> {
    anyhow::bail!("replay of {} file(s) is not built yet", args.files.len())
}

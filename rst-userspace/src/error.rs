//! The crate's error: each module's error folds into it, as aya's `EbpfError` folds its own, so a
//! caller of the library handles one type and `{:#}` prints the whole chain. The commands add
//! their context on top with `anyhow`.

/// Any error the library's steps return: loading and attaching, collecting, starting the
/// capture, naming workloads, reading a capture file.
/// The large ones (aya's program and map errors inside) are boxed, so a `Result` stays small.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Load(Box<crate::load::Error>),
    #[error(transparent)]
    Collect(Box<crate::collect::Error>),
    #[error(transparent)]
    Sys(#[from] crate::sys::Error),
    #[error(transparent)]
    Capture(Box<crate::output::capture::Error>),
    #[error(transparent)]
    CaptureFiles(#[from] crate::output::capture::files::Error),
    #[error(transparent)]
    Workload(#[from] crate::model::workload::Error),
    #[error(transparent)]
    Replay(#[from] crate::cmd::replay::capture::CaptureError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

macro_rules! boxed_from {
    ($($variant:ident: $source:ty),+ $(,)?) => {$(
        impl From<$source> for Error {
            fn from(error: $source) -> Error {
                Error::$variant(Box::new(error))
            }
        }
    )+};
}

boxed_from!(Load: crate::load::Error, Collect: crate::collect::Error, Capture: crate::output::capture::Error);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_error_folds_in_and_keeps_its_chain() {
        let missing = crate::load::Error::MissingProgram("rstwatch_xdp".into());
        let error: Error = missing.into();
        assert!(matches!(&error, Error::Load(load) if matches!(**load, crate::load::Error::MissingProgram(_))));
        assert_eq!(format!("{:#}", anyhow::Error::from(error)), "the eBPF object has no program rstwatch_xdp");
        let mapping = crate::collect::Error::Table {
            what: "mapping the eviction log",
            source: crate::collect::flow_table::Error::ParseCpus("x".into()),
        };
        let chain = format!("{:#}", anyhow::Error::from(Error::from(mapping)));
        assert_eq!(chain, "mapping the eviction log: /sys/devices/system/cpu/possible: cannot parse \"x\"");
    }
}

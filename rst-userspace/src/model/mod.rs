//! The run's typed model: [`aggregate`] folds each interval's sample into flows, sources,
//! services and totals; [`verdict`] names each service's cause from the same records;
//! [`workload`] names the process, unit, pod or container behind a reset; [`kernel_reason`]
//! keeps the kernel's reasons as codes, named when printed.

pub mod aggregate;
pub mod kernel_reason;
pub mod verdict;
pub mod workload;

//! What a report ranks: the one list of views shared by `--by` and `rstwatch top`.

/// What the table ranks. The JSON summary always holds every view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum View {
    /// Resetters: the addresses that send RSTs.
    #[default]
    Src,
    /// The addresses RSTs are sent to.
    Dst,
    /// Server address and port: attempts, accepted handshakes, resets, refusals.
    Service,
    /// Single flows.
    Flow,
    /// Local workloads (cgroup: service, pod, container): resets their sockets sent and received.
    Workload,
}

impl View {
    pub const ALL: [View; 5] = [View::Src, View::Dst, View::Service, View::Flow, View::Workload];

    pub const fn name(self) -> &'static str {
        match self {
            View::Src => "src",
            View::Dst => "dst",
            View::Service => "service",
            View::Flow => "flow",
            View::Workload => "workload",
        }
    }
}

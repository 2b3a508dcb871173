//! Why a service's connections are reset: the `cause` names of rstwatch's verdicts, a contract
//! of its JSON and metrics. Defined once, here, for rstwatch's evidence rules and for the lab
//! that makes each cause happen; a new cause is added to this list.

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Cause {
    /// The service's host answers SYNs with RST+ACK and never accepted one in the run.
    NoListener,
    /// The service accepted connections, then refused (or stopped answering) new ones while
    /// it held none open.
    WentDown,
    /// The service turns attempts away only while it holds at least a number of connections open.
    ConnectionLimit,
    /// A side that had the connection answers a segment of it as a host that does not know
    /// it: an RST without ACK mid-stream (restart, failover without state, a NAT timeout).
    StateLost,
    /// The RST's TTL is not the one its claimed sender's own packets arrive with.
    Middlebox,
    /// A stateful abort after data: RST+ACK in the window (SO_LINGER 0, close with unread data).
    AppAbort,
    /// One client opens and resets connections right after the handshake, at a steady pace.
    HealthCheck,
    /// Resets that end a connection already being closed: after the peer's FIN, or answering
    /// the late segments (ACKs, FINs, keep-alive probes) of a connection the resetter had
    /// closed itself. How TLS stacks, browsers and SSH end connections every day.
    Teardown,
    /// One client probing many ports or hosts, almost all refused or unanswered, few or none
    /// completed.
    Scan,
    /// Something forgets idle connections and resets them on their next use (a balancer's or
    /// firewall's idle timeout, an expired conntrack entry): resets of established connections
    /// after idle gaps that cluster near one value.
    IdleTimeout,
    /// A side closed an idle keep-alive connection (FIN) as its peer reused it: the peer's
    /// request met the closed side's RST.
    KeepaliveRace,
    /// A NAT lost a connection's translation: replies reach the client untranslated, from an
    /// address it never talked to, and its kernel resets them.
    NatLost,
    /// A listener's accept queue is full and the kernel resets what overflows it
    /// (`net.ipv4.tcp_abort_on_overflow=1`).
    ListenOverflow,
    /// This host's firewall (nftables / iptables `reject with tcp reset`) answered, not its TCP
    /// stack.
    LocalFirewall,
}

impl Cause {
    pub const ALL: [Cause; 14] = [
        Cause::NoListener,
        Cause::WentDown,
        Cause::ConnectionLimit,
        Cause::StateLost,
        Cause::Middlebox,
        Cause::AppAbort,
        Cause::HealthCheck,
        Cause::Teardown,
        Cause::Scan,
        Cause::IdleTimeout,
        Cause::KeepaliveRace,
        Cause::NatLost,
        Cause::ListenOverflow,
        Cause::LocalFirewall,
    ];

    /// The contract's name: the `cause` value in JSON and in metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Cause::NoListener => "no_listener",
            Cause::WentDown => "went_down",
            Cause::ConnectionLimit => "connection_limit",
            Cause::StateLost => "state_lost",
            Cause::Middlebox => "middlebox",
            Cause::AppAbort => "app_abort",
            Cause::HealthCheck => "health_check",
            Cause::Teardown => "teardown",
            Cause::Scan => "scan",
            Cause::IdleTimeout => "idle_timeout",
            Cause::KeepaliveRace => "keepalive_race",
            Cause::NatLost => "nat_lost",
            Cause::ListenOverflow => "listen_overflow",
            Cause::LocalFirewall => "local_firewall",
        }
    }

    /// Resets that are part of normal operation: kept out of the headline and the other causes.
    pub const fn benign(self) -> bool {
        matches!(self, Cause::HealthCheck | Cause::Teardown)
    }
}

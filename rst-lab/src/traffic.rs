//! Traffic that makes real Linux TCP stacks send resets, with an exact account of every reset.
//!
//! Both ends are ordinary kernel sockets: the client side is created on a thread that entered the
//! client namespace, each listener on a thread that entered the server namespace (setns(2)
//! switches only the calling thread, and a socket stays in the namespace it was created in).
//!
//! Exactness rests on never leaving a race to the kernel: every client waits until it has seen
//! the outcome it is accounted for (a refusal, a reset, the balancer's greeting, the server's
//! FIN), every server handler reports what it saw, and listeners are closed only after every
//! connection that reached them is finished, since closing a listener resets whatever is still
//! in its accept queue.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    io::{self, Read as _, Write as _},
    mem::MaybeUninit,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd as _,
    str::FromStr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, ensure, Context as _, Result};
use serde_json::{json, Value};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::lab::Netns;

/// Generous: on a veth every exchange takes microseconds, but CI machines stall.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The balancer's greeting to a connection it keeps.
const WELCOME: &[u8] = b"+";

/// What one step does to one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Connect to a port nobody listens on: the server's kernel answers the SYN with a RST.
    Refused,
    /// The server accepts and closes with SO_LINGER 0: one RST from the server.
    ServerAbort,
    /// The client connects and closes with SO_LINGER 0: one RST from the client.
    ClientAbort,
    /// A balancer that keeps up to `balancer_limit` connections and resets (SO_LINGER 0) any
    /// connection above that: one RST from the server for each one turned away.
    Balancer,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Refused => "refused",
            Kind::ServerAbort => "server-abort",
            Kind::ClientAbort => "client-abort",
            Kind::Balancer => "balancer",
        }
    }
}

impl FromStr for Kind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Kind> {
        [Kind::Refused, Kind::ServerAbort, Kind::ClientAbort, Kind::Balancer]
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| anyhow!("unknown traffic kind {s:?} (refused, server-abort, client-abort, balancer)"))
    }
}

/// One connection per round (or every `every`-th round) of `kind` from `src` to `dst`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub kind: Kind,
    pub every: u32,
    pub src: IpAddr,
    pub dst: SocketAddr,
}

/// `KIND[/EVERY]:SRC->DST:PORT`, e.g. `refused:10.77.1.2->10.77.2.2:81` or
/// `balancer/2:fd77::1:2->[fd77::2:2]:443`.
impl FromStr for Step {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Step> {
        let bad = || format!("bad traffic step {s:?}: want KIND[/EVERY]:SRC->DST:PORT");
        let (head, rest) = s.split_once(':').with_context(bad)?;
        let (kind, every) = match head.split_once('/') {
            Some((k, n)) => (k, n.parse::<u32>().with_context(bad)?),
            None => (head, 1),
        };
        ensure!(every > 0, "{}: EVERY must be at least 1", bad());
        let (src, dst) = rest.split_once("->").with_context(bad)?;
        let step = Step {
            kind: kind.parse().with_context(bad)?,
            every,
            src: src.parse().with_context(bad)?,
            dst: dst.parse().with_context(bad)?,
        };
        ensure!(step.src.is_ipv4() == step.dst.is_ipv4(), "{}: SRC and DST are of different families", bad());
        Ok(step)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind.name())?;
        if self.every != 1 {
            write!(f, "/{}", self.every)?;
        }
        write!(f, ":{}->{}", self.src, self.dst)
    }
}

/// What to generate, between which namespaces, and for how long.
#[derive(Clone, Debug)]
pub struct Plan {
    pub client_ns: Netns,
    pub server_ns: Netns,
    pub steps: Vec<Step>,
    /// Stop after this many rounds...
    pub rounds: Option<u32>,
    /// ...or once this much time has passed (whichever comes first; one of them is required).
    pub duration: Option<Duration>,
    /// Pause after each round.
    pub pace: Duration,
    pub balancer_limit: usize,
    /// How long a client keeps a connection the balancer accepted; `None`: until the end.
    pub hold: Option<Duration>,
}

/// How a connection ended, as the client saw it (and the server confirmed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Refused,
    ServerAborted,
    ClientAborted,
    /// Kept by the balancer, then closed with FINs from both sides.
    Held,
    /// Turned away by the balancer with a RST.
    Rejected,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Refused => "refused",
            Outcome::ServerAborted => "server-aborted",
            Outcome::ClientAborted => "client-aborted",
            Outcome::Held => "held",
            Outcome::Rejected => "rejected",
        }
    }

    /// Resets sent (by the server, by the client) for one connection with this outcome.
    pub fn resets(self) -> (u64, u64) {
        match self {
            Outcome::Refused | Outcome::ServerAborted | Outcome::Rejected => (1, 0),
            Outcome::ClientAborted => (0, 1),
            Outcome::Held => (0, 0),
        }
    }
}

/// One connection the generator made.
#[derive(Clone, Debug)]
pub struct Conn {
    pub kind: Kind,
    pub client: SocketAddr,
    pub server: SocketAddr,
    pub outcome: Outcome,
}

/// A directional flow as rstwatch keys it: `src` is the sender of the resets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flow {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// Who sent a reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// Everything the generator did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub rounds: u32,
    pub elapsed: Duration,
    pub conns: Vec<Conn>,
    /// Anything that went differently from the plan; the counts above are then not exact.
    pub errors: Vec<String>,
}

impl Report {
    /// Expected reset count per directional flow, for the resets sent by `side`.
    pub fn expected(&self, side: Side) -> BTreeMap<Flow, u64> {
        let mut flows = BTreeMap::new();
        for c in &self.conns {
            let (by_server, by_client) = c.outcome.resets();
            let (flow, n) = match side {
                Side::Server => (Flow { src: c.server, dst: c.client }, by_server),
                Side::Client => (Flow { src: c.client, dst: c.server }, by_client),
            };
            if n > 0 {
                *flows.entry(flow).or_insert(0) += n;
            }
        }
        flows
    }

    pub fn to_json(&self) -> Value {
        let conns: Vec<Value> = self
            .conns
            .iter()
            .map(|c| {
                let (by_server, by_client) = c.outcome.resets();
                let mut resets = Vec::new();
                if by_server > 0 {
                    resets.push(reset_json("server", c.server, c.client, by_server));
                }
                if by_client > 0 {
                    resets.push(reset_json("client", c.client, c.server, by_client));
                }
                json!({
                    "kind": c.kind.name(),
                    "family": if c.client.is_ipv4() { "ipv4" } else { "ipv6" },
                    "client": c.client.ip().to_string(),
                    "client_port": c.client.port(),
                    "server": c.server.ip().to_string(),
                    "server_port": c.server.port(),
                    "outcome": c.outcome.name(),
                    "resets": resets,
                })
            })
            .collect();
        json!({
            "type": "traffic",
            "rounds": self.rounds,
            "elapsed_ms": u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX),
            "connections": conns,
            "errors": self.errors,
        })
    }
}

fn reset_json(from: &str, src: SocketAddr, dst: SocketAddr, count: u64) -> Value {
    json!({
        "from": from,
        "src": src.ip().to_string(), "sport": src.port(),
        "dst": dst.ip().to_string(), "dport": dst.port(),
        "count": count,
    })
}

/// What a server handler saw of one connection.
#[derive(Debug)]
struct ServerEvent {
    listener: SocketAddr,
    peer: SocketAddr,
    result: std::result::Result<Outcome, String>,
}

/// Runs `plan` until its rounds or duration are over or `stop()` is true, then winds every
/// connection down cleanly. Setup failures are errors; surprises during the run are recorded in
/// `Report::errors`.
pub fn run(plan: &Plan, stop: &(dyn Fn() -> bool + Sync)) -> Result<Report> {
    ensure!(plan.rounds.is_some() || plan.duration.is_some(), "a traffic plan needs a round count or a duration");
    ensure!(!plan.steps.is_empty(), "a traffic plan needs at least one step");
    let roles = listener_roles(&plan.steps)?;

    let mut listeners = Vec::new();
    for (&addr, &kind) in &roles {
        let sock = in_netns(&plan.server_ns, move || listener(addr))
            .with_context(|| format!("listening on {addr} in {}", plan.server_ns.name()))?;
        listeners.push((addr, kind, sock));
    }

    let servers_stop = AtomicBool::new(false);
    let (events_tx, events_rx) = mpsc::channel::<ServerEvent>();
    let start = Instant::now();
    thread::scope(|scope| {
        let mut accept_loops = Vec::new();
        for (addr, kind, sock) in listeners {
            let tx = events_tx.clone();
            let servers_stop = &servers_stop;
            let limit = plan.balancer_limit;
            accept_loops.push(scope.spawn(move || accept_loop(addr, kind, sock, limit, tx, servers_stop)));
        }
        drop(events_tx);

        let client = scope.spawn(|| -> Result<Report> {
            plan.client_ns.enter_current_thread()?;
            Ok(drive_clients(plan, stop, start))
        });
        let mut report = match client.join() {
            Ok(r) => r,
            Err(_) => Err(anyhow!("the client thread panicked")),
        };
        if let Ok(report) = &mut report {
            reconcile(report, &events_rx);
        }
        servers_stop.store(true, Ordering::SeqCst);
        for handle in accept_loops {
            if let (Ok(report), Err(_)) = (&mut report, handle.join()) {
                report.errors.push("a listener thread panicked".into());
            }
        }
        let mut report = report?;
        report.elapsed = start.elapsed();
        Ok(report)
    })
}

/// Which kind of server listens on each destination; refused destinations must stay closed.
fn listener_roles(steps: &[Step]) -> Result<BTreeMap<SocketAddr, Kind>> {
    let mut roles = BTreeMap::new();
    for step in steps.iter().filter(|s| s.kind != Kind::Refused) {
        if let Some(prev) = roles.insert(step.dst, step.kind) {
            ensure!(prev == step.kind, "{} is both a {} and a {} server", step.dst, prev.name(), step.kind.name());
        }
    }
    for step in steps.iter().filter(|s| s.kind == Kind::Refused) {
        ensure!(!roles.contains_key(&step.dst), "{} must stay closed for `refused` but also has a server", step.dst);
    }
    Ok(roles)
}

/// Runs `f` on a fresh thread that entered `ns`, so whatever sockets `f` creates live there.
pub fn in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                ns.enter_current_thread()?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("thread in {} panicked", ns.name()))?
    })
}

fn domain_of(addr: &SocketAddr) -> Domain {
    if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    }
}

fn listener(addr: SocketAddr) -> Result<Socket> {
    let sock = Socket::new(domain_of(&addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock)
}

/// Waits up to `timeout` for `sock` to become readable (a pending connection, for a listener).
pub(crate) fn readable(sock: &Socket, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: `pfd` is one valid pollfd for the duration of the call and nfds is 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    match rc {
        -1 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

fn as_inet(addr: &SockAddr) -> Result<SocketAddr> {
    addr.as_socket().context("not an IP socket address")
}

/// Closes with SO_LINGER 0, which sends a RST instead of a FIN.
fn abort(sock: Socket) -> io::Result<()> {
    sock.set_linger(Some(Duration::ZERO))?;
    drop(sock);
    Ok(())
}

fn accept_loop(
    addr: SocketAddr,
    kind: Kind,
    listener: Socket,
    balancer_limit: usize,
    events: mpsc::Sender<ServerEvent>,
    stop: &AtomicBool,
) {
    let held = Arc::new(AtomicUsize::new(0));
    let mut handlers = Vec::new();
    let send = |events: &mpsc::Sender<ServerEvent>, peer, result| {
        // The receiver outlives every sender in `run`; a send can only fail once the run is
        // over, when nobody needs the event any more.
        let _ = events.send(ServerEvent { listener: addr, peer, result });
    };
    while !stop.load(Ordering::SeqCst) {
        match readable(&listener, Duration::from_millis(50)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(e) => {
                send(&events, addr, Err(format!("poll on listener {addr}: {e}")));
                return;
            }
        }
        let (conn, peer) = match listener.accept() {
            Ok((conn, peer)) => match as_inet(&peer) {
                Ok(peer) => (conn, peer),
                Err(e) => {
                    send(&events, addr, Err(format!("{e:#}")));
                    continue;
                }
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted || e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                send(&events, addr, Err(format!("accept on {addr}: {e}")));
                continue;
            }
        };
        match kind {
            Kind::Refused => send(&events, peer, Err("a port planned to stay closed accepted a connection".into())),
            Kind::ServerAbort => {
                let r = abort(conn).map(|()| Outcome::ServerAborted).map_err(|e| format!("abort: {e}"));
                send(&events, peer, r);
            }
            Kind::Balancer if held.load(Ordering::SeqCst) >= balancer_limit => {
                let r = abort(conn).map(|()| Outcome::Rejected).map_err(|e| format!("abort: {e}"));
                send(&events, peer, r);
            }
            Kind::Balancer => {
                held.fetch_add(1, Ordering::SeqCst);
                let (events, held) = (events.clone(), Arc::clone(&held));
                handlers.push(thread::spawn(move || {
                    let r = hold(conn, &held);
                    let _ = events.send(ServerEvent { listener: addr, peer, result: r });
                }));
            }
            Kind::ClientAbort => {
                let events = events.clone();
                handlers.push(thread::spawn(move || {
                    let r = expect_reset(conn);
                    let _ = events.send(ServerEvent { listener: addr, peer, result: r });
                }));
            }
        }
    }
    for h in handlers {
        let _ = h.join();
    }
}

/// The balancer's side of a kept connection: greet, wait for the client's FIN, close with a FIN.
fn hold(mut conn: Socket, held: &AtomicUsize) -> std::result::Result<Outcome, String> {
    let result = (|| {
        conn.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
        conn.write_all(WELCOME).map_err(|e| format!("greeting: {e}"))?;
        let mut buf = [0u8; 16];
        match conn.read(&mut buf) {
            Ok(0) => Ok(Outcome::Held),
            Ok(n) => Err(format!("the client sent {n} bytes to the balancer")),
            Err(e) => Err(format!("waiting for the client's FIN: {e}")),
        }
    })();
    // The slot is free before our FIN goes out, so a client that saw the FIN and connects again
    // finds it free: the balancer's decisions then follow the clients' order exactly.
    held.fetch_sub(1, Ordering::SeqCst);
    drop(conn);
    result
}

/// The server's side of a client abort: the next read must report the client's RST.
fn expect_reset(mut conn: Socket) -> std::result::Result<Outcome, String> {
    conn.set_read_timeout(Some(IO_TIMEOUT)).map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    match conn.read(&mut buf) {
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok(Outcome::ClientAborted),
        Ok(0) => Err("got a FIN where the client should have reset".into()),
        Ok(n) => Err(format!("got {n} bytes where the client should have reset")),
        Err(e) => Err(format!("waiting for the client's RST: {e}")),
    }
}

/// A connection the balancer kept, and when the client lets go of it.
struct Kept {
    sock: Socket,
    release_at: Option<Instant>,
}

fn drive_clients(plan: &Plan, stop: &(dyn Fn() -> bool + Sync), start: Instant) -> Report {
    let mut report = Report::default();
    let mut kept: Vec<Kept> = Vec::new();
    let deadline = plan.duration.map(|d| start + d);
    let over =
        |round: u32| stop() || plan.rounds.is_some_and(|n| round >= n) || deadline.is_some_and(|d| Instant::now() >= d);
    let mut round = 0;
    'rounds: while !over(round) {
        for step in plan.steps.iter().filter(|s| round % s.every == 0) {
            if stop() {
                break 'rounds;
            }
            match client_step(step, plan.hold) {
                Ok((conn, keep)) => {
                    report.conns.push(conn);
                    kept.extend(keep);
                }
                Err(e) => report.errors.push(format!("{step}: {e:#}")),
            }
            release(&mut kept, false, &mut report.errors);
        }
        round += 1;
        let pause_until = Instant::now() + plan.pace;
        while Instant::now() < pause_until && !stop() {
            release(&mut kept, false, &mut report.errors);
            thread::sleep(plan.pace.min(Duration::from_millis(20)));
        }
    }
    release(&mut kept, true, &mut report.errors);
    report.rounds = round;
    report
}

fn client_step(step: &Step, hold: Option<Duration>) -> Result<(Conn, Option<Kept>)> {
    let sock = Socket::new(domain_of(&step.dst), Type::STREAM, Some(Protocol::TCP))?;
    sock.bind(&SocketAddr::new(step.src, 0).into()).with_context(|| format!("binding to {}", step.src))?;
    let client = as_inet(&sock.local_addr()?)?;
    let conn = |outcome| Conn { kind: step.kind, client, server: step.dst, outcome };
    let connected = sock.connect_timeout(&step.dst.into(), IO_TIMEOUT);
    if step.kind != Kind::Refused {
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
    }
    match (step.kind, connected) {
        (Kind::Refused, Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Ok((conn(Outcome::Refused), None)),
        (Kind::Refused, Err(e)) => Err(anyhow!("{client}: expected a refusal, got {e}")),
        (Kind::Refused, Ok(())) => Err(anyhow!("{client}: connected to a port that should be closed")),
        // The handshake completed and the reset followed before connect() looked: a RST in
        // SYN-SENT would have been ECONNREFUSED.
        (Kind::ServerAbort, Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
            Ok((conn(Outcome::ServerAborted), None))
        }
        (Kind::Balancer, Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => Ok((conn(Outcome::Rejected), None)),
        (_, Err(e)) => Err(anyhow!("{client}: connecting: {e}")),
        (Kind::ClientAbort, Ok(())) => {
            abort(sock)?;
            Ok((conn(Outcome::ClientAborted), None))
        }
        (Kind::ServerAbort, Ok(())) => match read_one(&sock) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok((conn(Outcome::ServerAborted), None)),
            other => Err(anyhow!("{client}: expected a reset from the server, got {other:?}")),
        },
        (Kind::Balancer, Ok(())) => match read_one(&sock) {
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => Ok((conn(Outcome::Rejected), None)),
            Ok(1) => Ok((conn(Outcome::Held), Some(Kept { sock, release_at: hold.map(|h| Instant::now() + h) }))),
            other => Err(anyhow!("{client}: expected the balancer's greeting or a reset, got {other:?}")),
        },
    }
}

fn read_one(sock: &Socket) -> io::Result<usize> {
    let mut buf = [MaybeUninit::<u8>::uninit(); 1];
    loop {
        match sock.recv(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Closes kept connections whose time is up (all of them with `all`): our FIN, then wait for the
/// balancer's, so no data is ever left unread on either side (which would turn a close into a RST).
fn release(kept: &mut Vec<Kept>, all: bool, errors: &mut Vec<String>) {
    let now = Instant::now();
    let (due, rest): (Vec<Kept>, Vec<Kept>) =
        kept.drain(..).partition(|k| all || k.release_at.is_some_and(|t| now >= t));
    *kept = rest;
    for k in due {
        let peer = k.sock.peer_addr().ok().and_then(|a| a.as_socket());
        let r = k.sock.shutdown(std::net::Shutdown::Write).and_then(|()| read_one(&k.sock));
        match r {
            Ok(0) => {}
            other => {
                errors.push(format!("closing kept connection to {peer:?}: expected the balancer's FIN, got {other:?}"))
            }
        }
    }
}

/// Matches every server-side report against the client's record of the same connection, waiting
/// until each connection that reached a server has been reported (or `IO_TIMEOUT` passes).
fn reconcile(report: &mut Report, events: &mpsc::Receiver<ServerEvent>) {
    // A list per 4-tuple: a connection that ended in a RST leaves no TIME_WAIT behind, so the
    // kernel may hand the same source port out again later in the run.
    let mut pending: HashMap<(SocketAddr, SocketAddr), Vec<Outcome>> = HashMap::new();
    for c in report.conns.iter().filter(|c| c.kind != Kind::Refused) {
        pending.entry((c.server, c.client)).or_default().push(c.outcome);
    }
    let deadline = Instant::now() + IO_TIMEOUT;
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(ev) = events.recv_timeout(left) else {
            let mut missing: Vec<String> = pending.keys().map(|(s, c)| format!("{c}->{s}")).collect();
            missing.sort();
            report.errors.push(format!("no server-side report for {}", missing.join(", ")));
            return;
        };
        let key = (ev.listener, ev.peer);
        let seen = match ev.result {
            Ok(seen) => seen,
            Err(e) => {
                report.errors.push(format!("server {} (peer {}): {e}", ev.listener, ev.peer));
                take_one(&mut pending, key, None);
                continue;
            }
        };
        match take_one(&mut pending, key, Some(seen)) {
            Some(expected) if expected == seen => {}
            Some(expected) => report.errors.push(format!(
                "{}->{}: the client saw {} but the server {}",
                ev.peer,
                ev.listener,
                expected.name(),
                seen.name()
            )),
            None => report.errors.push(format!(
                "server {} saw an unplanned connection from {} ({})",
                ev.listener,
                ev.peer,
                seen.name()
            )),
        }
    }
    // Anything already queued past the last expected event is a connection nobody planned.
    while let Ok(ev) = events.try_recv() {
        report
            .errors
            .push(format!("server {} saw an unplanned connection from {}: {:?}", ev.listener, ev.peer, ev.result));
    }
}

/// Removes one pending outcome for `key`, the one equal to `prefer` if there is one.
fn take_one(
    pending: &mut HashMap<(SocketAddr, SocketAddr), Vec<Outcome>>,
    key: (SocketAddr, SocketAddr),
    prefer: Option<Outcome>,
) -> Option<Outcome> {
    let list = pending.get_mut(&key)?;
    let at = prefer.and_then(|p| list.iter().position(|&o| o == p)).unwrap_or(0);
    let taken = (at < list.len()).then(|| list.remove(at));
    if list.is_empty() {
        pending.remove(&key);
    }
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_parse_and_print_back() {
        for text in ["refused:10.77.1.2->10.77.2.2:81", "balancer/3:fd77::1:2->[fd77::2:2]:443"] {
            let step: Step = text.parse().expect(text);
            assert_eq!(step.to_string(), text);
        }
        let s: Step = "client-abort/2:10.0.0.1->10.0.0.2:9".parse().expect("valid");
        assert_eq!((s.kind, s.every, s.dst.port()), (Kind::ClientAbort, 2, 9));
    }

    #[test]
    fn bad_steps_are_rejected() {
        for text in [
            "refused",
            "nonsense:10.0.0.1->10.0.0.2:1",
            "refused/0:10.0.0.1->10.0.0.2:1",
            "refused:10.0.0.1->[fd00::1]:1",
            "refused:10.0.0.1->10.0.0.2",
        ] {
            assert!(text.parse::<Step>().is_err(), "{text} should not parse");
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address literal")
    }

    #[test]
    fn one_address_cannot_be_two_kinds_of_server_or_closed() {
        let step = |k, dst: &str| Step { kind: k, every: 1, src: sa("10.0.0.1:0").ip(), dst: sa(dst) };
        assert!(listener_roles(&[step(Kind::ServerAbort, "10.0.0.2:1"), step(Kind::Balancer, "10.0.0.2:1")]).is_err());
        assert!(listener_roles(&[step(Kind::ServerAbort, "10.0.0.2:1"), step(Kind::Refused, "10.0.0.2:1")]).is_err());
        let roles =
            listener_roles(&[step(Kind::Balancer, "10.0.0.2:1"), step(Kind::Refused, "10.0.0.2:2")]).expect("ok");
        assert_eq!(roles.into_iter().collect::<Vec<_>>(), vec![(sa("10.0.0.2:1"), Kind::Balancer)]);
    }

    #[test]
    fn expected_flows_are_directional_and_summed() {
        let conn = |client: &str, server: &str, outcome| Conn {
            kind: Kind::Balancer,
            client: sa(client),
            server: sa(server),
            outcome,
        };
        let report = Report {
            conns: vec![
                conn("10.0.0.1:5000", "10.0.0.2:443", Outcome::Rejected),
                conn("10.0.0.1:5000", "10.0.0.2:443", Outcome::Rejected),
                conn("10.0.0.1:5001", "10.0.0.2:443", Outcome::Held),
                conn("10.0.0.1:5002", "10.0.0.2:9", Outcome::ClientAborted),
            ],
            ..Report::default()
        };
        let server = report.expected(Side::Server);
        assert_eq!(
            server.into_iter().collect::<Vec<_>>(),
            vec![(Flow { src: sa("10.0.0.2:443"), dst: sa("10.0.0.1:5000") }, 2)]
        );
        let client = report.expected(Side::Client);
        assert_eq!(
            client.into_iter().collect::<Vec<_>>(),
            vec![(Flow { src: sa("10.0.0.1:5002"), dst: sa("10.0.0.2:9") }, 1)]
        );
        let json = report.to_json();
        assert_eq!(json["connections"][2]["resets"].as_array().map(Vec::len), Some(0));
        assert_eq!(json["connections"][3]["resets"][0]["from"], "client");
    }

    #[test]
    fn reused_four_tuples_reconcile_one_by_one() {
        let key = (sa("10.0.0.2:443"), sa("10.0.0.1:5000"));
        let mut pending = HashMap::from([(key, vec![Outcome::Held, Outcome::Rejected])]);
        assert_eq!(take_one(&mut pending, key, Some(Outcome::Rejected)), Some(Outcome::Rejected));
        assert_eq!(take_one(&mut pending, key, Some(Outcome::Rejected)), Some(Outcome::Held));
        assert!(pending.is_empty());
        assert_eq!(take_one(&mut pending, key, None), None);
    }
}

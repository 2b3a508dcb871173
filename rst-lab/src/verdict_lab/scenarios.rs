//! The scenarios, one per cause. Each drives real sockets (and, for `went_down`, a real HTTP
//! server process) from this one thread, in an order that leaves no segment in flight towards a
//! socket that is gone, so the RSTs each accounts for are the only ones its connections get.
//!
//! Sockets are created inside their host's namespace (they stay there, whichever thread uses
//! them), so a client connect completes through the listener's backlog before `accept`: no
//! thread per side is needed.

use std::{
    io::{Read as _, Write as _},
    net::{Shutdown, SocketAddr},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use socket2::Socket;

use super::{
    client_for, host_of, limit_ruleset, next_tag, service, Account, Cause, Clock, ConnRecord, Details, Outcome, Role,
    VerdictLab, ABORT_PORT, FORGED_PORT, LIMIT_PORT, NO_LISTENER_PORT, SERVED_PORT, VIP, VIP_PORT, WENT_DOWN_PORT,
};
use crate::{
    diag_lab::{
        abort, accept, bound_client, expect_reset, listener, nft, read_request, refused_client, send_request, unacked,
        wait_until, Family, DEFAULT_TTL,
    },
    lab::{Netns, Proc},
    traffic::{in_netns, readable},
};

pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Between attempts of one scenario, so they are apart in time as real clients are.
const PACE: Duration = Duration::from_millis(30);
pub const NO_LISTENER_ATTEMPTS: usize = 3;
pub const WENT_DOWN_ACCEPTS: usize = 3;
pub const WENT_DOWN_REFUSALS: usize = 3;
pub const LIMIT: u32 = 3;
pub const LIMIT_EXTRA: usize = 2;
pub const STATE_LOST_CONNS: usize = 3;
pub const MIDDLEBOX_SERVED: usize = 2;
pub const MIDDLEBOX_FORGED: usize = 3;
pub const ABORTS: usize = 3;
/// What every server answers a request with before it closes or aborts.
pub const RESPONSE: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
const HTTP_INDEX: &str = "went_down lab\n";

impl VerdictLab {
    fn client_socket(&self, server: SocketAddr) -> Result<(Socket, SocketAddr)> {
        in_netns(&self.client, || bound_client(client_for(&server.ip())))
    }

    fn listen(&self, role: Role, addr: SocketAddr) -> Result<Socket> {
        in_netns(&self.host(role).ns, || listener(addr))
    }

    fn connect(&self, server: SocketAddr) -> Result<(Socket, SocketAddr)> {
        let (sock, local) = self.client_socket(server)?;
        sock.connect_timeout(&server.into(), IO_TIMEOUT).with_context(|| format!("{local}: connecting to {server}"))?;
        sock.set_read_timeout(Some(IO_TIMEOUT))?;
        sock.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok((sock, local))
    }

    fn refused(&self, server: SocketAddr, clock: &Clock) -> Result<ConnRecord> {
        let client = in_netns(&self.client, || refused_client(client_for(&server.ip()), server))?;
        Ok(ConnRecord { client, server, outcome: Outcome::Refused, at_ms: clock.ms() })
    }

    /// Request and response, then FINs both ways: a connection that ends without a RST.
    fn clean_exchange(&self, listener: &Socket, server: SocketAddr, clock: &Clock) -> Result<ConnRecord> {
        let (sock, client) = self.connect(server)?;
        let conn = served(listener)?;
        send_request(&sock)?;
        read_request(&conn)?;
        respond(&conn, &sock)?;
        let at_ms = clock.ms();
        close_cleanly(sock, conn)?;
        Ok(ConnRecord { client, server, outcome: Outcome::Closed, at_ms })
    }

    /// The kernel of a host without a listener answers each SYN with RST+ACK.
    pub fn no_listener(&self, family: Family, clock: &Clock) -> Result<Account> {
        let addr = host_of(Cause::NoListener).addr_in(family);
        let mut account = Account::new(Cause::NoListener, SocketAddr::new(addr, NO_LISTENER_PORT));
        for _ in 0..NO_LISTENER_ATTEMPTS {
            account.conns.push(self.refused(account.service, clock)?);
            thread::sleep(PACE);
        }
        Ok(account)
    }

    /// Python's http.server answers some GETs, is SIGKILLed, and its port refuses from then on.
    pub fn went_down(&self, clock: &Clock) -> Result<Account> {
        let host = self.host(host_of(Cause::WentDown));
        let mut account = Account::new(Cause::WentDown, service(host.role, WENT_DOWN_PORT));
        let site = HttpSite::new()?;
        let mut server = site.serve(&host.ns, account.service)?;
        let mut last_accept_ms = 0;
        for _ in 0..WENT_DOWN_ACCEPTS {
            let (record, accepted_ms) = self.http_get(account.service, clock)?;
            last_accept_ms = accepted_ms;
            account.conns.push(record);
            thread::sleep(PACE);
        }
        if let Some(status) = server.try_wait()? {
            bail!("http.server exited ({status}) before it was killed: {}", server.stderr().trim());
        }
        server.signal(libc::SIGKILL)?;
        let killed_ms = clock.ms();
        drop(server);
        let mut first_refusal_ms = None;
        for _ in 0..WENT_DOWN_REFUSALS {
            thread::sleep(PACE);
            let record = self.refused(account.service, clock)?;
            first_refusal_ms.get_or_insert(record.at_ms);
            account.conns.push(record);
        }
        account.details = Details::WentDown {
            last_accept_ms,
            killed_ms,
            first_refusal_ms: first_refusal_ms.context("no refusal attempted")?,
        };
        Ok(account)
    }

    /// `GET /` over HTTP/1.0: the server sends the page and closes, the client reads to the end
    /// and closes. Returns the record and when the handshake completed.
    fn http_get(&self, server: SocketAddr, clock: &Clock) -> Result<(ConnRecord, u64)> {
        let (mut sock, client) = self.connect(server)?;
        let accepted_ms = clock.ms();
        sock.write_all(b"GET / HTTP/1.0\r\n\r\n").context("sending GET")?;
        let mut page = Vec::new();
        sock.read_to_end(&mut page).context("reading the page")?;
        let text = String::from_utf8_lossy(&page);
        ensure!(text.starts_with("HTTP/1.0 200") && text.ends_with(HTTP_INDEX), "unexpected answer: {text:?}");
        let at_ms = clock.ms();
        drop(sock);
        Ok((ConnRecord { client, server, outcome: Outcome::Closed, at_ms }, accepted_ms))
    }

    /// The balancer's nftables rule holds [`LIMIT`] connections: clients open that many and keep
    /// them, the [`LIMIT_EXTRA`] after them are reset in the handshake; then all close cleanly.
    pub fn connection_limit(&self, clock: &Clock) -> Result<Account> {
        let host = self.host(host_of(Cause::ConnectionLimit));
        let mut account = Account::new(Cause::ConnectionLimit, service(host.role, LIMIT_PORT));
        let listener = self.listen(host.role, account.service)?;
        nft(&host.ns, &limit_ruleset(LIMIT))?;
        let mut open = Vec::new();
        for _ in 0..LIMIT {
            let (sock, client) = self.connect(account.service)?;
            let conn = served(&listener)?;
            account.conns.push(ConnRecord { client, server: account.service, outcome: Outcome::Closed, at_ms: 0 });
            open.push((sock, conn));
            thread::sleep(PACE);
        }
        for _ in 0..LIMIT_EXTRA {
            account.conns.push(self.refused(account.service, clock)?);
            thread::sleep(PACE);
        }
        for ((sock, conn), record) in open.into_iter().zip(account.conns.iter_mut()) {
            record.at_ms = clock.ms();
            close_cleanly(sock, conn)?;
        }
        account.details = Details::Limit { limit: LIMIT };
        Ok(account)
    }

    /// Connections to the VIP on the primary; the VIP moves to the standby, which listens on
    /// the port but knows none of them: the clients' next data segments draw RSTs without ACK.
    pub fn state_lost(&self, clock: &Clock) -> Result<Account> {
        let primary = self.host(Role::Primary);
        let standby = self.host(Role::Standby);
        let vip = SocketAddr::new(VIP.into(), VIP_PORT);
        let vip32 = format!("{VIP}/32");
        let mut account = Account::new(Cause::StateLost, vip);
        primary.ns.ip(["addr", "add", &vip32, "dev", &primary.iface.name])?;
        let on_primary = self.listen(Role::Primary, vip)?;
        let mut open = Vec::new();
        let mut kept = Vec::new();
        for _ in 0..STATE_LOST_CONNS {
            let (sock, client) = self.connect(vip)?;
            let conn = served(&on_primary)?;
            send_request(&sock)?;
            read_request(&conn)?;
            respond(&conn, &sock)?;
            wait_until("the primary's answer was acknowledged", || Ok(unacked(&conn)? == 0))?;
            open.push((sock, client));
            kept.push(conn);
            thread::sleep(PACE);
        }
        let moved_ms = clock.ms();
        primary.ns.ip(["addr", "del", &vip32, "dev", &primary.iface.name])?;
        standby.ns.ip(["addr", "add", &vip32, "dev", &standby.iface.name])?;
        let on_standby = self.listen(Role::Standby, vip)?;
        // What a gratuitous ARP does: the router forgets the primary's MAC for the VIP.
        self.router.ip(["neigh", "flush", "to", &VIP.to_string()])?;
        for (sock, client) in open {
            send_request(&sock)?;
            expect_reset(&sock).with_context(|| format!("{client}: the standby did not reset"))?;
            account.conns.push(ConnRecord { client, server: vip, outcome: Outcome::Reset, at_ms: clock.ms() });
            thread::sleep(PACE);
        }
        ensure!(!readable(&on_standby, Duration::ZERO)?, "the standby accepted a connection");
        kept.push(on_primary);
        kept.push(on_standby);
        self.hold(kept)?;
        account.details =
            Details::StateLost { primary: Role::Primary.addr().into(), standby: Role::Standby.addr().into(), moved_ms };
        Ok(account)
    }

    /// The guarded host serves [`SERVED_PORT`]; the router forges RSTs for SYNs to
    /// [`FORGED_PORT`], which the host also listens on but never hears of.
    pub fn middlebox(&self, clock: &Clock) -> Result<Account> {
        let role = host_of(Cause::Middlebox);
        let served_addr = service(role, SERVED_PORT);
        let mut account = Account::new(Cause::Middlebox, service(role, FORGED_PORT));
        let served_listener = self.listen(role, served_addr)?;
        let guarded_listener = self.listen(role, account.service)?;
        for _ in 0..MIDDLEBOX_SERVED {
            account.conns.push(self.clean_exchange(&served_listener, served_addr, clock)?);
            thread::sleep(PACE);
        }
        for _ in 0..MIDDLEBOX_FORGED {
            account.conns.push(self.refused(account.service, clock)?);
            thread::sleep(PACE);
        }
        ensure!(!readable(&guarded_listener, Duration::ZERO)?, "a SYN to the guarded port reached the host");
        account.details =
            Details::Middlebox { rst_ttl: DEFAULT_TTL, peer_ttl: DEFAULT_TTL - 1, served_port: SERVED_PORT };
        Ok(account)
    }

    /// Request and response, then the server closes with SO_LINGER {on, 0}: RST+ACK after data.
    pub fn app_abort(&self, family: Family, clock: &Clock) -> Result<Account> {
        let role = host_of(Cause::AppAbort);
        let mut account = Account::new(Cause::AppAbort, SocketAddr::new(role.addr_in(family), ABORT_PORT));
        let listener = self.listen(role, account.service)?;
        for _ in 0..ABORTS {
            let (sock, client) = self.connect(account.service)?;
            let conn = served(&listener)?;
            send_request(&sock)?;
            read_request(&conn)?;
            respond(&conn, &sock)?;
            // The client's ACK of the answer must be in: it would otherwise meet a closed socket
            // and draw a second RST.
            wait_until("the client acknowledged the answer", || Ok(unacked(&conn)? == 0))?;
            abort(conn)?;
            expect_reset(&sock)?;
            account.conns.push(ConnRecord {
                client,
                server: account.service,
                outcome: Outcome::Reset,
                at_ms: clock.ms(),
            });
            thread::sleep(PACE);
        }
        Ok(account)
    }
}

fn served(listener: &Socket) -> Result<Socket> {
    let conn = accept(listener)?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

/// The server answers and the client reads the whole answer.
fn respond(conn: &Socket, client: &Socket) -> Result<()> {
    let mut conn = conn;
    conn.write_all(RESPONSE).context("sending the answer")?;
    let mut answer = vec![0u8; RESPONSE.len()];
    let mut client = client;
    client.read_exact(&mut answer).context("reading the answer")?;
    Ok(())
}

/// The client's FIN first, then the server's once it has read to the end: nothing is left unread
/// on either side, so neither close sends a RST.
fn close_cleanly(client: Socket, server: Socket) -> Result<()> {
    client.shutdown(Shutdown::Write).context("client shutdown")?;
    expect_eof(&server).context("server side")?;
    drop(server);
    expect_eof(&client).context("client side")?;
    Ok(())
}

fn expect_eof(mut sock: &Socket) -> Result<()> {
    let mut buf = [0u8; 64];
    match sock.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => bail!("{n} bytes where the end was due"),
        Err(e) => bail!("waiting for the end: {e}"),
    }
}

/// A directory with an index page for http.server, removed on drop.
struct HttpSite {
    dir: PathBuf,
}

impl HttpSite {
    fn new() -> Result<HttpSite> {
        let dir = std::env::temp_dir().join(format!("rstwatch-verdict-http-{}-{}", std::process::id(), next_tag()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("index.html"), HTTP_INDEX).context("writing index.html")?;
        Ok(HttpSite { dir })
    }

    /// `python3 -m http.server` in `ns`, once it listens on `addr`.
    fn serve(&self, ns: &Netns, addr: SocketAddr) -> Result<Proc> {
        let python = if std::path::Path::new("/usr/bin/python3").exists() { "/usr/bin/python3" } else { "python3" };
        let mut cmd = ns.exec(python);
        cmd.args(["-m", "http.server", "--bind", &addr.ip().to_string(), "--directory"])
            .arg(&self.dir)
            .arg(addr.port().to_string());
        let mut proc = Proc::spawn(&mut cmd)?;
        wait_listening(ns, addr, &mut proc)?;
        Ok(proc)
    }
}

impl Drop for HttpSite {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Polls `ss` in `ns` until something listens on `addr` (or `proc` exits, or IO_TIMEOUT).
pub fn wait_listening(ns: &Netns, addr: SocketAddr, proc: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + IO_TIMEOUT;
    let filter = format!("sport = :{}", addr.port());
    loop {
        let mut ss = ns.exec("ss");
        ss.args(["-Hltn", &filter]);
        let out = crate::cmd::output(&mut ss)?;
        if out.contains(&addr.ip().to_string()) || out.contains(&format!("*:{}", addr.port())) {
            return Ok(());
        }
        if let Some(status) = proc.try_wait()? {
            bail!("the server for {addr} exited ({status}): {}", proc.stderr().trim());
        }
        ensure!(Instant::now() < deadline, "nothing listens on {addr} within {IO_TIMEOUT:?}");
        thread::sleep(Duration::from_millis(20));
    }
}

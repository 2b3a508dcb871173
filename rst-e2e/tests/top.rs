//! `rstwatch top` in a real terminal: a detached tmux session runs it inside a lab namespace, the
//! test reads the screen with `capture-pane`, types with `send-keys`, and after the exit checks
//! the exit code, the terminal's modes (`stty -a`), that no alternate screen is left on, and that
//! nothing is attached to the interface.
//!
//! Needs root (namespaces, BPF, XDP) and tmux (`cargo xtask setup` installs it); without tmux the
//! tests are skipped with a message, except under CI=true where that is a failure.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use rst_lab::{
    lab::{Iface, Proc, TwoHosts},
    Need,
};
use serde_json::Value;

const C1: &str = "10.79.1.2";
const C2: &str = "10.79.1.3";
const S4: &str = "10.79.2.2";
/// How long a screen may take to show what a test waits for.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(20);

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address literal")
}

fn rstwatch() -> PathBuf {
    rst_lab::paths::rstwatch_for_tests()
}

/// Whether the test can run: root and tmux; else skipped with its reason, or a failure under
/// CI=true (`rst_lab::skip`).
fn ready(test: &str) -> Result<bool> {
    let needs = [Need::Root("network namespaces, BPF, XDP"), Need::Tool("ip"), Need::Tool("tmux")];
    if !rst_lab::skip::require(test, &needs)? {
        return Ok(false);
    }
    rst_lab::lab::sweep_stale()?;
    Ok(true)
}

fn hosts() -> Result<TwoHosts> {
    TwoHosts::new(&[ip(C1), ip(C2)], &[ip(S4)])
}

/// What every test starts from: root and tmux checked, the lab's hosts, and `rstwatch top
/// OPTIONS` on the client's interface in a WIDTH×HEIGHT window, its header on screen. `None`:
/// skipped (no tmux outside CI).
fn top_on_client(test: &str, width: u16, height: u16, options: &str) -> Result<Option<(TwoHosts, Tmux)>> {
    if !ready(test)? {
        return Ok(None);
    }
    let hosts = hosts()?;
    let tmux = Tmux::start(&hosts.client_if, width, height, options)?;
    tmux.wait_for("the header", |s| s.contains("rstwatch top"))?;
    Ok(Some((hosts, tmux)))
}

static SESSIONS: AtomicU32 = AtomicU32::new(0);

/// A tmux server of its own (own socket, no config file) with one session running `rstwatch
/// top` in a lab namespace. Dropping it kills the server, also when a test fails.
struct Tmux {
    socket: String,
    /// Files the pane's shell writes after rstwatch exits, and rstwatch's stderr.
    exit_file: PathBuf,
    stty_file: PathBuf,
    stderr_file: PathBuf,
}

impl Tmux {
    fn start(iface: &Iface, width: u16, height: u16, args: &str) -> Result<Tmux> {
        let n = SESSIONS.fetch_add(1, Ordering::Relaxed);
        let socket = format!("rstwatch-top-{}-{n}", std::process::id());
        let dir = std::env::temp_dir();
        let tmux = Tmux {
            exit_file: dir.join(format!("{socket}.exit")),
            stty_file: dir.join(format!("{socket}.stty")),
            stderr_file: dir.join(format!("{socket}.stderr")),
            socket,
        };
        for file in [&tmux.exit_file, &tmux.stty_file, &tmux.stderr_file] {
            let _ = std::fs::remove_file(file);
        }
        // After rstwatch: its exit code, the terminal's modes as the shell finds them, and an
        // idle pane so the screen can still be read.
        let script = format!(
            "ip netns exec {ns} {bin} top -i {iface} {args} 2>{stderr}; echo $? >{exit}; stty -a >{stty}; \
             echo rstwatch-top-done; exec sleep 600",
            ns = iface.ns.name(),
            bin = rstwatch().display(),
            iface = iface.name,
            stderr = tmux.stderr_file.display(),
            exit = tmux.exit_file.display(),
            stty = tmux.stty_file.display(),
        );
        tmux.run(&[
            "new-session",
            "-d",
            "-s",
            &tmux.socket,
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
            &script,
        ])?;
        Ok(tmux)
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .context("running tmux")?;
        ensure!(
            out.status.success(),
            "tmux {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn screen(&self) -> Result<String> {
        self.run(&["capture-pane", "-p", "-t", &self.socket])
    }

    /// Keys in tmux's `send-keys` syntax (`q`, `Escape`, `C-c`, `Enter`, `Right`); `-l` text.
    fn keys(&self, keys: &[&str]) -> Result<()> {
        let mut args = vec!["send-keys", "-t", &self.socket];
        args.extend_from_slice(keys);
        self.run(&args).map(drop)
    }

    fn text(&self, text: &str) -> Result<()> {
        self.run(&["send-keys", "-t", &self.socket, "-l", text]).map(drop)
    }

    /// `1` while the pane shows the alternate screen.
    fn alternate_on(&self) -> Result<bool> {
        Ok(self.run(&["display-message", "-p", "-t", &self.socket, "#{alternate_on}"])?.trim() == "1")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_file).unwrap_or_default()
    }

    /// Waits until the screen satisfies `ok`; returns that screen.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> Result<String> {
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        loop {
            let screen = self.screen()?;
            if ok(&screen) {
                return Ok(screen);
            }
            if Instant::now() > deadline {
                bail!(
                    "the screen did not show {what} within {SCREEN_TIMEOUT:?}:\n{screen}\nrstwatch stderr: {}",
                    self.stderr()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for rstwatch to exit; returns its exit code and the terminal's `stty -a` after it.
    fn wait_exit(&self) -> Result<(i32, String)> {
        let deadline = Instant::now() + SCREEN_TIMEOUT;
        while !read_nonempty(&self.stty_file) {
            if Instant::now() > deadline {
                bail!("rstwatch top did not exit:\n{}\nstderr: {}", self.screen()?, self.stderr());
            }
            thread::sleep(Duration::from_millis(100));
        }
        let code = std::fs::read_to_string(&self.exit_file)?;
        let code = code.trim().parse().with_context(|| format!("exit code {code:?}"))?;
        Ok((code, std::fs::read_to_string(&self.stty_file)?))
    }
}

fn read_nonempty(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.len() > 0)
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        for file in [&self.exit_file, &self.stty_file, &self.stderr_file] {
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Runs the lab's traffic generator; returns the RSTs the server sent, by its own account.
fn server_resets(hosts: &TwoHosts, rounds: u32, steps: &[String]) -> Result<u64> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rst-traffic"));
    cmd.args(["--client-ns", hosts.client.name(), "--server-ns", hosts.server.name()])
        .args(["--rounds", &rounds.to_string()])
        .args(steps);
    let fin = Proc::spawn(&mut cmd)?.finish(Duration::from_secs(120))?;
    ensure!(fin.status.success(), "traffic generator failed ({}): {}", fin.status, fin.stderr);
    let report: Value = serde_json::from_str(fin.stdout.trim()).context("traffic generator JSON")?;
    ensure!(report["errors"].as_array().is_some_and(Vec::is_empty), "generator errors: {}", report["errors"]);
    let mut sum = 0;
    for conn in report["connections"].as_array().context("no connections")? {
        for reset in conn["resets"].as_array().context("no resets array")? {
            if reset["from"] == "server" {
                sum += reset["count"].as_u64().context("count")?;
            }
        }
    }
    Ok(sum)
}

/// The screen line whose first word is `first`, split into words.
fn row<'a>(screen: &'a str, first: &str) -> Option<Vec<&'a str>> {
    screen.lines().map(|l| l.split_whitespace().collect::<Vec<_>>()).find(|words| words.first() == Some(&first))
}

/// The TOTAL column (the last) of the row starting with `first`.
fn total(screen: &str, first: &str) -> Option<u64> {
    row(screen, first)?.last()?.parse().ok()
}

/// After a normal exit: cooked mode and echo back, no alternate screen, nothing attached.
fn assert_restored(tmux: &Tmux, iface: &Iface, code: i32, stty: &str) -> Result<()> {
    assert_eq!(code, 0, "rstwatch top exited {code}; stderr: {}", tmux.stderr());
    let words: Vec<&str> = stty.split_whitespace().collect();
    for mode in ["icanon", "echo", "isig", "opost", "icrnl"] {
        assert!(words.contains(&mode), "terminal mode {mode} not restored: {stty}");
    }
    assert!(!tmux.alternate_on()?, "the pane is still on the alternate screen");
    let screen = tmux.wait_for("the shell after rstwatch", |s| s.contains("rstwatch-top-done"))?;
    // A frame drawn after the terminal was given back would land below the summary. (Above it,
    // under a loaded parallel run, tmux has once shown the view's last frame after a resize in
    // the alternate screen: noted in the session notes, not failed on here.)
    let last_frame = screen.rfind("rstwatch top  ");
    let summary_at = screen.rfind("SUMMARY");
    assert!(
        last_frame.is_none() || summary_at.is_some_and(|s| last_frame < Some(s)),
        "TUI drawn on the main screen after exit:\n{screen}"
    );
    assert!(!iface.xdp_attached()?, "XDP still attached to {}:\n{}", iface.name, iface.details()?);
    Ok(())
}

#[test]
fn live_view_shows_resetters_switches_views_filters_pauses_and_quits_cleanly() -> Result<()> {
    let Some((hosts, tmux)) = top_on_client("live_view", 160, 40, "--interval 500ms")? else { return Ok(()) };
    let iface = &hosts.client_if;
    tmux.wait_for("the hook in the header", |s| s.contains("rstwatch top") && s.contains("hook xdp"))?;
    ensure!(tmux.stderr().contains(&format!("attached to {}", iface.name)), "stderr: {}", tmux.stderr());

    // Refused connects: the server answers each SYN with one RST from port 81.
    let steps = vec![format!("refused:{C1}->{S4}:81"), format!("refused:{C2}->{S4}:81")];
    let sent = server_resets(&hosts, 3, &steps)?;
    assert_eq!(sent, 6, "3 rounds of 2 refused connects");
    let screen = tmux.wait_for("the resetter with every RST", |s| total(s, S4) == Some(sent))?;
    let words = row(&screen, S4).context("resetter row")?;
    assert!(words.contains(&"100%"), "one resetter has the whole share: {words:?}");
    assert!(screen.contains("RSTS ▼"), "{screen}");
    println!("src view:\n{screen}");

    // Views.
    tmux.keys(&["4"])?;
    let screen = tmux.wait_for("the flow view", |s| s.contains("FROM (RST SENDER)"))?;
    assert!(screen.contains(&format!("{S4}:81")), "{screen}");
    // Each flow row: interface, direction, sender, receiver, kind, counts. The server's
    // refusals arrive on the client's interface.
    let flow_rows: Vec<Vec<&str>> = screen
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|words| words.get(2) == Some(&format!("{S4}:81").as_str()))
        .collect();
    assert_eq!(flow_rows.len(), sent as usize, "one row per refused connect:\n{screen}");
    for words in &flow_rows {
        assert_eq!((words[0], words[1], words[4]), (iface.name.as_str(), "rx", "refused"), "{screen}");
    }
    println!("flow view:\n{screen}");
    tmux.keys(&["v"])?;
    // The service: six attempts seen leaving the client, all refused, six RSTs.
    let screen = tmux.wait_for("the service view", |s| total(s, &format!("{S4}:81")) == Some(sent))?;
    let words = row(&screen, &format!("{S4}:81")).context("service row")?;
    assert_eq!((words[1], words[2]), ("6", "100%"), "ATTEMPTS and REFUSED: {screen}");
    assert!(screen.contains("ATTEMPTS") && screen.contains("from SYN / SYN+ACK"), "{screen}");
    println!("service view:\n{screen}");
    tmux.keys(&["d"])?;
    tmux.wait_for("the dst view", |s| s.contains("RESET PEER") && total(s, C1) == Some(3) && total(s, C2) == Some(3))?;
    tmux.keys(&["1"])?;
    tmux.wait_for("the src view again", |s| s.contains("RESETTER"))?;

    // Sorting.
    tmux.keys(&["Right"])?;
    tmux.wait_for("sort by rate", |s| s.contains("sort RSTS/s") && s.contains("RSTS/s ▼"))?;
    tmux.keys(&["r"])?;
    tmux.wait_for("reversed sort", |s| s.contains("(reversed)") && s.contains("RSTS/s ▲"))?;
    tmux.keys(&["<", "<", "r"])?;
    tmux.wait_for("sort by address", |s| s.contains("RESETTER ▼"))?;

    // Filter by port: a port that matches, one that does not, then Esc clears.
    tmux.keys(&["/"])?;
    tmux.text("81")?;
    tmux.keys(&["Enter"])?;
    let screen = tmux.wait_for("the port filter", |s| s.contains("filter: port 81"))?;
    assert_eq!(total(&screen, S4), Some(sent), "{screen}");
    tmux.keys(&["/", "BSpace", "BSpace"])?;
    tmux.text("9999")?;
    tmux.keys(&["Enter"])?;
    tmux.wait_for("an empty filtered table", |s| s.contains("no RSTs match the filter"))?;
    tmux.keys(&["/", "Escape"])?;
    tmux.wait_for("the filter cleared", |s| !s.contains("filter:") && total(s, S4) == Some(sent))?;
    // By address.
    tmux.keys(&["/"])?;
    tmux.text("10.79.2")?;
    tmux.keys(&["Enter"])?;
    tmux.wait_for("the address filter", |s| s.contains("filter: address ~ 10.79.2") && total(s, S4) == Some(sent))?;
    tmux.keys(&["/", "Escape"])?;
    // An Escape followed at once by another key reads as Alt+key: let it land alone first.
    tmux.wait_for("the address filter cleared", |s| !s.contains("filter:"))?;

    // Pause: the display freezes, counting goes on, nothing is lost.
    tmux.keys(&["p"])?;
    tmux.wait_for("the pause banner", |s| s.contains("PAUSED"))?;
    let more = server_resets(&hosts, 2, &steps)?;
    let all = sent + more;
    let screen =
        tmux.wait_for("the live count behind the pause", |s| s.contains(&format!("still counting: {all} RSTs")))?;
    assert_eq!(total(&screen, S4), Some(sent), "paused, the table must not move:\n{screen}");
    tmux.keys(&["Space"])?;
    tmux.wait_for("every RST after the pause", |s| !s.contains("PAUSED") && total(s, S4) == Some(all))?;

    tmux.keys(&["q"])?;
    let (code, stty) = tmux.wait_exit()?;
    assert_restored(&tmux, iface, code, &stty)?;
    let screen = tmux.screen()?;
    assert!(screen.contains("SUMMARY"), "the summary is printed after the exit:\n{screen}");
    println!("after q:\n{screen}");
    Ok(())
}

#[test]
fn empty_data_in_a_tiny_window_does_not_crash_and_ctrl_c_restores() -> Result<()> {
    let Some((hosts, tmux)) = top_on_client("empty_data", 20, 5, "--interval 200ms")? else { return Ok(()) };
    let iface = &hosts.client_if;
    // Several intervals of nothing, with every view and a few keys, then a resize.
    for key in ["2", "3", "4", "Right", "Right", "Left", "r", "Down", "PageDown", "p", "p", "1"] {
        tmux.keys(&[key])?;
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(600));
    ensure!(!read_nonempty(&tmux.stty_file), "rstwatch top exited early: {}", tmux.stderr());
    tmux.run(&["resize-window", "-t", &tmux.socket, "-x", "3", "-y", "2"])?;
    thread::sleep(Duration::from_millis(500));
    tmux.run(&["resize-window", "-t", &tmux.socket, "-x", "100", "-y", "12"])?;
    let screen = tmux.wait_for("the empty table", |s| s.contains("no resets seen"))?;
    println!("empty:\n{screen}");
    ensure!(!read_nonempty(&tmux.stty_file), "rstwatch top exited early: {}", tmux.stderr());

    tmux.keys(&["C-c"])?;
    let (code, stty) = tmux.wait_exit()?;
    assert_restored(&tmux, iface, code, &stty)?;
    assert!(!tmux.stderr().contains("panicked"), "{}", tmux.stderr());
    Ok(())
}

#[test]
fn sigterm_restores_the_terminal_and_detaches() -> Result<()> {
    let Some((hosts, tmux)) = top_on_client("sigterm", 80, 24, "--interval 200ms")? else { return Ok(()) };
    let iface = &hosts.client_if;
    // rstwatch is the only process in the client's namespace.
    let pids = hosts.client.pids()?;
    ensure!(pids.len() == 1, "expected rstwatch alone in {}: {pids:?}", hosts.client.name());
    rst_lab::signal::send(pids[0], libc::SIGTERM)?;
    let (code, stty) = tmux.wait_exit()?;
    assert_restored(&tmux, iface, code, &stty)
}

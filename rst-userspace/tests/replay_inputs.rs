//! `rstwatch replay`'s inputs: standard input, gzip and zstd (told by content), broken
//! compressed streams, a window of capture time, and the progress line (on a terminal only).
//!
//! Each compressed or piped capture must give byte for byte the report of the plain file.

#![allow(clippy::expect_used, clippy::panic)] // test helpers: a panic is the failure report

use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    thread,
    time::Duration,
};

use rst_common::parse::{TCP_ACK, TCP_RST};
use rst_craft::{capture::write_pcap, capture::DataLink, tcp_v4};
use serde_json::Value;

const T0: u64 = 1_700_000_000;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn tmp(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("replay-inputs");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    dir.join(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn rstwatch() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rstwatch"))
}

/// `rstwatch replay --format json ARGS`, with `stdin` as its standard input.
fn replay(args: &[&str], stdin: Option<Vec<u8>>) -> Output {
    let mut command = rstwatch();
    command.args(["replay", "--format", "json"]).args(args);
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("running rstwatch");
    if let Some(bytes) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        // The writer ends when the whole capture is in: the reader must stop at EOF by itself.
        thread::spawn(move || pipe.write_all(&bytes));
    }
    let output = child.wait_with_output().expect("waiting for rstwatch");
    assert!(!text(&output.stderr).contains("panicked"), "rstwatch panicked:\n{}", text(&output.stderr));
    output
}

fn summary(output: &Output) -> Value {
    let stdout = text(&output.stdout);
    let last = stdout.lines().last().unwrap_or_else(|| panic!("no output; stderr: {}", text(&output.stderr)));
    let value: Value = serde_json::from_str(last).expect("a JSON line");
    assert_eq!(value["type"], "summary", "{last}");
    value
}

/// The report's JSON lines without interface names (a file's is its name, standard input's `-`).
fn without_names(stdout: &[u8]) -> Vec<Value> {
    fn strip(value: &mut Value) {
        match value {
            Value::Object(map) => {
                map.remove("iface");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    text(stdout)
        .lines()
        .map(|line| {
            let mut value = serde_json::from_str(line).expect("a JSON line");
            strip(&mut value);
            value
        })
        .collect()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("gzip");
    encoder.finish().expect("gzip")
}

fn zstd(bytes: &[u8]) -> Vec<u8> {
    zstd::encode_all(bytes, 3).expect("zstd")
}

/// Writes `bytes` as `dir/name` (the same name in each directory: the report names interfaces
/// after the file).
fn write(dir: &str, name: &str, bytes: &[u8]) -> String {
    let path = tmp(dir).join(name);
    std::fs::create_dir_all(path.parent().expect("a parent")).expect("dir");
    std::fs::write(&path, bytes).expect("writing");
    path.to_str().expect("UTF-8").to_owned()
}

#[test]
fn stdin_gzip_and_zstd_give_the_plain_files_report() {
    for name in ["verdict-lab.cap", "two-interfaces-resets.pcapng"] {
        let plain = std::fs::read(fixture(name)).expect("the fixture");
        let expected = replay(&[fixture(name).to_str().expect("UTF-8")], None);
        assert!(expected.status.success(), "{}", text(&expected.stderr));
        assert!(summary(&expected)["totals"]["resets"].as_u64() > Some(0));
        // Same name, different contents: the compression is told by content, not by name.
        for (dir, bytes) in [("gzip", gzip(&plain)), ("zstd", zstd(&plain)), ("gzip-twice", gzip(&gzip(&plain)))] {
            let path = write(dir, name, &bytes);
            let output = replay(&[&path], None);
            if dir == "gzip-twice" {
                // Decompressed once, it is a gzip file, not a capture: refused, saying so.
                assert_eq!(output.status.code(), Some(1));
                assert!(text(&output.stderr).contains("not a pcap or pcapng file"), "{}", text(&output.stderr));
                continue;
            }
            assert!(output.status.success(), "{dir}: {}", text(&output.stderr));
            assert!(output.stdout == expected.stdout, "{dir} {name}: not the plain file's report");
        }
        // Standard input, plain and compressed: the same report but for the interface's name.
        for bytes in [plain.clone(), zstd(&plain)] {
            let output = replay(&["-"], Some(bytes));
            assert!(output.status.success(), "stdin: {}", text(&output.stderr));
            assert!(without_names(&output.stdout) == without_names(&expected.stdout), "{name} from stdin differs");
        }
    }
}

/// A file is parsed in place (mapped) in windows of 1 MiB; standard input is read in chunks.
/// Across many windows, records split by their edges and a block longer than two windows
/// (a 2.5 MiB frame in pcapng), both must give the same report.
#[test]
fn a_mapped_file_across_many_windows_reports_what_its_bytes_piped_do() {
    let mut frames = Vec::new();
    for i in 0..60_000u32 {
        let (port, flags) = (40_000 + (i % 500) as u16, if i % 97 == 0 { TCP_RST } else { TCP_ACK });
        // Sizes that drift, so records straddle the windows' edges at every offset.
        let payload = vec![0x5a; (i % 131) as usize];
        let frame = tcp_v4().ports(port, 443).flags(flags).payload(&payload).build().into_bytes();
        frames.push((0u32, Duration::from_micros(u64::from(i)) + Duration::from_secs(T0), frame));
        if i == 30_000 {
            // An RST with 2.5 MiB after its IP packet: no IP packet is that long, a block can be.
            let mut jumbo = tcp_v4().ports(39_999, 443).flags(TCP_RST).build().into_bytes();
            jumbo.resize(jumbo.len() + (5 << 19), 1);
            frames.push((0, Duration::from_secs(T0 + 1), jumbo));
        }
    }
    let mut bytes = Vec::new();
    rst_craft::capture::write_pcapng(&mut bytes, &["eth0"], frames.iter().map(|(i, t, f)| (*i, *t, &f[..])))
        .expect("pcapng");
    assert!(bytes.len() > 8 << 20, "{} bytes: fewer windows than meant", bytes.len());
    let path = write("windows", "many-windows.pcapng", &bytes);
    let mapped = replay(&[&path], None);
    assert!(mapped.status.success(), "{}", text(&mapped.stderr));
    assert_eq!(summary(&mapped)["totals"]["frames"].as_u64(), Some(frames.len() as u64));
    assert_eq!(summary(&mapped)["totals"]["resets"].as_u64(), Some(60_000 / 97 + 1 + 1));
    let piped = replay(&["-"], Some(bytes));
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    assert!(without_names(&piped.stdout) == without_names(&mapped.stdout), "the mapped file's report differs");
}

/// Runs replay on a broken stream: exit 1, one error line naming the file, `expected` in it.
fn broken(path: &str, keep_going: bool, expected: &[&str]) -> Output {
    let args: Vec<&str> = if keep_going { vec!["--keep-going", path] } else { vec![path] };
    let output = replay(&args, None);
    let stderr = text(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{path}: {stderr}");
    let file_name = Path::new(path).file_name().and_then(|n| n.to_str()).expect("a name");
    let line = stderr.lines().find(|l| l.contains("error")).unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(line.contains(file_name), "the error names the file: {line}");
    for needle in expected {
        assert!(line.contains(needle), "expected {needle:?} in: {line}");
    }
    output
}

#[test]
fn truncated_and_corrupt_compressed_streams_fail_naming_file_and_byte() {
    let plain = std::fs::read(fixture("verdict-lab.cap")).expect("the fixture");
    // Large enough that a cut lands after whole frames were decompressed.
    let big: Vec<u8> = {
        let mut frames = Vec::new();
        for i in 0..20_000u64 {
            let frame = tcp_v4().ports(443, 1000 + (i % 5000) as u16).flags(TCP_RST | TCP_ACK).build().into_bytes();
            frames.push((Duration::from_secs(T0) + Duration::from_micros(i), frame));
        }
        let mut out = Vec::new();
        write_pcap(&mut out, DataLink::ETHERNET, frames.iter().map(|(at, f)| (*at, &f[..]))).expect("pcap");
        out
    };
    for (kind, compressed) in [("gzip", gzip(&big)), ("zstd", zstd(&big))] {
        let cut = write("truncated", &format!("cut.pcap.{kind}"), &compressed[..compressed.len() / 2]);
        let output = broken(&cut, false, &[kind, "byte", "frame", "truncated or corrupt"]);
        assert!(text(&output.stdout).is_empty(), "no report without --keep-going");
        let output = broken(&cut, true, &[kind, "byte", "--keep-going"]);
        let read = summary(&output)["totals"]["resets"].as_u64().expect("resets");
        assert!(read > 0 && read < 20_000, "{kind}: --keep-going reports the {read} frames before the cut");

        let mut corrupt = compressed.clone();
        let middle = corrupt.len() / 2;
        for byte in &mut corrupt[middle..middle + 16] {
            *byte ^= 0x5a;
        }
        let path = write("corrupt", &format!("bad.pcap.{kind}"), &corrupt);
        // Damaged deflate or zstd data may first decompress into garbage records: either the
        // stream or a record is reported corrupt, with its byte.
        broken(&path, false, &["byte", "corrupt"]);
    }
    // A compressed file that is not a capture, and an unknown format.
    let path = write("not-capture", "notes.gz", &gzip(b"meeting notes, not a capture"));
    broken(&path, false, &["not a pcap or pcapng file", "once gzip-decompressed"]);
    let path = write("not-capture", "blob.pcap", &[0x42; 64]);
    broken(&path, false, &["not a pcap or pcapng file", "42 42 42 42"]);
    // A truncated plain capture from a pipe: its name is `-`, the byte offset is given.
    let output = replay(&["-"], Some(plain[..plain.len() - 7].to_vec()));
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("-: frame") && stderr.contains("byte") && stderr.contains("truncated"), "{stderr}");
}

/// Frames one second apart from `T0`, one reset each on its own flow.
fn seconds_capture(n: u64) -> Vec<(Duration, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let frame = tcp_v4().ports(443, 2000 + i as u16).flags(TCP_RST | TCP_ACK).build().into_bytes();
            (Duration::from_secs(T0 + i) + Duration::from_millis(250), frame)
        })
        .collect()
}

fn pcap_bytes(frames: &[(Duration, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    write_pcap(&mut out, DataLink::ETHERNET, frames.iter().map(|(at, f)| (*at, &f[..]))).expect("pcap");
    out
}

#[test]
fn from_and_to_replay_a_window_as_if_the_file_were_cut() {
    let frames = seconds_capture(10);
    let whole = write("window-whole", "w.pcap", &pcap_bytes(&frames));
    // [T0+3.25, T0+7.25): frames 3 to 6. Same file name, so the reports can be compared whole.
    let cut = write("window-cut", "w.pcap", &pcap_bytes(&frames[3..7]));
    let expected = replay(&["--interval", "1s", &cut], None);
    assert!(expected.status.success());
    assert_eq!(summary(&expected)["totals"]["resets"].as_u64(), Some(4));
    let from = format!("{}.25", T0 + 3);
    let to = format!("{}.25", T0 + 7);
    let windowed = replay(&["--interval", "1s", "--from", &from, "--to", &to, &whole], None);
    assert!(windowed.status.success(), "{}", text(&windowed.stderr));
    assert!(windowed.stdout == expected.stdout, "the window's report is not the cut file's");
    // RFC 3339, and only one end given.
    let output = replay(&["--from", "2023-11-14T22:13:28Z", &whole], None);
    assert_eq!(summary(&output)["totals"]["resets"].as_u64(), Some(2), "T0 is 2023-11-14T22:13:20Z");
    let output = replay(&["--to", &from, &whole], None);
    assert_eq!(summary(&output)["totals"]["resets"].as_u64(), Some(3));
    // An empty window and a bad time are refused before reading anything.
    let output = replay(&["--from", &to, "--to", &from, &whole], None);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("--from must be before --to"), "{}", text(&output.stderr));
    let output = replay(&["--from", "yesterday", &whole], None);
    assert_eq!(output.status.code(), Some(2), "a usage error");
}

#[test]
fn a_file_is_read_no_further_than_a_minute_past_to() {
    let frames = seconds_capture(6);
    let at = |seconds: u64| Duration::from_secs(T0 + seconds) + Duration::from_millis(250);
    let reset = |port: u16| tcp_v4().ports(443, port).flags(TCP_RST | TCP_ACK).build().into_bytes();
    // --to T0+5.25. Out of order by less than a minute past it, frame 2 still counts; a frame a
    // minute past it ends the file, and frame 3 after it is not read. The next file is.
    let mut disordered = vec![frames[0].clone(), frames[1].clone(), (at(30), reset(3000))];
    disordered.extend([frames[2].clone(), (at(65), reset(3001)), frames[3].clone()]);
    let first = write("past-to", "first.pcap", &pcap_bytes(&disordered));
    let next = write("past-to", "next.pcap", &pcap_bytes(&frames[4..5]));
    let to = format!("{}.25", T0 + 5);
    let output = replay(&["--to", &to, &first], None);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(summary(&output)["totals"]["resets"].as_u64(), Some(3), "frames 0, 1 and 2");
    let output = replay(&["--to", &to, &first, &next], None);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(summary(&output)["totals"]["resets"].as_u64(), Some(4), "and frame 4 of the next file");
    // Without --to, every frame of the file counts.
    let output = replay(&[&first], None);
    assert_eq!(summary(&output)["totals"]["resets"].as_u64(), Some(6));
}

/// A pseudo-terminal: (controller, the terminal's side as a file).
fn pty() -> (File, File) {
    let (mut controller, mut terminal) = (-1, -1);
    // SAFETY: openpty writes two new descriptors into the two ints; null name, termios, winsize.
    let rc = unsafe {
        libc::openpty(&mut controller, &mut terminal, std::ptr::null_mut(), std::ptr::null(), std::ptr::null())
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just opened and are owned by nothing else.
    unsafe { (File::from(OwnedFd::from_raw_fd(controller)), File::from(OwnedFd::from_raw_fd(terminal))) }
}

/// Replays a capture fed slowly through stdin (so the run outlasts a redraw), with stderr on a
/// terminal (`tty`) or a pipe. Returns (what the terminal or pipe got, stdout).
fn slow_replay(extra: &[&str], tty: bool) -> (String, String) {
    let bytes = pcap_bytes(&seconds_capture(200));
    let mut command = rstwatch();
    command.args(["replay", "--format", "json"]).args(extra).arg("-");
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    let controller = if tty {
        let (controller, terminal) = pty();
        command.stderr(terminal);
        Some(controller)
    } else {
        command.stderr(Stdio::piped());
        None
    };
    let mut child = command.spawn().expect("running rstwatch");
    // The parent's copy of the terminal side went with `command`'s: close it so that reading
    // the controller ends (EIO) when the child exits.
    drop(command);
    let reader = controller.map(|mut controller| {
        thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = controller.read(&mut buf) {
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            out
        })
    });
    let mut stdin = child.stdin.take().expect("stdin");
    let half = bytes.len() / 2;
    stdin.write_all(&bytes[..half]).expect("first half");
    stdin.flush().expect("flush");
    // Long enough for several redraws (every 200 ms).
    thread::sleep(Duration::from_millis(900));
    stdin.write_all(&bytes[half..]).expect("second half");
    drop(stdin);
    let output = child.wait_with_output().expect("waiting");
    assert!(output.status.success(), "{}", text(&output.stderr));
    let stderr = match reader {
        Some(reader) => text(&reader.join().expect("the terminal reader")),
        None => text(&output.stderr),
    };
    (stderr, text(&output.stdout))
}

#[test]
fn progress_line_only_on_a_terminal() {
    let (terminal, stdout) = slow_replay(&[], true);
    // `standard input: 5.2 KiB, 99 frames[, 10 KiB/s]`, drawn while the second half was waited for.
    let counts: Vec<u64> = terminal
        .split("standard input: ")
        .skip(1)
        .filter_map(|line| line.split(" frames").next()?.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(counts.iter().any(|&n| n > 0 && n < 200), "no progress line with part of the frames: {terminal:?}");
    for line in stdout.lines() {
        let value: Value = serde_json::from_str(line).expect("stdout is JSON lines only");
        assert!(value["type"].is_string());
    }
    assert!(!stdout.contains("standard input"), "the progress line stays off stdout");
    assert_eq!(
        serde_json::from_str::<Value>(stdout.lines().last().expect("a summary")).expect("JSON")["totals"]["resets"],
        200
    );

    let (piped, _) = slow_replay(&[], false);
    assert!(!piped.contains("standard input"), "no progress line when stderr is not a terminal: {piped:?}");
    let (quiet, _) = slow_replay(&["--quiet"], true);
    assert!(!quiet.contains("standard input"), "no progress line with --quiet: {quiet:?}");
}

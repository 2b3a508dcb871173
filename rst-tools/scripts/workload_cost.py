#!/usr/bin/env python3
"""Cost per reset of the workload attribution (docs/benchmark-history.md, "Workloads").

Builds two network namespaces (names with this pid), runs target/release/rstwatch in one of
them (nsenter --net, so it sees tracefs and the cgroup2 tree) with and without
--no-workloads, and with --capture (into a file under /tmp, removed after), and makes N refused connects each way plus N aborts, so that
tcp:tcp_send_reset fires with and without a socket and tcp:tcp_receive_reset fires. Kernel BPF
run-time statistics are on only while the resets are made, through a BPF_ENABLE_STATS file
descriptor (closing it restores the previous state); `bpftool prog show` reads them. Root.

    python3 rst-tools/scripts/workload_cost.py [N]
"""
import ctypes, json, os, socket, struct, subprocess, sys, time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
PID = os.getpid()
A, B = f"rwcost-{PID}-a", f"rwcost-{PID}-b"
IA, IB = f"rwc{PID:x}a"[:15], f"rwc{PID:x}b"[:15]
BIN = os.path.join(os.path.dirname(__file__), "../../target/release/rstwatch")
CG = None


def sh(*argv, check=True):
    return subprocess.run(argv, check=check, capture_output=True, text=True).stdout


def enable_stats():
    libc = ctypes.CDLL(None, use_errno=True)
    attr = struct.pack("I", 0).ljust(120, b"\0")  # BPF_STATS_RUN_TIME
    fd = libc.syscall(321, 32, ctypes.c_char_p(attr), len(attr))  # SYS_bpf, BPF_ENABLE_STATS
    if fd < 0:
        raise OSError(ctypes.get_errno(), "BPF_ENABLE_STATS")
    return fd


def progs(pid):
    """The run time and count of each program `pid` holds (by its fds' prog_id)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            for line in open(f"/proc/{pid}/fdinfo/{fd}"):
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except OSError:
            pass
    found = {}
    for prog in json.loads(sh("bpftool", "prog", "show", "-j")):
        if prog["id"] in ids:
            found[prog.get("name", "")] = (prog.get("run_time_ns", 0), prog.get("run_cnt", 0))
    return found


def in_ns(ns, code, *args):
    return subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", "python3", "-c", code, *map(str, args)])


CLIENT = """
import socket, struct, sys
mode, host, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
for _ in range(n):
    s = socket.socket()
    try:
        s.connect((host, port))
        if mode == "abort":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    s.close()
"""
SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(4096); held = []
while True: held.append(s.accept()[0])
"""


def run(extra):
    rw = subprocess.Popen(["nsenter", f"--net=/run/netns/{A}", BIN, "-i", IA, "--format", "json", *extra],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while "attached to" not in rw.stderr.readline():
        if rw.poll() is not None:
            raise SystemExit("rstwatch did not start")
    before = progs(rw.pid)
    fd = enable_stats()
    try:
        t = time.time()
        for args in (("refused", "10.79.0.2", 81), ("abort", "10.79.0.2", 8080)):
            proc = subprocess.Popen(["sh", "-c", 'echo $$ > "$0/cgroup.procs"; exec nsenter --net=/run/netns/$1 python3 -c "$2" "$3" "$4" "$5" "$6"',
                                     CG, A, CLIENT, *map(str, args), str(N)])
            proc.wait()
        in_ns(B, CLIENT, "refused", "10.79.0.1", 82, N).wait()
        elapsed = time.time() - t
    finally:
        os.close(fd)
    after = progs(rw.pid)
    if os.environ.get("DEBUG"):
        print(before, after, file=sys.stderr)
    rw.send_signal(2)
    rw.wait()
    out = {}
    for name, (time_ns, count) in after.items():
        t0, c0 = before.get(name, (0, 0))
        if count > c0:
            out[name] = (count - c0, (time_ns - t0) / (count - c0))
    return out, elapsed


def main():
    global CG
    mount = next(l.split(" - ")[0].split()[4] for l in open("/proc/self/mountinfo") if l.split(" - ")[1].split()[0] == "cgroup2")
    CG = f"{mount}/rwcost-{PID}.service"
    os.mkdir(CG)
    sh("ip", "netns", "add", A); sh("ip", "netns", "add", B)
    server = None
    try:
        sh("ip", "link", "add", IA, "netns", A, "type", "veth", "peer", "name", IB, "netns", B)
        for ns, ifc, addr in ((A, IA, "10.79.0.1/24"), (B, IB, "10.79.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", ifc)
            sh("ip", "-n", ns, "link", "set", ifc, "up"); sh("ip", "-n", ns, "link", "set", "lo", "up")
        server = in_ns(B, SERVER)
        time.sleep(0.5)
        # --capture: the send program also records each reason for the capture's comments.
        capture = f"/tmp/rwcost-{PID}.pcapng"
        configs = (("workloads on", []), ("--no-workloads", ["--no-workloads"]), ("--capture", ["--capture", capture]))
        for label, extra in configs:
            result, elapsed = run(extra)
            for name in ("rstwatch_send_reset", "rstwatch_receive_reset"):
                if name in result:
                    runs, ns = result[name]
                    print(f"{label:15} {name:24} runs {runs:6}  {ns:7.1f} ns/run")
    finally:
        if server:
            server.kill()
        sh("ip", "netns", "del", A, check=False); sh("ip", "netns", "del", B, check=False)
        if os.path.exists(f"/tmp/rwcost-{PID}.pcapng"):
            os.remove(f"/tmp/rwcost-{PID}.pcapng")
        for _ in range(50):
            try:
                os.rmdir(CG)
                break
            except OSError:
                time.sleep(0.1)


main()

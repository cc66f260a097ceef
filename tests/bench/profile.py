#!/usr/bin/python3
"""profile.py — where meshgate's time goes, one contender at a time (issue #6).

    /usr/bin/python3 tests/bench/profile.py [--meshgate BIN] [--durability write-ahead|async]
        [--n 20000] [--rate 250] [--rate-s 3] [--repeat 3] [--perf] [--strace]

Reuses bench.py's setup (nghttpd upstream, ES256 JWKS and token, config, grant) for ONE
meshgate, then, --repeat times:
  * closed loop  h2load -t1 -c4 -m32 -n N: req/s, p50/p99, CPU-s/1k requests of meshgate;
  * fixed rate   h2load -t1 -c4 -m8 --rps RATE (per connection) -D S: p50/p99;
and from meshgate's /metrics the lineage commits, entries and time in commit (so
entries/commit and ms/commit). Medians are printed last. --perf records the closed-loop
runs with `perf record -e cpu-clock -g` and prints the top symbols per thread; --strace
counts meshgate's syscalls over one closed-loop run. --callgrind runs meshgate under
valgrind's callgrind instead and counts instructions over --n requests (counters zeroed
after the warm-up): instructions per request are stable under any other load on the
machine, for before/after comparisons; the top functions follow. Nothing is asserted.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def metrics(port):
    out = {}
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("meshgate_lineage_") and not line.startswith("#"):
                k, _, v = line.rpartition(" ")
                try:
                    out[k] = float(v)
                except ValueError:
                    pass
    return out


def thread_cpu(pid):
    """{tid: (utime, stime) in seconds} of every thread of pid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fl = st[st.rindex(")") + 2:].split()
        out[int(tid)] = (int(fl[11]) / bench.CLK_TCK, int(fl[12]) / bench.CLK_TCK)
    return out


def main(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--meshgate", default=os.environ.get("MESHGATE_BIN",
                                                         str(bench.ROOT / "build/sidecar/meshgate")))
    p.add_argument("--durability", default="write-ahead")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--path", default="/datasets/small", choices=["/datasets/small", "/datasets/big"],
                   help="100-byte or 16 KiB responses")
    p.add_argument("--conns", type=int, default=4)
    p.add_argument("--streams", type=int, default=32)
    p.add_argument("--rate", type=int, default=250, help="req/s per connection (4 connections)")
    p.add_argument("--rate-s", type=int, default=3)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tmpdir", default="/var/tmp")
    p.add_argument("--perf", action="store_true")
    p.add_argument("--strace", action="store_true")
    p.add_argument("--callgrind", action="store_true",
                   help="instructions per request under callgrind (use --n 2000 or so)")
    p.add_argument("--flat", action="store_true",
                   help="--perf without call graphs (meshgate has no frame pointers: the "
                        "flat profile names meshgate's own functions more reliably)")
    p.add_argument("--timeline", action="store_true",
                   help="strace -f -tt -T all syscalls of 20 sequential requests "
                        "(kept at /tmp/meshgate-timeline.strace)")
    p.add_argument("--strace-fixed", action="store_true",
                   help="strace -T the write syscalls during the first fixed-rate run "
                        "(copied to /tmp/fixed.strace)")
    a = p.parse_args(argv)
    a.meshgate = str(Path(a.meshgate).resolve())

    # bench.py's own defaults for everything Bench reads, with ours on top
    ba = bench.parse_args(["--meshgate", a.meshgate, "--tmpdir", a.tmpdir,
                           "--workers", str(a.workers)])
    b = bench.Bench(ba)
    if a.callgrind:
        b.wrapper = ["valgrind", "--tool=callgrind", "--dump-instr=no", "--instr-atstart=no",
                     f"--callgrind-out-file={b.tmp}/cg.out"]
        b.start_timeout = 120.0
    res = {"rps": [], "p50": [], "p99": [], "cpu": [], "fp50": [], "fp99": [], "fup50": [],
           "fup99": []}
    try:
        b.setup_common()
        c = bench.Contender("mg", "meshgate", "meshgate", False, a.durability)
        b.setup_meshgate(c)
        admin = c.info["config"]["admin"]["address"].rsplit(":", 1)[1]
        pid = c.proc.pid
        url = c.url(a.path)
        bench.run_h2load(url, {"c": 4, "m": 32, "n": 500 if a.callgrind else 5000}, b.token,
                         b.tmp / "w.tsv", 600)
        upurl = f"http://127.0.0.1:{b.up_port}{a.path}"
        if a.callgrind:
            return callgrind_run(a, b, pid, url)
        if a.timeline:
            st = subprocess.Popen(["strace", "-f", "-tt", "-T", "-o", "/tmp/meshgate-timeline.strace",
                                   "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            r = bench.run_h2load(url, {"c": 1, "m": 1, "n": 20}, b.token, b.tmp / "t.tsv", 60)
            st.send_signal(2)
            st.wait(30)
            print(f"timeline: 20 sequential requests p50 {r.get('p50_ms')} ms; "
                  "syscalls in /tmp/meshgate-timeline.strace")
        for i in range(a.repeat):
            m0 = metrics(admin)
            cpu0 = bench.cpu_seconds(pid)
            th0 = thread_cpu(pid)
            extra = None
            if a.perf and i == 0:
                extra = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock"] +
                                         ([] if a.flat else ["-g"]) + [
                                          "-o", str(b.tmp / "perf.data"), "-p", str(pid)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.3)
            if a.strace and i == 0:
                extra = subprocess.Popen(["strace", "-f", "-c", "-o", str(b.tmp / "strace.txt"),
                                          "-p", str(pid)], stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL)
                time.sleep(0.5)
            r = bench.run_h2load(url, {"c": a.conns, "m": a.streams, "n": a.n}, b.token,
                                 b.tmp / "c.tsv", 120)
            if extra:
                extra.send_signal(2)
                extra.wait(30)
            bench.settle(pid, 15)
            cpu1 = bench.cpu_seconds(pid)
            th1 = thread_cpu(pid)
            m1 = metrics(admin)
            done = r.get("done", 0) or 1
            res["rps"].append(r.get("rps", 0))
            res["p50"].append(r.get("p50_ms") or 0)
            res["p99"].append(r.get("p99_ms") or 0)
            res["cpu"].append((cpu1 - cpu0) / done * 1000)
            com = m1.get("meshgate_lineage_commits_total", 0) - m0.get("meshgate_lineage_commits_total", 0)
            ent = m1.get("meshgate_lineage_entries", 0) - m0.get("meshgate_lineage_entries", 0)
            fs = m1.get("meshgate_lineage_fsync_seconds_total", 0) - m0.get("meshgate_lineage_fsync_seconds_total", 0)
            print(f"closed  rps {r.get('rps', 0):8.0f}  p50 {r.get('p50_ms') or 0:7.3f} ms  "
                  f"p99 {r.get('p99_ms') or 0:7.3f} ms  cpu/1k {res['cpu'][-1]:.4f}  commits {com:.0f}  "
                  f"entries/commit {ent / com if com else 0:.1f}  ms/commit {fs / com * 1000 if com else 0:.3f}"
                  + ("" if r.get("ok") else f"  FAILED {r.get('error')}"), flush=True)
            # per thread (tid order = creation order: main, workers, lineage writer, admin, ...)
            parts = []
            for tid in sorted(th1):
                u0, s0 = th0.get(tid, (0, 0))
                u, sy = th1[tid][0] - u0, th1[tid][1] - s0
                if u + sy > 0:
                    parts.append(f"{tid - pid:+d}: usr {u / done * 1000:.4f} sys {sy / done * 1000:.4f}")
            print("        cpu/1k by thread (tid-pid): " + "; ".join(parts), flush=True)
            for tgt, key in ((upurl, "fu"), (url, "f")):
                m0 = metrics(admin)
                st = None
                if a.strace_fixed and i == 0 and key == "f":
                    st = subprocess.Popen(["strace", "-f", "-T", "-tt", "-e",
                                           "trace=fdatasync,fsync,pwrite64,pwritev,write,writev",
                                           "-o", str(b.tmp / "fixed.strace"), "-p", str(pid)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(0.5)
                r = bench.run_h2load(tgt, {"c": 4, "m": 8, "D": a.rate_s, "rps": a.rate}, b.token,
                                     b.tmp / "f.tsv", 60)
                if st:
                    st.send_signal(2)
                    st.wait(30)
                    subprocess.run(["cp", str(b.tmp / "fixed.strace"), "/tmp/fixed.strace"])
                m1 = metrics(admin)
                res[key + "p50"].append(r.get("p50_ms") or 0)
                res[key + "p99"].append(r.get("p99_ms") or 0)
                com = m1.get("meshgate_lineage_commits_total", 0) - m0.get("meshgate_lineage_commits_total", 0)
                fs = m1.get("meshgate_lineage_fsync_seconds_total", 0) - m0.get("meshgate_lineage_fsync_seconds_total", 0)
                print(f"fixed {'upstream' if key == 'fu' else 'meshgate'}  p50 {res[key + 'p50'][-1]:7.3f} ms  "
                      f"p99 {res[key + 'p99'][-1]:7.3f} ms" +
                      (f"  commits {com:.0f}  ms/commit {fs / com * 1000 if com else 0:.3f}" if key == "f" else ""),
                      flush=True)
        md = {k: statistics.median(v) for k, v in res.items() if v}
        if a.repeat > 0:
            print(f"MEDIAN {a.durability}: rps {md['rps']:.0f}  p50 {md['p50']:.3f}  p99 {md['p99']:.3f}  "
                  f"cpu/1k {md['cpu']:.4f}  fixed added p50 {md['fp50'] - md['fup50']:+.3f} ms  "
                  f"p99 {md['fp99'] - md['fup99']:+.3f} ms  (load {os.getloadavg()[0]:.1f})")
        if a.perf:
            rep = subprocess.run(["perf", "report", "-i", str(b.tmp / "perf.data"), "--no-children",
                                  "--sort", "comm,dso,sym", "--stdio", "-g", "none",
                                  "--percent-limit", "0.7"], capture_output=True, text=True)
            print("\n".join(l for l in rep.stdout.splitlines() if l and not l.startswith("#")))
            subprocess.run(["cp", str(b.tmp / "perf.data"), "/tmp/meshgate-profile.perf.data"])
            print("perf data kept: /tmp/meshgate-profile.perf.data (perf report -i ... --sort tid,sym)")
        if a.strace:
            print((b.tmp / "strace.txt").read_text())
    finally:
        b.procs.stop_all()
        if not os.environ.get("MG_PROFILE_KEEP"):
            subprocess.run(["rm", "-rf", str(b.tmp)])
    return 0


def callgrind_run(a, b, pid, url):
    """Instrumentation on (start-up and warm-up ran without it), --n requests, dump; prints
    instructions per request and the top functions by self cost."""
    subprocess.run(["callgrind_control", "-i", "on", str(pid)], capture_output=True, timeout=60)
    r = bench.run_h2load(url, {"c": a.conns, "m": a.streams, "n": a.n}, b.token,
                         b.tmp / "c.tsv", 1200)
    done = r.get("done", 0) or 1
    time.sleep(1)  # outcome entries and their group commit
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, timeout=120)
    dumps = sorted(b.tmp.glob("cg.out.*"))  # cg.out.1: the dump above (cg.out: at exit)
    if not dumps or not r.get("ok"):
        print(f"callgrind: no dump or the run failed ({r.get('error')})")
        return 1
    rep = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=95",
                          str(dumps[-1])],
                         capture_output=True, text=True)
    total = 0
    for line in rep.stdout.splitlines():
        if "PROGRAM TOTALS" in line:
            total = int(line.split()[0].replace(",", ""))
    print(f"callgrind {a.durability} {a.path}: {done} requests, {total:,} instructions, "
          f"{total / done:,.0f} per request (every thread of meshgate)")
    shown = 0
    for line in rep.stdout.splitlines():
        parts = line.split()
        if parts and parts[0].replace(",", "").isdigit() and "PROGRAM TOTALS" not in line:
            print("   " + line.strip())
            shown += 1
            if shown >= 25:
                break
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/python3
"""meshgate performance benchmark (issue #6).

One run on this machine, everything on 127.0.0.1:

  upstream      nghttpd --no-tls serving /datasets/small (100 B) and /datasets/big (16 KiB)
  contenders    the upstream alone; nghttpx h2c->h2c; meshgate h2c write-ahead; meshgate h2c
                async; nghttpx TLS->h2c; meshgate TLS write-ahead (JWT cached + grant + lineage)
  load          h2load -t 1, the same flags and the same Authorization header for everyone

Throughput runs (closed loop, -c 10 -m 100 = 1,000 concurrent streams) give requests/s,
p50/p99 (computed from h2load's --log-file, not its summary), the measured process's
CPU-seconds per 1,000 requests (utime+stime from /proc/PID/stat of the process and its
descendants, e.g. nghttpx's worker process) and its peak RSS (VmHWM, summed over the tree).
Fixed-rate runs (h2load --rps) give the latency a proxy adds over the upstream alone at a
moderate load. Every figure is the median of --runs runs; contenders alternate (the order
rotates each run) so slow drift of the machine spreads over all of them.

The design choice that matters: a meshgate that cannot be set up (not built, config rejected,
admin API missing, requests refused) is reported as "unavailable: <reason>" and the other
contenders still run; only a broken upstream or load generator makes the harness fail.
"""

import argparse
import base64
import datetime
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
ISSUER = "https://idp.bench"
AUDIENCE = "mesh"
KID = "bench-es256"
ORIGIN = "bench.local/orders"
SIZES = {"small": 100, "big": 16384}

# name, label, kind, tls, durability
CONTENDERS = [
    ("upstream", "upstream alone (nghttpd h2c)", "upstream", False, None),
    ("nghttpx", "nghttpx h2c->h2c", "nghttpx", False, None),
    ("mg-wa", "meshgate h2c write-ahead", "meshgate", False, "write-ahead"),
    ("mg-async", "meshgate h2c async", "meshgate", False, "async"),
    ("nghttpx-tls", "nghttpx TLS->h2c", "nghttpx", True, None),
    ("mg-tls", "meshgate TLS write-ahead", "meshgate", True, "write-ahead"),
]

TARGETS = {
    "rps_vs_nghttpx": 0.8,        # meshgate write-ahead rps >= 0.8 x nghttpx (h2c)
    "cpu_s_per_1k": 0.02,         # CPU-seconds per 1,000 requests
    "added_p99_ms": 0.5,          # at fixed rate; write-ahead gets + one fdatasync
    "rss_mb": 64.0,               # with 1,000 concurrent streams
}


class BenchError(Exception):
    """The harness itself cannot go on (upstream or h2load broken)."""


class Unavailable(Exception):
    """A contender cannot be measured; the reason is reported, the run goes on."""


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

class Procs:
    """Every process the harness starts, each in its own session so that its whole group
    (nghttpx's worker, meshgate's threads) can be stopped by the group id we created."""

    def __init__(self):
        self.procs = []

    def start(self, name, argv, logpath, cwd=None):
        f = open(logpath, "ab")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                             cwd=cwd, start_new_session=True)
        f.close()
        p.bench_name = name
        p.bench_log = logpath
        self.procs.append(p)
        return p

    def stop(self, p, grace=5.0):
        if p.poll() is not None:
            # reaped already: its id may belong to someone else by now, signal nothing
            if p in self.procs:
                self.procs.remove(p)
            return
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        # the leader may be gone while its group (e.g. a forked worker) lingers
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in list(reversed(self.procs)):
            self.stop(p)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"{proc.bench_name} exited with status {proc.returncode}: "
                              f"{last_line(proc.bench_log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise Unavailable(f"{proc.bench_name} did not listen on 127.0.0.1:{port} "
                      f"within {timeout:.0f} s")


def last_line(path):
    try:
        lines = [l for l in Path(path).read_text(errors="replace").splitlines() if l.strip()]
        return lines[-1][:300] if lines else "(no output)"
    except OSError:
        return "(no log)"


def proc_tree(pid):
    """pid and all its descendants (nghttpx forks its worker process)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        ppid = int(s[s.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid):
    """utime+stime of the process tree; /proc/PID/stat of a thread-group leader already sums
    its threads."""
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                s = f.read()
        except OSError:
            continue
        fields = s[s.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total / CLK_TCK


def status_kb(pid, key):
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def settle(pid, max_s, window=0.25, idle_cpu_s=0.02):
    """Wait until the process tree uses less than idle_cpu_s of CPU per window (8 % of a
    core), at most max_s; returns the seconds waited."""
    t0 = time.monotonic()
    prev = cpu_seconds(pid)
    while time.monotonic() - t0 < max_s:
        time.sleep(window)
        cur = cpu_seconds(pid)
        if cur - prev < idle_cpu_s:
            break
        prev = cur
    return round(time.monotonic() - t0, 2)


class MemSampler(threading.Thread):
    """Peak RssAnon and RssFile of a process tree during a run, every 100 ms. VmHWM alone
    cannot tell heap from mapped file pages (meshgate maps its LMDB log)."""

    def __init__(self, pid, period=0.1):
        super().__init__(daemon=True)
        self.pids = proc_tree(pid)
        self.period = period
        self.done = threading.Event()
        self.max_anon_kb = 0
        self.max_file_kb = 0

    def sample(self):
        anon = file_ = 0
        for p in self.pids:
            try:
                with open(f"/proc/{p}/status") as f:
                    for line in f:
                        if line.startswith("RssAnon:"):
                            anon += int(line.split()[1])
                        elif line.startswith("RssFile:"):
                            file_ += int(line.split()[1])
            except OSError:
                continue
        self.max_anon_kb = max(self.max_anon_kb, anon)
        self.max_file_kb = max(self.max_file_kb, file_)

    def run(self):
        while not self.done.is_set():
            self.sample()
            self.done.wait(self.period)

    def stop(self):
        self.done.set()
        self.join(timeout=2)
        self.sample()


# ---------------------------------------------------------------- h2load

def percentile(sorted_vals, q):
    """Nearest-rank percentile of an ascending list."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[k]


def duration_s(text):
    """h2load's "finished in" value: 812us, 1.51ms, 3.00s, 1.02m, 1.00h."""
    for unit, mult in (("us", 1e-6), ("ms", 1e-3), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(unit):
            try:
                return float(text[:-len(unit)]) * mult
            except ValueError:
                return None
    return None


def run_h2load(url, load, token, logfile, timeout):
    """Run h2load once; returns rps, counts and p50/p99 (ms) computed from the log file,
    whose columns are: start (µs since epoch), status (-1 = failed stream), µs to the end
    of the response."""
    argv = ["h2load", "-t", "1", "-c", str(load["c"]), "-m", str(load["m"]),
            "-H", f"authorization: Bearer {token}", f"--log-file={logfile}"]
    if "D" in load:
        argv += ["-D", str(load["D"])]
    else:
        argv += ["-n", str(load["n"])]
    if load.get("rps"):
        argv += [f"--rps={load['rps']}"]
    argv.append(url)
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"h2load did not finish within {timeout:.0f} s"}
    out = r.stdout
    res = {"ok": True, "argv": " ".join(argv)}
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("finished in"):
            # finished in 3.00s, 132884.00 req/s, 16.35MB/s
            parts = line.split(",")
            res["elapsed_s"] = duration_s(parts[0].split()[-1])
            res["rps"] = float(parts[1].split()[0])
        elif line.startswith("requests:"):
            # requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
            for item in line[len("requests:"):].split(","):
                v, k = item.split()
                res[k] = int(v)
        elif line.startswith("status codes:"):
            for item in line[len("status codes:"):].split(","):
                v, k = item.split()
                res["status_" + k] = int(v)
    lat, bad = [], 0
    try:
        with open(logfile) as f:
            for line in f:
                cols = line.split("\t")
                if len(cols) < 3:
                    continue
                if cols[1] != "200":
                    bad += 1
                    continue
                lat.append(int(cols[2]))
        os.unlink(logfile)
    except OSError:
        pass
    lat.sort()
    res["samples"] = len(lat)
    res["non200"] = bad
    res["p50_ms"] = percentile(lat, 0.50) / 1000 if lat else None
    res["p99_ms"] = percentile(lat, 0.99) / 1000 if lat else None
    done = res.get("done", 0)
    if r.returncode != 0 or "rps" not in res:
        res["ok"] = False
        res["error"] = f"h2load exit {r.returncode}: {(r.stderr or out).strip()[-300:]}"
    elif done == 0 or res.get("status_2xx", 0) < 0.99 * done:
        res["ok"] = False
        res["error"] = (f"only {res.get('status_2xx', 0)} of {done} responses were 2xx "
                        f"(4xx {res.get('status_4xx', 0)}, 5xx {res.get('status_5xx', 0)}, "
                        f"failed {res.get('failed', 0)})")
    return res


# ---------------------------------------------------------------- key material

def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_identity(d, lifetime_s=3600):
    """EC P-256 JWKS file and two tokens (data user, admin) minted with PyJWT."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    nums = key.public_key().public_numbers()
    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": KID,
                      "x": b64u(nums.x.to_bytes(32, "big")),
                      "y": b64u(nums.y.to_bytes(32, "big"))}]}
    jwks_path = d / "idp.jwks"
    jwks_path.write_text(json.dumps(jwks))
    now = int(time.time())
    base = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "nbf": now - 5, "exp": now + lifetime_s}
    user = jwt.encode(dict(base, sub="bench-user", groups=["analysts"]), key,
                      algorithm="ES256", headers={"kid": KID})
    admin = jwt.encode(dict(base, sub="bench-admin", scope="mesh:admin"), key,
                       algorithm="ES256", headers={"kid": KID})
    return jwks_path, user, admin


def make_cert(d):
    key, cert = d / "tls.key", d / "tls.pem"
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise BenchError(f"openssl req failed: {r.stderr.strip()[-300:]}")
    return key, cert


def fdatasync_ms(d, iterations):
    """One fdatasync on this disk: a loop of 4 KiB append + fdatasync on a temp file in the
    directory the lineage logs live in."""
    path = d / "fdatasync.probe"
    block = os.urandom(4096)
    times = []
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(iterations):
            t0 = time.perf_counter()
            os.write(fd, block)
            os.fdatasync(fd)
            times.append((time.perf_counter() - t0) * 1000)
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return {"iterations": iterations, "median_ms": statistics.median(times),
            "p99_ms": percentile(times, 0.99), "max_ms": times[-1]}


# ---------------------------------------------------------------- contenders

class Contender:
    def __init__(self, name, label, kind, tls, durability):
        self.name, self.label, self.kind, self.tls, self.durability = \
            name, label, kind, tls, durability
        self.proc = None
        self.port = None
        self.reason = None          # set when unavailable
        self.runs = {}              # size -> [result]
        self.fixed = []             # fixed-rate results
        self.info = {}

    @property
    def available(self):
        return self.reason is None and self.proc is not None

    def url(self, path):
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"


class Bench:
    def __init__(self, args):
        self.args = args
        self.procs = Procs()
        self.tmp = Path(tempfile.mkdtemp(prefix="meshgate-bench-", dir=args.tmpdir))
        self.upstream = None
        self.up_port = None
        self.token = None
        self.admin_token = None
        self.meshgate_version = None
        self.wrapper = []          # e.g. valgrind (profile.py --callgrind)
        self.start_timeout = 10.0

    # -- setup

    def setup_common(self):
        for tool in ("h2load", "nghttpd"):
            if not shutil.which(tool):
                raise BenchError(f"{tool} not found (apt-get install nghttp2-client nghttp2-server)")
        doc = self.tmp / "doc" / "datasets"
        doc.mkdir(parents=True)
        for name, n in SIZES.items():
            (doc / name).write_bytes(os.urandom(n))
        # an hour, or longer than a long soak
        self.jwks, self.token, self.admin_token = make_identity(
            self.tmp, max(3600, (self.args.soak or 0) + 600))
        self.tls_key, self.tls_cert = make_cert(self.tmp)
        self.up_port = free_port()
        # -m 1000: proxies multiplex many client streams onto a few upstream connections;
        # the upstream's stream limit must not be what is measured.
        self.upstream = self.procs.start(
            "nghttpd", ["nghttpd", "--no-tls", "-a", "127.0.0.1", "-m", "1000",
                        "-d", str(self.tmp / "doc"), str(self.up_port)], self.tmp / "nghttpd.log")
        try:
            wait_port(self.up_port, self.upstream)
        except Unavailable as e:
            raise BenchError(f"upstream: {e}")

    def setup(self, c):
        try:
            if c.kind == "upstream":
                c.proc, c.port = self.upstream, self.up_port
            elif c.kind == "nghttpx":
                self.setup_nghttpx(c)
            else:
                self.setup_meshgate(c)
            self.smoke(c)
        except Unavailable as e:
            c.reason = str(e)
            if c.proc is not None and c.proc is not self.upstream:
                self.procs.stop(c.proc)
            c.proc = None
            log(f"  {c.name}: unavailable: {c.reason}")

    def setup_nghttpx(self, c):
        if not shutil.which("nghttpx"):
            raise Unavailable("nghttpx not found (apt-get install nghttp2-proxy)")
        c.port = free_port()
        front = f"-f127.0.0.1,{c.port}" + ("" if c.tls else ";no-tls")
        argv = ["nghttpx", "--conf=/dev/null", "-n", str(self.args.workers), front,
                f"-b127.0.0.1,{self.up_port};;proto=h2", "--no-ocsp",
                f"--errorlog-file={self.tmp / (c.name + '.err')}"]
        if c.tls:
            argv += [str(self.tls_key), str(self.tls_cert)]
        c.proc = self.procs.start(c.name, argv, self.tmp / f"{c.name}.log")
        wait_port(c.port, c.proc)

    def meshgate_bin(self):
        b = Path(self.args.meshgate)
        if not (b.is_file() and os.access(b, os.X_OK)):
            raise Unavailable(f"binary not built ({b})")
        return b

    def setup_meshgate(self, c):
        mg = self.meshgate_bin()
        d = self.tmp / c.name
        keys = self.tmp / "keys"
        d.mkdir()
        if not (keys / "lineage.key").exists():
            r = subprocess.run([str(mg), "keygen", "--name", ORIGIN, "--out", str(keys)],
                               capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                raise Unavailable(f"keygen exit {r.returncode}: "
                                  f"{(r.stderr or r.stdout).strip()[-300:]}")
            v = subprocess.run([str(mg), "version"], capture_output=True, text=True, timeout=10)
            self.meshgate_version = (v.stdout or v.stderr).strip()[:500]
        c.port, admin_port = free_port(), free_port()
        listen = {"address": f"127.0.0.1:{c.port}"}
        if c.tls:
            listen["tls"] = {"cert": str(self.tls_cert), "key": str(self.tls_key)}
        cfg = {
            "product": "orders",
            "workers": self.args.workers,
            "listen": listen,
            "upstream": {"address": f"127.0.0.1:{self.up_port}", "protocol": "h2c"},
            "routes": [{"prefix": "/datasets/", "dataset": "segment:2"}],
            "identity": {"issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE],
                                      "jwks_file": str(self.jwks), "algorithms": ["ES256"]}]},
            "policy": {"db": str(d / "policy")},
            # map_size_mb: room for a long --soak (about 1.2 KB of log per request)
            "lineage": {"db": str(d / "lineage"), "map_size_mb": 32768, "signing_key": str(keys / "lineage.key"),
                        "origin": ORIGIN, "durability": c.durability},
            "admin": {"address": f"127.0.0.1:{admin_port}"},
            "limits": {"shutdown_grace_s": 1},
        }
        cfg_path = d / "meshgate.json"
        cfg_path.write_text(json.dumps(cfg, indent=2))
        c.info["config"] = cfg
        r = subprocess.run([str(mg), "serve", "-c", str(cfg_path), "--check"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise Unavailable(f"serve --check exit {r.returncode}: "
                              f"{(r.stderr or r.stdout).strip()[-300:]}")
        c.proc = self.procs.start(c.name, self.wrapper + [str(mg), "serve", "-c", str(cfg_path)],
                                  d / "meshgate.log")
        wait_port(c.port, c.proc, self.start_timeout)
        wait_port(admin_port, c.proc, self.start_timeout)
        self.put_grant(admin_port)

    def put_grant(self, admin_port):
        grant = {"id": "bench-read", "effect": "allow", "subjects": ["group:analysts"],
                 "product": "orders", "resources": ["datasets/**"], "actions": ["read"],
                 "description": "benchmark: analysts read every dataset"}
        req = urllib.request.Request(
            f"http://127.0.0.1:{admin_port}/v1/grants/bench-read",
            data=json.dumps(grant).encode(), method="PUT",
            headers={"authorization": f"Bearer {self.admin_token}",
                     "content-type": "application/json", "if-none-match": "*"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                if resp.status not in (200, 201):
                    raise Unavailable(f"admin API: PUT grant answered {resp.status}")
        except urllib.error.HTTPError as e:
            body = e.read(300).decode(errors="replace").strip()
            raise Unavailable(f"admin API: PUT /v1/grants/bench-read -> {e.code} {body}")
        except (urllib.error.URLError, OSError) as e:
            raise Unavailable(f"admin API: {e}")

    def smoke(self, c):
        """A few requests of each size must all be 200 before anything is measured (a proxy
        answering 401/403 fast would otherwise win)."""
        for size in SIZES:
            r = run_h2load(c.url(f"/datasets/{size}"), {"c": 1, "m": 4, "n": 20}, self.token,
                           self.tmp / "smoke.tsv", timeout=20)
            if not r["ok"]:
                raise Unavailable(f"smoke test /datasets/{size}: {r['error']}")

    # -- measuring

    def measure(self, c, url, load, timeout):
        """One h2load run against c. CPU is read again only once the process has gone quiet
        (an async lineage writer still draining its queue after h2load stops is part of the
        cost of those requests, and must not slow down the next contender)."""
        cpu0 = cpu_seconds(c.proc.pid)
        up0 = cpu_seconds(self.upstream.pid)
        mem = MemSampler(c.proc.pid)
        mem.start()
        try:
            r = run_h2load(url, load, self.token, self.tmp / f"{c.name}.tsv", timeout)
            r["settle_s"] = settle(c.proc.pid, 15.0)
        finally:
            mem.stop()
        cpu1 = cpu_seconds(c.proc.pid)
        up1 = cpu_seconds(self.upstream.pid)
        done = r.get("done", 0)
        r["cpu_s"] = cpu1 - cpu0
        r["cpu_s_per_1k"] = (cpu1 - cpu0) / done * 1000 if done else None
        r["upstream_cpu_s_per_1k"] = (up1 - up0) / done * 1000 if done else None
        r["vmhwm_mb"] = status_kb(c.proc.pid, "VmHWM") / 1024
        r["rss_anon_mb"] = status_kb(c.proc.pid, "RssAnon") / 1024
        r["peak_rss_anon_mb"] = mem.max_anon_kb / 1024
        r["peak_rss_file_mb"] = mem.max_file_kb / 1024
        if c.proc.poll() is not None:
            r["ok"] = False
            r["error"] = f"{c.name} exited with status {c.proc.returncode}: {last_line(c.proc.bench_log)}"
        return r

    def run(self, contenders):
        a = self.args
        avail = [c for c in contenders if c.available]
        timeout = (a.duration if not a.quick else 0) + 60
        log(f"warm-up ({a.warmup_n} requests each)")
        for c in avail:
            for size in SIZES:
                run_h2load(c.url(f"/datasets/{size}"), {"c": a.conns, "m": a.streams,
                                                        "n": a.warmup_n},
                           self.token, self.tmp / "warm.tsv", timeout)
        tload = {"c": a.conns, "m": a.streams}
        if a.quick:
            tload["n"] = a.requests
        else:
            tload["D"] = a.duration
        fload = {"c": a.rate_conns, "m": a.rate_streams, "D": a.rate_duration,
                 "rps": max(1, a.rate // a.rate_conns)}
        for run in range(a.runs):
            k = run % max(1, len(avail))
            order = avail[k:] + avail[:k]
            for size in SIZES:
                for c in order:
                    if not c.available:
                        continue
                    r = self.measure(c, c.url(f"/datasets/{size}"), tload, timeout)
                    c.runs.setdefault(size, []).append(r)
                    log(f"run {run + 1}/{a.runs} {size:5} {c.name:12} " + brief(r))
                    if c.proc.poll() is not None:
                        c.reason = r["error"]
            for c in order:
                if not c.available:
                    continue
                r = self.measure(c, c.url("/datasets/small"), fload, a.rate_duration + 60)
                c.fixed.append(r)
                log(f"run {run + 1}/{a.runs} fixed {c.name:12} " + brief(r))

    def soak(self, c, seconds):
        """Fixed-rate load for SECONDS; RSS sampled every 10 s."""
        a = self.args
        load = ["h2load", "-t", "1", "-c", str(a.conns), "-m", str(a.streams),
                f"--rps={max(1, a.rate // a.conns)}", "-D", str(seconds),
                "-H", f"authorization: Bearer {self.token}", c.url("/datasets/small")]
        h2 = self.procs.start("h2load-soak", load, self.tmp / "soak-h2load.log")
        samples = []
        t0 = time.monotonic()
        cpu0 = cpu_seconds(c.proc.pid)
        try:
            while True:
                t = time.monotonic() - t0
                samples.append({"t_s": round(t, 1),
                                "rss_mb": status_kb(c.proc.pid, "VmRSS") / 1024,
                                "rss_anon_mb": status_kb(c.proc.pid, "RssAnon") / 1024,
                                "vmhwm_mb": status_kb(c.proc.pid, "VmHWM") / 1024,
                                "cpu_s": cpu_seconds(c.proc.pid) - cpu0})
                log("soak t={t_s:6.1f}s rss {rss_mb:7.1f} MB anon {rss_anon_mb:7.1f} MB "
                    "cpu {cpu_s:7.2f} s".format(**samples[-1]))
                if h2.poll() is not None or c.proc.poll() is not None:
                    break
                deadline = t0 + 10 * len(samples)
                while time.monotonic() < deadline and h2.poll() is None:
                    time.sleep(0.2)
        finally:
            self.procs.stop(h2)
        summary = Path(h2.bench_log).read_text(errors="replace")
        fin = [l for l in summary.splitlines() if l.startswith(("finished", "requests:", "status"))]
        return samples, fin, c.proc.poll()

    def close(self):
        self.procs.stop_all()
        if self.args.keep:
            log(f"kept {self.tmp}")
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def brief(r):
    if not r.get("ok"):
        return "ERROR " + r.get("error", "?")
    return (f"{r['rps']:10.0f} req/s  p50 {fmt(r['p50_ms'], 3)} p99 {fmt(r['p99_ms'], 3)} ms  "
            f"cpu {fmt(r['cpu_s_per_1k'], 4)} s/1k  hwm {r['vmhwm_mb']:.1f} MB")


def fmt(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}"


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


# ---------------------------------------------------------------- report

def summarize(c, size):
    rs = [r for r in c.runs.get(size, []) if r.get("ok")]
    if not rs:
        errs = [r.get("error") for r in c.runs.get(size, []) if not r.get("ok")]
        return {"ok": False, "reason": c.reason or (errs[0] if errs else "no runs")}
    return {"ok": True, "runs": len(rs), "failed_runs": len(c.runs[size]) - len(rs),
            "rps": med([r["rps"] for r in rs]),
            "p50_ms": med([r["p50_ms"] for r in rs]),
            "p99_ms": med([r["p99_ms"] for r in rs]),
            "cpu_s_per_1k": med([r["cpu_s_per_1k"] for r in rs]),
            "upstream_cpu_s_per_1k": med([r["upstream_cpu_s_per_1k"] for r in rs]),
            "peak_rss_mb": max(r["vmhwm_mb"] for r in rs),
            "peak_anon_mb": max(r["peak_rss_anon_mb"] for r in rs),
            "settle_s": max(r["settle_s"] for r in rs),
            "rps_spread_pct": (max(r["rps"] for r in rs) - min(r["rps"] for r in rs))
            / med([r["rps"] for r in rs]) * 100}


def summarize_fixed(c):
    rs = [r for r in c.fixed if r.get("ok")]
    if not rs:
        return {"ok": False, "reason": c.reason or "no runs"}
    return {"ok": True, "runs": len(rs), "rps": med([r["rps"] for r in rs]),
            "p50_ms": med([r["p50_ms"] for r in rs]), "p99_ms": med([r["p99_ms"] for r in rs]),
            "p99_min_ms": min(r["p99_ms"] for r in rs), "p99_max_ms": max(r["p99_ms"] for r in rs)}


def ratio(a, b):
    return a / b if a is not None and b else None


def build_report(bench, contenders, fsync):
    a = bench.args
    res = {"sizes": {}, "fixed_rate": {}, "ratios": {}, "added_latency": {}, "targets": []}
    for size in SIZES:
        res["sizes"][size] = {c.name: summarize(c, size) for c in contenders}
    res["fixed_rate"] = {c.name: summarize_fixed(c) for c in contenders}

    S = res["sizes"]
    for size in SIZES:
        rr = {}
        for mg, px in (("mg-wa", "nghttpx"), ("mg-async", "nghttpx"), ("mg-tls", "nghttpx-tls")):
            m, p, u = S[size].get(mg), S[size].get(px), S[size].get("upstream")
            if not (m and m["ok"]):
                continue
            if p and p["ok"]:
                rr[f"{mg}/{px}"] = {k: ratio(m[k], p[k]) for k in
                                    ("rps", "p99_ms", "cpu_s_per_1k", "peak_rss_mb")}
            if u and u["ok"]:
                rr[f"{mg}/upstream"] = {k: ratio(m[k], u[k]) for k in ("rps", "p50_ms", "p99_ms")}
        res["ratios"][size] = rr

    F = res["fixed_rate"]
    up = F.get("upstream")
    for c in contenders:
        f = F[c.name]
        if c.name == "upstream" or not (f["ok"] and up and up["ok"]):
            continue
        res["added_latency"][c.name] = {"p50_ms": f["p50_ms"] - up["p50_ms"],
                                        "p99_ms": f["p99_ms"] - up["p99_ms"]}

    def target(what, value, limit, cmp, unit, note=""):
        if value is None:
            status = "n/a"
        else:
            status = "PASS" if (value >= limit if cmp == ">=" else value <= limit) else "MISS"
        res["targets"].append({"target": what, "value": value, "limit": limit, "cmp": cmp,
                               "unit": unit, "status": status, "note": note})

    for size in SIZES:
        r = res["ratios"][size].get("mg-wa/nghttpx", {})
        target(f"rps meshgate write-ahead / nghttpx ({size})", r.get("rps"),
               TARGETS["rps_vs_nghttpx"], ">=", "x")
    for name in ("mg-wa", "mg-async", "mg-tls"):
        for size in SIZES:
            s = S[size].get(name, {})
            target(f"CPU {name} ({size})", s.get("cpu_s_per_1k"), TARGETS["cpu_s_per_1k"],
                   "<=", "CPU-s/1k req")
    al = res["added_latency"]
    target("added p99 at fixed rate, async", al.get("mg-async", {}).get("p99_ms"),
           TARGETS["added_p99_ms"], "<=", "ms")
    target("added p99 at fixed rate, write-ahead", al.get("mg-wa", {}).get("p99_ms"),
           TARGETS["added_p99_ms"] + fsync["median_ms"], "<=", "ms",
           f"0.5 ms + one fdatasync ({fsync['median_ms']:.3f} ms)")
    streams = a.conns * a.streams
    for name in ("mg-wa", "mg-async", "mg-tls"):
        peaks = [S[size][name]["peak_rss_mb"] for size in SIZES
                 if S[size].get(name, {}).get("ok")]
        target(f"peak RSS (VmHWM) {name}", max(peaks) if peaks else None, TARGETS["rss_mb"],
               "<=", "MB", f"{streams} concurrent streams" + (" (quick run)" if a.quick else ""))
    for name in ("mg-wa", "mg-async", "mg-tls"):
        peaks = [S[size][name]["peak_anon_mb"] for size in SIZES
                 if S[size].get(name, {}).get("ok")]
        target(f"peak RssAnon {name}", max(peaks) if peaks else None, TARGETS["rss_mb"],
               "<=", "MB", "informative: heap only, without the mapped LMDB pages VmHWM counts")
    return res


def table_rows(res, contenders, size):
    rows = []
    for c in contenders:
        s = res["sizes"][size][c.name]
        if s["ok"]:
            rows.append([c.name, f"{s['rps']:.0f}", f"{s['rps_spread_pct']:.0f}%",
                         fmt(s["p50_ms"], 3), fmt(s["p99_ms"], 3),
                         fmt(s["cpu_s_per_1k"], 4), f"{s['peak_rss_mb']:.1f}",
                         f"{s['peak_anon_mb']:.1f}"])
        else:
            rows.append([c.name, "unavailable: " + s["reason"]])
    return rows


HEAD = ["contender", "req/s", "spread", "p50 ms", "p99 ms", "CPU-s/1k", "peak RSS MB", "anon MB"]


def text_table(rows):
    full = [r for r in rows if len(r) == len(HEAD)]
    w = [max(len(str(r[i])) for r in full + [HEAD]) for i in range(len(HEAD))]
    out = ["  ".join(h.rjust(w[i]) if i else h.ljust(w[i]) for i, h in enumerate(HEAD))]
    for r in rows:
        if len(r) == len(HEAD):
            out.append("  ".join(str(v).rjust(w[i]) if i else str(v).ljust(w[i])
                                 for i, v in enumerate(r)))
        else:
            out.append(r[0].ljust(w[0]) + "  " + r[1])
    return out


def render(bench, contenders, res, fsync, meta):
    a = bench.args
    L = []
    L.append(f"meshgate benchmark  {meta['date']}  {meta['mode']}  workers={a.workers}  "
             f"runs={a.runs}  cores={os.cpu_count()}  load average before: {meta['loadavg_start']}")
    if any(c.kind == "meshgate" for c in contenders):
        bo = meta.get("meshgate_build") or {}
        ver = ((meta.get("meshgate_version") or "?").splitlines() or ["?"])[0]
        L.append(f"meshgate: {a.meshgate}  version: {ver}  "
                 f"build: {bo.get('buildtype', '?')} -O{bo.get('optimization', '?')} "
                 f"sanitize={bo.get('b_sanitize', '?')}")
        if bo.get("b_sanitize") not in (None, "none") or bo.get("optimization") in ("0", "g", "plain"):
            L.append("WARNING: meshgate is a sanitized or unoptimized build; its figures mean nothing")
    load1 = float(meta["loadavg_start"].split()[0])
    if load1 > 0.5 * (os.cpu_count() or 1):
        L.append(f"WARNING: load average {load1:.2f} on {os.cpu_count()} cores before the run: "
                 f"other work competes for the CPU, expect wide spreads")
    shape = (f"-n {a.requests}" if a.quick else f"-D {a.duration}s")
    L.append(f"closed loop: h2load -t 1 -c {a.conns} -m {a.streams} {shape} "
             f"({a.conns * a.streams} concurrent streams); medians of {a.runs} run(s); "
             f"spread = (max-min)/median of req/s over the runs; "
             f"CPU and RSS are the measured process's (the upstream's own for 'upstream')")
    for size, n in SIZES.items():
        L.append("")
        L.append(f"{size} ({n} B): GET /datasets/{size}")
        L.extend(text_table(table_rows(res, contenders, size)))
    L.append("")
    L.append("ratios")
    any_ratio = False
    for size in SIZES:
        for k, r in res["ratios"][size].items():
            any_ratio = True
            parts = [f"{m} {fmt(v, 2)}" for m, v in r.items()]
            L.append(f"  {size:5} {k:22} " + "  ".join(parts))
    if not any_ratio:
        L.append("  (none: meshgate unavailable)")
    L.append("")
    L.append(f"fixed rate: h2load -c {a.rate_conns} -m {a.rate_streams} --rps "
             f"{max(1, a.rate // a.rate_conns)} (~{a.rate} req/s total) -D {a.rate_duration}s, "
             f"/datasets/small")
    for c in contenders:
        f = res["fixed_rate"][c.name]
        if not f["ok"]:
            L.append(f"  {c.name:12} unavailable: {f['reason']}")
            continue
        line = (f"  {c.name:12} p50 {f['p50_ms']:.3f} ms  p99 {f['p99_ms']:.3f} ms "
                f"(runs {f['p99_min_ms']:.2f}..{f['p99_max_ms']:.2f})")
        ad = res["added_latency"].get(c.name)
        if ad:
            line += f"   added over upstream: p50 {ad['p50_ms']:+.3f} ms  p99 {ad['p99_ms']:+.3f} ms"
        L.append(line)
    L.append("")
    L.append(f"fdatasync (4 KiB append + fdatasync, {fsync['iterations']}x, {meta['tmpdir']}): "
             f"median {fsync['median_ms']:.3f} ms  p99 {fsync['p99_ms']:.3f} ms")
    L.append("")
    L.append("targets" + ("  (quick mode: indicative only, nothing asserted)" if a.quick else ""))
    for t in res["targets"]:
        v = "-" if t["value"] is None else f"{t['value']:.4g}"
        note = f"  [{t['note']}]" if t["note"] else ""
        L.append(f"  {t['status']:4}  {t['target']}: {v} {t['cmp']} {t['limit']:.4g} {t['unit']}{note}")
    return L


def write_outputs(bench, contenders, res, fsync, meta, lines):
    out = Path(bench.args.out)
    out.mkdir(parents=True, exist_ok=True)
    raw = {c.name: {"label": c.label, "unavailable": c.reason,
                    "runs": c.runs, "fixed": c.fixed} for c in contenders}
    doc = {"meta": meta, "params": vars(bench.args), "targets_spec": TARGETS, "fdatasync": fsync,
           "results": res, "raw": raw}
    # --quick (CI) writes quick.*, so a CI run never overwrites the figures of a full run
    stem = "quick" if bench.args.quick else "latest"
    (out / f"{stem}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")

    md = [f"# meshgate benchmark — {meta['date']}", "",
          f"{meta['mode']}, workers={bench.args.workers}, runs={bench.args.runs}, "
          f"cores={os.cpu_count()}, commit {meta['commit']}", ""]
    for size, n in SIZES.items():
        md += [f"## {size} ({n} B)", "", "| " + " | ".join(HEAD) + " |",
               "|" + "---|" * len(HEAD)]
        for r in table_rows(res, contenders, size):
            if len(r) < len(HEAD):
                r = r + [""] * (len(HEAD) - len(r))
            md.append("| " + " | ".join(r) + " |")
        md.append("")
    md += ["## Ratios, fixed rate, fdatasync, targets", "", "```"] + lines[
        next(i for i, l in enumerate(lines) if l == "ratios"):] + ["```", ""]
    (out / f"{stem}.md").write_text("\n".join(md))

    # gnuplot data: one row per contender measured in both sizes
    dat = ["# contender rps_small rps_big p99_small_ms p99_big_ms"]
    for c in contenders:
        s, b = res["sizes"]["small"][c.name], res["sizes"]["big"][c.name]
        if s["ok"] and b["ok"]:
            dat.append(f"{c.name} {s['rps']:.1f} {b['rps']:.1f} {s['p99_ms']:.4f} {b['p99_ms']:.4f}")
    datf = out / f"{stem}.dat"
    datf.write_text("\n".join(dat) + "\n")
    png = out / f"{stem}.png"
    if shutil.which("gnuplot") and len(dat) > 1:
        title = f"meshgate benchmark {meta['date']} ({meta['mode']}, workers={bench.args.workers})"
        r = subprocess.run(["gnuplot", "-e", f"datafile='{datf}'; outfile='{png}'; "
                            f"plottitle='{title}'", str(HERE / "plot.gp")],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            log(f"gnuplot failed: {r.stderr.strip()[-300:]}")
            png = None
    else:
        png = None
    return out, stem, png


# ---------------------------------------------------------------- main

def build_options(binary):
    """buildtype/optimization/sanitizer of the meson build dir the binary comes from: a
    debug or sanitized meshgate would make every figure meaningless."""
    d = Path(binary).resolve().parent
    for cand in (d, *d.parents):
        f = cand / "meson-info" / "intro-buildoptions.json"
        if f.is_file():
            try:
                opts = {o["name"]: o["value"] for o in json.loads(f.read_text())}
            except (OSError, ValueError, KeyError, TypeError):
                return None
            return {k: opts.get(k) for k in ("buildtype", "optimization", "b_sanitize", "b_lto")}
    return None


def git_commit():
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def parse_args(argv):
    p = argparse.ArgumentParser(description="meshgate performance benchmark (see tests/bench/README.md)")
    p.add_argument("--quick", action="store_true", help="CI smoke mode: tiny loads, 1 run, < 60 s")
    p.add_argument("--soak", type=int, metavar="SECONDS",
                   help="only a soak: fixed-rate load for SECONDS, RSS sampled every 10 s")
    p.add_argument("--soak-contender", default="mg-wa", choices=[c[0] for c in CONTENDERS])
    p.add_argument("--workers", type=int, default=1, help="proxy workers (meshgate and nghttpx)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=int, default=5, help="seconds per closed-loop run")
    p.add_argument("--conns", type=int, default=10, help="h2load -c")
    p.add_argument("--streams", type=int, default=100, help="h2load -m")
    p.add_argument("--requests", type=int, default=10000, help="h2load -n in --quick mode")
    p.add_argument("--warmup-n", type=int, default=5000)
    p.add_argument("--rate", type=int, default=2000, help="fixed-rate total req/s")
    p.add_argument("--rate-conns", type=int, default=4)
    p.add_argument("--rate-streams", type=int, default=8)
    p.add_argument("--rate-duration", type=int, default=5)
    p.add_argument("--fsync-iterations", type=int, default=200)
    p.add_argument("--contenders", default=",".join(c[0] for c in CONTENDERS),
                   help="comma-separated subset (upstream always runs)")
    p.add_argument("--meshgate", default=os.environ.get("MESHGATE_BIN",
                                                        str(ROOT / "build/sidecar/meshgate")))
    p.add_argument("--tmpdir", default="/var/tmp",
                   help="where the work dir (and the lineage LMDB) goes; a real disk, not tmpfs")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs)")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when a contender is unavailable or a run failed")
    a = p.parse_args(argv)
    if a.quick:
        a.runs = 1
        a.conns, a.streams = min(a.conns, 4), min(a.streams, 32)
        a.warmup_n = min(a.warmup_n, 200)
        a.rate, a.rate_duration = min(a.rate, 1000), 1
        a.fsync_iterations = min(a.fsync_iterations, 30)
    return a


def main(argv):
    args = parse_args(argv)
    wanted = set(args.contenders.split(",")) | {"upstream"}
    unknown = wanted - {c[0] for c in CONTENDERS}
    if unknown:
        print(f"bench: unknown contender(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    bench = Bench(args)
    t_start = time.monotonic()
    loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    try:
        bench.setup_common()
        if args.soak:
            return soak_main(bench, args)
        contenders = [Contender(*c) for c in CONTENDERS if c[0] in wanted]
        log("setting up contenders")
        for c in contenders:
            bench.setup(c)
        fsync = fdatasync_ms(bench.tmp, args.fsync_iterations)
        bench.run(contenders)
        meta = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "mode": "quick" if args.quick else "full", "commit": git_commit(),
                "host": platform.node(), "kernel": platform.release(), "cores": os.cpu_count(),
                "meshgate": args.meshgate, "meshgate_version": bench.meshgate_version,
                "meshgate_build": build_options(args.meshgate),
                "tmpdir": args.tmpdir, "loadavg_start": loadavg, "elapsed_s": None}
        res = build_report(bench, contenders, fsync)
        meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
        lines = render(bench, contenders, res, fsync, meta)
        out, stem, png = write_outputs(bench, contenders, res, fsync, meta, lines)
        sys.stderr.flush()
        print("\n".join(lines), flush=True)
        print(f"\nwrote {out / (stem + '.json')}, {out / (stem + '.md')}"
              + (f", {png}" if png else " (no plot)") + f"  [{meta['elapsed_s']} s]")
        failed = any(not r.get("ok") for c in contenders for rs in c.runs.values() for r in rs)
        if args.strict and (failed or any(c.reason for c in contenders)):
            return 1
        return 0
    except BenchError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted, stopping everything", file=sys.stderr)
        return 130
    finally:
        bench.close()


def soak_main(bench, args):
    """Growth is judged on RssAnon between the middle and the last third of the samples:
    the first third is warm-up (allocator arenas, caches, connection buffers settle there),
    a leak keeps growing after it. VmRSS is reported too but not judged: it includes the
    pages of the LMDB log the process has mapped, which grow with the log by design."""
    c = Contender(*next(x for x in CONTENDERS if x[0] == args.soak_contender))
    bench.setup(c)
    if not c.available:
        print(f"soak: {c.name} unavailable: {c.reason}")
        return 1 if args.strict else 0
    samples, fin, rc = bench.soak(c, args.soak)
    loaded = samples[1:] or samples  # the first sample is taken before any load
    third = max(1, len(loaded) // 3)
    mid = loaded[third:2 * third] or loaded[:third]
    tail = loaded[-third:]

    def m(rows, k):
        return med([r[k] for r in rows])
    g_anon = m(tail, "rss_anon_mb") - m(mid, "rss_anon_mb")
    g_rss = m(tail, "rss_mb") - m(mid, "rss_mb")
    limit = max(2.0, 0.05 * (m(mid, "rss_anon_mb") or 0))
    status = "PASS" if g_anon <= limit and rc is None else "MISS"
    db = c.info.get("config", {}).get("lineage", {}).get("db")
    db_mb = sum(f.stat().st_size for f in Path(db).glob("*.mdb")) / 2**20 if db else None
    print(f"soak {c.name}: {args.soak} s at ~{args.rate} req/s, {args.conns}x{args.streams} "
          f"streams, {len(samples)} samples every 10 s")
    for l in fin:
        print("  h2load " + l.strip())
    print("  RssAnon  " + " ".join(f"{s['rss_anon_mb']:.1f}" for s in samples[::6]) + " MB (every 60 s)")
    print(f"  RssAnon  first {loaded[0]['rss_anon_mb']:.1f} MB, middle third {m(mid, 'rss_anon_mb'):.1f} MB, "
          f"last third {m(tail, 'rss_anon_mb'):.1f} MB: growth after warm-up {g_anon:+.1f} MB "
          f"(limit {limit:.1f} MB)")
    print(f"  VmRSS    middle third {m(mid, 'rss_mb'):.1f} MB, last third {m(tail, 'rss_mb'):.1f} MB, "
          f"growth {g_rss:+.1f} MB; peak (VmHWM) {max(s['vmhwm_mb'] for s in samples):.1f} MB"
          + (f"; the lineage log is {db_mb:.0f} MB on disk (mapped pages count in VmRSS)"
             if db_mb is not None else ""))
    done = next((int(l.split()[1]) for l in fin if l.startswith("requests:")), 0)
    print(f"  CPU      {samples[-1]['cpu_s']:.1f} s over the soak"
          + (f", {samples[-1]['cpu_s'] / done * 1000:.4f} CPU-s per 1,000 requests" if done else ""))
    if rc is not None:
        print(f"  {c.name} exited during the soak with status {rc}")
    print(f"  {status}  no growth over the soak (RssAnon after warm-up)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(
        {"contender": c.name, "seconds": args.soak, "rate": args.rate, "samples": samples,
         "h2load": fin, "growth_rss_mb": g_rss, "growth_anon_mb": g_anon, "lineage_db_mb": db_mb,
         "limit_mb": limit, "status": status, "exited": rc}, indent=2) + "\n")
    print(f"wrote {out / 'soak.json'}")
    return 0 if status == "PASS" or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

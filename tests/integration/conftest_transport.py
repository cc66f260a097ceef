"""Fixtures and helpers for the transport tests (test_transport.py).

Imported by the test module (not an auto-loaded conftest, so it never clashes with the
lead's conftest.py). Provides: the dev PKI (certs/mkcerts.sh), the passthrough binary
(tests/integration/passthrough.c built by meson into <build>/tests/integration/; override
with MG_PASSTHROUGH=/path), and process wrappers for upstream.py and passthrough.
"""
import glob
import json
import os
import signal
import socket
import subprocess
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PY = "/usr/bin/python3"


def find_passthrough():
    env = os.environ.get("MG_PASSTHROUGH")
    if env:
        return env
    cands = glob.glob(os.path.join(ROOT, "build*", "tests", "integration", "passthrough"))
    cands = [c for c in cands if os.access(c, os.X_OK) and "asan" not in c] or \
        [c for c in cands if os.access(c, os.X_OK)]
    if not cands:
        return None
    return max(cands, key=os.path.getmtime)


def read_port(proc, what, timeout=10):
    """Reads the 'PORT n' line a child prints once it listens."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError("%s exited with %s" % (what, proc.returncode))
            continue
        line = line.decode().strip()
        if line.startswith("PORT "):
            return int(line.split()[1])
        if line.startswith("UNIX "):
            return line.split()[1]
    raise RuntimeError("%s did not report its port" % what)


class Upstream:
    """upstream.py as a child process; .port, .log_path, .requests()."""

    def __init__(self, tmp, http1=False, unix=None, extra=()):
        self.log_path = os.path.join(str(tmp), "upstream-%d.jsonl" % id(self))
        args = [PY, os.path.join(HERE, "upstream.py"), "--log", self.log_path]
        if "--port" not in extra:
            args += ["--port", "0"]
        if http1:
            args.append("--http1")
        if unix:
            args += ["--unix", unix]
        args += list(extra)
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.port = read_port(self.proc, "upstream.py")
        self.address = ("unix:" + unix) if unix else "127.0.0.1:%d" % self.port

    def requests(self):
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path) as f:
            return [json.loads(l) for l in f if l.strip()]

    def last(self, path_prefix):
        for r in reversed(self.requests()):
            if r["path"].startswith(path_prefix) and "done" not in r:
                return r
        return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Proxy:
    """The passthrough program; .port, .pid, .hwm_kb(), .signal(), .stop()."""

    def __init__(self, binary, upstream, *extra, env=None):
        import tempfile
        args = [binary, "--listen", "127.0.0.1:0", "--upstream", upstream] + list(extra)
        e = dict(os.environ)
        if env:
            e.update(env)
        # stderr to a file: a chatty child must never block on a full pipe
        self.errf = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.errf, env=e)
        self.port = read_port(self.proc, "passthrough")
        self.pid = self.proc.pid
        self.url = "http://127.0.0.1:%d" % self.port

    def hwm_kb(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        return -1

    def signal(self, sig):
        os.kill(self.pid, sig)

    def stop(self, timeout=10):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stderr(self):
        self.errf.seek(0)
        return self.errf.read().decode(errors="replace")


def curl(*args, timeout=60, check=False):
    """Runs curl -sS; returns CompletedProcess (stdout bytes)."""
    p = subprocess.run(["curl", "-sS", "--max-time", str(timeout)] + list(args),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout + 10)
    if check and p.returncode != 0:
        raise AssertionError("curl %s failed: %s" % (args, p.stderr.decode()))
    return p


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="session")
def passthrough_bin():
    b = find_passthrough()
    if not b:
        pytest.skip("passthrough not built (meson: tests/integration/meson.build)")
    return b


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    subprocess.run(["sh", os.path.join(ROOT, "certs", "mkcerts.sh"), str(d)], check=True,
                   stdout=subprocess.DEVNULL)
    return str(d)


@pytest.fixture
def upstream(tmp_path):
    u = Upstream(tmp_path)
    yield u
    u.stop()


@pytest.fixture
def upstream_h1(tmp_path):
    u = Upstream(tmp_path, http1=True)
    yield u
    u.stop()


@pytest.fixture
def proxies():
    """Factory: proxies(upstream_address, *args) -> Proxy; all stopped at teardown."""
    made = []

    def make(binary, up, *extra, **kw):
        p = Proxy(binary, up, *extra, **kw)
        made.append(p)
        return p
    yield make
    for p in made:
        p.stop()
    for p in made:
        err = p.stderr()
        # sanitizer builds (MG_PASSTHROUGH=<asan build>) report through stderr
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            assert bad not in err, err[-4000:]

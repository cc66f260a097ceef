"""mgtest.py — reusable helpers for meshgate integration tests (import it; not a conftest).

    import mgtest
    keys = mgtest.make_keys_and_jwks(tmpdir)                 # EC P-256 key + tmpdir/jwks.json
    tok = mgtest.mint(keys, sub="alice", groups=["analysts"], scope="mesh:admin")
    up = mgtest.start_upstream(tmpdir)                       # tests/integration/upstream.py
    cfg = mgtest.write_config(tmpdir, {"upstream": {"address": "127.0.0.1:%d" % up.port}})
    mg = mgtest.start_meshgate(cfg)                          # ports chosen before start
    mgtest.wait_ready(mg)
    r = mgtest.request(mg.admin_url + "/v1/grants", token=tok, http2=True)
    r.status, r.headers["etag"], r.json()
    mgtest.stop(mg); mgtest.stop(up)

The binary is $MESHGATE_BIN (default /work/main/build/sidecar/meshgate); MESHGATE_BIN_OK()
tells whether it exists so tests can skip with a reason. Every process started here is
stopped by stop() (SIGTERM, then SIGKILL after a bound). Network: 127.0.0.1 only.
Requests go through curl (HTTP/1.1 or --http2-prior-knowledge / ALPN h2).
"""
import base64
import copy
import hashlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import time

import jwt  # python3-jwt
from cryptography.hazmat.primitives.asymmetric import ec

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PY = "/usr/bin/python3"
ISSUER = "https://idp.test"
AUDIENCE = "mesh"


def meshgate_bin():
    return os.environ.get("MESHGATE_BIN", "/work/main/build/sidecar/meshgate")


def MESHGATE_BIN_OK():
    b = meshgate_bin()
    return os.path.isfile(b) and os.access(b, os.X_OK)


def free_port():
    """A port that was free a moment ago (bind to 0, read it, close)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---- keys and tokens -------------------------------------------------------------------


def _b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class Keys:
    """An issuer's signing key, kid and JWKS path."""

    def __init__(self, private_key, kid, jwks_path, issuer):
        self.private_key = private_key
        self.kid = kid
        self.jwks_path = jwks_path
        self.issuer = issuer


def make_keys_and_jwks(dirpath, kid="k1", issuer=ISSUER, filename="jwks.json"):
    """Creates an EC P-256 key and writes its public JWKS (ES256) to dirpath/filename."""
    key = ec.generate_private_key(ec.SECP256R1())
    nums = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
           "x": _b64u(nums.x.to_bytes(32, "big")), "y": _b64u(nums.y.to_bytes(32, "big"))}
    path = os.path.join(str(dirpath), filename)
    with open(path, "w") as f:
        json.dump({"keys": [jwk]}, f)
    return Keys(key, kid, path, issuer)


def mint(keys, sub="alice", groups=None, scope=None, aud=AUDIENCE, exp_in=600, iss=None,
         **claims):
    """An ES256 token from keys' issuer. Extra claims as keyword arguments."""
    now = int(time.time())
    body = {"iss": iss or keys.issuer, "aud": aud, "sub": sub, "iat": now, "exp": now + exp_in}
    if groups is not None:
        body["groups"] = groups
    if scope is not None:
        body["scope"] = scope
    body.update(claims)
    return jwt.encode(body, keys.private_key, algorithm="ES256",
                      headers={"kid": keys.kid, "typ": "JWT"})


# ---- config ----------------------------------------------------------------------------


def _merge(base, over):
    for k, v in over.items():
        if v is None:
            base.pop(k, None)
        elif isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def base_config(dirpath):
    """A SPEC-shaped config for product "orders" with free loopback ports."""
    return {
        "product": "orders",
        "workers": 1,
        "listen": {"address": "127.0.0.1:%d" % free_port()},
        "upstream": {"address": "127.0.0.1:1", "protocol": "h2c"},
        "routes": [{"prefix": "/datasets/", "dataset": "segment:2"},
                   {"prefix": "/healthz", "auth": "none"}],
        "identity": {"issuers": [{"issuer": ISSUER, "audiences": [AUDIENCE],
                                  "jwks_file": "jwks.json", "algorithms": ["ES256"]}]},
        "policy": {"db": "var/policy", "map_size_mb": 16},
        "lineage": {"db": "var/lineage", "map_size_mb": 64, "signing_key": "keys/lineage.key",
                    "origin": "test.example/orders", "checkpoint_every_ms": 200},
        "admin": {"address": "127.0.0.1:%d" % free_port(),
                  "owners": "group:{product}-owners",
                  "admin_claim": {"scope": "mesh:admin"},
                  "auditor_claim": {"scope": "mesh:audit"}},
    }


def keygen(dirpath, origin="test.example/orders"):
    """meshgate keygen into dirpath/keys (once)."""
    kdir = os.path.join(str(dirpath), "keys")
    if not os.path.exists(os.path.join(kdir, "lineage.key")):
        os.makedirs(kdir, exist_ok=True)
        subprocess.run([meshgate_bin(), "keygen", "--name", origin, "--out", kdir], check=True,
                       stdout=subprocess.DEVNULL, timeout=30)
    return kdir


def write_config(dirpath, overrides=None, name="meshgate.json"):
    """Writes dirpath/name: base_config() deep-merged with overrides (None deletes a key).
    Makes the lineage key with `meshgate keygen` when the config uses keys/lineage.key.
    Returns the path."""
    cfg = _merge(base_config(dirpath), overrides or {})
    if cfg.get("lineage", {}).get("signing_key") == "keys/lineage.key":
        keygen(dirpath, cfg["lineage"].get("origin", "test.example/orders"))
    os.makedirs(os.path.join(str(dirpath), "var"), exist_ok=True)
    path = os.path.join(str(dirpath), name)
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)
    return path


# ---- processes --------------------------------------------------------------------------


class Proc:
    def __init__(self, proc, what):
        self.proc = proc
        self.what = what

    def alive(self):
        return self.proc.poll() is None


class Meshgate(Proc):
    """A running `meshgate serve`: .config (dict), .data_port, .admin_port, .admin_url,
    .data_url, .dir, .log_path."""


def _hostport(addr):
    host, port = addr.rsplit(":", 1)
    return host.strip("[]"), int(port)


def start_meshgate(config_path, extra_args=(), env=None):
    """Starts `meshgate serve -c config_path`; stderr goes to <dir>/meshgate.log."""
    with open(config_path) as f:
        cfg = json.load(f)
    d = os.path.dirname(os.path.abspath(config_path))
    log_path = os.path.join(d, "meshgate-%d.log" % int(time.time() * 1000))
    logf = open(log_path, "wb")
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.Popen([meshgate_bin(), "serve", "-c", config_path] + list(extra_args),
                         stdout=logf, stderr=subprocess.STDOUT, cwd=d, env=e)
    logf.close()
    mg = Meshgate(p, "meshgate")
    mg.config = cfg
    mg.dir = d
    mg.log_path = log_path
    _, mg.data_port = _hostport(cfg["listen"]["address"])
    _, mg.admin_port = _hostport(cfg["admin"]["address"])
    admin_scheme = "https" if cfg["admin"].get("tls") else "http"
    data_scheme = "https" if cfg["listen"].get("tls") else "http"
    mg.admin_url = "%s://127.0.0.1:%d" % (admin_scheme, mg.admin_port)
    mg.data_url = "%s://127.0.0.1:%d" % (data_scheme, mg.data_port)
    return mg


def log_text(mg):
    try:
        with open(mg.log_path, "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def wait_ready(mg, timeout=20, path="/readyz", curl_args=()):
    """Polls the admin port until `path` answers 200; raises with the log on failure."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        if not mg.alive():
            raise RuntimeError("meshgate exited with %s:\n%s" % (mg.proc.returncode, log_text(mg)))
        try:
            r = request(mg.admin_url + path, timeout=2, curl_args=curl_args)
            if r.status == 200:
                return r
            last = r.status
        except Exception as ex:  # noqa: BLE001 - not up yet
            last = ex
        time.sleep(0.1)
    raise RuntimeError("meshgate not ready (%s):\n%s" % (last, log_text(mg)))


def read_port_line(proc, what, timeout=10):
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
    raise RuntimeError("%s did not report its port" % what)


def start_upstream(dirpath, http1=False):
    """tests/integration/upstream.py --port 0: .port, .log_path."""
    log = os.path.join(str(dirpath), "upstream-%d.jsonl" % int(time.time() * 1000))
    args = [PY, os.path.join(HERE, "upstream.py"), "--port", "0", "--log", log]
    if http1:
        args.append("--http1")
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    up = Proc(p, "upstream")
    up.log_path = log
    up.port = read_port_line(p, "upstream")
    return up


def recv_until_close(sock):
    """Everything a socket delivers until the peer closes it (or its timeout fires)."""
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def stop(proc_or_mg, timeout=15):
    """SIGTERM, wait (bounded), then SIGKILL. Returns the exit code."""
    p = proc_or_mg.proc
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
    if p.stdout:
        p.stdout.close()
    return p.returncode


# ---- HTTP via curl -----------------------------------------------------------------------


class Response:
    def __init__(self, status, headers, body, proto):
        self.status = status
        self.headers = headers  # lower-case names -> last value
        self.header_list = []
        self.body = body
        self.proto = proto

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "<Response %s %s %r>" % (self.status, self.proto, self.body[:200])


def curl_cmd(url, method="GET", token=None, body=None, headers=None, http2=False,
             timeout=30, curl_args=()):
    cmd = ["curl", "-s", "-S", "--max-time", str(timeout), "-X", method, "-g"]
    if http2:
        cmd.append("--http2" if url.startswith("https") else "--http2-prior-knowledge")
    else:
        cmd.append("--http1.1")
    if token:
        cmd += ["-H", "Authorization: Bearer " + token]
    for k, v in (headers or {}).items():
        cmd += ["-H", "%s: %s" % (k, v)]
    cmd += list(curl_args)
    return cmd


def request(url, method="GET", token=None, body=None, headers=None, http2=False, timeout=30,
            curl_args=()):
    """One request through curl. body: bytes/str/dict (dict is sent as JSON)."""
    cmd = curl_cmd(url, method, token, body, headers, http2, timeout, curl_args)
    with tempfile.TemporaryDirectory() as td:
        hdr_path = os.path.join(td, "h")
        body_path = os.path.join(td, "b")
        cmd += ["-D", hdr_path, "-o", body_path]
        if body is not None:
            if isinstance(body, dict) or isinstance(body, list):
                body = json.dumps(body)
            if isinstance(body, str):
                body = body.encode()
            in_path = os.path.join(td, "in")
            with open(in_path, "wb") as f:
                f.write(body)
            cmd += ["--data-binary", "@" + in_path, "-H", "Content-Type: application/json"]
        cmd.append(url)
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout + 5)
        if r.returncode != 0 and not os.path.exists(hdr_path):
            raise RuntimeError("curl failed (%d): %s" % (r.returncode, r.stderr.decode()))
        return _parse(hdr_path, body_path)


def _parse(hdr_path, body_path):
    with open(hdr_path, "rb") as f:
        raw = f.read().decode("latin-1")
    body = b""
    if os.path.exists(body_path):
        with open(body_path, "rb") as f:
            body = f.read()
    # the last header block (skip 100 Continue)
    blocks = [b for b in raw.replace("\r\n", "\n").split("\n\n") if b.strip()]
    lines = blocks[-1].split("\n")
    proto, status = lines[0].split(" ")[0], int(lines[0].split(" ")[1])
    headers, hl = {}, []
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
            hl.append((k.strip().lower(), v.strip()))
    resp = Response(status, headers, body, proto)
    resp.header_list = hl
    return resp


# ---- Merkle proofs (RFC 9162), for checking the lineage endpoints -------------------------


def leaf_hash(line):
    return hashlib.sha256(b"\x00" + line).digest()


def node_hash(a, b):
    return hashlib.sha256(b"\x01" + a + b).digest()


def verify_inclusion(index, size, leaf, proof, root):
    """RFC 9162 §2.1.3.2."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def verify_consistency(first, second, proof, first_root, second_root):
    """RFC 9162 §2.1.4.2."""
    if first == second:
        return not proof and first_root == second_root
    if first == 0 or first > second:
        return False
    proof = list(proof)
    if first & (first - 1) == 0:  # a power of two: the first root is a proof node
        proof.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    if not proof:
        return False
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn != 0 and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return sn == 0 and fr == first_root and sr == second_root


def parse_checkpoint(note):
    """(origin, size, root bytes) of a C2SP checkpoint note."""
    lines = note.split("\n")
    return lines[0], int(lines[1]), base64.b64decode(lines[2])


# ---- Prometheus text ----------------------------------------------------------------------


def parse_prometheus(text):
    """{(name, frozenset(labels.items())): float}; raises ValueError on a malformed line."""
    import re
    out = {}
    sample = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (-?[0-9.eE+-]+|\+Inf|NaN)$')
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for ln in text.split("\n"):
        if not ln or ln.startswith("# HELP ") or ln.startswith("# TYPE "):
            continue
        if ln.startswith("#"):
            continue
        m = sample.match(ln)
        if not m:
            raise ValueError("bad metrics line: %r" % ln)
        labels = dict(label.findall(m.group(3) or ""))
        out[(m.group(1), frozenset(labels.items()))] = float(m.group(4))
    return out

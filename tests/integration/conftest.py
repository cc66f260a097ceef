"""conftest.py — shared fixtures for the data-path tests.

`gw` (module scope): a real `meshgate serve` (h2c front, write-ahead lineage) in front of
the real test upstream (tests/integration/upstream.py), an issuer with an ES256 and an RS256
key in a JWKS file, and grants applied through the admin API:
  orders-analysts-read   allow group:analysts read datasets/orders_fact/** (purpose analytics)
  orders-etl-write       allow client:etl write datasets/**
  orders-deny-pii        deny  * read datasets/pii/**
Tests use unique paths (a uuid segment) and gw.upstream_saw(path) to assert whether the
product received a request.
"""
import base64
import json
import os
import sys
import time
import uuid

import pytest
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mgtest  # noqa: E402


def _b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class Issuer:
    """Signing keys of the test issuer and the JWKS file meshgate reads."""

    def __init__(self, d):
        self.dir = str(d)
        self.iss = mgtest.ISSUER
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks_path = os.path.join(self.dir, "jwks.json")
        self.extra = []
        self.write_jwks()

    def jwk_ec(self, key, kid):
        n = key.public_key().public_numbers()
        return {"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                "x": _b64u(n.x.to_bytes(32, "big")), "y": _b64u(n.y.to_bytes(32, "big"))}

    def jwk_rsa(self, key, kid):
        n = key.public_key().public_numbers()
        return {"kty": "RSA", "kid": kid, "alg": "RS256", "use": "sig",
                "n": _b64u(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
                "e": _b64u(n.e.to_bytes(3, "big"))}

    def write_jwks(self):
        keys = [self.jwk_ec(self.ec, "ec1"), self.jwk_rsa(self.rsa, "rsa1")] + self.extra
        tmp = self.jwks_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"keys": keys}, f)
        os.replace(tmp, self.jwks_path)

    def claims(self, sub="alice", groups=None, exp_in=600, **over):
        now = int(time.time())
        c = {"iss": self.iss, "aud": mgtest.AUDIENCE, "sub": sub, "iat": now, "exp": now + exp_in}
        if groups is not None:
            c["groups"] = groups
        c.update(over)
        return {k: v for k, v in c.items() if v is not None}

    def es256(self, kid="ec1", key=None, headers=None, **claims):
        h = {"kid": kid, "typ": "JWT"}
        h.update(headers or {})
        return jwt.encode(self.claims(**claims), key or self.ec, algorithm="ES256", headers=h)

    def rs256(self, kid="rsa1", **claims):
        return jwt.encode(self.claims(**claims), self.rsa, algorithm="RS256",
                          headers={"kid": kid, "typ": "JWT"})

    def rsa_public_pem(self):
        return self.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)


GRANTS = [
    {"id": "orders-analysts-read", "effect": "allow", "subjects": ["group:analysts"],
     "product": "orders", "resources": ["datasets/orders_fact/**"], "actions": ["read"],
     "purposes": ["analytics"], "expires": "2099-01-01T00:00:00Z"},
    {"id": "orders-etl-write", "effect": "allow", "subjects": ["client:etl"],
     "product": "orders", "resources": ["datasets/**"], "actions": ["read", "write"]},
    {"id": "orders-deny-pii", "effect": "deny", "subjects": ["*"], "product": "orders",
     "resources": ["datasets/pii/**"], "actions": ["read", "write"]},
    {"id": "orders-old", "effect": "allow", "subjects": ["user:bob"], "product": "orders",
     "resources": ["datasets/**"], "actions": ["read"], "expires": "2020-01-01T00:00:00Z"},
]


class Gateway:
    def __init__(self, d, overrides=None):
        self.dir = str(d)
        self.issuer = Issuer(d)
        self.up = mgtest.start_upstream(d)
        ov = {"upstream": {"address": "127.0.0.1:%d" % self.up.port},
              "identity": {"issuers": [{"issuer": mgtest.ISSUER, "audiences": [mgtest.AUDIENCE],
                                        "jwks_file": "jwks.json", "algorithms": ["ES256", "RS256"],
                                        "jwks_min_refresh_s": 0}]},
              "routes": [{"prefix": "/datasets/", "dataset": "segment:2"},
                         {"prefix": "/healthz", "auth": "none"},
                         {"prefix": "/echo", "auth": "none"}]}
        mgtest._merge(ov, overrides or {})
        self.config_path = mgtest.write_config(d, ov)
        self.mg = mgtest.start_meshgate(self.config_path)
        mgtest.wait_ready(self.mg)
        self.url = self.mg.data_url
        self.admin = self.issuer.es256(sub="platform", scope="mesh:admin")
        for g in GRANTS:
            r = mgtest.request(self.mg.admin_url + "/v1/grants/" + g["id"], method="PUT",
                               token=self.admin, body=g, headers={"If-None-Match": "*"})
            assert r.status in (200, 201), r

    def get(self, path, token=None, headers=None, method="GET", body=None, http2=True):
        return mgtest.request(self.url + path, method=method, token=token, headers=headers,
                              body=body, http2=http2, curl_args=["--path-as-is"])

    def upstream_requests(self):
        out = []
        try:
            with open(self.up.log_path) as f:
                for line in f:
                    o = json.loads(line)
                    if not o.get("done"):
                        out.append(o)
        except FileNotFoundError:
            pass
        return out

    def upstream_saw(self, marker):
        return [r for r in self.upstream_requests() if marker in r["path"]]

    def export(self, *args):
        import subprocess
        r = subprocess.run([mgtest.meshgate_bin(), "lineage", "export", "--db",
                            os.path.join(self.dir, "var/lineage")] + list(args),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        assert r.returncode == 0, r.stderr.decode()
        return r.stdout

    def checkpoint(self):
        r = mgtest.request(self.mg.admin_url + "/v1/lineage/checkpoint")
        assert r.status == 200, r
        return r

    def entries(self):
        self.checkpoint()
        out = []
        for line in self.export().splitlines():
            o = json.loads(line)
            if "index" in o:
                out.append(o)
        return out

    def close(self):
        mgtest.stop(self.mg)
        mgtest.stop(self.up)


def uniq(prefix="/datasets/orders_fact/"):
    return prefix + "t-" + uuid.uuid4().hex[:12]


@pytest.fixture(scope="module")
def gw(tmp_path_factory):
    if not mgtest.MESHGATE_BIN_OK():
        pytest.skip("meshgate binary not built: " + mgtest.meshgate_bin())
    g = Gateway(tmp_path_factory.mktemp("gw"))
    yield g
    g.close()

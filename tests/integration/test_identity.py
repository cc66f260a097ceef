"""JWT identity through the real binary: every token case with the status a client sees,
and no upstream call on failure (the test upstream records every request it gets)."""
import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest

from conftest import uniq


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def forge(header, claims, sig=b"x" * 64):
    return ".".join([b64u(json.dumps(header).encode()), b64u(json.dumps(claims).encode()), b64u(sig)])


def assert_refused(gw, token, expect_reason=None, status=401):
    path = uniq()
    r = gw.get(path, token=token, headers={"x-mesh-purpose": "analytics"})
    assert r.status == status, r
    if status == 401:
        assert r.headers.get("www-authenticate", "").startswith('Bearer error="invalid_token"'), r.headers
        if expect_reason:
            assert expect_reason in r.json()["detail"], r.json()
    assert gw.upstream_saw(path) == [], "the product saw a refused request"
    return r


def assert_allowed(gw, token):
    path = uniq()
    r = gw.get(path, token=token, headers={"x-mesh-purpose": "analytics"})
    assert r.status == 200, r
    assert len(gw.upstream_saw(path)) == 1
    return r


def test_valid_es256(gw):
    assert_allowed(gw, gw.issuer.es256(groups=["analysts"]))


def test_valid_rs256(gw):
    assert_allowed(gw, gw.issuer.rs256(groups=["analysts"]))


def test_expired(gw):
    assert_refused(gw, gw.issuer.es256(groups=["analysts"], exp_in=-3600), "expired")


def test_expired_within_skew_is_accepted(gw):
    assert_allowed(gw, gw.issuer.es256(groups=["analysts"], exp_in=-20))


def test_nbf_in_future(gw):
    assert_refused(gw, gw.issuer.es256(groups=["analysts"], nbf=int(time.time()) + 3600), "not yet valid")


def test_wrong_issuer(gw):
    assert_refused(gw, gw.issuer.es256(groups=["analysts"], iss="https://evil.example"))


def test_wrong_audience(gw):
    assert_refused(gw, gw.issuer.es256(groups=["analysts"], aud="other"), "audience")


def test_audience_array(gw):
    assert_allowed(gw, gw.issuer.es256(groups=["analysts"], aud=["x", "mesh"]))


def test_missing_exp(gw):
    assert_refused(gw, gw.issuer.es256(groups=["analysts"], exp=None), "exp")


def test_alg_none(gw):
    claims = gw.issuer.claims(groups=["analysts"])
    tok = b64u(json.dumps({"alg": "none", "typ": "JWT"}).encode()) + "." + \
        b64u(json.dumps(claims).encode()) + "."
    assert_refused(gw, tok)


def test_hs256_signed_with_rsa_public_key(gw):
    claims = gw.issuer.claims(groups=["analysts"])
    header = {"alg": "HS256", "kid": "rsa1", "typ": "JWT"}
    signing_input = b64u(json.dumps(header).encode()) + "." + b64u(json.dumps(claims).encode())
    sig = hmac.new(gw.issuer.rsa_public_pem(), signing_input.encode(), hashlib.sha256).digest()
    assert_refused(gw, signing_input + "." + b64u(sig), "algorithm")


def test_es256_token_claiming_rsa_key(gw):
    # right signature, but kid names the RSA key: the key's pinned algorithm wins
    assert_refused(gw, gw.issuer.es256(kid="rsa1", groups=["analysts"]))


def test_unknown_kid_then_rotated_jwks(gw):
    from cryptography.hazmat.primitives.asymmetric import ec
    newkey = ec.generate_private_key(ec.SECP256R1())
    tok = gw.issuer.es256(kid="ec2", key=newkey, groups=["analysts"])
    assert_refused(gw, tok, "unknown key")
    gw.issuer.extra = [gw.issuer.jwk_ec(newkey, "ec2")]
    gw.issuer.write_jwks()
    try:
        assert_allowed(gw, tok)  # one refresh on the unknown kid picks up the rotated set
    finally:
        gw.issuer.extra = []
        gw.issuer.write_jwks()


def test_oversized_token(gw):
    tok = gw.issuer.es256(groups=["analysts"], pad="x" * 9000)
    assert_refused(gw, tok, "too large")


def test_huge_token_does_not_crash(gw):
    # libjwt crashes on multi-hundred-KB tokens; meshgate refuses them before parsing.
    # The header list limit (16 KiB) answers first at the HTTP/2 layer: no 200, no crash.
    import os
    import mgtest
    path = uniq()
    hdr = os.path.join(gw.dir, "huge-token.hdr")
    with open(hdr, "w") as f:
        f.write("Authorization: Bearer " + "a" * 300000 + "\n")
    import subprocess
    r = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--http2-prior-knowledge",
                        "-H", "@" + hdr, gw.url + path], stdout=subprocess.PIPE, timeout=30)
    # refused at the HTTP/2 layer (431, or the stream/connection reset: curl reports 000)
    assert r.stdout.decode() in ("431", "401", "400", "000"), r.stdout
    assert gw.upstream_saw(path) == []
    assert_allowed(gw, gw.issuer.es256(groups=["analysts"]))


def test_duplicate_claims(gw):
    claims = gw.issuer.claims(sub="mallory", groups=["analysts"])
    payload = json.dumps(claims)[:-1] + ', "sub": "admin"}'
    header = b64u(json.dumps({"alg": "ES256", "kid": "ec1", "typ": "JWT"}).encode())
    signing_input = header + "." + b64u(payload.encode())
    # sign it properly so only the duplicate makes it bad
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils
    der = gw.issuer.ec.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    r_, s_ = utils.decode_dss_signature(der)
    tok = signing_input + "." + b64u(r_.to_bytes(32, "big") + s_.to_bytes(32, "big"))
    assert_refused(gw, tok)


def test_garbage_base64(gw):
    assert_refused(gw, "not-a.jwt!.at all")
    assert_refused(gw, "eyJhbGciOiJFUzI1NiJ9.e30=.c2ln")   # padding
    assert_refused(gw, "eyJhbGciOiJFUzI1NiJ9.e3+/.c2ln")   # standard alphabet


def test_forbidden_headers(gw):
    for extra in ({"jku": "https://evil/jwks"}, {"x5u": "https://evil/c"}, {"crit": ["exp"]},
                  {"jwk": {"kty": "EC"}}, {"x5c": ["MIIB"]}):
        tok = gw.issuer.es256(groups=["analysts"], headers=extra)
        assert_refused(gw, tok)


def test_missing_and_non_bearer(gw):
    path = uniq()
    r = gw.get(path)
    assert r.status == 401 and "invalid_token" in r.headers["www-authenticate"]
    r = gw.get(path, headers={"authorization": "Basic YWxpY2U6cHc="})
    assert r.status == 401
    assert gw.upstream_saw(path) == []


def test_token_in_query_string_is_not_accepted(gw):
    tok = gw.issuer.es256(groups=["analysts"])
    path = uniq() + "?access_token=" + tok
    r = gw.get(path)
    assert r.status == 401
    assert gw.upstream_saw(path.split("?")[0]) == []


def test_control_characters_in_claims(gw):
    assert_refused(gw, gw.issuer.es256(sub="alice\nadmin", groups=["analysts"]))
    assert_refused(gw, gw.issuer.es256(groups=["analysts\u0000x"]))
    assert_refused(gw, gw.issuer.es256(sub="a" * 300, groups=["analysts"]))


def test_principal_headers_reach_upstream_and_inbound_copies_are_stripped(gw):
    path = uniq()
    tok = gw.issuer.es256(sub="alice", groups=["analysts", "staff"], azp="web")
    r = gw.get(path, token=tok, headers={
        "x-mesh-purpose": "analytics", "x-mesh-principal": "user:root", "x-mesh-group": "admins",
        "x-forwarded-for": "1.2.3.4", "forwarded": "for=1.2.3.4", "x-real-ip": "1.2.3.4",
        "x-original-url": "/admin", "x-http-method-override": "DELETE", "x-request-id": "evil"})
    assert r.status == 200, r
    seen = gw.upstream_saw(path)
    assert len(seen) == 1
    hdrs = seen[0]["headers"]
    names = [k for k, _ in hdrs]
    val = lambda n: [v for k, v in hdrs if k == n]  # noqa: E731
    assert val("x-mesh-principal") == ["user:alice"]
    assert sorted(val("x-mesh-group")) == ["group:analysts", "group:staff"]
    assert "authorization" not in names
    for n in ("x-forwarded-for", "forwarded", "x-real-ip", "x-original-url", "x-http-method-override"):
        assert n not in names, n
    rid = val("x-request-id")
    assert len(rid) == 1 and rid[0] != "evil"
    tp = val("traceparent")[0]
    assert tp.split("-")[1] == rid[0].replace("-", "")


# ---- mTLS: SPIFFE principals on the data path ------------------------------------------------


def test_mtls_spiffe_principal_whole_in_grants_header_and_lineage(tmp_path):
    """A route with "auth": "mtls": the client certificate's SPIFFE ID is the principal.
    Grants name it; the product gets it in x-mesh-principal and the lineage entry records
    it whole, also when it is long (IDs up to 2048 bytes; it was cut at 299 before)."""
    import os
    import subprocess
    import mgtest
    pki = tmp_path / "pki"
    subprocess.run(["sh", os.path.join(mgtest.ROOT, "certs", "mkcerts.sh"), str(pki)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    long_id = "spiffe://mesh.test/ns/analytics/sa/" + "r" * 600

    def client_cert(name, spiffe):
        k, csr, crt, ext = (str(tmp_path / (name + x)) for x in (".key", ".csr", ".pem", ".ext"))
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", k],
                       check=True)
        subprocess.run(["openssl", "req", "-new", "-key", k, "-subj", "/CN=" + name, "-out", csr],
                       check=True)
        with open(ext, "w") as f:
            f.write("extendedKeyUsage=clientAuth\nsubjectAltName=URI:%s\n" % spiffe)
        subprocess.run(["openssl", "x509", "-req", "-in", csr, "-CA", str(pki / "ca.pem"), "-CAkey",
                        str(pki / "ca.key"), "-CAcreateserial", "-CAserial", str(tmp_path / "srl"),
                        "-days", "1", "-extfile", ext, "-out", crt], check=True,
                       stderr=subprocess.DEVNULL)
        return ["--cert", crt, "--key", k]

    keys = mgtest.make_keys_and_jwks(tmp_path)
    up = mgtest.start_upstream(tmp_path)
    cfg = mgtest.write_config(tmp_path, {
        "upstream": {"address": "127.0.0.1:%d" % up.port},
        "listen": {"tls": {"cert": str(pki / "server.pem"), "key": str(pki / "server.key"),
                           "client_ca": str(pki / "ca.pem")}},
        "routes": [{"prefix": "/datasets/", "dataset": "segment:2", "auth": "mtls"}]})
    mg = mgtest.start_meshgate(cfg)
    ca = ["--cacert", str(pki / "ca.pem")]
    try:
        mgtest.wait_ready(mg)
        admin = mgtest.mint(keys, sub="platform", scope="mesh:admin")
        grants = [{"id": "mtls-reporter", "effect": "allow", "product": "orders",
                   "subjects": ["spiffe:spiffe://mesh.test/ns/analytics/sa/reporter"],
                   "resources": ["datasets/sales/**"], "actions": ["read"]},
                  {"id": "mtls-any", "effect": "allow", "product": "orders", "subjects": ["*"],
                   "resources": ["datasets/open/**"], "actions": ["read"]}]
        for g in grants:
            r = mgtest.request(mg.admin_url + "/v1/grants/" + g["id"], method="PUT", token=admin,
                               body=g, headers={"If-None-Match": "*"})
            assert r.status == 201, r
        reporter = ca + ["--cert", str(pki / "client.pem"), "--key", str(pki / "client.key")]
        r = mgtest.request(mg.data_url + "/datasets/sales/m1", curl_args=reporter, http2=True)
        assert r.status == 200, r
        # no certificate: no identity on an mtls route
        r = mgtest.request(mg.data_url + "/datasets/sales/m2", curl_args=ca, http2=True)
        assert r.status == 401, r
        # another workload: its own ID, which the reporter's grant does not name
        longc = ca + client_cert("long", long_id)
        assert mgtest.request(mg.data_url + "/datasets/sales/m3", curl_args=longc, http2=True).status == 403
        r = mgtest.request(mg.data_url + "/datasets/open/m4", curl_args=longc, http2=True)
        assert r.status == 200, r
        seen = [json.loads(x) for x in open(up.log_path)]
        (m4,) = [x for x in seen if x.get("path") == "/datasets/open/m4" and not x.get("done")]
        assert dict(m4["headers"])["x-mesh-principal"] == "spiffe:" + long_id
        assert not [x for x in seen if x.get("path", "").endswith(("/m2", "/m3"))]
        assert mgtest.request(mg.admin_url + "/v1/lineage/checkpoint").status == 200
        out = subprocess.run([mgtest.meshgate_bin(), "lineage", "export", "--db",
                              str(tmp_path / "var" / "lineage")], stdout=subprocess.PIPE,
                             timeout=60, check=True).stdout
        ents = [json.loads(x) for x in out.splitlines() if b'"index"' in x]
        by_path = {e.get("path"): e for e in ents if "of" not in e and "path" in e}
        assert by_path["/datasets/sales/m1"]["principal"] == \
            "spiffe:spiffe://mesh.test/ns/analytics/sa/reporter"
        assert by_path["/datasets/open/m4"]["principal"] == "spiffe:" + long_id
        assert by_path["/datasets/sales/m3"]["decision"] == "deny"
    finally:
        mgtest.stop(mg)
        mgtest.stop(up)

#!/usr/bin/python3
"""Seeds for fuzz_verify: small exports signed with the fixed fuzzing key (Ed25519 private
seed = 32 bytes of 0x42, name "fuzz.example/log"), built from the RFC 6962 definitions.
Run from the repository root: /usr/bin/python3 tests/fuzz/gen_verify_seeds.py"""
import base64, hashlib, json, os
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives import serialization

NAME = "fuzz.example/log"
KEY = Ed25519PrivateKey.from_private_bytes(b"\x42" * 32)
PUB = KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
KID = hashlib.sha256(NAME.encode() + b"\n\x01" + PUB).digest()[:4]
VKEY = "%s+%s+%s" % (NAME, KID.hex(), base64.b64encode(b"\x01" + PUB).decode())

def H(b): return hashlib.sha256(b).digest()
def leaf(d): return H(b"\x00" + d)
def node(l, r): return H(b"\x01" + l + r)
def k_of(n):
    k = 1
    while k << 1 < n: k <<= 1
    return k
def mth(L):
    if not L: return H(b"")
    if len(L) == 1: return L[0]
    k = k_of(len(L)); return node(mth(L[:k]), mth(L[k:]))
def path(m, L):
    if len(L) <= 1: return []
    k = k_of(len(L))
    return path(m, L[:k]) + [mth(L[k:])] if m < k else path(m - k, L[k:]) + [mth(L[:k])]
def sub(m, L, b):
    if m == len(L): return [] if b else [mth(L)]
    k = k_of(len(L))
    return sub(m, L[:k], b) + [mth(L[k:])] if m <= k else sub(m - k, L[k:], False) + [mth(L[:k])]
def frontier(L):
    out, off, n = [], 0, len(L)
    for b in range(63, -1, -1):
        if n >> b & 1: out.append(mth(L[off:off + (1 << b)])); off += 1 << b
    return out
b64 = lambda h: base64.b64encode(h).decode()

def entries(origin, n):
    return [json.dumps({"index": i, "origin": origin, "path": "/v1/x?i=%d" % i, "principal": "user:a",
                        "time": "2026-11-25T10:00:%02d.000000Z" % i}, separators=(",", ":"), sort_keys=True)
            for i in range(n)]
def cp(origin, L, size, leaves_from=None):
    body = "%s\n%d\n%s\n" % (origin, size, b64(mth(L[:size])))
    sig = KEY.sign(body.encode())
    note = body + "\n\u2014 %s %s\n" % (NAME, b64(KID + sig))
    o = {"checkpoint": note}
    if leaves_from is not None: o["leaves"] = b64(b"".join(L[leaves_from:size]))
    return json.dumps(o, separators=(",", ":"), ensure_ascii=False)

E = entries(NAME, 12)
L = [leaf(e.encode()) for e in E]
seeds = {}
seeds["full"] = E[:5] + [cp(NAME, L, 5, 0)] + E[5:12] + [cp(NAME, L, 12, 5)]
seeds["full_noleaves"] = E[:12] + [cp(NAME, L, 12)]
seeds["prefix"] = [json.dumps({"prefix": {"origin": NAME, "size": 7, "hashes": [b64(h) for h in frontier(L[:7])]}},
                              separators=(",", ":"))] + E[7:12] + [cp(NAME, L, 12, 7)]
filt = []
for i in (1, 6, 11):
    filt += [E[i], json.dumps({"proof": {"index": i, "size": 12, "hashes": [b64(h) for h in path(i, L[:12])]}},
                              separators=(",", ":"))]
seeds["filtered"] = filt + [cp(NAME, L, 12)]
seeds["filtered_two"] = [E[2], json.dumps({"proof": {"index": 2, "size": 6, "hashes": [b64(h) for h in path(2, L[:6])]}},
                                          separators=(",", ":")), cp(NAME, L, 6),
                         json.dumps({"consistency": {"origin": NAME, "from": 6, "to": 12,
                                                     "hashes": [b64(h) for h in sub(6, L[:12], True)]}},
                                    separators=(",", ":")),
                         E[9], json.dumps({"proof": {"index": 9, "size": 12, "hashes": [b64(h) for h in path(9, L[:12])]}},
                                          separators=(",", ":")), cp(NAME, L, 12)]
edited = list(seeds["full"]); edited[7] = edited[7].replace("user:a", "user:b")
seeds["edited"] = edited
seeds["deleted"] = seeds["full"][:3] + seeds["full"][4:]
seeds["appended"] = seeds["full"] + [entries(NAME, 13)[12]]
seeds["empty_cp"] = [cp(NAME, [], 0)]
seeds["garbage"] = ['{"index":0,"index":1}', "[]", "{}"]

os.makedirs("tests/fuzz/corpus/verify", exist_ok=True)
for k, lines in seeds.items():
    with open("tests/fuzz/corpus/verify/" + k, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
print(VKEY)

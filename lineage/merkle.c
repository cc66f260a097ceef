/*
 * merkle.c — RFC 6962 / RFC 9162 §2.1 Merkle tree primitives.
 *
 * Design: nothing here holds the tree. The writer keeps a frontier (the right edge,
 * one hash per set bit of the size) and persists every perfect subtree it completes;
 * proofs and arbitrary range hashes are then computed from those stored subtrees
 * through a getter, so every operation is O(log n) reads and the store decides where
 * the hashes live. Proof generation follows the recursive PATH/SUBPROOF definitions,
 * verification the iterative algorithms of RFC 9162 §2.1.3.2 and §2.1.4.2.
 *
 * Hashing uses one EVP_MD fetched once and a per-thread EVP_MD_CTX: the one-shot
 * SHA256() of OpenSSL 3 fetches the algorithm on every call, which dominates the cost
 * of hashing short entry lines when verifying large exports.
 */
#include "lineage/lineage_int.h"

#include <pthread.h>
#include <string.h>

#include <openssl/evp.h>

static EVP_MD *sha256_md;
static pthread_once_t md_once = PTHREAD_ONCE_INIT;
static pthread_key_t ctx_key;

static void ctx_free(void *p) { EVP_MD_CTX_free(p); }

static void md_init(void) {
  sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
  pthread_key_create(&ctx_key, ctx_free);
}

/* SHA-256 of (prefix byte || a || b); falls back to the one-shot API if the
 * per-thread context cannot be set up (allocation failure). */
static void hash2(uint8_t prefix, const void *a, size_t na, const void *b, size_t nb,
                  uint8_t out[MG_HASH_LEN]) {
  pthread_once(&md_once, md_init);
  EVP_MD_CTX *ctx = sha256_md ? pthread_getspecific(ctx_key) : NULL;
  if (!ctx && sha256_md) {
    ctx = EVP_MD_CTX_new();
    if (ctx && pthread_setspecific(ctx_key, ctx) != 0) {
      EVP_MD_CTX_free(ctx);
      ctx = NULL;
    }
  }
  if (ctx && EVP_DigestInit_ex2(ctx, sha256_md, NULL) == 1 &&
      EVP_DigestUpdate(ctx, &prefix, 1) == 1 && (na == 0 || EVP_DigestUpdate(ctx, a, na) == 1) &&
      (nb == 0 || EVP_DigestUpdate(ctx, b, nb) == 1) && EVP_DigestFinal_ex(ctx, out, NULL) == 1)
    return;
  /* Slow path: same bytes, one buffer. Only reached when OpenSSL failed above. */
  uint8_t stack[1 + 2 * MG_HASH_LEN];
  if (na + nb <= 2 * MG_HASH_LEN) {
    stack[0] = prefix;
    if (na) memcpy(stack + 1, a, na);
    if (nb) memcpy(stack + 1 + na, b, nb);
    mg_sha256(stack, 1 + na + nb, out);
    return;
  }
  EVP_MD_CTX *c = EVP_MD_CTX_new();
  if (c && EVP_DigestInit_ex(c, EVP_sha256(), NULL) == 1 && EVP_DigestUpdate(c, &prefix, 1) == 1 &&
      (na == 0 || EVP_DigestUpdate(c, a, na) == 1) && (nb == 0 || EVP_DigestUpdate(c, b, nb) == 1) &&
      EVP_DigestFinal_ex(c, out, NULL) == 1) {
    EVP_MD_CTX_free(c);
    return;
  }
  EVP_MD_CTX_free(c);
  memset(out, 0, MG_HASH_LEN); /* never matches a real root: verification fails closed */
}

void mg_merkle_leaf_hash(const void *data, size_t n, uint8_t out[MG_HASH_LEN]) {
  hash2(0x00, data, n, NULL, 0, out);
}

void mg_merkle_node_hash(const uint8_t l[MG_HASH_LEN], const uint8_t r[MG_HASH_LEN],
                         uint8_t out[MG_HASH_LEN]) {
  hash2(0x01, l, MG_HASH_LEN, r, MG_HASH_LEN, out);
}

static void empty_root(uint8_t out[MG_HASH_LEN]) { mg_sha256("", 0, out); }

/* Largest power of two strictly smaller than n (n >= 2). */
static uint64_t split_point(uint64_t n) {
  uint64_t k = 1;
  while (k << 1 < n) k <<= 1;
  return k;
}

static unsigned ctz64(uint64_t x) { return (unsigned)__builtin_ctzll(x); }

/* ---- frontier ---------------------------------------------------------- */

void mg_merkle_frontier_init(struct mg_merkle_frontier *f) {
  f->size = 0;
  f->n = 0;
}

int mg_merkle_frontier_append(struct mg_merkle_frontier *f, const uint8_t leaf[MG_HASH_LEN],
                              mg_merkle_node_cb cb, void *arg) {
  if (f->size == UINT64_MAX) return MG_LINEAGE_E_RANGE;
  uint64_t s = f->size;
  unsigned n = f->n;
  uint8_t h[MG_HASH_LEN];
  memcpy(h, leaf, MG_HASH_LEN);
  if (cb) {
    int rv = cb(arg, 0, s, h);
    if (rv) return rv;
  }
  /* Each trailing one bit of the old size is a perfect subtree that the new leaf's
   * subtree now completes; merge them without touching f until every cb succeeded. */
  unsigned level = 0;
  for (uint64_t t = s; t & 1; t >>= 1) {
    mg_merkle_node_hash(f->hashes[n - 1], h, h);
    n--;
    level++;
    if (cb) {
      int rv = cb(arg, level, s >> level, h);
      if (rv) return rv;
    }
  }
  memcpy(f->hashes[n], h, MG_HASH_LEN);
  f->n = n + 1;
  f->size = s + 1;
  return 0;
}

void mg_merkle_frontier_root(const struct mg_merkle_frontier *f, uint8_t out[MG_HASH_LEN]) {
  if (f->n == 0) {
    empty_root(out);
    return;
  }
  uint8_t r[MG_HASH_LEN];
  memcpy(r, f->hashes[f->n - 1], MG_HASH_LEN);
  for (unsigned i = f->n - 1; i-- > 0;) mg_merkle_node_hash(f->hashes[i], r, r);
  memcpy(out, r, MG_HASH_LEN);
}

int mg_merkle_frontier_load(struct mg_merkle_frontier *f, uint64_t size, mg_merkle_get_node get,
                            void *arg) {
  struct mg_merkle_frontier t;
  mg_merkle_frontier_init(&t);
  uint64_t off = 0;
  for (unsigned b = 64; b-- > 0;) {
    if (!(size >> b & 1)) continue;
    int rv = get(arg, b, off >> b, t.hashes[t.n]);
    if (rv) return rv;
    t.n++;
    off += (uint64_t)1 << b;
  }
  t.size = size;
  *f = t;
  return 0;
}

/* ---- range hashes and proofs ------------------------------------------- */

/* MTH(D[start:end]), end > start. A range that is a perfect, aligned subtree is one
 * read; otherwise split as in RFC 9162 §2.1.1. Ranges produced by the proof
 * recursions are always aligned at their split points, hence O(log n) reads. */
static int range_hash(uint64_t start, uint64_t end, mg_merkle_get_node get, void *arg,
                      uint8_t out[MG_HASH_LEN]) {
  uint64_t n = end - start;
  if ((n & (n - 1)) == 0 && (start & (n - 1)) == 0) return get(arg, ctz64(n), start >> ctz64(n), out);
  uint64_t k = split_point(n);
  uint8_t l[MG_HASH_LEN], r[MG_HASH_LEN];
  int rv = range_hash(start, start + k, get, arg, l);
  if (rv) return rv;
  rv = range_hash(start + k, end, get, arg, r);
  if (rv) return rv;
  mg_merkle_node_hash(l, r, out);
  return 0;
}

int mg_merkle_range_hash(uint64_t start, uint64_t end, mg_merkle_get_node get, void *arg,
                         uint8_t out[MG_HASH_LEN]) {
  if (end < start) return MG_LINEAGE_E_RANGE;
  if (end == start) {
    empty_root(out);
    return 0;
  }
  return range_hash(start, end, get, arg, out);
}

/* The recursions of RFC 9162 append the sibling of each level after the deeper part of
 * the proof, so walking top-down we fill `out` from its end and shift at the finish. */
static void finish_proof(uint8_t out[][MG_HASH_LEN], size_t used, size_t *nout) {
  size_t first = MG_MERKLE_MAX_LEVELS - used;
  if (first) memmove(out[0], out[first], used * MG_HASH_LEN);
  *nout = used;
}

int mg_merkle_prove_inclusion(uint64_t index, uint64_t size, mg_merkle_get_node get, void *arg,
                              uint8_t out[][MG_HASH_LEN], size_t *nout) {
  *nout = 0;
  if (index >= size) return MG_LINEAGE_E_RANGE;
  uint64_t start = 0, n = size, m = index;
  size_t used = 0;
  while (n > 1) {
    uint64_t k = split_point(n);
    uint8_t *slot = out[MG_MERKLE_MAX_LEVELS - 1 - used];
    int rv;
    if (m < k) {
      rv = range_hash(start + k, start + n, get, arg, slot);
      n = k;
    } else {
      rv = range_hash(start, start + k, get, arg, slot);
      start += k;
      m -= k;
      n -= k;
    }
    if (rv) return rv;
    used++;
  }
  finish_proof(out, used, nout);
  return 0;
}

int mg_merkle_prove_consistency(uint64_t size1, uint64_t size2, mg_merkle_get_node get,
                                void *arg, uint8_t out[][MG_HASH_LEN], size_t *nout) {
  *nout = 0;
  if (size1 > size2) return MG_LINEAGE_E_RANGE;
  if (size1 == 0 || size1 == size2) return 0; /* empty proof by definition */
  uint64_t start = 0, n = size2, m = size1;
  bool b = true;
  size_t used = 0;
  while (m != n) {
    uint64_t k = split_point(n);
    uint8_t *slot = out[MG_MERKLE_MAX_LEVELS - 1 - used];
    int rv;
    if (m <= k) {
      rv = range_hash(start + k, start + n, get, arg, slot);
      n = k;
    } else {
      rv = range_hash(start, start + k, get, arg, slot);
      start += k;
      m -= k;
      n -= k;
      b = false;
    }
    if (rv) return rv;
    used++;
  }
  if (!b) {
    int rv = range_hash(start, start + n, get, arg, out[MG_MERKLE_MAX_LEVELS - 1 - used]);
    if (rv) return rv;
    used++;
  }
  finish_proof(out, used, nout);
  return 0;
}

int mg_merkle_verify_inclusion(uint64_t index, uint64_t size, const uint8_t leaf[MG_HASH_LEN],
                               const uint8_t proof[][MG_HASH_LEN], size_t n,
                               const uint8_t root[MG_HASH_LEN]) {
  if (index >= size || n > MG_MERKLE_MAX_LEVELS) return MG_LINEAGE_E_VERIFY;
  uint64_t fn = index, sn = size - 1;
  uint8_t r[MG_HASH_LEN];
  memcpy(r, leaf, MG_HASH_LEN);
  for (size_t i = 0; i < n; i++) {
    if (sn == 0) return MG_LINEAGE_E_VERIFY;
    if ((fn & 1) || fn == sn) {
      mg_merkle_node_hash(proof[i], r, r);
      if (!(fn & 1))
        while (fn != 0 && !(fn & 1)) {
          fn >>= 1;
          sn >>= 1;
        }
    } else {
      mg_merkle_node_hash(r, proof[i], r);
    }
    fn >>= 1;
    sn >>= 1;
  }
  if (sn != 0 || memcmp(r, root, MG_HASH_LEN) != 0) return MG_LINEAGE_E_VERIFY;
  return 0;
}

int mg_merkle_verify_consistency(uint64_t size1, uint64_t size2,
                                 const uint8_t root1[MG_HASH_LEN],
                                 const uint8_t root2[MG_HASH_LEN],
                                 const uint8_t proof[][MG_HASH_LEN], size_t n) {
  if (size1 > size2 || n > MG_MERKLE_MAX_LEVELS) return MG_LINEAGE_E_VERIFY;
  if (size1 == size2)
    return n == 0 && memcmp(root1, root2, MG_HASH_LEN) == 0 ? 0 : MG_LINEAGE_E_VERIFY;
  if (size1 == 0) return n == 0 ? 0 : MG_LINEAGE_E_VERIFY; /* the empty tree precedes all */
  if (n == 0) return MG_LINEAGE_E_VERIFY;
  /* A power-of-two old tree is itself a node of the new one: RFC 9162 prepends its root. */
  bool pow2 = (size1 & (size1 - 1)) == 0;
  size_t total = n + (pow2 ? 1 : 0);
  if (total > MG_MERKLE_MAX_LEVELS) return MG_LINEAGE_E_VERIFY;
  uint64_t fn = size1 - 1, sn = size2 - 1;
  while (fn & 1) {
    fn >>= 1;
    sn >>= 1;
  }
  uint8_t fr[MG_HASH_LEN], sr[MG_HASH_LEN];
  const uint8_t *c0 = pow2 ? root1 : proof[0];
  memcpy(fr, c0, MG_HASH_LEN);
  memcpy(sr, c0, MG_HASH_LEN);
  for (size_t i = 1; i < total; i++) {
    const uint8_t *c = pow2 ? proof[i - 1] : proof[i];
    if (sn == 0) return MG_LINEAGE_E_VERIFY;
    if ((fn & 1) || fn == sn) {
      mg_merkle_node_hash(c, fr, fr);
      mg_merkle_node_hash(c, sr, sr);
      if (!(fn & 1))
        while (fn != 0 && !(fn & 1)) {
          fn >>= 1;
          sn >>= 1;
        }
    } else {
      mg_merkle_node_hash(sr, c, sr);
    }
    fn >>= 1;
    sn >>= 1;
  }
  if (sn != 0 || memcmp(fr, root1, MG_HASH_LEN) != 0 || memcmp(sr, root2, MG_HASH_LEN) != 0)
    return MG_LINEAGE_E_VERIFY;
  return 0;
}

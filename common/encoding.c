/*
 * encoding.c — hex, base64 (strict, constant-shape tables), UUIDv7, hashes, randomness.
 * Decoders are strict because they parse attacker input (JWTs, signed notes).
 */
#include "common/common.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/sha.h>

static const char hexd[] = "0123456789abcdef";

size_t mg_hex_encode(const uint8_t *in, size_t n, char *out) {
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = hexd[in[i] >> 4];
    out[2 * i + 1] = hexd[in[i] & 15];
  }
  out[2 * n] = 0;
  return 2 * n;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int mg_hex_decode(const char *in, size_t inlen, uint8_t *out, size_t outlen) {
  if (inlen != 2 * outlen) return MG_ERR_INVALID;
  for (size_t i = 0; i < outlen; i++) {
    int h = hexval(in[2 * i]), l = hexval(in[2 * i + 1]);
    if (h < 0 || l < 0) return MG_ERR_INVALID;
    out[i] = (uint8_t)(h << 4 | l);
  }
  return 0;
}

static const char b64std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t mg_b64url_len(size_t n) { return (n / 3) * 4 + (n % 3 ? n % 3 + 1 : 0); }

static size_t b64_encode(const char *alpha, const uint8_t *in, size_t n, char *out, bool pad) {
  size_t o = 0, i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
    out[o++] = alpha[v >> 18];
    out[o++] = alpha[(v >> 12) & 63];
    out[o++] = alpha[(v >> 6) & 63];
    out[o++] = alpha[v & 63];
  }
  if (n - i == 1) {
    uint32_t v = (uint32_t)in[i] << 16;
    out[o++] = alpha[v >> 18];
    out[o++] = alpha[(v >> 12) & 63];
    if (pad) { out[o++] = '='; out[o++] = '='; }
  } else if (n - i == 2) {
    uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
    out[o++] = alpha[v >> 18];
    out[o++] = alpha[(v >> 12) & 63];
    out[o++] = alpha[(v >> 6) & 63];
    if (pad) out[o++] = '=';
  }
  out[o] = 0;
  return o;
}

size_t mg_b64url_encode(const uint8_t *in, size_t n, char *out) { return b64_encode(b64url, in, n, out, false); }
size_t mg_b64_encode(const uint8_t *in, size_t n, char *out) { return b64_encode(b64std, in, n, out, true); }

static int b64val(char c, bool url) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (url) { if (c == '-') return 62; if (c == '_') return 63; }
  else { if (c == '+') return 62; if (c == '/') return 63; }
  return -1;
}

static int b64_decode(const char *in, size_t n, uint8_t *out, size_t *outlen, bool url) {
  size_t cap = *outlen, o = 0;
  size_t full = n / 4 * 4, rem = n % 4;
  if (!url) {
    if (rem) return MG_ERR_INVALID;
    if (n >= 1 && in[n - 1] == '=') { rem = (n >= 2 && in[n - 2] == '=') ? 2 : 3; full = n - 4; }
  } else if (rem == 1) {
    return MG_ERR_INVALID;
  }
  size_t need = full / 4 * 3 + (rem ? rem - 1 : 0);
  if (need > cap) return MG_ERR_TOOBIG;
  for (size_t i = 0; i < full; i += 4) {
    int a = b64val(in[i], url), b = b64val(in[i + 1], url), c = b64val(in[i + 2], url), d = b64val(in[i + 3], url);
    if ((a | b | c | d) < 0) return MG_ERR_INVALID;
    uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
    out[o++] = (uint8_t)(v >> 16);
    out[o++] = (uint8_t)(v >> 8);
    out[o++] = (uint8_t)v;
  }
  if (rem) {
    const char *t = in + full;
    int a = b64val(t[0], url), b = b64val(t[1], url);
    if ((a | b) < 0) return MG_ERR_INVALID;
    if (rem == 2) {
      if (!url && (t[2] != '=' || t[3] != '=')) return MG_ERR_INVALID;
      if (b & 15) return MG_ERR_INVALID; /* non-canonical trailing bits */
      out[o++] = (uint8_t)(a << 2 | b >> 4);
    } else {
      int c = b64val(t[2], url);
      if (c < 0) return MG_ERR_INVALID;
      if (!url && t[3] != '=') return MG_ERR_INVALID;
      if (c & 3) return MG_ERR_INVALID;
      out[o++] = (uint8_t)(a << 2 | b >> 4);
      out[o++] = (uint8_t)((b & 15) << 4 | c >> 2);
    }
  }
  *outlen = o;
  return 0;
}

int mg_b64url_decode(const char *in, size_t n, uint8_t *out, size_t *outlen) { return b64_decode(in, n, out, outlen, true); }
int mg_b64_decode(const char *in, size_t n, uint8_t *out, size_t *outlen) { return b64_decode(in, n, out, outlen, false); }

int mg_random(void *buf, size_t n) {
  uint8_t *p = buf;
  while (n) {
    ssize_t r = getrandom(p, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -errno;
    }
    p += r;
    n -= (size_t)r;
  }
  return 0;
}

void mg_sha256(const void *data, size_t n, uint8_t out[32]) { SHA256(data, n, out); }

static uint64_t hash_seed;
static pthread_once_t seed_once = PTHREAD_ONCE_INIT;
static void seed_init(void) { if (mg_random(&hash_seed, sizeof hash_seed)) hash_seed = 0x9e3779b97f4a7c15ull; }

static inline uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint64_t mix(uint64_t a, uint64_t b) {
  __uint128_t r = (__uint128_t)a * b;
  return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/* A wyhash-style mixer: fast, seeded, good enough for bucket selection. */
uint64_t mg_hash64(const void *data, size_t n) {
  pthread_once(&seed_once, seed_init);
  const uint8_t *p = data;
  uint64_t h = hash_seed ^ (n * 0xa0761d6478bd642full);
  while (n >= 16) {
    h = mix(rd64(p) ^ 0xe7037ed1a0b428dbull ^ h, rd64(p + 8) ^ 0x8ebc6af09c88c6e3ull);
    p += 16; n -= 16;
  }
  uint64_t a = 0, b = 0;
  if (n >= 8) { a = rd64(p); p += 8; n -= 8; }
  for (size_t i = 0; i < n; i++) b |= (uint64_t)p[i] << (8 * i);
  return mix(h ^ a ^ 0xe7037ed1a0b428dbull, b ^ 0x589965cc75374cc3ull ^ (h >> 7));
}

/* Request ids take their random bits from a per-thread pool refilled 4 KiB at a time: one
 * getrandom(2) per ~400 ids instead of one per request. A fork() child must not hand out
 * its parent's next ids: the atfork handler bumps a generation that empties every pool. */
static atomic_uint fork_gen;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void on_fork_child(void) { atomic_fetch_add(&fork_gen, 1); }
static void atfork_init(void) { pthread_atfork(NULL, NULL, on_fork_child); }

static int pool_random(uint8_t *out, size_t n) {
  static _Thread_local uint8_t pool[4096];
  static _Thread_local size_t left;
  static _Thread_local unsigned gen;
  pthread_once(&atfork_once, atfork_init);
  unsigned g = atomic_load_explicit(&fork_gen, memory_order_relaxed);
  if (gen != g) {
    left = 0;
    gen = g;
  }
  if (left < n) {
    if (mg_random(pool, sizeof pool)) return -1;
    left = sizeof pool;
  }
  memcpy(out, pool + sizeof pool - left, n);
  left -= n;
  return 0;
}

void mg_uuidv7(char out[37]) {
  static _Thread_local uint64_t last_ms;
  static _Thread_local uint16_t counter;
  uint8_t b[16];
  uint64_t ms = (uint64_t)(mg_time_now_us() / 1000);
  if (pool_random(b + 6, 10)) memset(b + 6, 0, 10);
  if (ms <= last_ms) { ms = last_ms; counter++; } else { counter = (uint16_t)(b[6] << 4 | b[7] >> 4) & 0x7ff; }
  last_ms = ms;
  for (int i = 0; i < 6; i++) b[i] = (uint8_t)(ms >> (40 - 8 * i));
  b[6] = (uint8_t)(0x70 | ((counter >> 8) & 0x0f));
  b[7] = (uint8_t)counter;
  b[8] = (uint8_t)(0x80 | (b[8] & 0x3f));
  static const int dash[] = {4, 6, 8, 10};
  size_t o = 0;
  for (int i = 0, di = 0; i < 16; i++) {
    if (di < 4 && i == dash[di]) { out[o++] = '-'; di++; }
    out[o++] = hexd[b[i] >> 4];
    out[o++] = hexd[b[i] & 15];
  }
  out[36] = 0;
}

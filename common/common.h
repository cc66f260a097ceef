/*
 * common.h — meshgate's base library: errors, logging, time, encodings, buffers.
 *
 * Depends on nothing else in meshgate. Every function here is thread-safe unless
 * said otherwise. Errors: functions return 0 on success and a negative value on
 * failure; system errors are -errno, meshgate's own codes live in per-module
 * ranges (see MG_ERR_*) and mg_strerror() names any of them.
 */
#ifndef MG_COMMON_H
#define MG_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ------------------------------------------------------------ */

/* Module error ranges. A module defines its codes as MG_ERR_<MODULE>_BASE - k. */
#define MG_ERR_COMMON_BASE  (-1000)
#define MG_ERR_POLICY_BASE  (-2000)
#define MG_ERR_LINEAGE_BASE (-3000)
#define MG_ERR_SIDECAR_BASE (-4000)
#define MG_ERR_CERTS_BASE   (-5000)
#define MG_ERR_RANGE        1000

enum {
  MG_ERR_INVALID   = MG_ERR_COMMON_BASE - 1, /* malformed input */
  MG_ERR_TOOBIG    = MG_ERR_COMMON_BASE - 2, /* input over a configured bound */
  MG_ERR_NOTFOUND  = MG_ERR_COMMON_BASE - 3,
  MG_ERR_INTERNAL  = MG_ERR_COMMON_BASE - 4,
};

/* A module's error namer: returns NULL for codes it does not know. */
typedef const char *(*mg_strerror_fn)(int err);

/* Registers the namer of the range [base - MG_ERR_RANGE + 1, base]. Call at start-up
 * (not thread-safe against concurrent mg_strerror()). */
void mg_strerror_register(int base, mg_strerror_fn fn);

/* A static string for any error code: -errno, common codes, registered modules. */
const char *mg_strerror(int err);

/* ---- logging ----------------------------------------------------------- */

enum mg_log_level { MG_LOG_DEBUG = 0, MG_LOG_INFO, MG_LOG_WARN, MG_LOG_ERROR };

/* Logs one JSON line {"time":…,"level":…,"msg":…} to stderr (or the set fd).
 * The message is JSON-escaped; never pass a token or a secret. */
void mg_log(enum mg_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void mg_log_set_level(enum mg_log_level level);
enum mg_log_level mg_log_get_level(void);
/* Writes a preformatted line (caller adds no LF) atomically to the log fd. */
void mg_log_raw(const char *line, size_t len);
/* Writes buf, whole lines each ending in LF, in as few write(2)s as keep every write at
 * most PIPE_BUF bytes and cut at a line end (a pipe never interleaves such writes; a
 * longer line goes alone). For callers that batch lines (the access log). */
void mg_log_lines(const char *buf, size_t len);
void mg_log_set_fd(int fd);

#define mg_debug(...) do { if (mg_log_get_level() <= MG_LOG_DEBUG) mg_log(MG_LOG_DEBUG, __VA_ARGS__); } while (0)
#define mg_info(...)  mg_log(MG_LOG_INFO, __VA_ARGS__)
#define mg_warn(...)  mg_log(MG_LOG_WARN, __VA_ARGS__)
#define mg_error(...) mg_log(MG_LOG_ERROR, __VA_ARGS__)

/* ---- time -------------------------------------------------------------- */

/* Wall clock, microseconds since the Unix epoch. */
int64_t mg_time_now_us(void);
/* Monotonic clock, microseconds. */
int64_t mg_mono_now_us(void);

#define MG_RFC3339_LEN 28 /* "2024-01-01T00:00:00.000000Z" + NUL */
/* Formats unix_us as RFC 3339 UTC with 6 fraction digits and 'Z'. Returns length (27). */
size_t mg_time_format_rfc3339(int64_t unix_us, char out[MG_RFC3339_LEN]);
/* Parses RFC 3339 ("Z" or ±hh:mm offset, optional fraction up to 9 digits, 'T' or 't').
 * Returns 0 and *out, or MG_ERR_INVALID. */
int mg_time_parse_rfc3339(const char *s, size_t len, int64_t *out_unix_us);

/* ---- encodings ---------------------------------------------------------- */

/* Lowercase hex; out must hold 2n+1 bytes. Returns 2n. */
size_t mg_hex_encode(const uint8_t *in, size_t n, char *out);
/* Decodes exactly 2*outlen hex digits (either case). 0 or MG_ERR_INVALID. */
int mg_hex_decode(const char *in, size_t inlen, uint8_t *out, size_t outlen);

/* Base64url without padding (RFC 4648 §5). encode: out holds mg_b64url_len(n)+1. */
size_t mg_b64url_len(size_t n);
size_t mg_b64url_encode(const uint8_t *in, size_t n, char *out);
/* Strict decode: only [A-Za-z0-9_-], no '=', no whitespace, non-canonical trailing bits
 * rejected. *outlen in: capacity, out: bytes written. 0, MG_ERR_INVALID or MG_ERR_TOOBIG. */
int mg_b64url_decode(const char *in, size_t n, uint8_t *out, size_t *outlen);

/* Standard base64 with padding (RFC 4648 §4). encode: out holds 4*((n+2)/3)+1. */
size_t mg_b64_encode(const uint8_t *in, size_t n, char *out);
/* Strict decode of padded standard base64. Same conventions as mg_b64url_decode. */
int mg_b64_decode(const char *in, size_t n, uint8_t *out, size_t *outlen);

/* UUIDv7 (RFC 9562) text, lowercase, 36 chars + NUL. Uses the wall clock in ms and a
 * per-thread counter + random bits so ids from one thread sort by creation. */
void mg_uuidv7(char out[37]);

/* SHA-256 of one buffer. */
void mg_sha256(const void *data, size_t n, uint8_t out[32]);

/* Fast non-cryptographic 64-bit hash with a per-process random seed (for hash tables
 * whose keys a peer controls). */
uint64_t mg_hash64(const void *data, size_t n);

/* Fills buf with n random bytes from the OS. 0 or -errno. */
int mg_random(void *buf, size_t n);

/* ---- growable buffer ---------------------------------------------------- */

struct mg_buf {
  char *data;   /* always NUL-terminated when len>0 or after init */
  size_t len;
  size_t cap;
};

void mg_buf_init(struct mg_buf *b);
void mg_buf_clear(struct mg_buf *b);            /* frees */
static inline void mg_buf_reset(struct mg_buf *b) { b->len = 0; if (b->data) b->data[0] = 0; }
int mg_buf_reserve(struct mg_buf *b, size_t extra); /* 0 or -ENOMEM */
int mg_buf_append_grow(struct mg_buf *b, const void *data, size_t n);
/* Appends n bytes (inline: lineage entries and access-log lines are built from many
 * short pieces; the call is the cost when the buffer has room). 0 or -ENOMEM. */
static inline int mg_buf_append(struct mg_buf *b, const void *data, size_t n) {
  if (b->len + n + 1 > b->cap) return mg_buf_append_grow(b, data, n);
  if (n) memcpy(b->data + b->len, data, n);
  b->len += n;
  b->data[b->len] = 0;
  return 0;
}
static inline int mg_buf_appends(struct mg_buf *b, const char *s) {
  return mg_buf_append(b, s, strlen(s));
}
int mg_buf_appendf(struct mg_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quotes included; bytes ≥ 0x80 are copied as is
 * (caller guarantees valid UTF-8), control characters escaped. */
int mg_buf_append_json_str(struct mg_buf *b, const char *s, size_t n);
/* Takes the data out of b (caller frees), leaving b empty. */
char *mg_buf_steal(struct mg_buf *b);

/* ---- small helpers ------------------------------------------------------ */

/* Reads a whole file (at most max bytes, else MG_ERR_TOOBIG). *out is NUL-terminated
 * and must be freed. */
int mg_file_read(const char *path, size_t max, char **out, size_t *outlen);
/* Writes a file atomically (tmp + fsync + rename + fsync dir) with the given mode. */
int mg_file_write_atomic(const char *path, const void *data, size_t n, unsigned mode);
/* mkdir -p with mode for the created directories. */
int mg_mkdir_p(const char *path, unsigned mode);

/* True when s[0..n) is valid UTF-8 (no overlong forms, no surrogates, ≤ U+10FFFF). */
bool mg_utf8_valid(const char *s, size_t n);

/* Case-insensitive ASCII compare of a counted string with a C string. */
bool mg_strieq(const char *a, size_t alen, const char *b);

/* Equal C strings, where NULL equals only NULL. */
bool mg_str_eq(const char *a, const char *b);
/* Equal string arrays: same length, mg_str_eq element by element. */
bool mg_strv_eq(char *const *a, size_t na, char *const *b, size_t nb);

#define MG_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MG_MIN(a, b) ((a) < (b) ? (a) : (b))
#define MG_MAX(a, b) ((a) > (b) ? (a) : (b))

#ifdef __cplusplus
}
#endif
#endif /* MG_COMMON_H */

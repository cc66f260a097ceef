/*
 * buf.c — a growable byte buffer and small file/string helpers.
 */
#include "common/common.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void mg_buf_init(struct mg_buf *b) { b->data = NULL; b->len = 0; b->cap = 0; }

void mg_buf_clear(struct mg_buf *b) { free(b->data); mg_buf_init(b); }

int mg_buf_reserve(struct mg_buf *b, size_t extra) {
  if (b->len + extra + 1 <= b->cap) return 0;
  size_t ncap = b->cap ? b->cap : 64;
  while (ncap < b->len + extra + 1) {
    if (ncap > SIZE_MAX / 2) return -ENOMEM;
    ncap *= 2;
  }
  char *p = realloc(b->data, ncap);
  if (!p) return -ENOMEM;
  b->data = p;
  b->cap = ncap;
  return 0;
}

int mg_buf_append_grow(struct mg_buf *b, const void *data, size_t n) {
  int rv = mg_buf_reserve(b, n);
  if (rv) return rv;
  if (n) memcpy(b->data + b->len, data, n);
  b->len += n;
  b->data[b->len] = 0;
  return 0;
}

int mg_buf_appendf(struct mg_buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char tmp[256];
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return MG_ERR_INVALID;
  if ((size_t)n < sizeof tmp) return mg_buf_append(b, tmp, (size_t)n);
  int rv = mg_buf_reserve(b, (size_t)n);
  if (rv) return rv;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}

/* 1 for the bytes a JSON string literal must escape: controls, '"', '\\', DEL. */
static const unsigned char json_esc[256] = {
  [0x00] = 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
  [0x10] = 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
  ['"'] = 1, ['\\'] = 1, [0x7f] = 1,
};

int mg_buf_append_json_str(struct mg_buf *b, const char *s, size_t n) {
  /* the common case, nothing to escape, in one reservation and one copy */
  int rv = mg_buf_reserve(b, n + 2);
  if (rv) return rv;
  b->data[b->len++] = '"';
  size_t start = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!json_esc[c]) continue;
    char esc[8];
    size_t el = 2;
    switch (c) {
    case '"': memcpy(esc, "\\\"", 2); break;
    case '\\': memcpy(esc, "\\\\", 2); break;
    case '\n': memcpy(esc, "\\n", 2); break;
    case '\r': memcpy(esc, "\\r", 2); break;
    case '\t': memcpy(esc, "\\t", 2); break;
    default:
      snprintf(esc, sizeof esc, "\\u%04x", c);
      el = 6;
    }
    if ((rv = mg_buf_append(b, s + start, i - start)) || (rv = mg_buf_append(b, esc, el)))
      return rv;
    start = i + 1;
  }
  /* room for the rest, the quote and the NUL was reserved unless escapes grew it */
  if ((rv = mg_buf_append(b, s + start, n - start))) return rv;
  return mg_buf_append(b, "\"", 1);
}

char *mg_buf_steal(struct mg_buf *b) {
  char *p = b->data;
  if (!p) p = calloc(1, 1);
  mg_buf_init(b);
  return p;
}

int mg_file_read(const char *path, size_t max, char **out, size_t *outlen) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  struct mg_buf b;
  mg_buf_init(&b);
  int rv = 0;
  for (;;) {
    if ((rv = mg_buf_reserve(&b, 65536))) goto fail;
    ssize_t r = read(fd, b.data + b.len, 65536);
    if (r < 0) {
      if (errno == EINTR) continue;
      rv = -errno;
      goto fail;
    }
    if (r == 0) break;
    b.len += (size_t)r;
    if (b.len > max) { rv = MG_ERR_TOOBIG; goto fail; }
  }
  close(fd);
  if (!b.data && mg_buf_reserve(&b, 1)) return -ENOMEM;
  b.data[b.len] = 0;
  if (outlen) *outlen = b.len;
  *out = b.data;
  return 0;
fail:
  close(fd);
  mg_buf_clear(&b);
  return rv;
}

int mg_file_write_atomic(const char *path, const void *data, size_t n, unsigned mode) {
  char tmp[4096];
  if ((size_t)snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid()) >= sizeof tmp) return -ENAMETOOLONG;
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return -errno;
  int rv = 0;
  if (fchmod(fd, mode) < 0) { rv = -errno; goto fail; }
  const char *p = data;
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      rv = -errno;
      goto fail;
    }
    p += w;
    n -= (size_t)w;
  }
  if (fsync(fd) < 0) { rv = -errno; goto fail; }
  close(fd);
  if (rename(tmp, path) < 0) { rv = -errno; unlink(tmp); return rv; }
  char dir[4096];
  snprintf(dir, sizeof dir, "%s", path);
  int dfd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) { fsync(dfd); close(dfd); }
  return 0;
fail:
  close(fd);
  unlink(tmp);
  return rv;
}

int mg_mkdir_p(const char *path, unsigned mode) {
  char tmp[4096];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof tmp) return -ENAMETOOLONG;
  memcpy(tmp, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (tmp[i] == '/' || tmp[i] == 0) {
      char c = tmp[i];
      tmp[i] = 0;
      if (mkdir(tmp, mode) < 0 && errno != EEXIST) return -errno;
      tmp[i] = c;
    }
  }
  return 0;
}

bool mg_utf8_valid(const char *str, size_t n) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  while (i < n) {
    if (i + 8 <= n) { /* ASCII, eight bytes at a time */
      uint64_t w;
      memcpy(&w, s + i, 8);
      if (!(w & 0x8080808080808080ULL)) { i += 8; continue; }
    }
    unsigned char c = s[i];
    if (c < 0x80) { i++; continue; }
    size_t len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) { len = 2; cp = c & 0x1f; }
    else if (c >= 0xe0 && c <= 0xef) { len = 3; cp = c & 0x0f; }
    else if (c >= 0xf0 && c <= 0xf4) { len = 4; cp = c & 0x07; }
    else return false;
    if (i + len > n) return false;
    for (size_t k = 1; k < len; k++) {
      if ((s[i + k] & 0xc0) != 0x80) return false;
      cp = cp << 6 | (s[i + k] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    i += len;
  }
  return true;
}

bool mg_strieq(const char *a, size_t alen, const char *b) {
  size_t i = 0;
  for (; i < alen && b[i]; i++) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = (char)(x + 32);
    if (y >= 'A' && y <= 'Z') y = (char)(y + 32);
    if (x != y) return false;
  }
  return i == alen && b[i] == 0;
}

bool mg_str_eq(const char *a, const char *b) {
  if (!a || !b) return a == b;
  return strcmp(a, b) == 0;
}

bool mg_strv_eq(char *const *a, size_t na, char *const *b, size_t nb) {
  if (na != nb) return false;
  for (size_t i = 0; i < na; i++)
    if (!mg_str_eq(a[i], b[i])) return false;
  return true;
}

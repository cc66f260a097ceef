/*
 * log.c — JSON-lines logging to one fd. Each line is built in a stack buffer and written
 * with a single write(2), so lines from different threads never interleave.
 */
#include "common/common.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static _Atomic int log_level = MG_LOG_INFO;
static _Atomic int log_fd = 2;

void mg_log_set_level(enum mg_log_level level) { atomic_store(&log_level, (int)level); }
enum mg_log_level mg_log_get_level(void) { return (enum mg_log_level)atomic_load(&log_level); }
void mg_log_set_fd(int fd) { atomic_store(&log_fd, fd); }

void mg_log_raw(const char *line, size_t len) {
  char buf[8192];
  int fd = atomic_load(&log_fd);
  if (len + 1 <= sizeof buf) {
    memcpy(buf, line, len);
    buf[len] = '\n';
    ssize_t r = write(fd, buf, len + 1);
    (void)r;
  } else {
    struct mg_buf b;
    mg_buf_init(&b);
    if (mg_buf_append(&b, line, len) == 0 && mg_buf_append(&b, "\n", 1) == 0) {
      ssize_t r = write(fd, b.data, b.len);
      (void)r;
    }
    mg_buf_clear(&b);
  }
}

static void write_all(int fd, const char *p, size_t n) {
  while (n) {
    ssize_t r = write(fd, p, n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return; /* a log that cannot be written is not a reason to stop serving */
    p += r;
    n -= (size_t)r;
  }
}

void mg_log_lines(const char *buf, size_t len) {
  int fd = atomic_load(&log_fd);
  while (len) {
    size_t n = len;
    if (n > PIPE_BUF) {
      /* up to the last line end within PIPE_BUF; an overlong first line goes alone */
      size_t i = PIPE_BUF;
      while (i > 0 && buf[i - 1] != '\n') i--;
      if (i == 0) {
        const char *e = memchr(buf + PIPE_BUF, '\n', len - PIPE_BUF);
        i = e ? (size_t)(e - buf) + 1 : len;
      }
      n = i;
    }
    write_all(fd, buf, n);
    buf += n;
    len -= n;
  }
}

static const char *level_name[] = {"debug", "info", "warn", "error"};

void mg_log(enum mg_log_level level, const char *fmt, ...) {
  if ((int)level < atomic_load(&log_level)) return;
  char msg[4096];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  size_t mlen = (size_t)n < sizeof msg ? (size_t)n : sizeof msg - 1;
  char ts[MG_RFC3339_LEN];
  mg_time_format_rfc3339(mg_time_now_us(), ts);
  struct mg_buf b;
  mg_buf_init(&b);
  mg_buf_appendf(&b, "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":", ts, level_name[level]);
  mg_buf_append_json_str(&b, msg, mlen);
  mg_buf_append(&b, "}", 1);
  if (b.data) mg_log_raw(b.data, b.len);
  mg_buf_clear(&b);
}

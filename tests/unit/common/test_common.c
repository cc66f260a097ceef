/* test_common.c — encodings, time, ids and UTF-8 checks that the parsers of outside input
 * (JWTs, signed notes, paths) rely on. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include <limits.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/common.h"

static void test_b64url(void **state) {
  (void)state;
  uint8_t out[64];
  size_t n = sizeof out;
  assert_int_equal(mg_b64url_decode("aGVsbG8", 7, out, &n), 0);
  assert_int_equal(n, 5);
  assert_memory_equal(out, "hello", 5);
  n = sizeof out;
  assert_int_equal(mg_b64url_decode("aGVsbG8=", 8, out, &n), MG_ERR_INVALID);  /* padding */
  n = sizeof out;
  assert_int_equal(mg_b64url_decode("a+/b", 4, out, &n), MG_ERR_INVALID);      /* std alphabet */
  n = sizeof out;
  assert_int_equal(mg_b64url_decode("aGVsbG9", 7, out, &n), MG_ERR_INVALID);   /* non-canonical bits */
  n = sizeof out;
  assert_int_equal(mg_b64url_decode("a", 1, out, &n), MG_ERR_INVALID);
  n = 2;
  assert_int_equal(mg_b64url_decode("aGVsbG8", 7, out, &n), MG_ERR_TOOBIG);
  char enc[16];
  assert_int_equal(mg_b64url_encode((const uint8_t *)"\xfb\xff", 2, enc), 3);
  assert_string_equal(enc, "-_8");
  n = sizeof out;
  assert_int_equal(mg_b64url_decode("", 0, out, &n), 0);
  assert_int_equal(n, 0);
}

static void test_b64std(void **state) {
  (void)state;
  char enc[64];
  mg_b64_encode((const uint8_t *)"hello", 5, enc);
  assert_string_equal(enc, "aGVsbG8=");
  uint8_t out[64];
  size_t n = sizeof out;
  assert_int_equal(mg_b64_decode("aGVsbG8=", 8, out, &n), 0);
  assert_int_equal(n, 5);
  n = sizeof out;
  assert_int_equal(mg_b64_decode("aGVsbG8", 7, out, &n), MG_ERR_INVALID);
  n = sizeof out;
  assert_int_equal(mg_b64_decode("aGVsbG9=", 8, out, &n), MG_ERR_INVALID);
  n = sizeof out;
  assert_int_equal(mg_b64_decode("aG=sbG8=", 8, out, &n), MG_ERR_INVALID);
  for (size_t len = 0; len < 40; len++) {
    uint8_t in[40];
    for (size_t i = 0; i < len; i++) in[i] = (uint8_t)(i * 37 + len);
    mg_b64_encode(in, len, enc);
    n = sizeof out;
    assert_int_equal(mg_b64_decode(enc, strlen(enc), out, &n), 0);
    assert_int_equal(n, len);
    assert_memory_equal(out, in, len);
    char u[64];
    mg_b64url_encode(in, len, u);
    n = sizeof out;
    assert_int_equal(mg_b64url_decode(u, strlen(u), out, &n), 0);
    assert_int_equal(n, len);
  }
}

static void test_time(void **state) {
  (void)state;
  char s[MG_RFC3339_LEN];
  assert_int_equal(mg_time_format_rfc3339(0, s), 27);
  assert_string_equal(s, "1970-01-01T00:00:00.000000Z");
  mg_time_format_rfc3339(1704067200123456LL, s);
  assert_string_equal(s, "2024-01-01T00:00:00.123456Z");
  mg_time_format_rfc3339(951782400000000LL, s); /* leap day 2000 */
  assert_string_equal(s, "2000-02-29T00:00:00.000000Z");
  int64_t t;
  assert_int_equal(mg_time_parse_rfc3339("2024-01-01T00:00:00.123456Z", 27, &t), 0);
  assert_int_equal(t, 1704067200123456LL);
  assert_int_equal(mg_time_parse_rfc3339("2024-01-01T01:00:00+01:00", 25, &t), 0);
  assert_int_equal(t, 1704067200000000LL);
  assert_int_equal(mg_time_parse_rfc3339("2027-01-01T00:00:00Z", 20, &t), 0);
  assert_int_equal(mg_time_parse_rfc3339("2023-02-29T00:00:00Z", 20, &t), MG_ERR_INVALID);
  assert_int_equal(mg_time_parse_rfc3339("2024-13-01T00:00:00Z", 20, &t), MG_ERR_INVALID);
  assert_int_equal(mg_time_parse_rfc3339("2024-01-01 00:00:00Z", 20, &t), MG_ERR_INVALID);
  assert_int_equal(mg_time_parse_rfc3339("2024-01-01T00:00:00", 19, &t), MG_ERR_INVALID);
  assert_int_equal(mg_time_parse_rfc3339("2024-01-01T00:00:00.Z", 21, &t), MG_ERR_INVALID);
  /* round trip over a range of instants */
  for (int64_t us = -86400000000LL * 400; us < 86400000000LL * 365 * 60; us += 86400000000LL * 37 + 1234567) {
    if (us < 0) continue;
    mg_time_format_rfc3339(us, s);
    assert_int_equal(mg_time_parse_rfc3339(s, 27, &t), 0);
    assert_int_equal(t, us);
  }
}

static void test_uuidv7(void **state) {
  (void)state;
  char a[37], b[37];
  mg_uuidv7(a);
  assert_int_equal(strlen(a), 36);
  assert_int_equal(a[14], '7');                     /* version */
  assert_true(strchr("89ab", a[19]) != NULL);       /* variant */
  for (int i = 0; i < 1000; i++) {
    mg_uuidv7(b);
    assert_true(strcmp(a, b) < 0);                  /* sortable, unique within a thread */
    memcpy(a, b, sizeof a);
  }
}

static void test_utf8(void **state) {
  (void)state;
  assert_true(mg_utf8_valid("caf\xc3\xa9", 5));
  assert_true(mg_utf8_valid("\xf0\x9f\x98\x80", 4));
  assert_false(mg_utf8_valid("\xc0\xaf", 2));       /* overlong */
  assert_false(mg_utf8_valid("\xed\xa0\x80", 3));   /* surrogate */
  assert_false(mg_utf8_valid("\xf4\x90\x80\x80", 4)); /* > U+10FFFF */
  assert_false(mg_utf8_valid("\xc3", 1));
  assert_false(mg_utf8_valid("\xff", 1));
  /* past the eight-byte ASCII stride */
  assert_true(mg_utf8_valid("abcdefgh\xc3\xa9ijklmnop", 18));
  assert_false(mg_utf8_valid("abcdefghij\xff", 11));
  assert_false(mg_utf8_valid("abcdefgh\xed\xa0\x80", 11));
  assert_false(mg_utf8_valid("abcdefghabcdefgh\xc3", 17));
}

static void test_buf_json(void **state) {
  (void)state;
  struct mg_buf b;
  mg_buf_init(&b);
  mg_buf_append_json_str(&b, "a\"b\\c\n\x01\x7f", 8);
  assert_string_equal(b.data, "\"a\\\"b\\\\c\\n\\u0001\\u007f\"");
  mg_buf_clear(&b);
  /* \r, \t, 0x1f, UTF-8 copied as is, appended after existing bytes */
  mg_buf_appends(&b, "x");
  mg_buf_append_json_str(&b, "\r\t\x1f \xc3\xa9", 6);
  assert_string_equal(b.data, "x\"\\r\\t\\u001f \xc3\xa9\"");
  mg_buf_clear(&b);
  /* escapes grow the buffer past its first reservation */
  char q[1000];
  memset(q, '"', sizeof q);
  assert_int_equal(mg_buf_append_json_str(&b, q, sizeof q), 0);
  assert_int_equal(b.len, 2 + 2 * sizeof q);
  assert_int_equal(b.data[b.len], 0);
  assert_true(b.data[0] == '"' && b.data[1] == '\\' && b.data[2] == '"' && b.data[b.len - 1] == '"');
  mg_buf_clear(&b);
  char hex[9];
  mg_hex_encode((const uint8_t *)"\x01\xab\xff\x00", 4, hex);
  assert_string_equal(hex, "01abff00");
  uint8_t raw[4];
  assert_int_equal(mg_hex_decode("01ABff00", 8, raw, 4), 0);
  assert_memory_equal(raw, "\x01\xab\xff\x00", 4);
  assert_int_equal(mg_hex_decode("0g", 2, raw, 1), MG_ERR_INVALID);
}

/* Batched access lines: every byte arrives, in order, and each write(2) is at most
 * PIPE_BUF bytes ending at a line end unless one line alone is longer. A socketpair of
 * SOCK_SEQPACKET keeps write boundaries, so the reads show the writes. */
static void test_log_lines(void **state) {
  (void)state;
  int sv[2];
  assert_int_equal(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sv), 0);
  static char in[4 * PIPE_BUF], out[sizeof in + 1];
  size_t len = 0;
  const size_t sizes[] = {100, 3000, 1500, 2 * PIPE_BUF, 10, 200};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    memset(in + len, 'a' + (int)i, sizes[i] - 1);
    in[len + sizes[i] - 1] = '\n';
    len += sizes[i];
  }
  assert_true(len <= sizeof in);
  mg_log_set_fd(sv[0]);
  mg_log_lines(in, len);
  mg_log_set_fd(2);
  close(sv[0]);
  size_t got = 0, nwrites = 0;
  const size_t want[] = {100 + 3000, 1500, 2 * PIPE_BUF, 10 + 200};
  for (;;) {
    ssize_t r = read(sv[1], out + got, sizeof out - got);
    assert_true(r >= 0);
    if (r == 0) break;
    assert_true(nwrites < 4);
    assert_int_equal((size_t)r, want[nwrites]);
    assert_int_equal(out[got + (size_t)r - 1], '\n');
    got += (size_t)r;
    nwrites++;
  }
  close(sv[1]);
  assert_int_equal(nwrites, 4);
  assert_int_equal(got, len);
  assert_memory_equal(in, out, len);
}

int main(void) {
  const struct CMUnitTest tests[] = {
    cmocka_unit_test(test_b64url), cmocka_unit_test(test_b64std), cmocka_unit_test(test_time),
    cmocka_unit_test(test_uuidv7), cmocka_unit_test(test_utf8), cmocka_unit_test(test_buf_json),
    cmocka_unit_test(test_log_lines),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}

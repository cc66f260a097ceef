/*
 * time.c — clocks and RFC 3339. Formatting is by hand (no gmtime_r/strftime) because the
 * lineage writer formats a timestamp per entry.
 */
#include "common/common.h"

#include <time.h>

int64_t mg_time_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t mg_mono_now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Days since 1970-01-01 from a civil date (Howard Hinnant's algorithm). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = (unsigned)(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m, unsigned *d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = (unsigned)(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp < 10 ? mp + 3 : mp - 9;
  *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

static void put_num(char *p, unsigned v, int width) {
  for (int i = width - 1; i >= 0; i--) { p[i] = (char)('0' + v % 10); v /= 10; }
}

size_t mg_time_format_rfc3339(int64_t unix_us, char out[MG_RFC3339_LEN]) {
  int64_t secs = unix_us >= 0 ? unix_us / 1000000 : -((-unix_us + 999999) / 1000000);
  unsigned frac = (unsigned)(unix_us - secs * 1000000);
  int64_t days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
  unsigned sod = (unsigned)(secs - days * 86400);
  int64_t y; unsigned m, d;
  civil_from_days(days, &y, &m, &d);
  if (y < 0) y = 0;
  if (y > 9999) y = 9999;
  put_num(out, (unsigned)y, 4); out[4] = '-';
  put_num(out + 5, m, 2); out[7] = '-';
  put_num(out + 8, d, 2); out[10] = 'T';
  put_num(out + 11, sod / 3600, 2); out[13] = ':';
  put_num(out + 14, sod / 60 % 60, 2); out[16] = ':';
  put_num(out + 17, sod % 60, 2); out[19] = '.';
  put_num(out + 20, frac, 6); out[26] = 'Z'; out[27] = 0;
  return 27;
}

static int digits(const char *s, size_t n, unsigned *out) {
  unsigned v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return -1;
    v = v * 10 + (unsigned)(s[i] - '0');
  }
  *out = v;
  return 0;
}

int mg_time_parse_rfc3339(const char *s, size_t len, int64_t *out_unix_us) {
  unsigned y, mo, d, h, mi, se;
  if (len < 20) return MG_ERR_INVALID;
  if (digits(s, 4, &y) || s[4] != '-' || digits(s + 5, 2, &mo) || s[7] != '-' ||
      digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') || digits(s + 11, 2, &h) ||
      s[13] != ':' || digits(s + 14, 2, &mi) || s[16] != ':' || digits(s + 17, 2, &se))
    return MG_ERR_INVALID;
  static const unsigned mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (mo < 1 || mo > 12 || d < 1 || d > mdays[mo - 1] || h > 23 || mi > 59 || se > 60)
    return MG_ERR_INVALID;
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (mo == 2 && d == 29 && !leap) return MG_ERR_INVALID;
  if (se == 60) se = 59; /* leap second: clamp */
  size_t i = 19;
  int64_t frac_us = 0;
  if (i < len && s[i] == '.') {
    i++;
    size_t start = i;
    int64_t scale = 100000;
    while (i < len && s[i] >= '0' && s[i] <= '9') {
      if (i - start >= 9) return MG_ERR_INVALID;
      frac_us += (s[i] - '0') * scale;
      scale /= 10;
      i++;
    }
    if (i == start) return MG_ERR_INVALID;
  }
  int64_t off = 0;
  if (i < len && (s[i] == 'Z' || s[i] == 'z')) {
    i++;
  } else if (i + 6 == len && (s[i] == '+' || s[i] == '-') && s[i + 3] == ':') {
    unsigned oh, om;
    if (digits(s + i + 1, 2, &oh) || digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
      return MG_ERR_INVALID;
    off = (int64_t)(oh * 3600 + om * 60) * (s[i] == '+' ? 1 : -1);
    i += 6;
  } else {
    return MG_ERR_INVALID;
  }
  if (i != len) return MG_ERR_INVALID;
  int64_t days = days_from_civil(y, mo, d);
  int64_t secs = days * 86400 + h * 3600 + mi * 60 + se - off;
  *out_unix_us = secs * 1000000 + frac_us;
  return 0;
}

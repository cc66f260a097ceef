/*
 * resource.c — :path canonicalisation (SPEC "Grants": Resource).
 *
 * One pass decodes/uppercases escapes into a scratch buffer of segments, a second pass
 * resolves dot segments in place. Every byte has one spelling in the output: escapes of
 * characters allowed raw in a path (unreserved, sub-delims but ';', ':' and '@') are
 * decoded, every other escape is kept with uppercase hex. Everything a peer can send that
 * two components could read differently (encoded slashes and backslashes, NUL, ';' path
 * parameters, '#', double encoding, overlong UTF-8) is refused rather than normalised, so
 * the bytes the grants were evaluated against are exactly the bytes the product receives.
 * Grant patterns are checked against the same function: a pattern must be canonical.
 */
#include <string.h>

#include "policy/policy.h"

static int hexv(unsigned char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static bool unreserved(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
         c == '-' || c == '.' || c == '_' || c == '~';
}

/* RFC 3986 pchar minus '%' (handled apart) and minus ';' (refused: path parameters). */
static bool plain_ok(unsigned char c) {
  if (unreserved(c)) return true;
  switch (c) {
  case '!': case '$': case '&': case '\'': case '(': case ')': case '*': case '+':
  case ',': case '=': case ':': case '@':
    return true;
  default:
    return false;
  }
}

/* Query characters: pchar / "/" / "?" (';' allowed here). */
static bool query_ok(unsigned char c) { return plain_ok(c) || c == '/' || c == '?' || c == ';'; }

#define REJECT(msg) do { *why = (msg); return MG_ERR_INVALID; } while (0)

int mg_canon_path(const char *in, size_t in_len, char *out, size_t outcap,
                  size_t *path_len, size_t *out_len, const char **why) {
  static const char hexu[] = "0123456789ABCDEF";
  *why = NULL;
  if (in_len == 0 || in[0] != '/') REJECT("path must start with '/'");
  if (outcap < in_len + 1) REJECT("path too long");
  const unsigned char *s = (const unsigned char *)in;
  size_t qpos = in_len;
  for (size_t i = 0; i < in_len; i++)
    if (s[i] == '?') { qpos = i; break; }

  /* Pass 1: decode unreserved escapes, uppercase the others, merge slashes. The decoded
   * byte stream (for UTF-8 validation) is checked per escape run. */
  size_t o = 0;
  unsigned char utf8[4];
  size_t ulen = 0, uneed = 0;
  for (size_t i = 0; i < qpos; i++) {
    unsigned char c = s[i];
    unsigned char dec;
    bool escaped = false;
    if (c == '%') {
      if (i + 2 >= qpos) REJECT("malformed percent-escape");
      int h = hexv(s[i + 1]), l = hexv(s[i + 2]);
      if (h < 0 || l < 0) REJECT("malformed percent-escape");
      dec = (unsigned char)(h << 4 | l);
      if (dec == '/') REJECT("encoded slash (%2F)");
      if (dec == '\\') REJECT("encoded backslash (%5C)");
      if (dec == 0) REJECT("encoded NUL (%00)");
      if (dec == '%' && i + 4 < qpos && hexv(s[i + 3]) >= 0 && hexv(s[i + 4]) >= 0)
        REJECT("double percent-encoding (%25XX)");
      if (dec < 0x20 || dec == 0x7f) REJECT("encoded control character");
      escaped = true;
      i += 2;
    } else {
      if (c == '\\') REJECT("backslash in path");
      if (c == ';') REJECT("';' path parameters are not allowed");
      if (c == '#') REJECT("'#' in path");
      if (c >= 0x80) REJECT("raw non-ASCII byte in path");
      if (c != '/' && !plain_ok(c)) REJECT("invalid character in path");
      dec = c;
    }
    /* UTF-8 validation of the decoded stream (only escapes can carry bytes >= 0x80). */
    if (dec >= 0x80) {
      if (uneed == 0) {
        if (dec >= 0xc2 && dec <= 0xdf) uneed = 2;
        else if (dec >= 0xe0 && dec <= 0xef) uneed = 3;
        else if (dec >= 0xf0 && dec <= 0xf4) uneed = 4;
        else REJECT("invalid UTF-8 in path");
        ulen = 0;
      } else if ((dec & 0xc0) != 0x80) {
        REJECT("invalid UTF-8 in path");
      }
      utf8[ulen++] = dec;
      if (ulen == uneed) {
        if (!mg_utf8_valid((const char *)utf8, ulen)) REJECT("invalid UTF-8 in path");
        uneed = 0;
      }
    } else if (uneed) {
      REJECT("invalid UTF-8 in path");
    }
    if (escaped && !plain_ok(dec)) { /* one spelling per byte: escaped only if it must be */
      out[o++] = '%';
      out[o++] = hexu[dec >> 4];
      out[o++] = hexu[dec & 15];
    } else if (dec == '/' && o > 0 && out[o - 1] == '/') {
      continue; /* merge duplicate slashes */
    } else {
      out[o++] = (char)dec;
    }
  }
  if (uneed) REJECT("invalid UTF-8 in path");
  /* Double encoding can also be spelled with escaped hex digits ("%25%32%65"): check the
   * decoded form too, so canonicalising is idempotent. */
  for (size_t i = 0; i + 4 < o; i++)
    if (out[i] == '%' && out[i + 1] == '2' && out[i + 2] == '5' && hexv((unsigned char)out[i + 3]) >= 0 &&
        hexv((unsigned char)out[i + 4]) >= 0)
      REJECT("double percent-encoding (%25XX)");

  /* Pass 2: remove dot segments in place (output never outgrows input: w <= r). */
  size_t w = 0, r = 0;
  while (r < o) {
    size_t seg = r + 1, end = seg; /* out[r] == '/' */
    while (end < o && out[end] != '/') end++;
    size_t sl = end - seg;
    bool last = end >= o;
    if (sl == 1 && out[seg] == '.') {
      if (last) out[w++] = '/';
    } else if (sl == 2 && out[seg] == '.' && out[seg + 1] == '.') {
      while (w > 0 && out[w - 1] != '/') w--; /* pop "/segment" */
      if (w > 0) w--;
      if (last) out[w++] = '/';
    } else {
      out[w] = '/';
      memmove(out + w + 1, out + seg, sl);
      w += 1 + sl;
    }
    r = end;
  }
  if (w == 0) out[w++] = '/';
  *path_len = w;

  /* Query: validated, kept as received. */
  if (qpos < in_len) {
    out[w++] = '?';
    for (size_t i = qpos + 1; i < in_len; i++) {
      unsigned char c = s[i];
      if (c == '%') {
        if (i + 2 >= in_len || hexv(s[i + 1]) < 0 || hexv(s[i + 2]) < 0)
          REJECT("malformed percent-escape in query");
        if (s[i + 1] == '0' && s[i + 2] == '0') REJECT("encoded NUL (%00) in query");
      } else if (c == '#') {
        REJECT("'#' in query");
      } else if (!query_ok(c)) {
        REJECT("invalid character in query");
      }
      out[w++] = (char)c;
    }
  }
  out[w] = 0;
  *out_len = w;
  return 0;
}

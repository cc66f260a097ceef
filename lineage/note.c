/*
 * note.c — C2SP signed-note (Ed25519 only) and C2SP tlog-checkpoint bodies.
 *
 * Design: a note is text ending in LF, a blank line, then signature lines
 * "— <name> <base64(keyid[4] || sig[64])>" (U+2014 em dash). The text is split from the
 * signatures at the LAST blank line, as the spec says. Parsing is strict and happens
 * completely before any signature is checked, so a malformed note is always
 * MG_LINEAGE_E_FORMAT whatever keys the caller holds. Signature semantics follow the spec:
 * lines from unknown (name, id) pairs are ignored; a line from a known key must verify
 * (else the whole note is rejected); at least one known key must have signed.
 * Key id = SHA-256(name || 0x0A || 0x01 || pub)[:4]; vkey = name+hex(id)+base64(0x01||pub).
 */
#include "lineage/lineage_int.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>

#define ED25519_PUB_LEN 32
#define ED25519_SIG_LEN 64
#define NOTE_MAX_SIGS 100        /* the spec asks for at least 16 to be accepted */
#define NOTE_MAX_SIG_B64 8192    /* room for post-quantum signatures from other keys */
#define KEY_FILE_MAX (64 * 1024)

static const char em_dash[] = "\xe2\x80\x94 "; /* U+2014 then a space */

/* Decodes one UTF-8 code point at s (valid UTF-8 assumed); returns its length. */
static size_t utf8_cp(const unsigned char *s, size_t n, uint32_t *cp) {
  if (s[0] < 0x80 || n < 2) { *cp = s[0]; return 1; }
  if (s[0] < 0xe0) { *cp = (uint32_t)(s[0] & 0x1f) << 6 | (s[1] & 0x3f); return 2; }
  if (s[0] < 0xf0 || n < 4) {
    if (n < 3) { *cp = s[0]; return 1; }
    *cp = (uint32_t)(s[0] & 0x0f) << 12 | (uint32_t)(s[1] & 0x3f) << 6 | (s[2] & 0x3f);
    return 3;
  }
  *cp = (uint32_t)(s[0] & 0x07) << 18 | (uint32_t)(s[1] & 0x3f) << 12 |
        (uint32_t)(s[2] & 0x3f) << 6 | (s[3] & 0x3f);
  return 4;
}

static bool is_unicode_space(uint32_t c) {
  return c == ' ' || (c >= 0x09 && c <= 0x0d) || c == 0x85 || c == 0xa0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f ||
         c == 0x205f || c == 0x3000;
}

/* Key names: non-empty UTF-8 without Unicode spaces or '+' (and no control bytes). */
static bool name_valid(const char *s, size_t n) {
  if (n == 0 || !mg_utf8_valid(s, n)) return false;
  const unsigned char *p = (const unsigned char *)s;
  for (size_t i = 0; i < n;) {
    uint32_t c;
    size_t l = utf8_cp(p + i, n - i, &c);
    if (c < 0x20 || c == 0x7f || c == '+' || is_unicode_space(c)) return false;
    i += l;
  }
  return true;
}

static void key_id(const char *name, size_t nlen, const uint8_t pub[ED25519_PUB_LEN],
                   uint8_t id[4]) {
  size_t len = nlen + 2 + ED25519_PUB_LEN;
  uint8_t stackbuf[256], *buf = len <= sizeof stackbuf ? stackbuf : malloc(len);
  uint8_t h[32];
  if (!buf) { memset(id, 0, 4); return; } /* ids are hints; a zero id just never matches */
  memcpy(buf, name, nlen);
  buf[nlen] = 0x0a;
  buf[nlen + 1] = 0x01;
  memcpy(buf + nlen + 2, pub, ED25519_PUB_LEN);
  mg_sha256(buf, len, h);
  memcpy(id, h, 4);
  if (buf != stackbuf) free(buf);
}

static char *make_vkey(const char *name, const uint8_t id[4], const uint8_t pub[ED25519_PUB_LEN]) {
  uint8_t kd[1 + ED25519_PUB_LEN];
  char hex[9], b64[4 * ((sizeof kd + 2) / 3) + 1];
  kd[0] = 0x01;
  memcpy(kd + 1, pub, ED25519_PUB_LEN);
  mg_hex_encode(id, 4, hex);
  mg_b64_encode(kd, sizeof kd, b64);
  char *out = NULL;
  if (asprintf(&out, "%s+%s+%s", name, hex, b64) < 0) return NULL;
  return out;
}

/* ---- signers -------------------------------------------------------------- */

static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  (void)buf, (void)size, (void)rwflag, (void)u;
  return -1; /* an encrypted key is refused, not prompted for on a terminal */
}

int mg_note_signer_load(const char *pem_path, const char *name, struct mg_note_signer **out) {
  char *pem = NULL;
  size_t pemlen = 0;
  BIO *bio = NULL;
  EVP_PKEY *pkey = NULL;
  struct mg_note_signer *s = NULL;
  uint8_t pub[ED25519_PUB_LEN];
  size_t publen = sizeof pub;
  int rv;

  *out = NULL;
  if (!name || !name_valid(name, strlen(name))) return MG_LINEAGE_E_KEY;
  rv = mg_file_read(pem_path, KEY_FILE_MAX, &pem, &pemlen);
  if (rv) goto fail_read;
  rv = MG_LINEAGE_E_KEY;
  bio = BIO_new_mem_buf(pem, (int)pemlen);
  if (!bio) { rv = -ENOMEM; goto fail_bio; }
  pkey = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL); /* never prompts */
  if (!pkey || EVP_PKEY_get_id(pkey) != EVP_PKEY_ED25519) goto fail_key;
  if (EVP_PKEY_get_raw_public_key(pkey, pub, &publen) != 1 || publen != sizeof pub) goto fail_key;
  s = calloc(1, sizeof *s);
  if (!s || !(s->name = strdup(name))) { rv = -ENOMEM; goto fail_alloc; }
  key_id(name, strlen(name), pub, s->key_id);
  s->key = pkey;
  BIO_free(bio);
  OPENSSL_cleanse(pem, pemlen);
  free(pem);
  *out = s;
  return 0;

fail_alloc:
  free(s);
fail_key:
  EVP_PKEY_free(pkey);
  BIO_free(bio);
fail_bio:
  OPENSSL_cleanse(pem, pemlen);
  free(pem);
fail_read:
  return rv;
}

void mg_note_signer_free(struct mg_note_signer *s) {
  if (!s) return;
  EVP_PKEY_free(s->key);
  free(s->name);
  free(s);
}

char *mg_note_signer_vkey(const struct mg_note_signer *s) {
  uint8_t pub[ED25519_PUB_LEN];
  size_t publen = sizeof pub;
  if (EVP_PKEY_get_raw_public_key(s->key, pub, &publen) != 1 || publen != sizeof pub) return NULL;
  return make_vkey(s->name, s->key_id, pub);
}

int mg_note_keygen(const char *name, char **pem_out, char **vkey_out) {
  EVP_PKEY *pkey = NULL;
  BIO *bio = NULL;
  char *pem = NULL, *vkey = NULL;
  uint8_t pub[ED25519_PUB_LEN], id[4];
  size_t publen = sizeof pub;
  int rv = MG_LINEAGE_E_KEY;

  *pem_out = *vkey_out = NULL;
  if (!name || !name_valid(name, strlen(name))) return MG_LINEAGE_E_KEY;
  pkey = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
  if (!pkey) goto fail_keygen;
  if (EVP_PKEY_get_raw_public_key(pkey, pub, &publen) != 1 || publen != sizeof pub) goto fail_pem;
  bio = BIO_new(BIO_s_mem());
  /* PEM_write_bio_PrivateKey writes PKCS#8 ("BEGIN PRIVATE KEY"), unencrypted. */
  if (!bio || PEM_write_bio_PrivateKey(bio, pkey, NULL, NULL, 0, NULL, NULL) != 1) goto fail_pem;
  char *data;
  long len = BIO_get_mem_data(bio, &data);
  if (len <= 0 || !(pem = malloc((size_t)len + 1))) { rv = -ENOMEM; goto fail_pem; }
  memcpy(pem, data, (size_t)len);
  pem[len] = 0;
  key_id(name, strlen(name), pub, id);
  if (!(vkey = make_vkey(name, id, pub))) { rv = -ENOMEM; goto fail_vkey; }
  BIO_free(bio);
  EVP_PKEY_free(pkey);
  *pem_out = pem;
  *vkey_out = vkey;
  return 0;

fail_vkey:
  OPENSSL_cleanse(pem, (size_t)len);
  free(pem);
fail_pem:
  BIO_free(bio);
  EVP_PKEY_free(pkey);
fail_keygen:
  return rv;
}

/* ---- verifiers ------------------------------------------------------------ */

int mg_note_verifier_parse(const char *vkey, size_t n, struct mg_note_verifier **out) {
  struct mg_note_verifier *v = NULL;
  uint8_t id[4], kd[64], want[4];
  size_t kdlen = sizeof kd;
  int rv = MG_LINEAGE_E_KEY;

  *out = NULL;
  /* A vkey read from a file may end in LF / CRLF; nothing else is tolerated. */
  while (n && (vkey[n - 1] == '\n' || vkey[n - 1] == '\r')) n--;
  const char *p1 = memchr(vkey, '+', n);
  if (!p1) return rv;
  const char *p2 = memchr(p1 + 1, '+', n - (size_t)(p1 + 1 - vkey));
  if (!p2) return rv;
  size_t nlen = (size_t)(p1 - vkey);
  const char *b64 = p2 + 1;
  size_t b64len = n - (size_t)(b64 - vkey);
  if (!name_valid(vkey, nlen)) return rv;
  if (p2 - p1 - 1 != 8 || mg_hex_decode(p1 + 1, 8, id, 4) != 0) return rv;
  if (mg_b64_decode(b64, b64len, kd, &kdlen) != 0) return rv;
  if (kdlen != 1 + ED25519_PUB_LEN || kd[0] != 0x01) return rv;
  key_id(vkey, nlen, kd + 1, want);
  if (memcmp(id, want, 4) != 0) return rv;

  v = calloc(1, sizeof *v);
  if (!v) { rv = -ENOMEM; goto fail; }
  v->name = strndup(vkey, nlen);
  v->vkey = strndup(vkey, n);
  if (!v->name || !v->vkey) { rv = -ENOMEM; goto fail; }
  memcpy(v->key_id, id, 4);
  v->key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, kd + 1, ED25519_PUB_LEN);
  if (!v->key) goto fail;
  *out = v;
  return 0;

fail:
  mg_note_verifier_free(v);
  return rv;
}

void mg_note_verifier_free(struct mg_note_verifier *v) {
  if (!v) return;
  EVP_PKEY_free(v->key);
  free(v->name);
  free(v->vkey);
  free(v);
}

/* ---- sign / verify -------------------------------------------------------- */

/* UTF-8 and no control characters other than LF (the spec's rule for whole notes). */
static bool note_chars_valid(const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c < 0x20 && c != '\n') || c == 0x7f) return false;
  }
  return mg_utf8_valid(s, n);
}

int mg_note_sign(const char *text, size_t n, struct mg_note_signer *const *signers,
                 size_t nsigners, char **note_out) {
  struct mg_buf b;
  EVP_MD_CTX *ctx = NULL;
  int rv = MG_LINEAGE_E_FORMAT;

  *note_out = NULL;
  if (n == 0 || text[n - 1] != '\n' || text[0] == '\n' || memmem(text, n, "\n\n", 2) ||
      !note_chars_valid(text, n))
    return rv;
  if (nsigners == 0) return MG_LINEAGE_E_KEY;
  mg_buf_init(&b);
  if (mg_buf_append(&b, text, n) || mg_buf_append(&b, "\n", 1)) { rv = -ENOMEM; goto fail; }
  for (size_t i = 0; i < nsigners; i++) {
    uint8_t sig[4 + ED25519_SIG_LEN];
    size_t siglen = ED25519_SIG_LEN;
    char b64[4 * ((sizeof sig + 2) / 3) + 1];
    ctx = EVP_MD_CTX_new();
    if (!ctx) { rv = -ENOMEM; goto fail; }
    memcpy(sig, signers[i]->key_id, 4);
    if (EVP_DigestSignInit(ctx, NULL, NULL, NULL, signers[i]->key) != 1 ||
        EVP_DigestSign(ctx, sig + 4, &siglen, (const unsigned char *)text, n) != 1 ||
        siglen != ED25519_SIG_LEN) {
      rv = MG_LINEAGE_E_KEY;
      goto fail;
    }
    EVP_MD_CTX_free(ctx);
    ctx = NULL;
    mg_b64_encode(sig, sizeof sig, b64);
    if (mg_buf_appendf(&b, "%s%s %s\n", em_dash, signers[i]->name, b64)) {
      rv = -ENOMEM;
      goto fail;
    }
  }
  *note_out = mg_buf_steal(&b);
  return 0;

fail:
  EVP_MD_CTX_free(ctx);
  mg_buf_clear(&b);
  return rv;
}

struct sigline {
  const char *name;
  size_t nlen;
  uint8_t id[4];
  const uint8_t *sig;
  size_t siglen;
};

static bool ed25519_ok(EVP_PKEY *key, const uint8_t *sig, size_t siglen, const char *msg,
                       size_t n) {
  if (siglen != ED25519_SIG_LEN) return false;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  bool ok = ctx && EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, key) == 1 &&
            EVP_DigestVerify(ctx, sig, siglen, (const unsigned char *)msg, n) == 1;
  EVP_MD_CTX_free(ctx);
  return ok;
}

int mg_note_verify(const char *note, size_t n, struct mg_note_verifier *const *verifiers,
                   size_t nverifiers, size_t *text_len, bool *signed_by) {
  struct sigline *lines = NULL;
  uint8_t *raw = NULL;
  size_t nlines = 0, rawused = 0;
  int rv = MG_LINEAGE_E_FORMAT;

  if (signed_by)
    for (size_t j = 0; j < nverifiers; j++) signed_by[j] = false;
  if (n < 2 || note[n - 1] != '\n' || !note_chars_valid(note, n)) return rv;
  /* Split at the last blank line: the last "\n\n" before the signature block. */
  size_t sep = SIZE_MAX;
  for (size_t i = n - 1; i-- > 0;)
    if (note[i] == '\n' && note[i + 1] == '\n') { sep = i; break; }
  if (sep == SIZE_MAX) return rv;
  size_t tlen = sep + 1; /* the text keeps its final LF */
  const char *p = note + sep + 2, *end = note + n;
  if (p >= end) return rv; /* no signature lines */

  lines = calloc(NOTE_MAX_SIGS, sizeof *lines);
  raw = malloc(NOTE_MAX_SIGS * 64 + (size_t)(end - p)); /* decoded sigs never exceed text */
  if (!lines || !raw) { rv = -ENOMEM; goto out; }
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    size_t len = (size_t)(eol - p);
    if (nlines == NOTE_MAX_SIGS) goto out;
    if (len < 4 || memcmp(p, em_dash, 4) != 0) goto out;
    const char *name = p + 4, *sp = memchr(name, ' ', (size_t)(eol - name));
    if (!sp) goto out;
    const char *b64 = sp + 1;
    size_t b64len = (size_t)(eol - b64);
    if (!name_valid(name, (size_t)(sp - name)) || b64len == 0 || b64len > NOTE_MAX_SIG_B64)
      goto out;
    size_t cap = b64len / 4 * 3 + 3, got = cap;
    if (mg_b64_decode(b64, b64len, raw + rawused, &got) != 0 || got < 5) goto out;
    struct sigline *l = &lines[nlines++];
    l->name = name;
    l->nlen = (size_t)(sp - name);
    memcpy(l->id, raw + rawused, 4);
    l->sig = raw + rawused + 4;
    l->siglen = got - 4;
    rawused += got;
    p = eol + 1;
  }

  bool any = false;
  for (size_t i = 0; i < nlines; i++) {
    for (size_t j = 0; j < nverifiers; j++) {
      const struct mg_note_verifier *v = verifiers[j];
      if (strlen(v->name) != lines[i].nlen || memcmp(v->name, lines[i].name, lines[i].nlen) ||
          memcmp(v->key_id, lines[i].id, 4))
        continue;
      if (!ed25519_ok(v->key, lines[i].sig, lines[i].siglen, note, tlen)) {
        rv = MG_LINEAGE_E_VERIFY;
        goto out;
      }
      any = true;
      if (signed_by) signed_by[j] = true;
    }
  }
  if (!any) {
    rv = MG_LINEAGE_E_KEY;
    goto out;
  }
  if (text_len) *text_len = tlen;
  rv = 0;

out:
  free(lines);
  free(raw);
  return rv;
}

/* ---- checkpoints ---------------------------------------------------------- */

char *mg_checkpoint_format(const char *origin, uint64_t size, const uint8_t root[MG_HASH_LEN]) {
  char b64[4 * ((MG_HASH_LEN + 2) / 3) + 1];
  char *out = NULL;
  mg_b64_encode(root, MG_HASH_LEN, b64);
  if (asprintf(&out, "%s\n%" PRIu64 "\n%s\n", origin, size, b64) < 0) return NULL;
  return out;
}

int mg_checkpoint_parse(const char *text, size_t n, char **origin_out, uint64_t *size,
                        uint8_t root[MG_HASH_LEN]) {
  const char *end = text + n, *p = text;
  const char *line[3];
  size_t len[3];

  *origin_out = NULL;
  if (n == 0 || text[n - 1] != '\n') return MG_LINEAGE_E_FORMAT;
  for (int i = 0; i < 3; i++) {
    if (p >= end) return MG_LINEAGE_E_FORMAT;
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    line[i] = p;
    len[i] = (size_t)(eol - p);
    if (len[i] == 0) return MG_LINEAGE_E_FORMAT;
    p = eol + 1;
  }
  /* Extension lines: opaque, but never empty. */
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (eol == p) return MG_LINEAGE_E_FORMAT;
    p = eol + 1;
  }
  if (!note_chars_valid(line[0], len[0])) return MG_LINEAGE_E_FORMAT;
  /* Size: ASCII decimal, no sign, no leading zero, fits in 64 bits. */
  if (len[1] > 20 || (len[1] > 1 && line[1][0] == '0')) return MG_LINEAGE_E_FORMAT;
  uint64_t v = 0;
  for (size_t i = 0; i < len[1]; i++) {
    char c = line[1][i];
    if (c < '0' || c > '9') return MG_LINEAGE_E_FORMAT;
    uint64_t d = (uint64_t)(c - '0');
    if (v > (UINT64_MAX - d) / 10) return MG_LINEAGE_E_FORMAT;
    v = v * 10 + d;
  }
  uint8_t r[MG_HASH_LEN];
  size_t rlen = sizeof r;
  if (len[2] != 44 || mg_b64_decode(line[2], len[2], r, &rlen) != 0 || rlen != MG_HASH_LEN)
    return MG_LINEAGE_E_FORMAT;
  char *o = strndup(line[0], len[0]);
  if (!o) return -ENOMEM;
  *origin_out = o;
  *size = v;
  memcpy(root, r, MG_HASH_LEN);
  return 0;
}

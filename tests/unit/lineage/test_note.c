/* test_note.c — C2SP signed notes and tlog checkpoints: published vectors (Go's
 * sumdb/note documentation example), key generation and loading, sign/verify round trips,
 * key rotation (two signers), forged and unknown-key signatures, malformed notes, vkeys
 * and checkpoint bodies. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "lineage/lineage_int.h"

/* From the documentation of golang.org/x/mod/sumdb/note. */
static const char go_vkey[] = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
static const char go_text[] = "If you think cryptography is the answer to your problem,\n"
                              "then you don't know what your problem is.\n";
static const char go_note[] =
    "If you think cryptography is the answer to your problem,\n"
    "then you don't know what your problem is.\n"
    "\n"
    "\xe2\x80\x94 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

static char tmpdir[64];

static int setup(void **state) {
  (void)state;
  strcpy(tmpdir, "/tmp/mg-note-XXXXXX");
  return mkdtemp(tmpdir) ? 0 : -1;
}
static int teardown(void **state) {
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  return system(cmd) == 0 ? 0 : -1;
}

static struct mg_note_verifier *vk(const char *s) {
  struct mg_note_verifier *v = NULL;
  assert_int_equal(mg_note_verifier_parse(s, strlen(s), &v), 0);
  return v;
}

static int verify(const char *note, struct mg_note_verifier **v, size_t nv, size_t *tl, bool *sb) {
  return mg_note_verify(note, strlen(note), (struct mg_note_verifier *const *)v, nv, tl, sb);
}

/* A fresh signer: keygen, PEM to a file, load it back. */
static struct mg_note_signer *new_signer(const char *name, char **vkey_out) {
  char *pem = NULL, *vkey = NULL, path[128];
  static int seq;
  assert_int_equal(mg_note_keygen(name, &pem, &vkey), 0);
  assert_non_null(strstr(pem, "-----BEGIN PRIVATE KEY-----")); /* PKCS#8 */
  snprintf(path, sizeof path, "%s/k%d.pem", tmpdir, seq++);
  assert_int_equal(mg_file_write_atomic(path, pem, strlen(pem), 0600), 0);
  struct mg_note_signer *s = NULL;
  assert_int_equal(mg_note_signer_load(path, name, &s), 0);
  char *again = mg_note_signer_vkey(s);
  assert_string_equal(again, vkey);
  free(again);
  free(pem);
  if (vkey_out) *vkey_out = vkey; else free(vkey);
  return s;
}

static void test_go_vector(void **state) {
  (void)state;
  struct mg_note_verifier *v = vk(go_vkey);
  assert_string_equal(v->name, "PeterNeumann");
  assert_memory_equal(v->key_id, "\xc7\x4f\x20\xa3", 4);
  size_t tl = 0;
  bool sb[1];
  assert_int_equal(verify(go_note, &v, 1, &tl, sb), 0);
  assert_int_equal(tl, strlen(go_text));
  assert_memory_equal(go_note, go_text, tl);
  assert_true(sb[0]);
  /* one changed byte of the text */
  char *bad = strdup(go_note);
  bad[3] = 'Y';
  assert_int_equal(verify(bad, &v, 1, NULL, NULL), MG_LINEAGE_E_VERIFY);
  free(bad);
  mg_note_verifier_free(v);
}

static void test_roundtrip_and_rotation(void **state) {
  (void)state;
  char *vold = NULL, *vnew = NULL, *vother = NULL;
  struct mg_note_signer *old = new_signer("example.org/log", &vold);
  struct mg_note_signer *neu = new_signer("example.org/log", &vnew);
  struct mg_note_signer *other = new_signer("example.org/log", &vother);
  char *body = mg_checkpoint_format("example.org/log", 42, (const uint8_t *)"0123456789abcdef0123456789abcdef");
  char *note = NULL;
  struct mg_note_signer *both[2] = {old, neu};
  assert_int_equal(mg_note_sign(body, strlen(body), both, 2, &note), 0);
  assert_memory_equal(note, body, strlen(body));
  assert_int_equal(note[strlen(body)], '\n');
  assert_non_null(strstr(note, "\n\xe2\x80\x94 example.org/log "));

  struct mg_note_verifier *v[3] = {vk(vold), vk(vnew), vk(vother)};
  bool sb[3];
  size_t tl;
  assert_int_equal(verify(note, v, 2, &tl, sb), 0);
  assert_true(sb[0] && sb[1]);
  assert_int_equal(tl, strlen(body));
  assert_int_equal(verify(note, &v[1], 1, &tl, sb), 0); /* holders of the new key only */
  assert_true(sb[0]);
  assert_int_equal(verify(note, &v[0], 1, &tl, sb), 0); /* holders of the old key only */
  /* unknown key: same name, other key id -> ignored -> nobody known signed */
  assert_int_equal(verify(note, &v[2], 1, &tl, sb), MG_LINEAGE_E_KEY);
  assert_false(sb[0]);
  /* the third key is known but did not sign: still fine with the others */
  assert_int_equal(verify(note, v, 3, &tl, sb), 0);
  assert_true(sb[0] && sb[1] && !sb[2]);

  /* forged: a signature line of the known key over other text */
  char *body2 = mg_checkpoint_format("example.org/log", 43, (const uint8_t *)"0123456789abcdef0123456789abcdef");
  char *note2 = NULL;
  assert_int_equal(mg_note_sign(body2, strlen(body2), &neu, 1, &note2), 0);
  char forged[1024];
  snprintf(forged, sizeof forged, "%s\n%s", body, strstr(note2, "\n\n") + 2);
  assert_int_equal(verify(forged, &v[1], 1, NULL, NULL), MG_LINEAGE_E_VERIFY);
  /* a bad known signature rejects the note even when another known key signed well */
  snprintf(forged, sizeof forged, "%s%s", note, strstr(note2, "\n\n") + 2);
  assert_int_equal(verify(forged, v, 2, NULL, NULL), MG_LINEAGE_E_VERIFY);
  /* a flipped bit in the signature itself */
  char *flip = strdup(note);
  char *sig = strrchr(flip, ' ') + 10;
  *sig = *sig == 'A' ? 'B' : 'A';
  assert_int_equal(verify(flip, &v[1], 1, NULL, NULL), MG_LINEAGE_E_VERIFY);
  /* an unknown signer's line next to a good one is ignored */
  char *onote = NULL;
  assert_int_equal(mg_note_sign(body, strlen(body), &other, 1, &onote), 0);
  snprintf(forged, sizeof forged, "%s%s", note, strstr(onote, "\n\n") + 2);
  assert_int_equal(verify(forged, v, 2, NULL, sb), 0);

  free(flip); free(onote); free(note2); free(body2); free(note); free(body);
  for (int i = 0; i < 3; i++) mg_note_verifier_free(v[i]);
  mg_note_signer_free(old); mg_note_signer_free(neu); mg_note_signer_free(other);
  free(vold); free(vnew); free(vother);
}

static void test_malformed_notes(void **state) {
  (void)state;
  struct mg_note_verifier *v = vk(go_vkey);
  const char *sigb64 = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=";
  char buf[1024];
  /* missing blank line */
  snprintf(buf, sizeof buf, "%s\xe2\x80\x94 PeterNeumann %s\n", go_text, sigb64);
  assert_int_equal(verify(buf, &v, 1, NULL, NULL), MG_LINEAGE_E_FORMAT);
  /* bad base64 */
  snprintf(buf, sizeof buf, "%s\n\xe2\x80\x94 PeterNeumann %s!\n", go_text, sigb64);
  assert_int_equal(verify(buf, &v, 1, NULL, NULL), MG_LINEAGE_E_FORMAT);
  snprintf(buf, sizeof buf, "%s\n\xe2\x80\x94 PeterNeumann x08g\n", go_text);  /* too short */
  assert_int_equal(verify(buf, &v, 1, NULL, NULL), MG_LINEAGE_E_FORMAT);
  /* wrong dashes: ASCII, en dash U+2013, no space */
  snprintf(buf, sizeof buf, "%s\n-- PeterNeumann %s\n", go_text, sigb64);
  assert_int_equal(verify(buf, &v, 1, NULL, NULL), MG_LINEAGE_E_FORMAT);
  snprintf(buf, sizeof buf, "%s\n\xe2\x80\x93 PeterNeumann %s\n", go_text, sigb64);
  assert_int_equal(verify(buf, &v, 1, NULL, NULL), MG_LINEAGE_E_FORMAT);
  snprintf(buf, sizeof buf, "%s\n\xe2\x80\x94PeterNeumann %s\n", go_text, sigb64);
  assert_int_equal(verify(buf, &v, 1, NULL, NULL), MG_LINEAGE_E_FORMAT);
  /* no final LF; no signatures; extra space; control character */
  snprintf(buf, sizeof buf, "%s\n\xe2\x80\x94 PeterNeumann %s", go_text, sigb64);
  assert_int_equal(verify(buf, &v, 1, NULL, NULL), MG_LINEAGE_E_FORMAT);
  snprintf(buf, sizeof buf, "%s\n", go_text);
  assert_int_equal(verify(buf, &v, 1, NULL, NULL), MG_LINEAGE_E_FORMAT);
  snprintf(buf, sizeof buf, "%s\n\xe2\x80\x94 PeterNeumann  %s\n", go_text, sigb64);
  assert_int_equal(verify(buf, &v, 1, NULL, NULL), MG_LINEAGE_E_FORMAT);
  snprintf(buf, sizeof buf, "If you\tthink\n\n\xe2\x80\x94 PeterNeumann %s\n", sigb64);
  assert_int_equal(verify(buf, &v, 1, NULL, NULL), MG_LINEAGE_E_FORMAT);
  snprintf(buf, sizeof buf, "\xff\xfe\n\n\xe2\x80\x94 PeterNeumann %s\n", sigb64);   /* not UTF-8 */
  assert_int_equal(verify(buf, &v, 1, NULL, NULL), MG_LINEAGE_E_FORMAT);
  assert_int_equal(verify("", &v, 1, NULL, NULL), MG_LINEAGE_E_FORMAT);
  /* text with an empty line inside: split at the LAST blank line, so still verifiable
   * in form; the signature (over other text) must then fail */
  snprintf(buf, sizeof buf, "a\n\nb\n\n\xe2\x80\x94 PeterNeumann %s\n", sigb64);
  size_t tl = 0;
  assert_int_equal(verify(buf, &v, 1, &tl, NULL), MG_LINEAGE_E_VERIFY);
  mg_note_verifier_free(v);
}

static void test_sign_rejects(void **state) {
  (void)state;
  struct mg_note_signer *s = new_signer("example.org/log", NULL);
  char *note = NULL;
  assert_int_equal(mg_note_sign("no final newline", 16, &s, 1, &note), MG_LINEAGE_E_FORMAT);
  assert_int_equal(mg_note_sign("a\n\nb\n", 5, &s, 1, &note), MG_LINEAGE_E_FORMAT);
  assert_int_equal(mg_note_sign("", 0, &s, 1, &note), MG_LINEAGE_E_FORMAT);
  assert_int_equal(mg_note_sign("a\x01\n", 3, &s, 1, &note), MG_LINEAGE_E_FORMAT);
  assert_int_equal(mg_note_sign("a\n", 2, &s, 0, &note), MG_LINEAGE_E_KEY);
  assert_null(note);
  mg_note_signer_free(s);
  char *pem, *vkey;
  assert_int_equal(mg_note_keygen("bad name", &pem, &vkey), MG_LINEAGE_E_KEY);
  assert_int_equal(mg_note_keygen("bad+name", &pem, &vkey), MG_LINEAGE_E_KEY);
  assert_int_equal(mg_note_keygen("", &pem, &vkey), MG_LINEAGE_E_KEY);
}

static void test_signer_load_errors(void **state) {
  (void)state;
  char path[128];
  struct mg_note_signer *s = NULL;
  snprintf(path, sizeof path, "%s/missing.pem", tmpdir);
  assert_int_equal(mg_note_signer_load(path, "x", &s), -ENOENT);
  /* a P-256 key is not an Ed25519 key */
  EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
  assert_non_null(ec);
  snprintf(path, sizeof path, "%s/ec.pem", tmpdir);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  assert_int_equal(PEM_write_PrivateKey(f, ec, NULL, NULL, 0, NULL, NULL), 1);
  fclose(f);
  EVP_PKEY_free(ec);
  assert_int_equal(mg_note_signer_load(path, "x", &s), MG_LINEAGE_E_KEY);
  snprintf(path, sizeof path, "%s/junk.pem", tmpdir);
  assert_int_equal(mg_file_write_atomic(path, "junk\n", 5, 0600), 0);
  assert_int_equal(mg_note_signer_load(path, "x", &s), MG_LINEAGE_E_KEY);
  assert_null(s);
}

static void test_vkeys(void **state) {
  (void)state;
  struct mg_note_verifier *v = NULL;
  char line[256];
  /* a trailing LF (as in the .vkey file) is accepted and not kept */
  snprintf(line, sizeof line, "%s\n", go_vkey);
  assert_int_equal(mg_note_verifier_parse(line, strlen(line), &v), 0);
  assert_string_equal(v->vkey, go_vkey);
  mg_note_verifier_free(v);
  static const char *const bad[] = {
      "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  /* wrong id */
      "PeterNeumanN+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",  /* other name */
      "PeterNeumann+c74f20a3+Apc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",   /* bad b64 */
      "PeterNeumann+c74f20a3+AhpcZ2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", /* bad len */
      "PeterNeumann+c74f20+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",    /* short id */
      "PeterNeumann+c74f20a3",
      "PeterNeumann",
      "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
      "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
      "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW+x",
      "",
  };
  for (size_t i = 0; i < MG_ARRAY_LEN(bad); i++) {
    v = (void *)1;
    assert_int_equal(mg_note_verifier_parse(bad[i], strlen(bad[i]), &v), MG_LINEAGE_E_KEY);
    assert_null(v);
  }
  /* a generated vkey carries type byte 0x01: base64 "A" then 01xxxx ('Q'..'f') */
  char *pem, *vkey;
  assert_int_equal(mg_note_keygen("a.example/b", &pem, &vkey), 0);
  /* name+id+key: the key is after the SECOND '+' (base64 may itself contain '+') */
  char *p = strchr(strchr(vkey, '+') + 1, '+') + 1;
  assert_int_equal(p[0], 'A');
  assert_true(p[1] >= 'Q' && p[1] <= 'f');
  /* type byte 0x02 (ECDSA) with the id recomputed is still not an Ed25519 key */
  uint8_t kd[33];
  size_t kdl = sizeof kd;
  assert_int_equal(mg_b64_decode(p, strlen(p), kd, &kdl), 0);
  kd[0] = 0x02;
  char b64[64], alt[256];
  mg_b64_encode(kd, kdl, b64);
  snprintf(alt, sizeof alt, "%.*s%s", (int)(p - vkey), vkey, b64);
  assert_int_equal(mg_note_verifier_parse(alt, strlen(alt), &v), MG_LINEAGE_E_KEY);
  mg_note_verifier_free(vk(vkey));
  free(pem);
  free(vkey);
}

static void test_checkpoints(void **state) {
  (void)state;
  uint8_t root[MG_HASH_LEN], r2[MG_HASH_LEN];
  for (int i = 0; i < MG_HASH_LEN; i++) root[i] = (uint8_t)(i * 7 + 1);
  char *body = mg_checkpoint_format("example.com/behind-the-sofa", 20852163, root);
  char *origin = NULL;
  uint64_t size = 0;
  assert_int_equal(mg_checkpoint_parse(body, strlen(body), &origin, &size, r2), 0);
  assert_string_equal(origin, "example.com/behind-the-sofa");
  assert_int_equal(size, 20852163);
  assert_memory_equal(root, r2, MG_HASH_LEN);
  free(origin);
  /* the spec's example body, with an extension line */
  const char *ex = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\nextension\n";
  assert_int_equal(mg_checkpoint_parse(ex, strlen(ex), &origin, &size, r2), 0);
  assert_int_equal(size, 20852163);
  free(origin);
  const char *max = "o\n18446744073709551615\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
  assert_int_equal(mg_checkpoint_parse(max, strlen(max), &origin, &size, r2), 0);
  assert_int_equal(size, UINT64_MAX);
  free(origin);
  static const char *const bad[] = {
      "o\n18446744073709551616\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n", /* overflow */
      "o\n012\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",                  /* leading 0 */
      "o\n-1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
      "o\n 1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
      "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2=\n",                     /* 31 bytes */
      "o\n1\nCsUYapGGPo4dkMgIAUqom_Xajj7h2fB2MPA3j2jxq2I=\n",                    /* url alphabet */
      "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=",                      /* no LF */
      "o\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n\n",                  /* empty ext */
      "\n1\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",                     /* no origin */
      "o\n1\n",
      "",
  };
  for (size_t i = 0; i < MG_ARRAY_LEN(bad); i++)
    assert_int_equal(mg_checkpoint_parse(bad[i], strlen(bad[i]), &origin, &size, r2), MG_LINEAGE_E_FORMAT);
  free(body);
}

static void test_error_names(void **state) {
  (void)state;
  mg_lineage_init();
  assert_string_equal(mg_strerror(MG_LINEAGE_E_VERIFY), "lineage verification failed");
  for (int e = MG_LINEAGE_E_FOREIGN; e <= MG_LINEAGE_E_FULL; e++)
    assert_string_not_equal(mg_strerror(e), "unknown error");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_go_vector),         cmocka_unit_test(test_roundtrip_and_rotation),
      cmocka_unit_test(test_malformed_notes),   cmocka_unit_test(test_sign_rejects),
      cmocka_unit_test(test_signer_load_errors), cmocka_unit_test(test_vkeys),
      cmocka_unit_test(test_checkpoints),       cmocka_unit_test(test_error_names),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}

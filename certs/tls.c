/*
 * tls.c — server SSL_CTX construction for the data and admin listeners.
 *
 * Design: one immutable SSL_CTX per configuration generation; reload makes a new one and
 * the caller swaps it for new connections (OpenSSL refcounts contexts, so open connections
 * keep theirs). Policy is fixed here rather than configurable: TLS 1.2 floor, ECDHE with
 * AEAD ciphers only (TLS 1.3 suites are all AEAD), no renegotiation or compression, and an
 * ALPN callback that never falls back to a protocol we did not ask for — the data port
 * speaks h2 only, so a client that cannot negotiate h2 gets a fatal alert instead of a
 * connection we would have to guess about.
 */
#include "certs/certs.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>

static const char *certs_strerror(int err) {
  switch (err) {
  case MG_ERR_CERTS_LOAD: return "certificate, key or CA file unreadable or invalid";
  case MG_ERR_CERTS_MISMATCH: return "private key does not match certificate";
  case MG_ERR_CERTS_SSL: return "TLS library refused a setting";
  case MG_ERR_CERTS_NOID: return "no SPIFFE identity";
  default: return NULL;
  }
}

void mg_certs_init(void) { mg_strerror_register(MG_ERR_CERTS_BASE, certs_strerror); }

/* Writes "what: path: <openssl reason>" into err and clears the OpenSSL error queue. */
static void ssl_reason(char *err, size_t errlen, const char *what, const char *path) {
  unsigned long e = ERR_peek_last_error();
  char buf[256] = "unknown error";
  if (e)
    ERR_error_string_n(e, buf, sizeof buf);
  if (err && errlen)
    snprintf(err, errlen, "%s%s%s: %s", what, path ? ": " : "", path ? path : "", buf);
  ERR_clear_error();
}

static const unsigned char *find_proto(const unsigned char *in, unsigned inlen,
                                       const char *proto) {
  size_t plen = strlen(proto);
  for (unsigned i = 0; i < inlen;) {
    unsigned n = in[i];
    if (i + 1 + n > inlen)
      return NULL; /* malformed list: treat as no match */
    if (n == plen && memcmp(in + i + 1, proto, plen) == 0)
      return in + i;
    i += 1 + n;
  }
  return NULL;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg) {
  unsigned flags = (unsigned)(uintptr_t)arg;
  const unsigned char *p = find_proto(in, inlen, "h2");
  if (!p && (flags & MG_TLS_ALPN_HTTP11))
    p = find_proto(in, inlen, "http/1.1");
  if (!p)
    return SSL_TLSEXT_ERR_ALERT_FATAL;
  *out = p + 1;
  *outlen = p[0];
  return SSL_TLSEXT_ERR_OK;
}

int mg_tls_server_ctx_new(const char *cert, const char *key, const char *client_ca, int mode,
                          unsigned flags, SSL_CTX **out, char *err, size_t errlen) {
  static const char ciphers12[] =
      "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
      "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
      "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
  static const unsigned char sid_ctx[] = "meshgate";
  int rc;
  SSL_CTX *ctx = NULL;

  *out = NULL;
  if (mode != MG_TLS_CLIENT_CERT_NONE && !client_ca) {
    if (err && errlen)
      snprintf(err, errlen, "client certificates requested but no client_ca given");
    return MG_ERR_INVALID;
  }
  ctx = SSL_CTX_new(TLS_server_method());
  if (!ctx) {
    ssl_reason(err, errlen, "SSL_CTX_new", NULL);
    return -ENOMEM;
  }
  if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
      !SSL_CTX_set_cipher_list(ctx, ciphers12)) {
    ssl_reason(err, errlen, "TLS settings", NULL);
    rc = MG_ERR_CERTS_SSL;
    goto fail;
  }
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  /* Session resumption with client verification needs a session id context. */
  SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof sid_ctx - 1);

  if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
    ssl_reason(err, errlen, "certificate", cert);
    rc = MG_ERR_CERTS_LOAD;
    goto fail;
  }
  if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
    ssl_reason(err, errlen, "private key", key);
    rc = MG_ERR_CERTS_LOAD;
    goto fail;
  }
  if (SSL_CTX_check_private_key(ctx) != 1) {
    ssl_reason(err, errlen, "private key does not match certificate", key);
    rc = MG_ERR_CERTS_MISMATCH;
    goto fail;
  }
  if (mode != MG_TLS_CLIENT_CERT_NONE) {
    STACK_OF(X509_NAME) *names;
    if (SSL_CTX_load_verify_locations(ctx, client_ca, NULL) != 1) {
      ssl_reason(err, errlen, "client_ca", client_ca);
      rc = MG_ERR_CERTS_LOAD;
      goto fail;
    }
    names = SSL_load_client_CA_file(client_ca);
    if (!names) {
      ssl_reason(err, errlen, "client_ca", client_ca);
      rc = MG_ERR_CERTS_LOAD;
      goto fail;
    }
    SSL_CTX_set_client_CA_list(ctx, names);
    SSL_CTX_set_verify(ctx,
                       SSL_VERIFY_PEER | (mode == MG_TLS_CLIENT_CERT_REQUIRED
                                              ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                                              : 0),
                       NULL);
    SSL_CTX_set_verify_depth(ctx, 4);
  }
  SSL_CTX_set_alpn_select_cb(ctx, alpn_select, (void *)(uintptr_t)flags);
  *out = ctx;
  return 0;

fail:
  SSL_CTX_free(ctx);
  return rc;
}

bool mg_tls_alpn_is_h2(SSL *ssl) {
  const unsigned char *p = NULL;
  unsigned n = 0;
  SSL_get0_alpn_selected(ssl, &p, &n);
  return n == 2 && memcmp(p, "h2", 2) == 0;
}

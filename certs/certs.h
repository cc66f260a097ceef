/*
 * certs.h — TLS contexts and peer identity for meshgate (the manual of the certs module).
 *
 * What it gives:
 *   - mg_tls_server_ctx_new(): a server SSL_CTX with TLS 1.2 as the floor, ECDHE + AEAD
 *     cipher suites only, no renegotiation, no compression, ALPN that selects "h2" (and,
 *     when asked for, "http/1.1"), and client-certificate verification per mode.
 *   - mg_tls_peer_spiffe(): the SPIFFE ID (the one URI SAN of a verified client
 *     certificate), as the identity layer wants it.
 *   - mkcerts.sh (next to this file): a development CA, a server certificate for
 *     localhost/127.0.0.1 and SPIFFE client certificates. Never for production.
 *
 * Reload: an SSL_CTX is immutable once made. To reload certificates, build a new context
 * with mg_tls_server_ctx_new() and hand it to new connections; connections already open
 * keep the SSL objects of the old one (OpenSSL reference counts the context, so free the
 * old one with SSL_CTX_free() as soon as you stop handing it out).
 *
 * Threads: every function here is thread-safe. An SSL_CTX may be shared by many threads
 * for SSL_new(); do not modify it after creation.
 *
 * Errors: 0 on success, or one of MG_ERR_CERTS_* (named by mg_strerror() once
 * mg_certs_init() ran) or a common MG_ERR_* code; `err` gets a one-line reason.
 */
#ifndef MG_CERTS_H
#define MG_CERTS_H

#include <stddef.h>
#include <stdbool.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "common/common.h"

enum {
  MG_ERR_CERTS_LOAD    = MG_ERR_CERTS_BASE - 1, /* certificate/key/CA file unreadable or bad */
  MG_ERR_CERTS_MISMATCH = MG_ERR_CERTS_BASE - 2, /* private key does not match certificate */
  MG_ERR_CERTS_SSL     = MG_ERR_CERTS_BASE - 3, /* OpenSSL refused a setting */
  MG_ERR_CERTS_NOID    = MG_ERR_CERTS_BASE - 4, /* no (single, valid) SPIFFE ID present */
};

/* Client-certificate modes; the same numbers as MG_CLIENT_CERT_* of the sidecar config. */
enum {
  MG_TLS_CLIENT_CERT_NONE = 0,     /* never ask for a client certificate */
  MG_TLS_CLIENT_CERT_OPTIONAL = 1, /* ask; a presented certificate must verify against the CA */
  MG_TLS_CLIENT_CERT_REQUIRED = 2, /* ask and fail the handshake without a valid one */
};

/* Flags of mg_tls_server_ctx_new(). */
enum {
  MG_TLS_ALPN_HTTP11 = 1u << 0,    /* also accept ALPN "http/1.1" (admin listener); the data
                                      listener leaves this off: h2 only */
};

/* Registers the certs error namer with mg_strerror(). Idempotent; call once at start-up. */
void mg_certs_init(void);

/* Creates a server context from PEM files.
 *   cert       certificate chain (leaf first), PEM
 *   key        private key, PEM (must match cert)
 *   client_ca  CA bundle for client certificates, or NULL (then mode must be NONE)
 *   mode       MG_TLS_CLIENT_CERT_*
 *   flags      MG_TLS_ALPN_* bits
 * ALPN: the server selects "h2" when the client offers it (and "http/1.1" with
 * MG_TLS_ALPN_HTTP11); a client that offers ALPN without an acceptable protocol fails the
 * handshake (no_application_protocol). A client that offers no ALPN at all completes the
 * handshake with nothing selected — the caller must check SSL_get0_alpn_selected() and
 * close such connections.
 * Returns 0 and *out (free with SSL_CTX_free), or MG_ERR_CERTS_LOAD, MG_ERR_CERTS_MISMATCH,
 * MG_ERR_CERTS_SSL, MG_ERR_INVALID (mode without client_ca), -ENOMEM. */
int mg_tls_server_ctx_new(const char *cert, const char *key, const char *client_ca, int mode,
                          unsigned flags, SSL_CTX **out, char *err, size_t errlen);

/* The SPIFFE ID of a certificate: exactly one URI SAN, whose scheme is "spiffe://", with a
 * non-empty trust domain, printable ASCII only, no query or fragment, at most 2048 bytes.
 * Anything else (no URI SAN, two URI SANs, another scheme) yields no identity.
 * Writes the NUL-terminated ID into out. 0, MG_ERR_CERTS_NOID, or MG_ERR_TOOBIG (outlen too
 * small). */
int mg_spiffe_from_cert(X509 *cert, char *out, size_t outlen);

/* The SPIFFE ID of the peer of a finished handshake, only if the peer presented a
 * certificate and it verified (SSL_get_verify_result() == X509_V_OK). Same returns as
 * mg_spiffe_from_cert(); MG_ERR_CERTS_NOID also when there is no verified certificate. */
int mg_tls_peer_spiffe(SSL *ssl, char *out, size_t outlen);

/* True when the handshake selected ALPN "h2". */
bool mg_tls_alpn_is_h2(SSL *ssl);

#endif /* MG_CERTS_H */

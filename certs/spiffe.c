/*
 * spiffe.c — SPIFFE ID extraction from X.509 certificates (X509-SVID rules, reduced).
 *
 * An X509-SVID carries exactly one URI SAN, the SPIFFE ID. We are strict on purpose: a
 * certificate with two URI SANs, or one that is not spiffe://, is no identity at all rather
 * than "the first one" — a CA that mints such certificates is not minting SVIDs, and
 * picking one would let the mint choose which identity we believe.
 */
#include "certs/certs.h"

#include <string.h>

#include <openssl/x509v3.h>

static bool spiffe_valid(const unsigned char *s, size_t n) {
  size_t i;
  if (n <= 9 || n > 2048 || memcmp(s, "spiffe://", 9) != 0)
    return false;
  if (s[9] == '/' ) /* empty trust domain */
    return false;
  for (i = 9; i < n; i++) {
    unsigned char c = s[i];
    if (c <= 0x20 || c >= 0x7f || c == '?' || c == '#')
      return false;
  }
  return true;
}

int mg_spiffe_from_cert(X509 *cert, char *out, size_t outlen) {
  GENERAL_NAMES *sans;
  const unsigned char *uri = NULL;
  size_t urilen = 0;
  int nuri = 0, rc = MG_ERR_CERTS_NOID;

  if (!cert)
    return MG_ERR_CERTS_NOID;
  sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
  if (!sans)
    return MG_ERR_CERTS_NOID;
  for (int i = 0; i < sk_GENERAL_NAME_num(sans); i++) {
    const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
    if (gn->type != GEN_URI)
      continue;
    nuri++;
    uri = ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
    urilen = (size_t)ASN1_STRING_length(gn->d.uniformResourceIdentifier);
  }
  if (nuri == 1 && spiffe_valid(uri, urilen)) {
    if (urilen + 1 > outlen) {
      rc = MG_ERR_TOOBIG;
    } else {
      memcpy(out, uri, urilen);
      out[urilen] = 0;
      rc = 0;
    }
  }
  GENERAL_NAMES_free(sans);
  return rc;
}

int mg_tls_peer_spiffe(SSL *ssl, char *out, size_t outlen) {
  X509 *peer;
  int rc;
  if (SSL_get_verify_result(ssl) != X509_V_OK)
    return MG_ERR_CERTS_NOID;
  peer = SSL_get1_peer_certificate(ssl);
  if (!peer)
    return MG_ERR_CERTS_NOID;
  rc = mg_spiffe_from_cert(peer, out, outlen);
  X509_free(peer);
  return rc;
}

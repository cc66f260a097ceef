/*
 * keygen.c — `meshgate keygen`: a fresh Ed25519 signing key for an origin.
 *
 * Design: the key pair and the vkey line come from note.c (one place knows the C2SP
 * encodings); this file only decides where they go. The private key is written with mode
 * 0600 through mg_file_write_atomic, so a crash never leaves a half-written key, and an
 * existing key is never replaced: losing a signing key silently would orphan every
 * checkpoint signed with it. If the vkey cannot be written, the new key is removed
 * again so a retry starts clean.
 */
#include "lineage/lineage_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>

int mg_lineage_keygen(const char *name, const char *dir) {
  char *pem = NULL, *vkey = NULL, *keypath = NULL, *vkeypath = NULL, *line = NULL;
  struct stat st;
  int rv;

  if (!name || !dir || !*dir) return MG_ERR_INVALID;
  if (asprintf(&keypath, "%s/lineage.key", dir) < 0) { keypath = NULL; rv = -ENOMEM; goto fail_paths; }
  if (asprintf(&vkeypath, "%s/lineage.vkey", dir) < 0) { vkeypath = NULL; rv = -ENOMEM; goto fail_paths; }
  rv = mg_mkdir_p(dir, 0700);
  if (rv) goto fail_paths;
  if (stat(keypath, &st) == 0 || stat(vkeypath, &st) == 0) { rv = -EEXIST; goto fail_paths; }
  rv = mg_note_keygen(name, &pem, &vkey);
  if (rv) goto fail_paths;
  if (asprintf(&line, "%s\n", vkey) < 0) { line = NULL; rv = -ENOMEM; goto fail_key; }
  rv = mg_file_write_atomic(keypath, pem, strlen(pem), 0600);
  if (rv) goto fail_key;
  rv = mg_file_write_atomic(vkeypath, line, strlen(line), 0644);
  if (rv) goto fail_vkey;
  rv = 0;
  goto done;

fail_vkey:
  unlink(keypath);
fail_key:
done:
  if (pem) OPENSSL_cleanse(pem, strlen(pem));
  free(pem);
  free(vkey);
  free(line);
fail_paths:
  free(keypath);
  free(vkeypath);
  return rv;
}

/*
 * lineage_int.h — what lineage/'s files share among themselves: Merkle tree primitives
 * (merkle.c), signed notes and checkpoints (note.c). Not for other modules.
 */
#ifndef MG_LINEAGE_INT_H
#define MG_LINEAGE_INT_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include <openssl/evp.h>

#include "lineage/lineage.h"

#define MG_HASH_LEN 32
#define MG_MERKLE_MAX_LEVELS 64

/* ---- merkle.c: RFC 6962 / RFC 9162 §2.1 ----------------------------------- */

/* SHA-256(0x00 || data) */
void mg_merkle_leaf_hash(const void *data, size_t n, uint8_t out[MG_HASH_LEN]);
/* SHA-256(0x01 || l || r) */
void mg_merkle_node_hash(const uint8_t l[MG_HASH_LEN], const uint8_t r[MG_HASH_LEN],
                         uint8_t out[MG_HASH_LEN]);

/* The right edge of a tree: the roots of the perfect subtrees of `size`'s binary
 * decomposition, largest (leftmost) first. Appending is amortised O(1). */
struct mg_merkle_frontier {
  uint64_t size;
  unsigned n;                                  /* number of hashes = popcount(size) */
  uint8_t hashes[MG_MERKLE_MAX_LEVELS][MG_HASH_LEN];
};
void mg_merkle_frontier_init(struct mg_merkle_frontier *f);

/* Called for every perfect subtree completed by an append: level 0 is the leaf itself,
 * `index` is the subtree's position at that level (covers leaves
 * [index << level, (index + 1) << level)). The store persists these. */
typedef int (*mg_merkle_node_cb)(void *arg, unsigned level, uint64_t index,
                                 const uint8_t hash[MG_HASH_LEN]);
/* Appends one leaf hash; calls cb (if non-NULL) for each completed subtree; a nonzero cb
 * return aborts (the frontier is then unchanged). */
int mg_merkle_frontier_append(struct mg_merkle_frontier *f, const uint8_t leaf[MG_HASH_LEN],
                              mg_merkle_node_cb cb, void *arg);
/* Root of the tree of f->size leaves (SHA-256("") for size 0). */
void mg_merkle_frontier_root(const struct mg_merkle_frontier *f, uint8_t out[MG_HASH_LEN]);

/* Reads a stored perfect subtree hash (level, index); 0 or an error. */
typedef int (*mg_merkle_get_node)(void *arg, unsigned level, uint64_t index,
                                  uint8_t out[MG_HASH_LEN]);
/* Rebuilds the frontier of a tree of `size` leaves from stored subtree hashes (O(log n)). */
int mg_merkle_frontier_load(struct mg_merkle_frontier *f, uint64_t size,
                            mg_merkle_get_node get, void *arg);
/* MTH(D[start:end]) from stored perfect subtrees, O(log n) reads. */
int mg_merkle_range_hash(uint64_t start, uint64_t end, mg_merkle_get_node get, void *arg,
                         uint8_t out[MG_HASH_LEN]);

/* Proof generation (RFC 9162 §2.1.3.1, §2.1.4.1). out has room for MG_MERKLE_MAX_LEVELS
 * hashes; *nout receives the count. MG_LINEAGE_E_RANGE for bad index/size. */
int mg_merkle_prove_inclusion(uint64_t index, uint64_t size, mg_merkle_get_node get, void *arg,
                              uint8_t out[][MG_HASH_LEN], size_t *nout);
int mg_merkle_prove_consistency(uint64_t size1, uint64_t size2, mg_merkle_get_node get,
                                void *arg, uint8_t out[][MG_HASH_LEN], size_t *nout);

/* Proof verification (RFC 9162 §2.1.3.2, §2.1.4.2). 0 when valid, MG_LINEAGE_E_VERIFY. */
int mg_merkle_verify_inclusion(uint64_t index, uint64_t size, const uint8_t leaf[MG_HASH_LEN],
                               const uint8_t proof[][MG_HASH_LEN], size_t n,
                               const uint8_t root[MG_HASH_LEN]);
int mg_merkle_verify_consistency(uint64_t size1, uint64_t size2,
                                 const uint8_t root1[MG_HASH_LEN],
                                 const uint8_t root2[MG_HASH_LEN],
                                 const uint8_t proof[][MG_HASH_LEN], size_t n);

/* ---- note.c: C2SP signed-note + tlog-checkpoint, Ed25519 ---------------------- */

struct mg_note_signer {
  char *name;          /* key name = origin for checkpoints */
  uint8_t key_id[4];   /* first 4 bytes of SHA-256(name || 0x0A || 0x01 || pubkey) */
  EVP_PKEY *key;
};
struct mg_note_verifier {
  char *name;
  uint8_t key_id[4];
  EVP_PKEY *key;
  char *vkey;          /* the original vkey line, for reporting which key signed */
};

/* Loads a PKCS#8 PEM Ed25519 private key; the signature name is `name`. */
int mg_note_signer_load(const char *pem_path, const char *name, struct mg_note_signer **out);
void mg_note_signer_free(struct mg_note_signer *s);
/* Generates a key pair: PEM private key text and the vkey line (no LF). Caller frees both. */
int mg_note_keygen(const char *name, char **pem_out, char **vkey_out);
/* The vkey line of a signer (caller frees). */
char *mg_note_signer_vkey(const struct mg_note_signer *s);

/* Parses "name+hexid+base64(0x01||pub32)"; checks the id matches. */
int mg_note_verifier_parse(const char *vkey, size_t n, struct mg_note_verifier **out);
void mg_note_verifier_free(struct mg_note_verifier *v);

/* Signs `text` (must end with '\n', no empty line inside) with each signer in order:
 * returns text + "\n" + one "— name base64(id||sig)\n" line per signer. Caller frees. */
int mg_note_sign(const char *text, size_t n, struct mg_note_signer *const *signers,
                 size_t nsigners, char **note_out);

/* Verifies a signed note: at least one signature by a known verifier must be valid, and
 * no signature line claiming a known key (name+id) may be invalid. Unknown-key signatures
 * are ignored. On success *text_len is the length of the signed text (a prefix of note)
 * and signed_by[i] is set true for each verifier whose signature verified.
 * MG_LINEAGE_E_FORMAT (malformed), MG_LINEAGE_E_KEY (no known key signed),
 * MG_LINEAGE_E_VERIFY (a bad signature). */
int mg_note_verify(const char *note, size_t n, struct mg_note_verifier *const *verifiers,
                   size_t nverifiers, size_t *text_len, bool *signed_by);

/* Checkpoint body: "<origin>\n<size>\n<base64 root>\n". Caller frees. */
char *mg_checkpoint_format(const char *origin, uint64_t size, const uint8_t root[MG_HASH_LEN]);
/* Parses a checkpoint body (extension lines after the root are allowed and ignored).
 * origin_out: caller frees. */
int mg_checkpoint_parse(const char *text, size_t n, char **origin_out, uint64_t *size,
                        uint8_t root[MG_HASH_LEN]);

#endif /* MG_LINEAGE_INT_H */

/* ---- log.c: the LMDB log (shared by writer, reader, shipper) ------------------ */

struct mg_lineage_log; /* one MDB_env per process per directory */

/* Reads committed entries [from, from+max) in order; cb gets the exact line bytes (no LF).
 * cb returns nonzero to stop. Uses one short read transaction per call. */
typedef int (*mg_lineage_entry_cb)(void *arg, uint64_t index, const char *line, size_t len);
int mg_lineage_log_read(struct mg_lineage_log *log, uint64_t from, uint64_t max,
                        mg_lineage_entry_cb cb, void *arg);
/* The latest stored checkpoint note with size <= max_size (UINT64_MAX: latest). */
int mg_lineage_log_checkpoint(struct mg_lineage_log *log, uint64_t max_size, char **note,
                              uint64_t *size);
uint64_t mg_lineage_log_size(struct mg_lineage_log *log);
/* Entries below this index were pruned by retention (0: none). */
uint64_t mg_lineage_log_pruned(struct mg_lineage_log *log);

/* ---- shipper.c: JetStream replication (SPEC "Replication") --------------------- */

struct mg_shipper;
struct mg_shipper_config {
  const char *const *servers;
  size_t nservers;
  const char *stream, *subject;
  int replicas;
  const char *creds, *tls_ca;
  const char *origin;
};
/* Called on the shipper thread when every entry < upto was read back from the stream (the
 * audit, shipper.c), and every message of ours holding an entry >= upto lies above stream
 * sequence `seq`; the writer stores both in its next group commit (meta "shipped",
 * "shipped_seq") and prunes only below upto. */
typedef void (*mg_shipper_ack_cb)(void *arg, uint64_t upto, uint64_t seq);

/* Connects (bounded wait), creates or checks the stream, reads the subject's last message
 * and resumes after it. Refuses (MG_LINEAGE_E_FOREIGN) if the stream holds a higher index
 * for this origin than log_size. An unreachable NATS at start is not an error: the shipper
 * keeps retrying in its thread and the backlog grows. `shipped`, `shipped_seq` are what the
 * last on_ack said (0, 0: nothing read back yet). */
int mg_shipper_start(const struct mg_shipper_config *cfg, struct mg_lineage_log *log,
                     uint64_t shipped, uint64_t shipped_seq, mg_shipper_ack_cb on_ack,
                     void *ack_arg, struct mg_shipper **out);
/* The writer committed entries [first, last] as one group (one message). */
void mg_shipper_notify_group(struct mg_shipper *s, uint64_t first, uint64_t last);
/* A new checkpoint note of `size` entries was stored. */
void mg_shipper_notify_checkpoint(struct mg_shipper *s, uint64_t size, const char *note);
/* acked: every entry below it was acknowledged; verified: ... and read back (V). */
void mg_shipper_stats(struct mg_shipper *s, uint64_t *acked, uint64_t *verified,
                      bool *connected);
/* Flushes what it can within timeout_ms, then stops. */
void mg_shipper_stop(struct mg_shipper *s, int timeout_ms);

/* store additions */
/* ---- writer.c: hooks for the shipper ------------------------------------------- */
struct mg_lineage_writer;
/* The writer's log (for mg_shipper_start); valid until mg_lineage_writer_close. */
struct mg_lineage_log *mg_lineage_writer_log(struct mg_lineage_writer *w);
/* The read-back index and sequence stored in meta "shipped", "shipped_seq" (for
 * mg_shipper_start); seq may be NULL. */
uint64_t mg_lineage_writer_shipped(struct mg_lineage_writer *w, uint64_t *seq);
/* Attaches a started shipper: after each commit the writer calls mg_shipper_notify_group
 * (entries [first, last] of the group) and mg_shipper_notify_checkpoint; stats report its
 * acked index and connection. Takes ownership: mg_lineage_writer_close stops it
 * (mg_shipper_stop, 5 s) after the final checkpoint and before closing the log. */
void mg_lineage_writer_attach_shipper(struct mg_lineage_writer *w, struct mg_shipper *s);
/* An mg_shipper_ack_cb (arg = the writer): records `upto` and `seq` in meta "shipped",
 * "shipped_seq" with the next commit (pruning stays below upto). Any thread. */
void mg_lineage_writer_ack(void *arg, uint64_t upto, uint64_t seq);

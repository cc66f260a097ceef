/*
 * lineage.h — the tamper-evident lineage log: entries, the group-commit writer, Merkle
 * proofs, signed checkpoints, export, verify, key generation, and (optionally) shipping to
 * NATS JetStream.
 *
 * Format contract: ../shared/SPEC.md "Lineage". An entry is one line of compact JSON with
 * sorted keys, integers only, absent fields omitted; leaf hash = SHA-256(0x00 || line).
 * Tree per RFC 6962/9162; checkpoints per C2SP tlog-checkpoint inside a C2SP signed note
 * (Ed25519). Nothing downstream of the writer re-encodes an entry.
 *
 * Threads: the writer owns one background thread. mg_lineage_submit_*() may be called
 * from any thread; completion callbacks run on the writer thread and must only hand the
 * result over (post to the caller's loop), never block. Readers (proofs, export) open
 * their own read transactions and may run on any thread, in this or another process.
 *
 * Errors: 0 ok, negative error (-errno or MG_LINEAGE_E_*).
 */
#ifndef MG_LINEAGE_H
#define MG_LINEAGE_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <stdio.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MG_LINEAGE_E_FULL     = MG_ERR_LINEAGE_BASE - 1, /* map full / disk full: fail closed */
  MG_LINEAGE_E_STORE    = MG_ERR_LINEAGE_BASE - 2, /* other LMDB failure */
  MG_LINEAGE_E_CLOSED   = MG_ERR_LINEAGE_BASE - 3, /* writer is shutting down / failed */
  MG_LINEAGE_E_KEY      = MG_ERR_LINEAGE_BASE - 4, /* bad or unreadable signing/verifier key */
  MG_LINEAGE_E_FORMAT   = MG_ERR_LINEAGE_BASE - 5, /* malformed export / note / entry */
  MG_LINEAGE_E_VERIFY   = MG_ERR_LINEAGE_BASE - 6, /* verification failed */
  MG_LINEAGE_E_RANGE    = MG_ERR_LINEAGE_BASE - 7, /* index/size out of range for a proof */
  MG_LINEAGE_E_NATS     = MG_ERR_LINEAGE_BASE - 8, /* NATS/JetStream failure */
  MG_LINEAGE_E_FOREIGN  = MG_ERR_LINEAGE_BASE - 9, /* stream holds a higher index for origin */
  MG_LINEAGE_E_LAYOUT   = MG_ERR_LINEAGE_BASE - 10, /* log written with another on-disk layout */
};

/* Registers the module's mg_strerror() namer. Call once at start-up. */
void mg_lineage_init(void);

/* ---- keys --------------------------------------------------------------- */

/* `meshgate keygen`: writes DIR/lineage.key (Ed25519 PKCS#8 PEM, mode 0600) and
 * DIR/lineage.vkey (C2SP verifier key "name+hexkeyid+base64(0x01||pub)", one line + LF).
 * Refuses to overwrite an existing key (-EEXIST). */
int mg_lineage_keygen(const char *name, const char *dir);

/* ---- entries ------------------------------------------------------------ */

/* Fields of an access entry; NULL / 0-count = absent (omitted from the line). Strings are
 * copied before submit returns. Encoding order, escaping and key sorting are the writer's.
 * Every string must be valid UTF-8 (submit returns -EINVAL otherwise); unsigned counters
 * above INT64_MAX are written as INT64_MAX (JSON readers refuse larger integers).
 * Summary entries (rate-limited denies) are {"count","decision","index","origin","peer",
 * "reason","summary":1,"time"}: "summary" is the integer 1 because entries hold integers
 * only (no booleans); "peer" is the client address without its port. */
struct mg_lineage_access {
  const char *request_id;      /* UUIDv7 */
  const char *principal;       /* "user:…" (or "spiffe:…" / "client:…" when no user) */
  const char *const *groups;   /* "group:…" values; at most 64 written, then groups_more */
  size_t ngroups;
  const char *client;          /* "client:<azp|client_id>" */
  const char *peer;            /* client address "ip:port" (meshgate extension, see README) */
  const char *product;
  const char *dataset;
  const char *action;          /* "read" | "write" */
  const char *method;
  const char *path;            /* canonical path + query, exactly as forwarded */
  const char *purpose;
  const char *decision;        /* "allow" | "deny" | "unauthenticated" | "error" */
  const char *reason;
  const char *grant;
  const char *policy_revision;
  const char *token;           /* hex SHA-256 of iss||0x00||jti, or of the token */
};

struct mg_lineage_outcome {
  const char *request_id;
  int status;                  /* 0 when no response */
  int64_t reset;               /* h2 error code, or -1 when the stream was not reset */
  uint64_t bytes_in, bytes_out;
  uint64_t duration_us;
};

struct mg_lineage_policy_write {
  const char *request_id;
  const char *editor;          /* principal of the admin caller */
  const char *product;
  const char *grant;           /* grant id, or "*import*" */
  const char *old_revision;
  const char *new_revision;
};

/* ---- writer --------------------------------------------------------------- */

enum mg_lineage_durability { MG_LINEAGE_WRITE_AHEAD = 0, MG_LINEAGE_ASYNC = 1 };

struct mg_lineage_config {
  const char *db;               /* directory of the LMDB environment */
  size_t map_size_mb;
  const char *signing_key;      /* PEM path */
  const char *const *old_signing_keys; /* rotation: previous keys that co-sign the first
                                          checkpoint of a new key; may be NULL */
  size_t nold_signing_keys;
  const char *origin;           /* already expanded */
  enum mg_lineage_durability durability;
  int checkpoint_every_ms;
  int deny_entries_per_s;       /* per peer address; beyond: one summary per s per (peer, reason) */
  size_t max_group;             /* max entries per commit group, 0 = default (1024;
                                   8192 in async, where groups only amortise fsyncs) */
  int64_t retention_s;          /* > 0: entries the shipper's audit read back from the
                                   stream and older than this are pruned from the local
                                   log (0: never) */
};
/* Notes on the writer (writer.c):
 * - The deny budget is per client address (peer without the port: a client opening new
 *   connections does not get a new budget), a token bucket of deny_entries_per_s with a
 *   one-second burst; 0 = every deny goes into summaries. Over the budget, denies are
 *   counted per (address, reason, decision), one summary per key per second; counts whose
 *   commit fails are kept and retried, so written entries + summary counts = denies.
 * - Entries with a callback (write-ahead access entries, policy edits) are committed at
 *   once even in async mode; async otherwise commits when a group is full or
 *   checkpoint_every_ms after the first queued entry.
 * - The queue is bounded (max(65536, 16 * max_group) entries): beyond it submit returns
 *   MG_LINEAGE_E_FULL (fail closed) instead of growing without limit.
 * - A log records its origin at creation; opening it with another origin fails with
 *   MG_LINEAGE_E_FOREIGN (a foreign or misconfigured disk). */

struct mg_lineage_writer;
struct mg_lineage_rec; /* an in-flight access entry: its index once assigned */

/* Called on the writer thread when a submitted entry is durable (status 0, index set) or
 * failed (status < 0, e.g. MG_LINEAGE_E_FULL). */
typedef void (*mg_lineage_done_cb)(void *arg, int status, uint64_t index);

/* Opens the log (creating it), clears stale readers, recovers the tree state, signs a
 * checkpoint if entries are uncovered, and starts the writer thread. */
int mg_lineage_writer_open(const struct mg_lineage_config *cfg, struct mg_lineage_writer **out);
/* Drains the queue, commits, signs a final checkpoint, stops the thread, closes. */
void mg_lineage_writer_close(struct mg_lineage_writer *w);

/* Queues an access entry. With cb != NULL, cb runs once the entry is durable (fsynced) or
 * failed. If out_rec != NULL, *out_rec receives a reference used to link the outcome entry
 * (its `of`); release it with mg_lineage_submit_outcome or mg_lineage_rec_unref.
 * Denied / unauthenticated entries (decision != "allow") pass through the per-peer rate
 * limit: beyond deny_entries_per_s, they are counted into summary entries instead, and cb
 * (if any) is still called with status 0 and index UINT64_MAX.
 * Returns 0, or MG_LINEAGE_E_CLOSED / MG_LINEAGE_E_FULL (log known failed) / -ENOMEM. */
int mg_lineage_submit_access(struct mg_lineage_writer *w, const struct mg_lineage_access *a,
                             mg_lineage_done_cb cb, void *arg, struct mg_lineage_rec **out_rec);
/* Queues the outcome entry of a forwarded request; `of` is take_rec's index. Takes the
 * reference. Outcome entries are written in the next group commit. */
int mg_lineage_submit_outcome(struct mg_lineage_writer *w, struct mg_lineage_rec *take_rec,
                              const struct mg_lineage_outcome *o);
void mg_lineage_rec_unref(struct mg_lineage_rec *rec);
/* Queues a policy-write entry; cb runs when durable. */
int mg_lineage_submit_policy(struct mg_lineage_writer *w, const struct mg_lineage_policy_write *p,
                             mg_lineage_done_cb cb, void *arg);

/* Replication (SPEC "Replication"): starts a JetStream shipper for this writer's log and
 * attaches it (the writer stops it at close). Fails with MG_LINEAGE_E_FOREIGN when the
 * stream holds a higher index for this origin than the local log, or MG_LINEAGE_E_NATS
 * when the stream exists but cannot work (subjects, DenyDelete/DenyPurge); an unreachable
 * NATS is not an error (the backlog grows until it is reachable). Main thread, once. */
struct mg_lineage_nats {
  const char *const *servers;
  size_t nservers;
  const char *stream, *subject;
  int replicas;
  const char *creds, *tls_ca;
};
int mg_lineage_writer_replicate(struct mg_lineage_writer *w, const struct mg_lineage_nats *n);

/* Synchronously signs a checkpoint now if entries are uncovered; returns the latest signed
 * note text (caller frees). Safe from any thread (it waits for the writer thread). */
int mg_lineage_checkpoint_now(struct mg_lineage_writer *w, char **note_out);

struct mg_lineage_stats {
  uint64_t size;             /* entries committed */
  uint64_t checkpoint_size;  /* entries covered by the latest checkpoint */
  uint64_t queue_len;        /* entries waiting for a commit */
  uint64_t commits, fsync_us_total, entries_total, summaries_total;
  uint64_t shipped;          /* entries acknowledged by JetStream (0 without NATS) */
  uint64_t backlog;          /* size - shipped, with NATS */
  uint64_t verified;         /* entries read back from the stream (pruning stays below) */
  uint64_t unverified;       /* shipped - verified */
  uint64_t map_bytes;        /* the LMDB map (lineage.map_size_mb) */
  uint64_t used_bytes;       /* pages in use: at map_bytes the log is full and fails closed */
  bool healthy;              /* false after a failed commit until one succeeds */
  bool nats_connected;
  int last_error;
};
void mg_lineage_writer_stats(struct mg_lineage_writer *w, struct mg_lineage_stats *out);
const char *mg_lineage_writer_origin(const struct mg_lineage_writer *w);

/* ---- readers: proofs, checkpoints, export -------------------------------- */

struct mg_lineage_reader;
/* Opens a read-only view of the log in `db` (works while serve runs). */
int mg_lineage_reader_open(const char *db, struct mg_lineage_reader **out);
void mg_lineage_reader_close(struct mg_lineage_reader *r);

/* A reader sharing the writer's LMDB environment, for use inside the serving process
 * (LMDB forbids opening one environment twice in a process). Owned by the writer: do not
 * close it; valid until mg_lineage_writer_close. Any thread. */
struct mg_lineage_reader *mg_lineage_writer_reader(struct mg_lineage_writer *w);

/* Latest signed checkpoint note (caller frees); MG_ERR_NOTFOUND if none yet. */
int mg_lineage_reader_checkpoint(struct mg_lineage_reader *r, char **note_out, uint64_t *size);
/* Inclusion proof of entry `index` in the tree of `size` entries, as a JSON object
 * {"index":…,"size":…,"leaf":"<hex>","hashes":["<base64>",…]} (caller frees). */
int mg_lineage_reader_inclusion(struct mg_lineage_reader *r, uint64_t index, uint64_t size,
                                char **json_out);
/* Consistency proof between sizes a ≤ b: {"from":a,"to":b,"hashes":[…]} (caller frees). */
int mg_lineage_reader_consistency(struct mg_lineage_reader *r, uint64_t a, uint64_t b,
                                  char **json_out);

enum mg_lineage_format { MG_LINEAGE_NDJSON = 0, MG_LINEAGE_OPENLINEAGE = 1 };

struct mg_lineage_filter {
  int64_t since_us, until_us;  /* INT64_MIN / INT64_MAX = open */
  const char *principal, *product, *dataset, *action; /* NULL = any */
};
void mg_lineage_filter_init(struct mg_lineage_filter *f);
bool mg_lineage_filter_is_empty(const struct mg_lineage_filter *f);

/* Writes an export to `out` (see SPEC "Export"). Returns 0 or an error; on a write error
 * (EPIPE: the reader went away) returns -errno promptly.
 * ndjson: without principal/product/dataset/action/until filters the export is the
 * contiguous range from index 0 (or from the first entry with time >= since, after a
 * {"prefix":{"origin","size","hashes"}} line) up to the latest checkpoint, each stored
 * checkpoint as {"checkpoint":"<note>","leaves":"<base64 leaf hashes since the previous
 * checkpoint line>"} after the last entry it covers; nothing, with a warning, if no
 * checkpoint exists yet. With filters: matching entries, each followed by
 * {"proof":{"index","size","hashes"}} against the latest checkpoint, which ends the
 * export. A principal filter matches the entry's principal, client or editor, and
 * "group:x" also membership in groups; an outcome entry matches when its access entry does.
 * openlineage: one RunEvent per outcome of an allowed access entry that matches. */
int mg_lineage_export(struct mg_lineage_reader *r, const struct mg_lineage_filter *f,
                      enum mg_lineage_format fmt, FILE *out);

/* Where an export from JetStream reads: url is one server or a comma-separated list;
 * origin NULL = every origin in the stream; creds (a .creds file) and tls_ca (a CA bundle:
 * TLS on) may be NULL. */
struct mg_lineage_nats_source {
  const char *url, *stream, *origin, *creds, *tls_ca;
};
/* Export from a JetStream stream: the same format as mg_lineage_export, per origin (in byte
 * order of the origins); with filters or openlineage through a temporary local log. */
int mg_lineage_export_nats(const struct mg_lineage_nats_source *src,
                           const struct mg_lineage_filter *f, enum mg_lineage_format fmt,
                           FILE *out);

/* ---- verify --------------------------------------------------------------- */

/* What a successful verify proved, per origin: an auditor must be able to tell a whole
 * log from a filtered one or one that starts after a prefix (both verify). */
enum mg_lineage_verify_kind {
  MG_VERIFY_COMPLETE,     /* every entry from index 0 to the last checkpoint */
  MG_VERIFY_FROM_PREFIX,  /* every entry from `first` on; 0..first-1 only as Merkle hashes */
  MG_VERIFY_FILTERED,     /* the entries present are proven included; completeness is not */
  MG_VERIFY_NO_ENTRIES,   /* checkpoints only (a filtered export in which nothing matched) */
};

struct mg_lineage_verify_origin {
  char name[256];
  enum mg_lineage_verify_kind kind;
  uint64_t first;         /* first index the export proves (prefix size), 0 for complete */
  uint64_t size;          /* entries covered by its last verified checkpoint */
  uint64_t entries;       /* entry lines of this origin */
};

#define MG_LINEAGE_VERIFY_MAX_ORIGINS 64

struct mg_lineage_verify_result {
  uint64_t entries, checkpoints;
  uint64_t bad_index;     /* first bad entry index, UINT64_MAX if the problem has none */
  long bad_line;          /* 1-based line of the export where it failed, 0 if none */
  char reason[256];       /* one line, for stderr */
  /* on success: the first MG_LINEAGE_VERIFY_MAX_ORIGINS origins (norigins counts all) */
  size_t norigins;
  struct mg_lineage_verify_origin origins[MG_LINEAGE_VERIFY_MAX_ORIGINS];
  bool incomplete;        /* some origin is not MG_VERIFY_COMPLETE */
  uint64_t min_size;      /* smallest last checkpoint size over all origins */
};

/* Verifies an export read from `in` with the given verifier keys (C2SP vkey lines).
 * Returns 0 when intact and every entry is covered by a valid checkpoint;
 * MG_LINEAGE_E_VERIFY / MG_LINEAGE_E_FORMAT with res filled otherwise. */
int mg_lineage_verify(FILE *in, const char *const *vkeys, size_t nvkeys,
                      struct mg_lineage_verify_result *res);

#ifdef __cplusplus
}
#endif
#endif /* MG_LINEAGE_H */

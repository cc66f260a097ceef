/*
 * policy.h — grants: model, JSON codec, LMDB store, compiled index, decisions.
 *
 * policy never sees a JWT or an HTTP request: callers hand it a principal set, a product,
 * a canonical resource, an action and an optional purpose.
 *
 * Threads: a store may be used from any thread (LMDB is opened without MDB_NOTLS only if
 * the implementation says so; see mg_policy_store_open). An index is immutable and
 * reference counted: any thread may decide against an index it holds a reference on.
 *
 * Errors: 0 ok, negative error (-errno or MG_POLICY_E_*). A deny is a result, not an error.
 */
#ifndef MG_POLICY_H
#define MG_POLICY_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include "common/common.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  MG_POLICY_E_INVALID      = MG_ERR_POLICY_BASE - 1, /* grant JSON fails validation (400) */
  MG_POLICY_E_NOTFOUND     = MG_ERR_POLICY_BASE - 2, /* no grant with that id (404) */
  MG_POLICY_E_PRECONDITION = MG_ERR_POLICY_BASE - 3, /* If-Match / If-None-Match failed (412) */
  MG_POLICY_E_EXISTS       = MG_ERR_POLICY_BASE - 4, /* If-None-Match: * and it exists (412) */
  MG_POLICY_E_FULL         = MG_ERR_POLICY_BASE - 5, /* LMDB map full or disk full (507) */
  MG_POLICY_E_STORE        = MG_ERR_POLICY_BASE - 6, /* other LMDB failure (503) */
  MG_POLICY_E_PRODUCT      = MG_ERR_POLICY_BASE - 7, /* grant of another product (403 for owners) */
};

/* Registers the module's mg_strerror() namer. Call once at start-up. */
void mg_policy_init(void);

/* ---- model -------------------------------------------------------------- */

enum mg_policy_effect { MG_POLICY_ALLOW = 1, MG_POLICY_DENY = 2 };

#define MG_ACTION_READ  1u
#define MG_ACTION_WRITE 2u

#define MG_POLICY_NO_TIME INT64_MIN /* not_before / expires absent */

struct mg_grant {
  char *id;            /* [A-Za-z0-9._:-]{1,128} */
  enum mg_policy_effect effect;
  char **subjects;     /* "user:…", "group:…", "client:…", "spiffe:…" or "*" */
  size_t nsubjects;
  char *product;
  char **resources;    /* patterns: segments, "*" one segment, "**" zero or more */
  size_t nresources;
  unsigned actions;    /* MG_ACTION_* bitmask, never 0 */
  char **purposes;     /* NULL/0 = any (allow) or always (deny) */
  size_t npurposes;
  int64_t not_before_us; /* MG_POLICY_NO_TIME if absent */
  int64_t expires_us;    /* MG_POLICY_NO_TIME if absent */
  char *description;     /* may be NULL */
};

/* Validation problems: each message is "<JSON pointer>: <reason>", e.g.
 * "/3/resources/0: '**' must be a whole segment". */
struct mg_policy_diag {
  char **msgs;
  size_t n;
};
void mg_policy_diag_clear(struct mg_policy_diag *d);

/* Parses and validates one grant object. Rejects duplicate keys, unknown fields, invalid
 * UTF-8, nesting deeper than needed, trailing data. `pointer_prefix` ("" or "/3") is put
 * before each diag path. On MG_POLICY_E_INVALID, diag (if non-NULL) lists every problem. */
int mg_policy_grant_parse(const char *json, size_t len, const char *pointer_prefix,
                          struct mg_grant **out, struct mg_policy_diag *diag);
/* Parses a JSON array of grants (for `policy check` and import). Every problem of every
 * element goes to diag; also rejects two grants with one id. */
int mg_policy_grants_parse(const char *json, size_t len, struct mg_grant ***out, size_t *nout,
                           struct mg_policy_diag *diag);
void mg_policy_grant_free(struct mg_grant *g);
void mg_policy_grants_free(struct mg_grant **gs, size_t n);

/* Canonical JSON (compact, sorted keys, times as RFC 3339 'Z', absent = null omitted).
 * Caller frees. The ETag of a grant is derived from these bytes. */
char *mg_policy_grant_to_json(const struct mg_grant *g);

/* ---- store (LMDB) ------------------------------------------------------ */

struct mg_policy_store;

#define MG_POLICY_ETAG_LEN 35      /* "\"" + 32 hex + "\"" + NUL */
#define MG_POLICY_REVISION_LEN 65  /* 64 hex + NUL */

/* Opens (creating if needed unless readonly) the store in directory `dir`. Clears stale
 * readers. readonly stores may be opened while another process writes. */
int mg_policy_store_open(const char *dir, size_t map_size_mb, bool readonly,
                         struct mg_policy_store **out);
void mg_policy_store_close(struct mg_policy_store *s);

/* The current revision: a content digest of all grants (64 hex), and the edit generation,
 * a counter that increases with every committed edit. */
int mg_policy_store_revision(struct mg_policy_store *s, char rev[MG_POLICY_REVISION_LEN],
                             uint64_t *generation);

/* One grant's canonical JSON (caller frees) and ETag. MG_POLICY_E_NOTFOUND if absent. */
int mg_policy_store_get(struct mg_policy_store *s, const char *id, char **json,
                        char etag[MG_POLICY_ETAG_LEN]);

/* Lists grants in id order; product/subject NULL = no filter (subject: exact match of a
 * subject string in the grant). cb returns nonzero to stop. */
typedef int (*mg_policy_list_cb)(void *arg, const struct mg_grant *g, const char *json,
                                 const char *etag);
int mg_policy_store_list(struct mg_policy_store *s, const char *product, const char *subject,
                         mg_policy_list_cb cb, void *arg);

/* Preconditions of an edit. */
struct mg_policy_precond {
  const char *if_match;  /* ETag the stored grant must have, or NULL */
  bool if_none_match;    /* "If-None-Match: *": the grant must not exist */
};

/* Hook called inside the edit's write transaction, after the preconditions passed and the
 * new revision is known, before commit. Used to write the policy-write lineage entry first;
 * a nonzero return aborts the edit with that error. old_json is NULL on create, new_json
 * NULL on delete. */
typedef int (*mg_policy_edit_hook)(void *arg, const char *grant_id, const char *old_json,
                                   const char *new_json, const char *old_rev, const char *new_rev);

/* Creates or replaces g (takes no ownership). expect_product: if non-NULL, both the stored
 * grant (if any) and g must be of that product, else MG_POLICY_E_PRODUCT. On success the
 * new ETag is written to etag_out (may be NULL); *created tells create vs replace. */
int mg_policy_store_put(struct mg_policy_store *s, const struct mg_grant *g,
                        const struct mg_policy_precond *pc, const char *expect_product,
                        mg_policy_edit_hook hook, void *hook_arg,
                        char etag_out[MG_POLICY_ETAG_LEN], bool *created);
int mg_policy_store_delete(struct mg_policy_store *s, const char *id,
                           const struct mg_policy_precond *pc, const char *expect_product,
                           mg_policy_edit_hook hook, void *hook_arg);
/* Replaces every grant of `product` by grants[] (all must be of that product) in one
 * transaction. The hook is called once with grant_id "*import*". */
int mg_policy_store_import(struct mg_policy_store *s, const char *product,
                           struct mg_grant *const *grants, size_t n,
                           mg_policy_edit_hook hook, void *hook_arg);

/* ---- compiled index and decisions --------------------------------------- */

struct mg_policy_index;

/* Builds an immutable index from the store's current contents (one read transaction).
 * The index holds one reference; release with mg_policy_index_unref. */
int mg_policy_index_build(struct mg_policy_store *s, struct mg_policy_index **out);
void mg_policy_index_ref(struct mg_policy_index *ix);
void mg_policy_index_unref(struct mg_policy_index *ix);
const char *mg_policy_index_revision(const struct mg_policy_index *ix);
uint64_t mg_policy_index_generation(const struct mg_policy_index *ix);
size_t mg_policy_index_count(const struct mg_policy_index *ix);

struct mg_policy_request {
  const char *const *principals; /* "user:…", "group:…", "client:…", "spiffe:…" */
  size_t nprincipals;
  const char *product;
  const char *resource;          /* canonical path without leading '/' and query */
  size_t resource_len;
  unsigned action;               /* one MG_ACTION_* bit */
  const char *purpose;           /* x-mesh-purpose value, or NULL */
  int64_t now_us;
};

enum mg_policy_reason {
  MG_POLICY_REASON_ALLOWED = 0,
  MG_POLICY_REASON_NO_GRANT,        /* no matching allow */
  MG_POLICY_REASON_DENIED,          /* a deny grant matched */
  MG_POLICY_REASON_PURPOSE_MISSING, /* an allow matched all but its purposes */
  MG_POLICY_REASON_EXPIRED,         /* an allow matched all but its validity window */
};
/* "allowed", "no_matching_grant", "denied_by_grant", "purpose_missing", "grant_expired" */
const char *mg_policy_reason_str(enum mg_policy_reason r);

struct mg_policy_decision {
  bool allow;
  enum mg_policy_reason reason;
  const char *grant_id;  /* the deciding grant (deny or allow) or NULL; valid while ix ref held */
};

/* Decides in well under 2 µs, flat in the number of grants. Never allocates. */
void mg_policy_decide(const struct mg_policy_index *ix, const struct mg_policy_request *rq,
                      struct mg_policy_decision *out);

/* Like decide, and also lists the ids of every grant that matched (allow and deny), for
 * POST /v1/decide. ids[] point into the index. Returns the number of matches (may exceed
 * max; only max are stored). */
size_t mg_policy_explain(const struct mg_policy_index *ix, const struct mg_policy_request *rq,
                         struct mg_policy_decision *out, const char **ids, size_t max);


/* ---- additions (policy module) -------------------------------------------- */

/* Field-by-field equality of two grants (subjects/resources/purposes in order). */
bool mg_policy_grant_equal(const struct mg_grant *a, const struct mg_grant *b);

/* Recomputes the revision digest from every stored grant and compares it with the one
 * kept in meta; also checks that every stored value is a valid canonical grant stored
 * under its own id. 0, MG_POLICY_E_STORE on a mismatch, or another error. */
int mg_policy_store_verify(struct mg_policy_store *s);

/*
 * Decision rules (mg_policy_decide / mg_policy_explain), for the record:
 *  - Candidates: the grants of rq->product whose subjects contain one of rq->principals,
 *    plus those with subject "*". A grant matches when its actions contain rq->action and
 *    one of its resource patterns matches rq->resource ("*" = exactly one non-empty
 *    segment, "**" = zero or more segments of any content; literal segments compare bytes).
 *  - Validity: not_before <= now < expires. A grant outside its window never matches.
 *  - Purposes: an allow with purposes matches only if rq->purpose is one of them; a deny
 *    with purposes matches if rq->purpose is one of them OR rq->purpose is NULL.
 *  - Result precedence: DENIED > ALLOWED > PURPOSE_MISSING > EXPIRED > NO_GRANT.
 *    DENIED: some deny matched (deny overrides allow). PURPOSE_MISSING: no allow matched
 *    but an allow in its window matched all but its purposes. EXPIRED: an allow matched
 *    everything except its validity window (checked first, so an expired grant that also
 *    lacks the purpose counts as EXPIRED). Denies outside their window or with another
 *    purpose are ignored silently.
 *  - decision.grant_id: the deciding grant of the winning category; among several, the
 *    one with the smallest id (byte order), so the answer does not depend on the order of
 *    principals. NULL for NO_GRANT.
 *  - A principal "*" in the request is ignored (the "*" grants are always candidates).
 *  - explain(): ids of every matching grant, deny and allow, each once, in encounter order
 *    (principals in request order, then "*" grants); the return value counts distinct
 *    matches even beyond max. Allows that failed only on purpose or window are not listed.
 * Store behaviour (mg_policy_store_*), for the record:
 *  - The environment is opened with MDB_NOTLS (a read transaction may be used from any
 *    thread) and never with MDB_NOSYNC/MDB_WRITEMAP/MDB_MAPASYNC: a returned edit is on
 *    disk. Any thread may call any store function; edits are serialised by LMDB's writer
 *    lock, also across processes. map_size_mb 0 = 256. Stale readers are cleared at open.
 *  - readonly: the directory must hold a store (else -ENOENT or another -errno); edits
 *    return -EROFS. It sees each edit the writer commits.
 *  - Preconditions are checked inside the write transaction. if_match "*" means "exists";
 *    a weak tag (W/"…") never matches (strong comparison). put: if_match on a missing
 *    grant -> MG_POLICY_E_PRECONDITION; if_none_match on an existing one ->
 *    MG_POLICY_E_EXISTS. delete: a missing grant -> MG_POLICY_E_NOTFOUND even with
 *    if_match (RFC 9110 13.2.1: preconditions apply only when the answer would be 2xx).
 *  - put/import re-validate the grants (MG_POLICY_E_INVALID); only canonical JSON is
 *    stored. import: a grant of another product -> MG_POLICY_E_PRODUCT; two grants with
 *    one id -> MG_POLICY_E_INVALID; an id held by another product's grant ->
 *    MG_POLICY_E_PRODUCT (an import never touches another product). The import hook gets
 *    old_json = new_json = NULL. A hook returning > 0 is treated as MG_ERR_INTERNAL.
 *  - MDB_MAP_FULL, ENOSPC or EDQUOT -> MG_POLICY_E_FULL; other LMDB failures ->
 *    MG_POLICY_E_STORE; in every error case the transaction is aborted, nothing changed.
 *  - Revision: hex SHA-256 of (sum mod 2^256 of SHA-256(canonical JSON) over all grants),
 *    so it depends only on the set of grants, not on edit order. (An additive multiset
 *    hash: fine against accidents and for change detection; a party who can write many
 *    grants could search for collisions far faster than 2^128, so do not use it as a
 *    security commitment; lineage signs the old/new revision of each edit anyway.)
 * Bounds (validation rejects more): id 128 bytes; product 128; subject name (after the
 * "type:" prefix) 256; pattern 1024 bytes / 128 segments; purpose 256; description 1024;
 * subjects/resources/purposes at most 1024 entries, no duplicates; time years 0000-9999.
 * Diag lists at most 1000 problems (then one "too many problems" line). A syntax error
 * (jansson stops at the first) is reported at the pointer of the member or element being
 * read when it occurred ("" for trailing data), with jansson's line and column. Messages
 * are always valid UTF-8 (bytes of a broken key are shown as '?').
 */

/* Canonicalises a raw :path into out (capacity outcap; len + 1 ≤ in_len + 1 always
 * suffices since canonical output is never longer than the input):
 *   - splits off the query at the first '?' (kept byte-for-byte, but validated);
 *   - decodes percent-escapes of characters allowed raw in a path (unreserved, sub-delims
 *     but ';', ':' and '@'), uppercases the hex of the rest;
 *   - resolves "." and ".." segments (RFC 3986 §5.2.4, ".." at the root stays at the root);
 *   - merges duplicate slashes.
 * Rejects (MG_ERR_INVALID, *why set to a static reason): not starting with '/', %2F, %5C,
 * '\', %00, ';', '#', "%25" followed by two hex digits, a malformed escape, control
 * characters, spaces, raw bytes ≥ 0x80, and escapes that decode to invalid UTF-8.
 * *path_len is the length of the canonical path part (without query); *out_len of the
 * whole output (path + "?" + query). */
int mg_canon_path(const char *in, size_t in_len, char *out, size_t outcap,
                  size_t *path_len, size_t *out_len, const char **why);

#ifdef __cplusplus
}
#endif
#endif /* MG_POLICY_H */

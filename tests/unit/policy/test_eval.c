/* test_eval.c — decisions: a table of requests against one set of grants in a real store,
 * each with the expected allow/deny, reason and deciding grant. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pthread.h>

#include "policy/policy.h"

#define PAST "2026-01-01T00:00:00Z"
#define FUTURE "2027-01-01T00:00:00Z"
#define NOW "2026-06-01T00:00:00Z"
#define LATER "2027-02-01T00:00:00Z"

#define G(id, eff, subj, res, act, extra)                                                  \
  "{\"id\":\"" id "\",\"effect\":\"" eff "\",\"subjects\":[" subj "],\"product\":\"orders\"," \
  "\"resources\":[" res "],\"actions\":[" act "]" extra "}"
#define R "\"read\""
#define W "\"write\""
#define RW "\"read\",\"write\""

static const char GRANTS[] =
    "["
    G("a-analysts-read", "allow", "\"group:analysts\"", "\"datasets/orders_fact/**\"", R,
      ",\"purposes\":[\"analytics\"]") ","
    G("b-alice-rw", "allow", "\"user:alice\"", "\"datasets/alice/*\"", RW, "") ","
    G("c-public", "allow", "\"*\"", "\"public/**\"", R, "") ","
    G("d-deny-secret", "deny", "\"*\"", "\"datasets/*/secret/**\"", RW, "") ","
    G("e-client-etl", "allow", "\"client:etl\"", "\"datasets/*/raw\"", W, "") ","
    G("f-spiffe-job", "allow", "\"spiffe:spiffe://td/ns/a/sa/job\"", "\"**/export\"", R, "") ","
    G("g-bob-expired", "allow", "\"user:bob\"", "\"datasets/bob/**\"", R,
      ",\"expires\":\"" PAST "\"") ","
    G("h-carol-future", "allow", "\"user:carol\"", "\"datasets/carol/**\"", R,
      ",\"not_before\":\"" FUTURE "\"") ","
    G("i-deny-pii-marketing", "deny", "\"group:analysts\"", "\"datasets/orders_fact/pii/**\"", R,
      ",\"purposes\":[\"marketing\"]") ","
    "{\"id\":\"j-billing-alice\",\"effect\":\"allow\",\"subjects\":[\"user:alice\"],"
    "\"product\":\"billing\",\"resources\":[\"**\"],\"actions\":[\"read\"]},"
    G("k-ops-logs-error", "allow", "\"group:ops\"", "\"logs/**/error/*\"", R, "") ","
    G("l-ops-status", "allow", "\"group:ops\"", "\"*/status\"", R, "") ","
    G("m-deny-bob-write", "deny", "\"user:bob\"", "\"**\"", W, "") ","
    G("n-dave-reports", "allow", "\"user:dave\"", "\"reports/**\"", R,
      ",\"purposes\":[\"audit\",\"finance\"]") ","
    G("o-erin-window", "allow", "\"user:erin\"", "\"datasets/erin\"", R,
      ",\"not_before\":\"" PAST "\",\"expires\":\"" FUTURE "\"") ","
    G("p-deny-erin-expired", "deny", "\"user:erin\"", "\"datasets/erin\"", R,
      ",\"expires\":\"" PAST "\"") ","
    G("q-frank-all", "allow", "\"user:frank\"", "\"**\"", R, "") ","
    G("q2-frank-deny-exact", "deny", "\"user:frank\"", "\"top/secret\"", R, "") ","
    G("r-gina-one", "allow", "\"user:gina\"", "\"*\"", R, "") ","
    G("s-analysts-shared", "allow", "\"group:analysts\"", "\"datasets/shared/**\"", R, "") ","
    G("t-deny-ops-private", "deny", "\"group:ops\"", "\"logs/private/**\"", R,
      ",\"purposes\":[\"debug\"]") ","
    G("u-hank-x", "allow", "\"user:hank\"", "\"x/**\"", R,
      ",\"purposes\":[\"p\"],\"expires\":\"" PAST "\"") ","
    G("v-hank-y-purpose", "allow", "\"user:hank\"", "\"y/**\"", R, ",\"purposes\":[\"p\"]") ","
    G("w-hank-y-expired", "allow", "\"user:hank\"", "\"y/**\"", R, ",\"expires\":\"" PAST "\"") ","
    G("x1-ivan", "allow", "\"user:ivan\"", "\"m/**\"", R, "") ","
    G("x2-ivan", "allow", "\"group:ivans\"", "\"m/n\"", R, "") ","
    G("y-multi", "allow", "\"user:jo\",\"group:jo-team\"", "\"a/**/b/**/c\",\"z\"", R, "") ","
    G("z-deny-not-yet", "deny", "\"user:kim\"", "\"k/**\"", R, ",\"not_before\":\"" FUTURE "\"") ","
    G("z-kim-allow", "allow", "\"user:kim\"", "\"k/**\"", R, "") ","
    G("za-lee-mid", "allow", "\"user:lee\"", "\"data/*/v1/*\"", R, "") ","
    G("zb-patho", "allow", "\"user:patho\"", "\"**/a/**/a/**/a/**/a/**/a/**/b\"", R, "") ","
    G("zc-max", "allow", "\"user:max\"", "\"reports/**\"", R, ",\"purposes\":[\"audit\"]") ","
    G("zd-max-deny", "deny", "\"group:interns\"", "\"reports/salaries/**\"", R, "")
    "]";

enum { ALLOW = 1, DENY = 0 };
enum { A = MG_POLICY_REASON_ALLOWED, NOG = MG_POLICY_REASON_NO_GRANT,
       DEN = MG_POLICY_REASON_DENIED, PUR = MG_POLICY_REASON_PURPOSE_MISSING,
       EXP = MG_POLICY_REASON_EXPIRED };

struct tcase {
  const char *principals; /* ';'-separated */
  const char *product;
  const char *resource;
  unsigned action;
  const char *purpose;
  const char *now; /* NULL = NOW */
  int allow;
  int reason;
  const char *grant;
};

#define RD MG_ACTION_READ
#define WR MG_ACTION_WRITE

static const struct tcase cases[] = {
    /* groups, purposes, ** at the end */
    {"group:analysts", "orders", "datasets/orders_fact/2024", RD, "analytics", NULL, ALLOW, A, "a-analysts-read"},
    {"group:analysts", "orders", "datasets/orders_fact/2024", RD, NULL, NULL, DENY, PUR, "a-analysts-read"},
    {"group:analysts", "orders", "datasets/orders_fact/2024", RD, "other", NULL, DENY, PUR, "a-analysts-read"},
    {"group:analysts", "orders", "datasets/orders_fact", RD, "analytics", NULL, ALLOW, A, "a-analysts-read"},
    {"group:analysts", "orders", "datasets/orders_fact/a/b/c", RD, "analytics", NULL, ALLOW, A, "a-analysts-read"},
    {"group:analysts", "orders", "datasets/orders_fact/2024", WR, "analytics", NULL, DENY, NOG, NULL},
    {"group:analysts", "orders", "datasets/orders_factory", RD, "analytics", NULL, DENY, NOG, NULL},
    /* deny with purposes: matches its purpose, and no purpose at all */
    {"group:analysts", "orders", "datasets/orders_fact/pii/x", RD, "marketing", NULL, DENY, DEN, "i-deny-pii-marketing"},
    {"group:analysts", "orders", "datasets/orders_fact/pii/x", RD, NULL, NULL, DENY, DEN, "i-deny-pii-marketing"},
    {"group:analysts", "orders", "datasets/orders_fact/pii/x", RD, "analytics", NULL, ALLOW, A, "a-analysts-read"},
    /* '*' deny with * in the middle overrides allow */
    {"group:analysts", "orders", "datasets/orders_fact/secret/x", RD, "analytics", NULL, DENY, DEN, "d-deny-secret"},
    {"group:analysts", "orders", "datasets/shared/secret", RD, NULL, NULL, DENY, DEN, "d-deny-secret"},
    {"group:analysts", "orders", "datasets/shared/public", RD, NULL, NULL, ALLOW, A, "s-analysts-shared"},
    /* users, * at the end */
    {"user:alice", "orders", "datasets/alice/f1", RD, NULL, NULL, ALLOW, A, "b-alice-rw"},
    {"user:alice", "orders", "datasets/alice/f1", WR, NULL, NULL, ALLOW, A, "b-alice-rw"},
    {"user:alice", "orders", "datasets/alice", RD, NULL, NULL, DENY, NOG, NULL},
    {"user:alice", "orders", "datasets/alice/f1/f2", RD, NULL, NULL, DENY, NOG, NULL},
    {"user:alice", "orders", "datasets/alice/", RD, NULL, NULL, DENY, NOG, NULL},
    {"user:alice", "orders", "datasets/alice/secret", WR, NULL, NULL, DENY, DEN, "d-deny-secret"},
    {"user:alice", "orders", "datasets/alice/secrets", WR, NULL, NULL, ALLOW, A, "b-alice-rw"},
    {"user:alice", "orders", "datasets/alice/secret/x", WR, NULL, NULL, DENY, DEN, "d-deny-secret"},
    {"user:alicex", "orders", "datasets/alice/f1", RD, NULL, NULL, DENY, NOG, NULL},
    /* other product */
    {"user:alice", "billing", "invoices/2024/01", RD, NULL, NULL, ALLOW, A, "j-billing-alice"},
    {"user:alice", "billing", "", RD, NULL, NULL, ALLOW, A, "j-billing-alice"},
    {"user:alice", "billing", "invoices", WR, NULL, NULL, DENY, NOG, NULL},
    {"user:alice", "shipping", "datasets/alice/f1", RD, NULL, NULL, DENY, NOG, NULL},
    {"group:analysts", "billing", "datasets/orders_fact/2024", RD, "analytics", NULL, DENY, NOG, NULL},
    /* subject "*" */
    {"user:nobody", "orders", "public/readme", RD, NULL, NULL, ALLOW, A, "c-public"},
    {"", "orders", "public/readme", RD, NULL, NULL, ALLOW, A, "c-public"},
    {"*", "orders", "public/a/b", RD, NULL, NULL, ALLOW, A, "c-public"},
    {"*", "orders", "datasets/alice/f1", RD, NULL, NULL, DENY, NOG, NULL},
    {"user:nobody", "orders", "public/readme", WR, NULL, NULL, DENY, NOG, NULL},
    {"user:nobody", "orders", "public", RD, NULL, NULL, ALLOW, A, "c-public"},
    {"user:nobody", "orders", "publicity", RD, NULL, NULL, DENY, NOG, NULL},
    /* clients, * at the start of the tail */
    {"client:etl", "orders", "datasets/orders/raw", WR, NULL, NULL, ALLOW, A, "e-client-etl"},
    {"client:etl", "orders", "datasets/orders/raw", RD, NULL, NULL, DENY, NOG, NULL},
    {"client:etl", "orders", "datasets/raw", WR, NULL, NULL, DENY, NOG, NULL},
    {"client:etl", "orders", "datasets/secret/secret/raw", WR, NULL, NULL, DENY, DEN, "d-deny-secret"},
    {"user:etl", "orders", "datasets/orders/raw", WR, NULL, NULL, DENY, NOG, NULL},
    /* spiffe, ** at the start */
    {"spiffe:spiffe://td/ns/a/sa/job", "orders", "a/b/export", RD, NULL, NULL, ALLOW, A, "f-spiffe-job"},
    {"spiffe:spiffe://td/ns/a/sa/job", "orders", "export", RD, NULL, NULL, ALLOW, A, "f-spiffe-job"},
    {"spiffe:spiffe://td/ns/a/sa/job", "orders", "a/export/x", RD, NULL, NULL, DENY, NOG, NULL},
    {"user:spiffe://td/ns/a/sa/job", "orders", "export", RD, NULL, NULL, DENY, NOG, NULL},
    /* validity windows */
    {"user:bob", "orders", "datasets/bob/x", RD, NULL, NULL, DENY, EXP, "g-bob-expired"},
    {"user:bob", "orders", "datasets/bob/x", RD, NULL, "2025-12-31T23:59:59Z", ALLOW, A, "g-bob-expired"},
    {"user:bob", "orders", "datasets/bob/x", WR, NULL, NULL, DENY, DEN, "m-deny-bob-write"},
    {"user:carol", "orders", "datasets/carol/x", RD, NULL, NULL, DENY, EXP, "h-carol-future"},
    {"user:carol", "orders", "datasets/carol/x", RD, NULL, FUTURE, ALLOW, A, "h-carol-future"},
    {"user:erin", "orders", "datasets/erin", RD, NULL, NULL, ALLOW, A, "o-erin-window"},
    {"user:erin", "orders", "datasets/erin", RD, NULL, PAST, ALLOW, A, "o-erin-window"},
    {"user:erin", "orders", "datasets/erin", RD, NULL, "2025-12-31T23:59:59Z", DENY, DEN, "p-deny-erin-expired"},
    {"user:erin", "orders", "datasets/erin", RD, NULL, FUTURE, DENY, EXP, "o-erin-window"},
    {"user:kim", "orders", "k/1", RD, NULL, NULL, ALLOW, A, "z-kim-allow"},
    {"user:kim", "orders", "k/1", RD, NULL, LATER, DENY, DEN, "z-deny-not-yet"},
    /* ** in the middle, backtracking */
    {"group:ops", "orders", "logs/app/error/e1", RD, NULL, NULL, ALLOW, A, "k-ops-logs-error"},
    {"group:ops", "orders", "logs/error/e1", RD, NULL, NULL, ALLOW, A, "k-ops-logs-error"},
    {"group:ops", "orders", "logs/a/b/c/error/e1", RD, NULL, NULL, ALLOW, A, "k-ops-logs-error"},
    {"group:ops", "orders", "logs/error/error/e1", RD, NULL, NULL, ALLOW, A, "k-ops-logs-error"},
    {"group:ops", "orders", "logs/a/error", RD, NULL, NULL, DENY, NOG, NULL},
    {"group:ops", "orders", "logs/a/error/", RD, NULL, NULL, DENY, NOG, NULL},
    /* * at the start */
    {"group:ops", "orders", "api/status", RD, NULL, NULL, ALLOW, A, "l-ops-status"},
    {"group:ops", "orders", "status", RD, NULL, NULL, DENY, NOG, NULL},
    {"group:ops", "orders", "a/b/status", RD, NULL, NULL, DENY, NOG, NULL},
    /* deny with purposes and no header */
    {"group:ops", "orders", "logs/private/x", RD, NULL, NULL, DENY, DEN, "t-deny-ops-private"},
    {"group:ops", "orders", "logs/private/x", RD, "debug", NULL, DENY, DEN, "t-deny-ops-private"},
    {"group:ops", "orders", "logs/private/error/e", RD, "audit", NULL, ALLOW, A, "k-ops-logs-error"},
    {"group:ops", "orders", "logs/private/error/e", RD, NULL, NULL, DENY, DEN, "t-deny-ops-private"},
    /* several purposes */
    {"user:dave", "orders", "reports/q1", RD, "audit", NULL, ALLOW, A, "n-dave-reports"},
    {"user:dave", "orders", "reports/q1", RD, "finance", NULL, ALLOW, A, "n-dave-reports"},
    {"user:dave", "orders", "reports/q1", RD, "marketing", NULL, DENY, PUR, "n-dave-reports"},
    {"user:dave", "orders", "reports/q1", RD, "Audit", NULL, DENY, PUR, "n-dave-reports"},
    /* whole-tree and single-segment grants */
    {"user:frank", "orders", "", RD, NULL, NULL, ALLOW, A, "q-frank-all"},
    {"user:frank", "orders", "a/b/c", RD, NULL, NULL, ALLOW, A, "q-frank-all"},
    {"user:frank", "orders", "a", WR, NULL, NULL, DENY, NOG, NULL},
    {"user:frank", "orders", "datasets/x/secret", RD, NULL, NULL, DENY, DEN, "d-deny-secret"},
    /* a deny on "top/secret" also covers "top/secret/" (the slash is no way around it);
     * an allow is never widened that way */
    {"user:frank", "orders", "top/secret", RD, NULL, NULL, DENY, DEN, "q2-frank-deny-exact"},
    {"user:frank", "orders", "top/secret/", RD, NULL, NULL, DENY, DEN, "q2-frank-deny-exact"},
    {"user:frank", "orders", "top/secret/x", RD, NULL, NULL, ALLOW, A, "q-frank-all"},
    {"user:frank", "orders", "top/secretx/", RD, NULL, NULL, ALLOW, A, "q-frank-all"},
    {"user:gina", "orders", "top/", RD, NULL, NULL, DENY, NOG, NULL},
    {"user:gina", "orders", "top", RD, NULL, NULL, ALLOW, A, "r-gina-one"},
    {"user:gina", "orders", "", RD, NULL, NULL, DENY, NOG, NULL},
    {"user:gina", "orders", "a/b", RD, NULL, NULL, DENY, NOG, NULL},
    /* reason precedence */
    {"user:hank", "orders", "x/1", RD, "p", NULL, DENY, EXP, "u-hank-x"},
    {"user:hank", "orders", "x/1", RD, NULL, NULL, DENY, EXP, "u-hank-x"},
    {"user:hank", "orders", "y/1", RD, NULL, NULL, DENY, PUR, "v-hank-y-purpose"},
    {"user:hank", "orders", "y/1", RD, "p", NULL, ALLOW, A, "v-hank-y-purpose"},
    {"user:alice;group:analysts", "orders", "datasets/alice/x", RD, NULL, NULL, ALLOW, A, "b-alice-rw"},
    {"group:analysts;user:bob", "orders", "datasets/orders_fact/x", WR, NULL, NULL, DENY, DEN, "m-deny-bob-write"},
    {"user:max;group:interns", "orders", "reports/salaries/2024", RD, "audit", NULL, DENY, DEN, "zd-max-deny"},
    {"user:max;group:interns", "orders", "reports/other", RD, "audit", NULL, ALLOW, A, "zc-max"},
    /* several matching allows: the smallest id decides, whatever the principal order */
    {"user:ivan;group:ivans", "orders", "m/n", RD, NULL, NULL, ALLOW, A, "x1-ivan"},
    {"group:ivans;user:ivan", "orders", "m/n", RD, NULL, NULL, ALLOW, A, "x1-ivan"},
    {"group:ivans", "orders", "m/n", RD, NULL, NULL, ALLOW, A, "x2-ivan"},
    {"group:ivans", "orders", "m/n/o", RD, NULL, NULL, DENY, NOG, NULL},
    /* several subjects, several patterns, two ** */
    {"user:jo", "orders", "a/b/c", RD, NULL, NULL, ALLOW, A, "y-multi"},
    {"group:jo-team", "orders", "a/x/b/y/c", RD, NULL, NULL, ALLOW, A, "y-multi"},
    {"user:jo", "orders", "a/b/b/c/c", RD, NULL, NULL, ALLOW, A, "y-multi"},
    {"user:jo", "orders", "a/c/b", RD, NULL, NULL, DENY, NOG, NULL},
    {"user:jo", "orders", "z", RD, NULL, NULL, ALLOW, A, "y-multi"},
    {"user:jo", "orders", "z/z", RD, NULL, NULL, DENY, NOG, NULL},
    /* * in the middle and at the end */
    {"user:lee", "orders", "data/x/v1/y", RD, NULL, NULL, ALLOW, A, "za-lee-mid"},
    {"user:lee", "orders", "data/x/v2/y", RD, NULL, NULL, DENY, NOG, NULL},
    {"user:lee", "orders", "data//v1/y", RD, NULL, NULL, DENY, NOG, NULL},
    {"user:patho", "orders", "a/a/a/a/a/b", RD, NULL, NULL, ALLOW, A, "zb-patho"},
    {"user:patho", "orders", "a/a/a/a/b", RD, NULL, NULL, DENY, NOG, NULL},
};

static struct mg_policy_store *store;
static struct mg_policy_index *ix;
static char *dir;

static int setup(void **st) {
  (void)st;
  mg_policy_init();
  dir = strdup("/tmp/mg-policy-eval-XXXXXX");
  if (!mkdtemp(dir)) return -1;
  if (mg_policy_store_open(dir, 16, false, &store)) return -1;
  struct mg_grant **gs;
  size_t n;
  struct mg_policy_diag d = {0};
  if (mg_policy_grants_parse(GRANTS, strlen(GRANTS), &gs, &n, &d)) {
    for (size_t i = 0; i < d.n; i++) fprintf(stderr, "%s\n", d.msgs[i]);
    return -1;
  }
  /* import is per product: split */
  struct mg_grant *orders[64], *billing[4];
  size_t no = 0, nb = 0;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(gs[i]->product, "orders") == 0) orders[no++] = gs[i];
    else billing[nb++] = gs[i];
  }
  if (mg_policy_store_import(store, "orders", orders, no, NULL, NULL) ||
      mg_policy_store_import(store, "billing", billing, nb, NULL, NULL))
    return -1;
  mg_policy_grants_free(gs, n);
  return mg_policy_index_build(store, &ix);
}

static int teardown(void **st) {
  (void)st;
  mg_policy_index_unref(ix);
  mg_policy_store_close(store);
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  int rv = system(cmd);
  free(dir);
  return rv;
}

static int64_t t(const char *s) {
  int64_t v;
  assert_int_equal(mg_time_parse_rfc3339(s, strlen(s), &v), 0);
  return v;
}

static size_t split(const char *s, char *buf, size_t cap, const char **out, size_t max) {
  snprintf(buf, cap, "%s", s);
  size_t n = 0;
  if (!*buf) return 0;
  for (char *save = NULL, *p = strtok_r(buf, ";", &save); p && n < max;
       p = strtok_r(NULL, ";", &save))
    out[n++] = p;
  return n;
}

static void test_table(void **st) {
  (void)st;
  assert_true(sizeof cases / sizeof *cases >= 60);
  int failures = 0;
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const struct tcase *c = &cases[i];
    char buf[512];
    const char *pr[8];
    struct mg_policy_request rq = {
        .principals = pr,
        .nprincipals = split(c->principals, buf, sizeof buf, pr, 8),
        .product = c->product,
        .resource = c->resource,
        .resource_len = strlen(c->resource),
        .action = c->action,
        .purpose = c->purpose,
        .now_us = t(c->now ? c->now : NOW),
    };
    struct mg_policy_decision d;
    mg_policy_decide(ix, &rq, &d);
    bool ok = d.allow == (c->allow == ALLOW) && (int)d.reason == c->reason &&
              (c->grant ? d.grant_id && strcmp(d.grant_id, c->grant) == 0 : !d.grant_id);
    if (!ok) {
      fprintf(stderr, "case %zu [%s %s/%s a=%u p=%s]: got %s %s %s, want %s %s %s\n", i,
              c->principals, c->product, c->resource, c->action,
              c->purpose ? c->purpose : "-", d.allow ? "allow" : "deny",
              mg_policy_reason_str(d.reason), d.grant_id ? d.grant_id : "-",
              c->allow ? "allow" : "deny", mg_policy_reason_str(c->reason),
              c->grant ? c->grant : "-");
      failures++;
    }
    /* explain agrees with decide */
    struct mg_policy_decision d2;
    const char *ids[16];
    mg_policy_explain(ix, &rq, &d2, ids, 16);
    assert_int_equal(d.allow, d2.allow);
    assert_int_equal(d.reason, d2.reason);
    assert_ptr_equal(d.grant_id, d2.grant_id);
  }
  assert_int_equal(failures, 0);
}

static void test_explain(void **st) {
  (void)st;
  const char *pr[] = {"user:frank", "group:analysts", "user:frank"};
  struct mg_policy_request rq = {
      .principals = pr, .nprincipals = 3, .product = "orders",
      .resource = "datasets/orders_fact/secret/x", .resource_len = 29,
      .action = MG_ACTION_READ, .purpose = "analytics", .now_us = t(NOW)};
  struct mg_policy_decision d;
  const char *ids[8];
  size_t n = mg_policy_explain(ix, &rq, &d, ids, 8);
  assert_false(d.allow);
  assert_int_equal(d.reason, MG_POLICY_REASON_DENIED);
  assert_string_equal(d.grant_id, "d-deny-secret");
  assert_int_equal(n, 3); /* q-frank-all, a-analysts-read, d-deny-secret; frank once */
  bool seen_q = false, seen_a = false, seen_d = false;
  for (size_t i = 0; i < n; i++) {
    seen_q |= strcmp(ids[i], "q-frank-all") == 0;
    seen_a |= strcmp(ids[i], "a-analysts-read") == 0;
    seen_d |= strcmp(ids[i], "d-deny-secret") == 0;
  }
  assert_true(seen_q && seen_a && seen_d);
  /* max smaller than the matches: the count still says how many */
  assert_int_equal(mg_policy_explain(ix, &rq, &d, ids, 1), 3);
  assert_int_equal(mg_policy_explain(ix, &rq, &d, NULL, 0), 3);
  /* no matches */
  rq.resource = "nothing";
  rq.resource_len = 7;
  rq.principals = pr + 1;
  rq.nprincipals = 1;
  assert_int_equal(mg_policy_explain(ix, &rq, &d, ids, 8), 0);
  assert_int_equal(d.reason, MG_POLICY_REASON_NO_GRANT);
}

static void test_pathological_pattern(void **st) {
  (void)st;
  /* 5 "**" against 120 segments that never end in "b": must stay polynomial. */
  char res[512];
  size_t k = 0;
  for (int i = 0; i < 120; i++) {
    res[k++] = 'a';
    res[k++] = '/';
  }
  res[k++] = 'c';
  res[k] = 0;
  const char *pr[] = {"user:patho"};
  struct mg_policy_request rq = {.principals = pr, .nprincipals = 1, .product = "orders",
                                 .resource = res, .resource_len = k,
                                 .action = MG_ACTION_READ, .now_us = t(NOW)};
  struct mg_policy_decision d;
  int64_t t0 = mg_mono_now_us();
  for (int i = 0; i < 10; i++) mg_policy_decide(ix, &rq, &d);
  int64_t el = mg_mono_now_us() - t0;
  assert_int_equal(d.reason, MG_POLICY_REASON_NO_GRANT);
  assert_true(el < 200000); /* exponential would be years */
  res[k - 1] = 'b';
  mg_policy_decide(ix, &rq, &d);
  assert_true(d.allow);
}

static void test_index_meta_and_refs(void **st) {
  (void)st;
  char rev[MG_POLICY_REVISION_LEN];
  uint64_t gen;
  assert_int_equal(mg_policy_store_revision(store, rev, &gen), 0);
  assert_string_equal(mg_policy_index_revision(ix), rev);
  assert_int_equal(mg_policy_index_generation(ix), gen);
  assert_int_equal(gen, 2);
  assert_int_equal(mg_policy_index_count(ix), 33);
  /* An index is a snapshot: edits after it do not change its answers. */
  struct mg_policy_index *old = ix;
  mg_policy_index_ref(old);
  assert_int_equal(mg_policy_store_delete(store, "c-public", NULL, NULL, NULL, NULL), 0);
  struct mg_policy_index *fresh;
  assert_int_equal(mg_policy_index_build(store, &fresh), 0);
  assert_int_equal(mg_policy_index_count(fresh), 32);
  assert_string_not_equal(mg_policy_index_revision(fresh), rev);
  const char *pr[] = {"user:x"};
  struct mg_policy_request rq = {.principals = pr, .nprincipals = 1, .product = "orders",
                                 .resource = "public/a", .resource_len = 8,
                                 .action = MG_ACTION_READ, .now_us = t(NOW)};
  struct mg_policy_decision d;
  mg_policy_decide(old, &rq, &d);
  assert_true(d.allow);
  mg_policy_decide(fresh, &rq, &d);
  assert_false(d.allow);
  mg_policy_index_unref(old);
  mg_policy_decide(old, &rq, &d); /* still held by the fixture */
  assert_true(d.allow);
  mg_policy_index_unref(fresh);
  /* Empty store. */
  char *d2 = strdup("/tmp/mg-policy-eval-XXXXXX");
  assert_non_null(mkdtemp(d2));
  struct mg_policy_store *s2;
  assert_int_equal(mg_policy_store_open(d2, 16, false, &s2), 0);
  assert_int_equal(mg_policy_index_build(s2, &fresh), 0);
  assert_int_equal(mg_policy_index_count(fresh), 0);
  mg_policy_decide(fresh, &rq, &d);
  assert_false(d.allow);
  assert_int_equal(d.reason, MG_POLICY_REASON_NO_GRANT);
  mg_policy_index_unref(fresh);
  mg_policy_store_close(s2);
  char cmd[256];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", d2);
  assert_int_equal(system(cmd), 0);
  free(d2);
}

struct worker {
  struct mg_policy_index *ix;
  int wrong;
};

/* Decides the whole table over and over on an index it holds a reference on. */
static void *decide_worker(void *arg) {
  struct worker *w = arg;
  for (int round = 0; round < 200; round++) {
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
      const struct tcase *c = &cases[i];
      char buf[512];
      const char *pr[8];
      int64_t now;
      const char *ts = c->now ? c->now : NOW;
      mg_time_parse_rfc3339(ts, strlen(ts), &now);
      struct mg_policy_request rq = {pr, split(c->principals, buf, sizeof buf, pr, 8),
                                     c->product, c->resource, strlen(c->resource), c->action,
                                     c->purpose, now};
      struct mg_policy_decision d;
      mg_policy_decide(w->ix, &rq, &d);
      if (d.allow != (c->allow == ALLOW) || (int)d.reason != c->reason) w->wrong++;
    }
  }
  mg_policy_index_unref(w->ix);
  return NULL;
}

static void test_threads(void **st) {
  (void)st;
  pthread_t th[4];
  struct worker w[4];
  for (int i = 0; i < 4; i++) {
    mg_policy_index_ref(ix);
    w[i] = (struct worker){ix, 0};
    assert_int_equal(pthread_create(&th[i], NULL, decide_worker, &w[i]), 0);
  }
  for (int i = 0; i < 4; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(w[i].wrong, 0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_table),
      cmocka_unit_test(test_explain),
      cmocka_unit_test(test_pathological_pattern),
      cmocka_unit_test(test_threads),
      cmocka_unit_test(test_index_meta_and_refs),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}

/*
 * policy_bench.c — decision latency against stores of 100 … 100,000 grants.
 *
 * Each store holds a realistic mix over 8 products: grants for individual users (most),
 * groups, OAuth clients, SPIFFE workloads and a few "*" grants; patterns with literals,
 * "*" and "**" at the start, middle and end; some denies, purposes and validity windows.
 * Requests come from principal sets like a real token gives: one user, 3-8 groups, a
 * client, sometimes a SPIFFE id. Every decision is timed individually (CLOCK_MONOTONIC,
 * whose own cost, ~20 ns, is included), and median / p99 / max are reported.
 *
 * Usage: policy_bench [decisions per size, default 1000000] [sizes…]
 * (KEEP=1 keeps the generated stores in /tmp and prints their paths.)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "policy/policy.h"

#define NPRODUCTS 8
static const char *const products[NPRODUCTS] = {"orders", "billing", "shipping", "crm",
                                                "inventory", "payments", "marketing", "hr"};
static const char *const purposes[] = {"analytics", "audit", "finance", "support"};

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}
static unsigned rn(unsigned n) { return (unsigned)(rnd() % n); }

struct pools {
  unsigned users, groups, clients, spiffes, datasets;
};

/* Pools grow with the store so that what one principal can reach stays the same: a
 * bigger organisation has more users, groups and datasets, not more grants per person.
 * Per principal: ~2.4 grants per user, ~4.5 per group, ~12 per client and spiffe id,
 * and 2 "*" grants per product whatever the size. */
static struct pools pools_for(size_t n) {
  struct pools p;
  p.users = (unsigned)(n / 4 > 10 ? n / 4 : 10);
  p.groups = (unsigned)(n / 10 > 5 ? n / 10 : 5);
  p.clients = (unsigned)(n / 200 > 1 ? n / 200 : 1);
  p.spiffes = (unsigned)(n / 300 > 1 ? n / 300 : 1);
  p.datasets = (unsigned)(n / 20 > 10 ? n / 20 : 10);
  return p;
}

static void pattern(char *out, size_t cap, const struct pools *p) {
  unsigned ds = rn(p->datasets);
  switch (rn(10)) {
  case 0: case 1: case 2: snprintf(out, cap, "datasets/ds%u/**", ds); break;
  case 3: snprintf(out, cap, "datasets/ds%u/%u", ds, 2020 + rn(6)); break;
  case 4: snprintf(out, cap, "datasets/ds%u/*/*", ds); break;
  case 5: snprintf(out, cap, "datasets/*/public/**"); break;
  case 6: snprintf(out, cap, "reports/**/summary"); break;
  case 7: snprintf(out, cap, "datasets/ds%u/**/schema", ds); break;
  case 8: snprintf(out, cap, "*/ds%u/**", ds); break;
  default: snprintf(out, cap, "datasets/ds%u/%u/**", ds, 2020 + rn(6)); break;
  }
}

static char *grant_json(size_t i, size_t n, const char *product, const struct pools *p) {
  char subj[512] = "", res[512] = "", extra[256] = "";
  int r = 2 + (int)rn(998);
  if (i < 2 || (n > 2 && i == n / 2)) {
    snprintf(subj, sizeof subj, "\"*\"");
  } else if (r < 600) {
    snprintf(subj, sizeof subj, "\"user:u%u@corp.example\"", rn(p->users));
  } else if (r < 900) {
    snprintf(subj, sizeof subj, "\"group:g%u\",\"group:g%u\"", rn(p->groups), rn(p->groups));
    if (strstr(subj, "\",\"")) {
      /* avoid duplicate subjects */
      char a[64], b[64];
      sscanf(subj, "\"group:%63[^\"]\",\"group:%63[^\"]\"", a, b);
      if (strcmp(a, b) == 0) snprintf(subj, sizeof subj, "\"group:%s\"", a);
    }
  } else if (r < 960) {
    snprintf(subj, sizeof subj, "\"client:svc-%u\"", rn(p->clients));
  } else {
    snprintf(subj, sizeof subj, "\"spiffe:spiffe://prod.example/ns/n%u/sa/job\"", rn(p->spiffes));
  }
  unsigned nres = 1 + rn(3);
  size_t k = 0;
  for (unsigned j = 0; j < nres; j++) {
    char pat[128];
    pattern(pat, sizeof pat, p);
    if (strstr(res, pat)) continue;
    k += (size_t)snprintf(res + k, sizeof res - k, "%s\"%s\"", k ? "," : "", pat);
  }
  bool deny = rn(100) < 5;
  size_t e = 0;
  if (!deny && rn(100) < 20)
    e += (size_t)snprintf(extra + e, sizeof extra - e, ",\"purposes\":[\"%s\"]", purposes[rn(4)]);
  if (rn(100) < 10)
    e += (size_t)snprintf(extra + e, sizeof extra - e, ",\"expires\":\"%s\"",
                          rn(2) ? "2025-01-01T00:00:00Z" : "2030-01-01T00:00:00Z");
  const char *act = rn(100) < 70 ? "\"read\"" : rn(2) ? "\"write\"" : "\"read\",\"write\"";
  char *out;
  if (asprintf(&out,
               "{\"id\":\"%s-g%07zu\",\"effect\":\"%s\",\"subjects\":[%s],\"product\":\"%s\","
               "\"resources\":[%s],\"actions\":[%s]%s,\"description\":\"bench grant\"}",
               product, i, deny ? "deny" : "allow", subj, product, res, act, extra) < 0)
    abort();
  return out;
}

struct req {
  const char *pr[12];
  size_t npr;
  char names[12][64];
  char res[128];
  size_t rlen;
  unsigned action;
  const char *purpose;
  const char *product;
};

static void make_req(struct req *q, const struct pools *p) {
  q->npr = 0;
  snprintf(q->names[q->npr++], 64, "user:u%u@corp.example", rn(p->users));
  unsigned ng = 3 + rn(6);
  for (unsigned i = 0; i < ng; i++) snprintf(q->names[q->npr++], 64, "group:g%u", rn(p->groups));
  snprintf(q->names[q->npr++], 64, "client:svc-%u", rn(p->clients));
  if (rn(4) == 0)
    snprintf(q->names[q->npr++], 64, "spiffe:spiffe://prod.example/ns/n%u/sa/job", rn(p->spiffes));
  for (size_t i = 0; i < q->npr; i++) q->pr[i] = q->names[i];
  unsigned ds = rn(p->datasets);
  switch (rn(5)) {
  case 0: snprintf(q->res, sizeof q->res, "datasets/ds%u/%u", ds, 2020 + rn(6)); break;
  case 1: snprintf(q->res, sizeof q->res, "datasets/ds%u/%u/part-%04u", ds, 2020 + rn(6), rn(100)); break;
  case 2: snprintf(q->res, sizeof q->res, "datasets/ds%u/public/x/y", ds); break;
  case 3: snprintf(q->res, sizeof q->res, "reports/q%u/ds%u/summary", 1 + rn(4), ds); break;
  default: snprintf(q->res, sizeof q->res, "datasets/ds%u/%u/schema", ds, 2020 + rn(6)); break;
  }
  q->rlen = strlen(q->res);
  q->action = rn(100) < 80 ? MG_ACTION_READ : MG_ACTION_WRITE;
  q->purpose = rn(2) ? purposes[rn(4)] : NULL;
  q->product = rn(100) < 85 ? products[0] : products[rn(NPRODUCTS)];
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int run(size_t ngrants, size_t ndec) {
  char dir[] = "/tmp/mg-policy-bench-XXXXXX";
  if (!mkdtemp(dir)) return 1;
  struct mg_policy_store *s;
  size_t map_mb = 64 + ngrants / 200;
  if (mg_policy_store_open(dir, map_mb, false, &s)) return 1;
  struct pools p = pools_for(ngrants);
  uint64_t t0 = now_ns();
  /* Product 0 gets half the grants, the rest share the other half. */
  size_t id = 0;
  for (int pi = 0; pi < NPRODUCTS; pi++) {
    size_t n = pi == 0 ? ngrants / 2 : (ngrants - ngrants / 2) / (NPRODUCTS - 1);
    if (pi == NPRODUCTS - 1) n = ngrants - id;
    struct mg_grant **gs = calloc(n ? n : 1, sizeof *gs);
    for (size_t i = 0; i < n; i++) {
      char *j = grant_json(i, n, products[pi], &p);
      id++;
      struct mg_policy_diag d = {0};
      if (mg_policy_grant_parse(j, strlen(j), "", &gs[i], &d)) {
        fprintf(stderr, "bad bench grant %s: %s\n", j, d.n ? d.msgs[0] : "?");
        return 1;
      }
      free(j);
    }
    int rv = mg_policy_store_import(s, products[pi], gs, n, NULL, NULL);
    if (rv) {
      fprintf(stderr, "import: %s\n", mg_strerror(rv));
      return 1;
    }
    mg_policy_grants_free(gs, n);
  }
  uint64_t t1 = now_ns();
  struct mg_policy_index *ix;
  if (mg_policy_index_build(s, &ix)) return 1;
  uint64_t t2 = now_ns();

  enum { NREQ = 2048 };
  struct req *reqs = malloc(NREQ * sizeof *reqs);
  for (size_t i = 0; i < NREQ; i++) make_req(&reqs[i], &p);
  uint32_t *lat = malloc(ndec * sizeof *lat);
  int64_t now = 1767225600000000LL; /* 2026-01-01 */
  size_t allows = 0, reasons[5] = {0};
  /* warm-up */
  for (size_t i = 0; i < NREQ; i++) {
    struct req *q = &reqs[i];
    struct mg_policy_request rq = {q->pr, q->npr, q->product, q->res, q->rlen, q->action,
                                   q->purpose, now};
    struct mg_policy_decision d;
    mg_policy_decide(ix, &rq, &d);
  }
  uint64_t tb = now_ns();
  for (size_t i = 0; i < ndec; i++) {
    struct req *q = &reqs[i % NREQ];
    struct mg_policy_request rq = {q->pr, q->npr, q->product, q->res, q->rlen, q->action,
                                   q->purpose, now};
    struct mg_policy_decision d;
    uint64_t a = now_ns();
    mg_policy_decide(ix, &rq, &d);
    uint64_t b = now_ns();
    lat[i] = (uint32_t)(b - a);
    allows += d.allow;
    reasons[d.reason]++;
  }
  uint64_t te = now_ns();
  qsort(lat, ndec, sizeof *lat, cmp_u32);
  printf("%8zu | %7.1f | %7.1f | %7.1f | %8u | %9.1f | %6.1f%% | %4zu/%zu/%zu/%zu | %7.0f | %6.0f\n",
         ngrants, lat[ndec / 2] / 1000.0, lat[ndec * 99 / 100] / 1000.0,
         lat[ndec * 999 / 1000] / 1000.0, lat[ndec - 1] / 1000, (double)(te - tb) / (double)ndec,
         100.0 * (double)allows / (double)ndec, reasons[MG_POLICY_REASON_DENIED] * 1000 / ndec,
         reasons[MG_POLICY_REASON_PURPOSE_MISSING] * 1000 / ndec,
         reasons[MG_POLICY_REASON_EXPIRED] * 1000 / ndec,
         reasons[MG_POLICY_REASON_NO_GRANT] * 1000 / ndec, (double)(t1 - t0) / 1e6,
         (double)(t2 - t1) / 1e6);
  fflush(stdout);
  free(lat);
  free(reqs);
  mg_policy_index_unref(ix);
  mg_policy_store_close(s);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (getenv("KEEP")) { printf("kept %s\n", dir); return 0; }
  return system(cmd) != 0;
}

int main(int argc, char **argv) {
  size_t ndec = argc > 1 ? strtoul(argv[1], NULL, 10) : 1000000;
  size_t sizes[16] = {100, 1000, 10000, 100000};
  size_t nsizes = 4;
  if (argc > 2) {
    nsizes = 0;
    for (int i = 2; i < argc && nsizes < 16; i++) sizes[nsizes++] = strtoul(argv[i], NULL, 10);
  }
  if (ndec < 1000) ndec = 1000;
  mg_policy_init();
  printf("policy decision latency, %zu decisions per store (times in microseconds)\n", ndec);
  printf("  grants | median  |   p99   |  p99.9  | max (us) | mean (ns) | allow  | per-mille den/pur/exp/none | store ms | index ms\n");
  for (size_t i = 0; i < nsizes; i++)
    if (run(sizes[i], ndec)) return 1;
  return 0;
}

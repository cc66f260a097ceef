/*
 * lineage_bench.c — throughput and latency of the lineage writer on a real disk.
 *
 *   lineage_bench [-d DIR] [-s SECONDS] [-g MAX_GROUP]
 *
 * DIR (default: a fresh mkdtemp under /tmp, removed at exit) should be on the disk the
 * sidecar will use: write-ahead numbers are fsync numbers. Reports
 *   - write-ahead: entries/s with 1, 16 and 256 concurrent submitters, each waiting for
 *     its entry to be durable before submitting the next (a worker's request path), and
 *     the submit->durable latency (p50/p99) a forwarded request waits;
 *   - async: entries/s with 4 submitters that never wait (until all are committed), and
 *     the time a submit call takes (p50/p99), which is all a request waits in async.
 * Entries are realistic access lines (~420 bytes).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lineage/lineage.h"
#include "lineage/lineage_int.h"

static char dir[256], keyp[300];
static int seconds = 3;
static size_t max_group;

struct waiter {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int done;
};

static void on_done(void *arg, int status, uint64_t index) {
  (void)status;
  (void)index;
  struct waiter *wt = arg;
  pthread_mutex_lock(&wt->mu);
  wt->done = 1;
  pthread_cond_signal(&wt->cv);
  pthread_mutex_unlock(&wt->mu);
}

static void fill(struct mg_lineage_access *a, char rid[37]) {
  static const char *const groups[] = {"group:analysts", "group:emea-finance"};
  memset(a, 0, sizeof *a);
  mg_uuidv7(rid);
  a->request_id = rid;
  a->principal = "user:corp/alice.anderson";
  a->groups = groups;
  a->ngroups = 2;
  a->client = "client:bi-dashboard";
  a->peer = "10.12.4.77:53122";
  a->product = "orders";
  a->dataset = "orders_fact";
  a->action = "read";
  a->method = "GET";
  a->path = "/datasets/orders_fact/2024/11?limit=1000";
  a->purpose = "analytics";
  a->decision = "allow";
  a->grant = "orders-analysts-read";
  a->policy_revision = "9f2c4e0d1b7a6e5f3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b";
  a->token = "4b7e1f0c9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c";
}

static int cmp64(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? -1 : x > y;
}

struct job {
  struct mg_lineage_writer *w;
  atomic_int *stop;
  uint64_t n;
  int64_t *lat;
  size_t nlat, caplat;
  bool wait;
};

static void lat_add(struct job *j, int64_t v) {
  if (j->nlat == j->caplat) {
    j->caplat = j->caplat ? 2 * j->caplat : 4096;
    j->lat = realloc(j->lat, j->caplat * sizeof *j->lat);
  }
  j->lat[j->nlat++] = v;
}

static void *run(void *arg) {
  struct job *j = arg;
  struct waiter wt = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0};
  while (!atomic_load(j->stop)) {
    struct mg_lineage_access a;
    char rid[37];
    fill(&a, rid);
    int64_t t0 = mg_mono_now_us();
    wt.done = 0;
    int rc = mg_lineage_submit_access(j->w, &a, j->wait ? on_done : NULL, &wt, NULL);
    if (rc == MG_LINEAGE_E_FULL) { /* async queue at its bound: back off */
      usleep(100);
      continue;
    }
    if (rc) {
      fprintf(stderr, "submit: %s\n", mg_strerror(rc));
      exit(1);
    }
    if (j->wait) {
      pthread_mutex_lock(&wt.mu);
      while (!wt.done) pthread_cond_wait(&wt.cv, &wt.mu);
      pthread_mutex_unlock(&wt.mu);
    }
    if ((j->n & 15) == 0 || j->wait) lat_add(j, mg_mono_now_us() - t0);
    j->n++;
  }
  return NULL;
}

static void wipe_db(void) {
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s/db' && mkdir -p '%s/db'", dir, dir);
  if (system(cmd)) exit(1);
}

static void bench(enum mg_lineage_durability d, int nthreads) {
  wipe_db();
  char db[300];
  snprintf(db, sizeof db, "%s/db", dir);
  struct mg_lineage_config c = {.db = db, .map_size_mb = 8192, .signing_key = keyp,
                                .origin = "bench.example/orders/h1", .durability = d,
                                .checkpoint_every_ms = 1000, .deny_entries_per_s = 100,
                                .max_group = max_group};
  struct mg_lineage_writer *w;
  int rc = mg_lineage_writer_open(&c, &w);
  if (rc) {
    fprintf(stderr, "open: %s\n", mg_strerror(rc));
    exit(1);
  }
  atomic_int stop = 0;
  pthread_t *th = calloc((size_t)nthreads, sizeof *th);
  struct job *jobs = calloc((size_t)nthreads, sizeof *jobs);
  int64_t t0 = mg_mono_now_us();
  for (int i = 0; i < nthreads; i++) {
    jobs[i] = (struct job){.w = w, .stop = &stop, .wait = d == MG_LINEAGE_WRITE_AHEAD};
    pthread_create(&th[i], NULL, run, &jobs[i]);
  }
  sleep((unsigned)seconds);
  atomic_store(&stop, 1);
  uint64_t total = 0;
  size_t nl = 0;
  for (int i = 0; i < nthreads; i++) {
    pthread_join(th[i], NULL);
    total += jobs[i].n;
    nl += jobs[i].nlat;
  }
  /* async: count until everything submitted is committed */
  struct mg_lineage_stats st;
  for (;;) {
    mg_lineage_writer_stats(w, &st);
    if (st.size >= total) break;
    usleep(1000);
  }
  double secs = (double)(mg_mono_now_us() - t0) / 1e6;
  int64_t *all = malloc((nl ? nl : 1) * sizeof *all);
  size_t k = 0;
  for (int i = 0; i < nthreads; i++) {
    memcpy(all + k, jobs[i].lat, jobs[i].nlat * sizeof *all);
    k += jobs[i].nlat;
    free(jobs[i].lat);
  }
  qsort(all, nl, sizeof *all, cmp64);
  printf("%-11s submitters=%-4d entries=%-8" PRIu64 " %9.0f entries/s  commits=%-6" PRIu64
         " avg group=%6.1f  avg commit=%6.0f us  %s p50=%" PRId64 " us p99=%" PRId64 " us\n",
         d == MG_LINEAGE_WRITE_AHEAD ? "write-ahead" : "async", nthreads, total,
         (double)total / secs, st.commits, st.commits ? (double)st.entries_total / (double)st.commits : 0,
         st.commits ? (double)st.fsync_us_total / (double)st.commits : 0,
         d == MG_LINEAGE_WRITE_AHEAD ? "submit->durable" : "submit call    ",
         nl ? all[nl / 2] : 0, nl ? all[nl * 99 / 100] : 0);
  fflush(stdout);
  free(all);
  free(th);
  free(jobs);
  mg_lineage_writer_close(w);
}

int main(int argc, char **argv) {
  int opt;
  bool tmp = true;
  while ((opt = getopt(argc, argv, "d:s:g:h")) != -1) {
    if (opt == 'd') {
      snprintf(dir, sizeof dir, "%s", optarg);
      tmp = false;
    } else if (opt == 'g') {
      max_group = (size_t)atol(optarg);
    } else if (opt == 's') {
      seconds = atoi(optarg);
    } else {
      fprintf(stderr, "usage: %s [-d DIR] [-s SECONDS] [-g MAX_GROUP]\n", argv[0]);
      return 2;
    }
  }
  mg_lineage_init();
  mg_log_set_level(MG_LOG_WARN);
  if (tmp) {
    strcpy(dir, "/tmp/mg-lbench-XXXXXX");
    if (!mkdtemp(dir)) return 1;
  }
  char *pem = NULL, *vkey = NULL;
  snprintf(keyp, sizeof keyp, "%s/bench.key", dir);
  if (mg_note_keygen("bench.example/orders/h1", &pem, &vkey) ||
      mg_file_write_atomic(keyp, pem, strlen(pem), 0600))
    return 1;
  free(pem);
  free(vkey);
  if (!getenv("MG_BENCH_ASYNC_ONLY")) {
    bench(MG_LINEAGE_WRITE_AHEAD, 1);
    bench(MG_LINEAGE_WRITE_AHEAD, 16);
    bench(MG_LINEAGE_WRITE_AHEAD, 256);
  }
  bench(MG_LINEAGE_ASYNC, 1);
  bench(MG_LINEAGE_ASYNC, 4);
  if (tmp) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) return 1;
  }
  return 0;
}

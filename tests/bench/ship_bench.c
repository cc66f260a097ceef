/*
 * ship_bench.c — how fast the shipper moves lineage into an R3 JetStream stream, and how
 * the backlog behaves at a target entry rate.
 *
 *   ship_bench [--nats URL[,URL…]] [--rate ENTRIES_PER_S] [--seconds N] [--group N]
 *              [--line-bytes N] [--replicas N]
 *
 * Without --nats it starts a 3-node loopback cluster with tests/integration/nats_cluster.py
 * (found next to this source, or $MG_NATS_CLUSTER). A generator thread appends commit
 * groups of --group entries at --rate (default 140000/s: the sidecar's ~70k requests/s,
 * an access and an outcome entry each) to an in-memory log (the shipper's own cost and
 * NATS', not LMDB's: the writer has its own benchmark), notifies the shipper like the
 * writer does, and signs a stand-in checkpoint every second. Every 500 ms it prints
 * produced / acknowledged / backlog; at the end the sustained shipped rate, the maximum
 * backlog and how long the backlog took to drain after the generator stopped.
 *
 * Build (the lead wires it into tests/bench/meson.build):
 *   executable('ship_bench', 'ship_bench.c', dependencies : [lineage_dep])
 * or by hand from the repository root:
 *   cc -std=gnu17 -O2 -I. tests/bench/ship_bench.c build/lineage/libmg_lineage.a \
 *      build/common/libmg_common.a $(pkg-config --cflags --libs libnats) -lssl -lcrypto \
 *      -llmdb -ljansson -lpthread -o ship_bench
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "lineage/lineage_int.h"

/* ---- an in-memory log ------------------------------------------------------------- */

struct mg_lineage_log {
  pthread_rwlock_t lk;
  char **lines;
  size_t *lens;
  uint64_t n, cap;
  char *note;
  uint64_t note_size;
};

int mg_lineage_log_read(struct mg_lineage_log *log, uint64_t from, uint64_t max,
                        mg_lineage_entry_cb cb, void *arg) {
  pthread_rwlock_rdlock(&log->lk);
  uint64_t end = log->n;
  char **lines = log->lines;
  size_t *lens = log->lens;
  int rc = 0;
  for (uint64_t i = from; i < end && i - from < max && !rc; i++)
    rc = cb(arg, i, lines[i], lens[i]);
  pthread_rwlock_unlock(&log->lk);
  return rc;
}

int mg_lineage_log_checkpoint(struct mg_lineage_log *log, uint64_t max_size, char **note,
                              uint64_t *size) {
  int rc = MG_ERR_NOTFOUND;
  pthread_rwlock_rdlock(&log->lk);
  if (log->note && log->note_size <= max_size) {
    *note = strdup(log->note);
    *size = log->note_size;
    rc = 0;
  }
  pthread_rwlock_unlock(&log->lk);
  return rc;
}

uint64_t mg_lineage_log_size(struct mg_lineage_log *log) {
  pthread_rwlock_rdlock(&log->lk);
  uint64_t n = log->n;
  pthread_rwlock_unlock(&log->lk);
  return n;
}

uint64_t mg_lineage_log_pruned(struct mg_lineage_log *log) {
  (void)log;
  return 0; /* an in-memory log keeps everything */
}

/* ---- the run ----------------------------------------------------------------------- */

static const char *origin = "lineage.example/bench/host-1";
static struct mg_lineage_log lg;
static struct mg_shipper *ship;
static volatile int gen_done;
static uint64_t opt_rate = 140000, opt_group = 140, opt_line = 330;
static double opt_seconds = 10;

static void append_group(uint64_t n) {
  pthread_rwlock_wrlock(&lg.lk);
  if (lg.n + n > lg.cap) {
    uint64_t nc = lg.cap ? lg.cap : 1 << 16;
    while (nc < lg.n + n)
      nc *= 2;
    lg.lines = realloc(lg.lines, nc * sizeof *lg.lines);
    lg.lens = realloc(lg.lens, nc * sizeof *lg.lens);
    lg.cap = nc;
  }
  uint64_t first = lg.n;
  pthread_rwlock_unlock(&lg.lk);
  /* build outside the lock; only this thread appends */
  for (uint64_t k = 0; k < n; k++) {
    char *l = malloc(opt_line + 64);
    int len = snprintf(l, opt_line + 64,
                       "{\"action\":\"read\",\"index\":%" PRIu64 ",\"origin\":\"%s\",\"path\":\"/",
                       first + k, origin);
    while ((uint64_t)len < opt_line - 2)
      l[len++] = 'x';
    l[len++] = '"';
    l[len++] = '}';
    l[len] = 0;
    lg.lines[first + k] = l;
    lg.lens[first + k] = (size_t)len;
  }
  pthread_rwlock_wrlock(&lg.lk);
  lg.n = first + n;
  pthread_rwlock_unlock(&lg.lk);
  mg_shipper_notify_group(ship, first, first + n - 1);
}

static void checkpoint(void) {
  char buf[256];
  pthread_rwlock_wrlock(&lg.lk);
  snprintf(buf, sizeof buf, "%s\n%" PRIu64 "\nAAAA\n\n— %s sig\n", origin, lg.n, origin);
  free(lg.note);
  lg.note = strdup(buf);
  lg.note_size = lg.n;
  uint64_t n = lg.n;
  pthread_rwlock_unlock(&lg.lk);
  mg_shipper_notify_checkpoint(ship, n, buf);
}

static void *gen_main(void *arg) {
  (void)arg;
  int64_t t0 = mg_mono_now_us(), last_cp = t0;
  uint64_t made = 0;
  for (;;) {
    int64_t now = mg_mono_now_us();
    double el = (double)(now - t0) / 1e6;
    if (el >= opt_seconds)
      break;
    uint64_t due = (uint64_t)(el * (double)opt_rate);
    while (made + opt_group <= due) {
      append_group(opt_group);
      made += opt_group;
    }
    if (now - last_cp >= 1000000) {
      checkpoint();
      last_cp = now;
    }
    usleep(200);
  }
  checkpoint();
  gen_done = 1;
  return NULL;
}

static pid_t cl_pid;
static FILE *cl_in;

static int start_cluster(char *url, size_t n) {
  int in[2], out[2];
  const char *script = getenv("MG_NATS_CLUSTER");
  char path[4096];
  if (!script) {
    snprintf(path, sizeof path, "%s", __FILE__);
    char *p = strstr(path, "tests/bench/ship_bench.c");
    if (p)
      strcpy(p, "tests/integration/nats_cluster.py");
    script = p ? path : "tests/integration/nats_cluster.py";
  }
  if (pipe(in) || pipe(out))
    return -1;
  cl_pid = fork();
  if (cl_pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    close(in[1]);
    close(out[0]);
    execl("/usr/bin/python3", "python3", script, "--control", (char *)NULL);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  cl_in = fdopen(in[1], "w");
  FILE *o = fdopen(out[0], "r");
  if (!fgets(url, (int)n, o))
    return -1;
  url[strcspn(url, "\n")] = 0;
  return 0;
}

static void stop_cluster(void) {
  if (!cl_in)
    return;
  fprintf(cl_in, "quit\n");
  fclose(cl_in);
  waitpid(cl_pid, NULL, 0);
}

int main(int argc, char **argv) {
  char url[1024] = "";
  int replicas = 3;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--nats") && i + 1 < argc)
      snprintf(url, sizeof url, "%s", argv[++i]);
    else if (!strcmp(argv[i], "--rate") && i + 1 < argc)
      opt_rate = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--seconds") && i + 1 < argc)
      opt_seconds = atof(argv[++i]);
    else if (!strcmp(argv[i], "--group") && i + 1 < argc)
      opt_group = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--line-bytes") && i + 1 < argc)
      opt_line = strtoull(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--replicas") && i + 1 < argc)
      replicas = atoi(argv[++i]);
    else {
      fprintf(stderr, "usage: %s [--nats URL] [--rate N] [--seconds N] [--group N] "
              "[--line-bytes N] [--replicas N]\n", argv[0]);
      return 2;
    }
  }
  if (opt_group == 0 || opt_line < 120 || opt_rate == 0) {
    fprintf(stderr, "bad option value\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  mg_log_set_level(MG_LOG_WARN);
  if (!url[0] && start_cluster(url, sizeof url)) {
    fprintf(stderr, "cannot start the cluster\n");
    return 1;
  }
  pthread_rwlock_init(&lg.lk, NULL);
  char *list = strdup(url), *servers[8];
  size_t ns = 0;
  for (char *sv = NULL, *t = strtok_r(list, ",", &sv); t && ns < 8; t = strtok_r(NULL, ",", &sv))
    servers[ns++] = t;
  char stream[64];
  snprintf(stream, sizeof stream, "BENCH%d", (int)getpid());
  struct mg_shipper_config cfg = {.servers = (const char *const *)servers, .nservers = ns,
                                  .stream = stream, .subject = "bench.lineage",
                                  .replicas = replicas, .origin = origin};
  int rc = mg_shipper_start(&cfg, &lg, 0, 0, NULL, NULL, &ship);
  if (rc) {
    fprintf(stderr, "mg_shipper_start: %s\n", mg_strerror(rc));
    stop_cluster();
    return 1;
  }
  printf("stream %s R%d, target %" PRIu64 " entries/s in groups of %" PRIu64 ", %" PRIu64
         "-byte lines, %.0f s\n", stream, replicas, opt_rate, opt_group, opt_line, opt_seconds);
  printf("%8s %12s %12s %10s %12s\n", "t_s", "produced", "acked", "backlog", "read back");
  pthread_t gen;
  pthread_create(&gen, NULL, gen_main, NULL);
  int64_t t0 = mg_mono_now_us(), t_gen_end = 0, t_drained = 0;
  uint64_t max_backlog = 0, acked_at_gen_end = 0;
  for (;;) {
    usleep(500000);
    uint64_t acked = 0, verified = 0, made = mg_lineage_log_size(&lg);
    mg_shipper_stats(ship, &acked, &verified, NULL);
    uint64_t backlog = made - acked;
    max_backlog = backlog > max_backlog ? backlog : max_backlog;
    double t = (double)(mg_mono_now_us() - t0) / 1e6;
    printf("%8.1f %12" PRIu64 " %12" PRIu64 " %10" PRIu64 " %12" PRIu64 "\n", t, made, acked,
           backlog, verified);
    fflush(stdout);
    if (gen_done && !t_gen_end) {
      t_gen_end = mg_mono_now_us();
      acked_at_gen_end = acked;
    }
    if (gen_done && backlog == 0) {
      t_drained = mg_mono_now_us();
      break;
    }
    if (t > opt_seconds + 120) {
      printf("backlog did not drain within 120 s\n");
      break;
    }
  }
  pthread_join(gen, NULL);
  uint64_t acked = 0, verified = 0, made = mg_lineage_log_size(&lg);
  int64_t t_v = mg_mono_now_us();
  for (int i = 0; i < 200; i++) { /* the read-back runs every second */
    mg_shipper_stats(ship, &acked, &verified, NULL);
    if (verified >= made) break;
    usleep(100000);
  }
  printf("read back %" PRIu64 " of %" PRIu64 " entries %.1f s after the drain\n", verified, made,
         (double)(mg_mono_now_us() - t_v) / 1e6);
  double total_s = (double)((t_drained ? t_drained : mg_mono_now_us()) - t0) / 1e6;
  printf("produced %" PRIu64 " entries, acknowledged %" PRIu64 "\n", made, acked);
  printf("shipped rate while producing: %.0f entries/s (target %" PRIu64 ")\n",
         (double)acked_at_gen_end / ((double)(t_gen_end - t0) / 1e6), opt_rate);
  printf("overall: %.0f entries/s, max backlog %" PRIu64 " entries, drained %.1f s after the "
         "generator stopped\n", (double)acked / total_s, max_backlog,
         t_drained ? (double)(t_drained - t_gen_end) / 1e6 : -1.0);
  mg_shipper_stop(ship, 5000);
  stop_cluster();
  free(list);
  return acked == made ? 0 : 1;
}

/* test_shipper.c — the JetStream shipper and the --nats export against a real 3-node
 * nats-server cluster (tests/integration/nats_cluster.py --control, started once): every
 * entry in the stream exactly once and in order, resume after a restart, a foreign log
 * refused, streams that cannot work refused, a hole left by a lost message repaired, a
 * server that appears only after start-up, the stream leader killed under load, and the
 * export of two origins sharing one stream. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <cmocka.h>
#include <nats/nats.h>

#include "lineage/lineage_int.h"
#include "lineage/shipper_int.h"

/* ---- the cluster ------------------------------------------------------------------ */

static pid_t cl_pid;
static FILE *cl_in, *cl_out;
static char cl_url[512];

static const char *cluster_script(void) {
  static char path[4096];
  const char *env = getenv("MG_NATS_CLUSTER");
  if (env)
    return env;
  /* __FILE__ is relative to the build directory meson runs tests from */
  snprintf(path, sizeof path, "%s", __FILE__);
  char *p = strstr(path, "tests/unit/lineage/test_shipper.c");
  if (p) {
    strcpy(p, "tests/integration/nats_cluster.py");
    if (access(path, R_OK) == 0)
      return path;
  }
  return "tests/integration/nats_cluster.py";
}

static void cluster_cmd(const char *cmd) {
  char line[256];
  fprintf(cl_in, "%s\n", cmd);
  fflush(cl_in);
  assert_non_null(fgets(line, sizeof line, cl_out));
  if (strncmp(line, "ok", 2) != 0)
    fail_msg("cluster %s: %s", cmd, line);
}

/* Splits the cluster URL list into cl_servers. */
static char cl_list[512];
static const char *cl_servers[8];
static size_t cl_nservers;

static void split_servers(void) {
  snprintf(cl_list, sizeof cl_list, "%s", cl_url);
  cl_nservers = 0;
  for (char *save = NULL, *t = strtok_r(cl_list, ",", &save); t && cl_nservers < 8;
       t = strtok_r(NULL, ",", &save))
    cl_servers[cl_nservers++] = t;
}

static int cluster_up(void **st) {
  (void)st;
  int in[2], out[2];
  if (pipe(in) || pipe(out))
    return -1;
  cl_pid = fork();
  if (cl_pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    close(in[1]);
    close(out[0]);
    execl("/usr/bin/python3", "python3", cluster_script(), "--control", (char *)NULL);
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  cl_in = fdopen(in[1], "w");
  cl_out = fdopen(out[0], "r");
  if (!fgets(cl_url, sizeof cl_url, cl_out))
    return -1;
  cl_url[strcspn(cl_url, "\n")] = 0;
  split_servers();
  return strncmp(cl_url, "nats://", 7) == 0 ? 0 : -1;
}

static int cluster_down(void **st) {
  (void)st;
  if (cl_in) {
    fprintf(cl_in, "quit\n");
    fclose(cl_in);
  }
  if (cl_pid > 0)
    waitpid(cl_pid, NULL, 0);
  if (cl_out)
    fclose(cl_out);
  return 0;
}

/* ---- a log -------------------------------------------------------------------------- */
/* DEVELOPMENT STAND-IN for lineage/log.c (replaced by the real log once it lands). */

struct mg_lineage_log {
  pthread_mutex_t mu;
  char **lines;
  uint64_t n, cap;
  char *note;
  uint64_t note_size;
  char origin[128];
};

int mg_lineage_log_read(struct mg_lineage_log *log, uint64_t from, uint64_t max,
                        mg_lineage_entry_cb cb, void *arg) {
  pthread_mutex_lock(&log->mu);
  uint64_t end = log->n;
  pthread_mutex_unlock(&log->mu);
  for (uint64_t i = from; i < end && i - from < max; i++) {
    pthread_mutex_lock(&log->mu);
    char *l = log->lines[i];
    pthread_mutex_unlock(&log->mu);
    int rc = cb(arg, i, l, strlen(l));
    if (rc)
      return rc;
  }
  return 0;
}

int mg_lineage_log_checkpoint(struct mg_lineage_log *log, uint64_t max_size, char **note,
                              uint64_t *size) {
  pthread_mutex_lock(&log->mu);
  int rc = MG_ERR_NOTFOUND;
  if (log->note && log->note_size <= max_size) {
    *note = strdup(log->note);
    *size = log->note_size;
    rc = 0;
  }
  pthread_mutex_unlock(&log->mu);
  return rc;
}

uint64_t mg_lineage_log_size(struct mg_lineage_log *log) {
  pthread_mutex_lock(&log->mu);
  uint64_t n = log->n;
  pthread_mutex_unlock(&log->mu);
  return n;
}

static struct mg_lineage_log *tlog_open(const char *origin) {
  struct mg_lineage_log *l = calloc(1, sizeof *l);
  pthread_mutex_init(&l->mu, NULL);
  snprintf(l->origin, sizeof l->origin, "%s", origin);
  return l;
}

static void tlog_close(struct mg_lineage_log *l) {
  for (uint64_t i = 0; i < l->n; i++)
    free(l->lines[i]);
  free(l->lines);
  free(l->note);
  pthread_mutex_destroy(&l->mu);
  free(l);
}

/* Appends n entries as one commit group; returns its first index. */
static uint64_t tlog_append(struct mg_lineage_log *l, uint64_t n) {
  pthread_mutex_lock(&l->mu);
  uint64_t first = l->n;
  for (uint64_t k = 0; k < n; k++) {
    if (l->n == l->cap) {
      l->cap = l->cap ? l->cap * 2 : 1024;
      l->lines = realloc(l->lines, l->cap * sizeof *l->lines);
    }
    char buf[512];
    snprintf(buf, sizeof buf,
             "{\"action\":\"read\",\"index\":%" PRIu64 ",\"origin\":\"%s\",\"path\":\"/d/%" PRIu64
             "\",\"time\":\"2026-01-01T00:00:00.000000Z\"}", l->n, l->origin, l->n);
    l->lines[l->n++] = strdup(buf);
  }
  pthread_mutex_unlock(&l->mu);
  return first;
}

/* A stand-in checkpoint note of the current size. */
static uint64_t tlog_checkpoint(struct mg_lineage_log *l, char **note) {
  pthread_mutex_lock(&l->mu);
  free(l->note);
  char buf[512];
  snprintf(buf, sizeof buf, "%s\n%" PRIu64 "\nAAAA\n\n— %s sig\n", l->origin, l->n, l->origin);
  l->note = strdup(buf);
  l->note_size = l->n;
  *note = strdup(buf);
  uint64_t n = l->n;
  pthread_mutex_unlock(&l->mu);
  return n;
}

/* ---- helpers ------------------------------------------------------------------------ */

struct acks {
  pthread_mutex_t mu;
  uint64_t last, calls;
  bool monotonic;
};

static void on_ack(void *arg, uint64_t upto) {
  struct acks *a = arg;
  pthread_mutex_lock(&a->mu);
  if (upto <= a->last)
    a->monotonic = false;
  a->last = upto;
  a->calls++;
  pthread_mutex_unlock(&a->mu);
}

static void acks_init(struct acks *a) {
  memset(a, 0, sizeof *a);
  pthread_mutex_init(&a->mu, NULL);
  a->monotonic = true;
}

static struct mg_shipper *start_ok(const char *url, const char *stream, const char *subject,
                                   struct mg_lineage_log *log, uint64_t shipped, struct acks *a) {
  (void)url;
  struct mg_shipper_config cfg = {.servers = cl_servers, .nservers = cl_nservers, .stream = stream,
                                  .subject = subject, .replicas = 3, .origin = log->origin};
  struct mg_shipper *s = NULL;
  int rc = mg_shipper_start(&cfg, log, shipped, on_ack, a, &s);
  if (rc)
    fail_msg("mg_shipper_start: %s", mg_strerror(rc));
  return s;
}

static bool wait_acked(struct mg_shipper *s, uint64_t want, int timeout_ms) {
  for (int t = 0; t < timeout_ms; t += 20) {
    uint64_t acked = 0;
    mg_shipper_stats(s, &acked, NULL);
    if (acked >= want)
      return acked == want;
    usleep(20000);
  }
  return false;
}

static jsCtx *js_open(natsConnection **nc) {
  jsCtx *js = NULL;
  assert_int_equal(natsConnection_ConnectTo(nc, cl_url), NATS_OK);
  assert_int_equal(natsConnection_JetStream(&js, *nc, NULL), NATS_OK);
  return js;
}

struct seen {
  uint64_t *idx;
  size_t n, cap;
  uint64_t msgs, cps, max_cp;
};

static uint64_t line_index(const char *line) {
  const char *p = strstr(line, "\"index\":");
  assert_non_null(p);
  return strtoull(p + 8, NULL, 10);
}

static int seen_cb(void *arg, natsMsg *m, uint64_t seq) {
  struct seen *s = arg;
  const char *kind = NULL;
  (void)seq;
  assert_int_equal(natsMsgHeader_Get(m, MG_SHIP_H_KIND, &kind), NATS_OK);
  s->msgs++;
  if (strcmp(kind, MG_SHIP_KIND_CHECKPOINT) == 0) {
    uint64_t size = 0;
    assert_int_equal(mg_shipper_header_u64(m, MG_SHIP_H_SIZE, &size), 0);
    s->cps++;
    s->max_cp = MG_MAX(s->max_cp, size);
    return 0;
  }
  uint64_t first = 0, last = 0;
  assert_int_equal(mg_shipper_header_u64(m, MG_SHIP_H_FIRST, &first), 0);
  assert_int_equal(mg_shipper_header_u64(m, MG_SHIP_H_LAST, &last), 0);
  const char *d = natsMsg_GetData(m);
  int len = natsMsg_GetDataLength(m);
  assert_true(len > 0 && d[len - 1] == '\n');
  char *body = strndup(d, (size_t)len);
  uint64_t k = first;
  for (char *save = NULL, *l = strtok_r(body, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    assert_int_equal(line_index(l), k);
    if (s->n == s->cap) {
      s->cap = s->cap ? 2 * s->cap : 1024;
      s->idx = realloc(s->idx, s->cap * sizeof *s->idx);
    }
    s->idx[s->n++] = k++;
  }
  assert_int_equal(k, last + 1);
  free(body);
  return 0;
}

/* Reads the origin's subject from the stream; every entry must be there exactly once. When
 * in_order, the stream order must be the index order. */
static void assert_stream_exact(const char *stream, const char *subject, const char *origin,
                                uint64_t n, bool in_order, struct seen *out) {
  natsConnection *nc = NULL;
  jsCtx *js = js_open(&nc);
  struct mg_buf subj;
  jsStreamInfo *si = NULL;
  struct seen s = {0};
  mg_buf_init(&subj);
  assert_int_equal(mg_buf_appendf(&subj, "%s.", subject), 0);
  assert_int_equal(mg_shipper_token_encode(origin, &subj), 0);
  assert_int_equal(js_GetStreamInfo(&si, js, stream, NULL, NULL), NATS_OK);
  assert_int_equal(mg_shipper_scan(js, stream, subj.data, si->State.FirstSeq,
                                   si->State.LastSeq, 5000, seen_cb, &s), 0);
  jsStreamInfo_Destroy(si);
  uint8_t *hit = calloc(n ? n : 1, 1);
  for (size_t i = 0; i < s.n; i++) {
    if (s.idx[i] >= n)
      fail_msg("stream holds index %" PRIu64 " beyond %" PRIu64, s.idx[i], n);
    if (hit[s.idx[i]])
      fail_msg("stream holds index %" PRIu64 " twice", s.idx[i]);
    hit[s.idx[i]] = 1;
    if (in_order && s.idx[i] != i)
      fail_msg("stream order: position %zu holds index %" PRIu64, i, s.idx[i]);
  }
  assert_int_equal(s.n, n);
  free(hit);
  free(s.idx);
  s.idx = NULL;
  if (out)
    *out = s;
  mg_buf_clear(&subj);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
}

static char *export_to_string(const char *stream, const char *origin, int *rc) {
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  *rc = mg_lineage_export_nats(cl_url, stream, origin, NULL, MG_LINEAGE_NDJSON, f);
  fclose(f);
  return buf;
}

/* ---- tests -------------------------------------------------------------------------- */

static void test_token(void **st) {
  (void)st;
  struct { const char *in, *tok; } v[] = {
      {"lineage.example/orders/host-1", "lineage%2Eexample/orders/host-1"},
      {"a b*c>%d", "a%20b%2Ac%3E%25d"},
      {"caf\xc3\xa9\t", "caf%C3%A9%09"},
      {"x", "x"},
  };
  for (size_t i = 0; i < MG_ARRAY_LEN(v); i++) {
    struct mg_buf b, d;
    mg_buf_init(&b);
    mg_buf_init(&d);
    assert_int_equal(mg_shipper_token_encode(v[i].in, &b), 0);
    assert_string_equal(b.data, v[i].tok);
    assert_null(strpbrk(b.data, ".*> \t"));
    assert_int_equal(mg_shipper_token_decode(b.data, b.len, &d), 0);
    assert_string_equal(d.data, v[i].in);
    mg_buf_clear(&b);
    mg_buf_clear(&d);
  }
  const char *bad[] = {"a.b", "%2e", "%41", "%4", "%", "a b", "%00", ""};
  for (size_t i = 0; i < MG_ARRAY_LEN(bad); i++) {
    struct mg_buf d;
    mg_buf_init(&d);
    assert_int_equal(mg_shipper_token_decode(bad[i], strlen(bad[i]), &d), MG_ERR_INVALID);
    mg_buf_clear(&d);
  }
  struct mg_buf e;
  mg_buf_init(&e);
  assert_int_equal(mg_shipper_token_encode("", &e), MG_ERR_INVALID);
  mg_buf_clear(&e);
}

/* Groups become one message each, in order; checkpoints follow their entries; a restart
 * resumes after the stream's last message with no entry twice; export verifies in shape. */
static void test_ship_resume_export(void **st) {
  (void)st;
  struct mg_lineage_log *log = tlog_open("lineage.example/orders/host-1");
  struct acks a;
  acks_init(&a);
  struct mg_shipper *s = start_ok(cl_url, "LIN1", "lin.one", log, 0, &a);
  for (int g = 0; g < 10; g++) {
    uint64_t first = tlog_append(log, 50);
    mg_shipper_notify_group(s, first, first + 49);
  }
  char *note = NULL;
  uint64_t cps = tlog_checkpoint(log, &note);
  mg_shipper_notify_checkpoint(s, cps, note);
  free(note);
  assert_true(wait_acked(s, 500, 20000));
  bool connected = false;
  mg_shipper_stats(s, NULL, &connected);
  assert_true(connected);
  mg_shipper_stop(s, 5000);
  assert_true(a.monotonic);
  assert_int_equal(a.last, 500);

  struct seen sn;
  assert_stream_exact("LIN1", "lin.one", log->origin, 500, true, &sn);
  assert_int_equal(sn.msgs, 11); /* one message per commit group + the checkpoint */
  assert_int_equal(sn.cps, 1);
  assert_int_equal(sn.max_cp, 500);

  /* restart: the writer's stored `shipped` may lag the stream: resume from the stream */
  for (int g = 0; g < 4; g++)
    tlog_append(log, 50);
  acks_init(&a);
  s = start_ok(cl_url, "LIN1", "lin.one", log, 300, &a);
  assert_true(wait_acked(s, 700, 20000));
  cps = tlog_checkpoint(log, &note);
  mg_shipper_notify_checkpoint(s, cps, note);
  free(note);
  tlog_append(log, 7); /* not covered by a checkpoint: left out of the export */
  assert_true(wait_acked(s, 707, 20000));
  mg_shipper_stop(s, 5000);
  assert_int_equal(a.last, 707);
  assert_stream_exact("LIN1", "lin.one", log->origin, 707, true, &sn);
  assert_int_equal(sn.cps, 2);

  /* export: entries 0..699 in order, each checkpoint right after its last entry */
  int rc = 0;
  char *ex = export_to_string("LIN1", NULL, &rc);
  assert_int_equal(rc, 0);
  uint64_t k = 0, cpl = 0;
  for (char *save = NULL, *l = strtok_r(ex, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    if (strncmp(l, "{\"checkpoint\":", 14) == 0) {
      cpl++;
      assert_true(k == 500 || k == 700);
      assert_non_null(strstr(l, "\\n"));
      continue;
    }
    assert_int_equal(line_index(l), k);
    assert_string_equal(l, log->lines[k]);
    k++;
  }
  assert_int_equal(k, 700);
  assert_int_equal(cpl, 2);
  free(ex);
  tlog_close(log);
}

/* A log that holds fewer entries than the stream has for its origin: refused. */
static void test_foreign(void **st) {
  (void)st;
  struct mg_lineage_log *log = tlog_open("lineage.example/foreign");
  struct acks a;
  acks_init(&a);
  tlog_append(log, 100);
  struct mg_shipper *s = start_ok(cl_url, "LIN2", "lin.two", log, 0, &a);
  assert_true(wait_acked(s, 100, 20000));
  mg_shipper_stop(s, 5000);

  struct mg_lineage_log *restored = tlog_open("lineage.example/foreign");
  tlog_append(restored, 100); /* equal size: the stream's last index 99 < 100 is fine */
  s = start_ok(cl_url, "LIN2", "lin.two", restored, 0, &a);
  mg_shipper_stop(s, 1000);
  tlog_close(restored);

  restored = tlog_open("lineage.example/foreign");
  tlog_append(restored, 60);
  struct mg_shipper_config cfg = {.servers = cl_servers, .nservers = cl_nservers, .stream = "LIN2",
                                  .subject = "lin.two", .replicas = 3, .origin = restored->origin};
  assert_int_equal(mg_shipper_start(&cfg, restored, 0, on_ack, &a, &s),
                   MG_LINEAGE_E_FOREIGN);
  tlog_close(restored);
  tlog_close(log);
}

/* Streams that cannot hold lineage are a start-up error. */
static void test_stream_checks(void **st) {
  (void)st;
  natsConnection *nc = NULL;
  jsCtx *js = js_open(&nc);
  struct { const char *name, *subj; bool deny; int replicas; const char *ship_subj; } v[] = {
      {"BADDEL", "bd.>", false, 3, "bd"},     /* no deny_delete / deny_purge */
      {"BADSUB", "other.>", true, 3, "bs"},   /* does not cover the subject */
      {"BADREP", "br.>", true, 1, "br"},      /* fewer replicas than configured */
  };
  for (size_t i = 0; i < MG_ARRAY_LEN(v); i++) {
    jsStreamConfig sc;
    jsStreamInfo *si = NULL;
    const char *subjects[1] = {v[i].subj};
    jsStreamConfig_Init(&sc);
    sc.Name = v[i].name;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Replicas = v[i].replicas;
    sc.DenyDelete = sc.DenyPurge = v[i].deny;
    assert_int_equal(js_AddStream(&si, js, &sc, NULL, NULL), NATS_OK);
    jsStreamInfo_Destroy(si);

    struct mg_lineage_log *log = tlog_open("lineage.example/checks");
    tlog_append(log, 3);
    struct mg_shipper_config cfg = {.servers = cl_servers, .nservers = cl_nservers,
                                    .stream = v[i].name,
                                    .subject = v[i].ship_subj, .replicas = 3,
                                    .origin = log->origin};
    struct mg_shipper *s = NULL;
    assert_int_equal(mg_shipper_start(&cfg, log, 0, NULL, NULL, &s), MG_LINEAGE_E_NATS);
    tlog_close(log);
  }
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
}

/* A message lost in flight while the next one was stored (what a leader change or a
 * dropped connection can do): the stream holds [5,9] with a resume base of 0. The shipper
 * must re-send [0,4] once, then continue at 10, and the export must be in index order. */
static void test_hole_repair(void **st) {
  (void)st;
  struct mg_lineage_log *log = tlog_open("lineage.example/holes");
  struct acks a;
  acks_init(&a);
  tlog_append(log, 20);
  natsConnection *nc = NULL;
  jsCtx *js = js_open(&nc);
  {
    /* create the stream as the shipper would, with nothing in it yet */
    struct mg_lineage_log *empty = tlog_open("lineage.example/other");
    struct mg_shipper *s0 = start_ok(cl_url, "LIN3", "lin.three", empty, 0, &a);
    mg_shipper_stop(s0, 1000);
    tlog_close(empty);
  }
  struct mg_buf subj, body;
  mg_buf_init(&subj);
  mg_buf_init(&body);
  mg_buf_appendf(&subj, "lin.three.");
  mg_shipper_token_encode(log->origin, &subj);
  for (int i = 5; i <= 9; i++)
    mg_buf_appendf(&body, "%s\n", log->lines[i]);
  natsMsg *m = NULL;
  assert_int_equal(natsMsg_Create(&m, subj.data, NULL, body.data, (int)body.len), NATS_OK);
  natsMsgHeader_Set(m, MG_SHIP_H_KIND, MG_SHIP_KIND_ENTRIES);
  natsMsgHeader_Set(m, MG_SHIP_H_FIRST, "5");
  natsMsgHeader_Set(m, MG_SHIP_H_LAST, "9");
  natsMsgHeader_Set(m, MG_SHIP_H_ACKED, "0");
  natsMsgHeader_Set(m, MG_SHIP_H_ACKED_SEQ, "0");
  jsPubAck *pa = NULL;
  assert_int_equal(js_PublishMsg(&pa, js, m, NULL, NULL), NATS_OK);
  jsPubAck_Destroy(pa);
  natsMsg_Destroy(m);

  acks_init(&a);
  struct mg_shipper *s = start_ok(cl_url, "LIN3", "lin.three", log, 0, &a);
  char *note = NULL;
  uint64_t cps = tlog_checkpoint(log, &note);
  mg_shipper_notify_checkpoint(s, cps, note);
  free(note);
  assert_true(wait_acked(s, 20, 20000));
  mg_shipper_stop(s, 5000);
  assert_stream_exact("LIN3", "lin.three", log->origin, 20, false, NULL);

  int rc = 0;
  char *ex = export_to_string("LIN3", log->origin, &rc);
  assert_int_equal(rc, 0);
  uint64_t k = 0;
  for (char *save = NULL, *l = strtok_r(ex, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    if (strncmp(l, "{\"checkpoint\":", 14) == 0) {
      assert_int_equal(k, 20);
      continue;
    }
    assert_int_equal(line_index(l), k++);
  }
  assert_int_equal(k, 20);
  free(ex);
  mg_buf_clear(&subj);
  mg_buf_clear(&body);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  tlog_close(log);
}

/* No server at start-up: not an error, the backlog grows; shipping starts when a server
 * appears on the configured address. */
static void test_unreachable_at_start(void **st) {
  (void)st;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t sl = sizeof sa;
  assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
  getsockname(fd, (struct sockaddr *)&sa, &sl);
  int port = ntohs(sa.sin_port);
  close(fd);
  char url[64], ports[16], dir[] = "/tmp/mg-ship-js-XXXXXX";
  snprintf(url, sizeof url, "nats://127.0.0.1:%d", port);
  snprintf(ports, sizeof ports, "%d", port);
  assert_non_null(mkdtemp(dir));

  struct mg_lineage_log *log = tlog_open("lineage.example/late");
  struct acks a;
  acks_init(&a);
  tlog_append(log, 30);
  const char *servers[1] = {url};
  struct mg_shipper_config cfg = {.servers = servers, .nservers = 1, .stream = "LATE",
                                  .subject = "late", .replicas = 1, .origin = log->origin};
  struct mg_shipper *s = NULL;
  int64_t t0 = mg_mono_now_us();
  assert_int_equal(mg_shipper_start(&cfg, log, 0, on_ack, &a, &s), 0);
  assert_true(mg_mono_now_us() - t0 < 5000000); /* bounded */
  uint64_t acked = 1;
  bool connected = true;
  mg_shipper_stats(s, &acked, &connected);
  assert_int_equal(acked, 0);
  assert_false(connected);
  tlog_append(log, 20);

  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", 1);
    dup2(null, 1);
    dup2(null, 2);
    execlp("nats-server", "nats-server", "-js", "-a", "127.0.0.1", "-p", ports, "-sd", dir,
           (char *)NULL);
    execl("/usr/sbin/nats-server", "nats-server", "-js", "-a", "127.0.0.1", "-p", ports, "-sd",
          dir, (char *)NULL);
    _exit(127);
  }
  bool ok = wait_acked(s, 50, 30000);
  mg_shipper_stop(s, 2000);
  kill(pid, SIGTERM);
  waitpid(pid, NULL, 0);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  assert_int_equal(system(cmd), 0);
  assert_true(ok);
  assert_int_equal(a.last, 50);
  tlog_close(log);
}

struct loader {
  struct mg_lineage_log *log;
  struct mg_shipper *s;
  int groups, per_group, sleep_us;
};

static void *load_main(void *arg) {
  struct loader *l = arg;
  for (int g = 0; g < l->groups; g++) {
    uint64_t first = tlog_append(l->log, (uint64_t)l->per_group);
    mg_shipper_notify_group(l->s, first, first + (uint64_t)l->per_group - 1);
    if (g % 100 == 99) {
      char *note = NULL;
      uint64_t cps = tlog_checkpoint(l->log, &note);
      mg_shipper_notify_checkpoint(l->s, cps, note);
      free(note);
    }
    usleep((useconds_t)l->sleep_us);
  }
  return NULL;
}

static int stream_leader(jsCtx *js, const char *stream) {
  jsStreamInfo *si = NULL;
  int idx = -1;
  if (js_GetStreamInfo(&si, js, stream, NULL, NULL) == NATS_OK) {
    if (si->Cluster && si->Cluster->Leader && si->Cluster->Leader[0] == 'n')
      idx = atoi(si->Cluster->Leader + 1);
    jsStreamInfo_Destroy(si);
  }
  return idx;
}

/* The stream leader (and the node the shipper is connected to, when they differ: a second
 * round) is killed under load and restarted: every entry exactly once. */
static void test_leader_killed_under_load(void **st) {
  (void)st;
  struct mg_lineage_log *log = tlog_open("lineage.example/load");
  struct acks a;
  acks_init(&a);
  struct mg_shipper *s = start_ok(cl_url, "LIN4", "lin.four", log, 0, &a);
  struct loader ld = {.log = log, .s = s, .groups = 600, .per_group = 40, .sleep_us = 5000};
  pthread_t th;
  pthread_create(&th, NULL, load_main, &ld);
  natsConnection *nc = NULL;
  jsCtx *js = js_open(&nc);
  usleep(500000);
  int leader = stream_leader(js, "LIN4");
  assert_true(leader >= 0 && leader < 3);
  char cmd[32];
  snprintf(cmd, sizeof cmd, "kill %d", leader);
  cluster_cmd(cmd);
  usleep(1500000);
  snprintf(cmd, sizeof cmd, "start %d", leader);
  cluster_cmd(cmd);
  /* the node the shipper connects to first (node 0) too */
  usleep(300000);
  cluster_cmd("kill 0");
  usleep(1000000);
  cluster_cmd("start 0");
  pthread_join(th, NULL);
  uint64_t total = mg_lineage_log_size(log);
  bool ok = wait_acked(s, total, 60000);
  uint64_t acked = 0;
  mg_shipper_stats(s, &acked, NULL);
  mg_shipper_stop(s, 5000);
  if (!ok)
    fail_msg("acked %" PRIu64 " of %" PRIu64, acked, total);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  assert_stream_exact("LIN4", "lin.four", log->origin, total, false, NULL);
  assert_true(a.monotonic);
  tlog_close(log);
}

/* Two origins in one stream: the export has one section per origin, each complete. */
static void test_two_origins_export(void **st) {
  (void)st;
  struct mg_lineage_log *la = tlog_open("lineage.example/a/host-1");
  struct mg_lineage_log *lb = tlog_open("lineage.example/b/host 2");
  struct acks a, b;
  acks_init(&a);
  acks_init(&b);
  struct mg_shipper *sa = start_ok(cl_url, "LIN5", "lin.five", la, 0, &a);
  struct mg_shipper *sb = start_ok(cl_url, "LIN5", "lin.five", lb, 0, &b);
  for (int g = 0; g < 5; g++) {
    uint64_t f = tlog_append(la, 10);
    mg_shipper_notify_group(sa, f, f + 9);
    f = tlog_append(lb, 7);
    mg_shipper_notify_group(sb, f, f + 6);
  }
  char *note = NULL;
  uint64_t n = tlog_checkpoint(la, &note);
  mg_shipper_notify_checkpoint(sa, n, note);
  free(note);
  n = tlog_checkpoint(lb, &note);
  mg_shipper_notify_checkpoint(sb, n, note);
  free(note);
  assert_true(wait_acked(sa, 50, 20000));
  assert_true(wait_acked(sb, 35, 20000));
  mg_shipper_stop(sa, 5000);
  mg_shipper_stop(sb, 5000);
  int rc = 0;
  char *ex = export_to_string("LIN5", NULL, &rc);
  assert_int_equal(rc, 0);
  /* sections in origin order: a then b */
  uint64_t ka = 0, kb = 0, cp = 0;
  bool in_b = false;
  for (char *save = NULL, *l = strtok_r(ex, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
    if (strncmp(l, "{\"checkpoint\":", 14) == 0) {
      cp++;
      continue;
    }
    if (strstr(l, lb->origin)) {
      in_b = true;
      assert_string_equal(l, lb->lines[kb++]);
    } else {
      assert_false(in_b);
      assert_string_equal(l, la->lines[ka++]);
    }
  }
  assert_int_equal(ka, 50);
  assert_int_equal(kb, 35);
  assert_int_equal(cp, 2);
  free(ex);
  ex = export_to_string("LIN5", lb->origin, &rc);
  assert_int_equal(rc, 0);
  assert_null(strstr(ex, la->origin));
  assert_non_null(strstr(ex, lb->origin));
  free(ex);
  /* filters are not supported against a stream in v1 */
  struct mg_lineage_filter f = {.since_us = INT64_MIN, .until_us = INT64_MAX, .action = "read"};
  FILE *devnull = fopen("/dev/null", "w");
  assert_int_equal(mg_lineage_export_nats(cl_url, "LIN5", NULL, &f, MG_LINEAGE_NDJSON, devnull),
                   -ENOTSUP);
  fclose(devnull);
  tlog_close(la);
  tlog_close(lb);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_token),
      cmocka_unit_test(test_ship_resume_export),
      cmocka_unit_test(test_foreign),
      cmocka_unit_test(test_stream_checks),
      cmocka_unit_test(test_hole_repair),
      cmocka_unit_test(test_unreachable_at_start),
      cmocka_unit_test(test_two_origins_export),
      cmocka_unit_test(test_leader_killed_under_load),
  };
  return cmocka_run_group_tests(tests, cluster_up, cluster_down);
}

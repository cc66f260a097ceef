/*
 * passthrough.c — a test-only program: the meshgate transport (sidecar/worker.c, conn.c,
 * upstream.c, upstream_h1.c, certs/) with a trivial pipeline, so the transport can be
 * tested end to end without authn/policy/lineage.
 *
 * Pipeline behaviour:
 *   /__local404...       -> mg_req_respond 404 JSON (local answers)
 *   /__whoami            -> 200 JSON {peer, spiffe, tls, method, path, authority, purposes}
 *                           plus response header x-test-spiffe (the client's SPIFFE ID)
 *   /__failverify        -> counts a failed verification (GOAWAY at the limit), 401
 *   /__async/<rest>      -> forwards /<rest> from another thread via mg_worker_post
 *   anything else        -> mg_req_forward(raw path) adding x-request-id (UUIDv7) and
 *                           x-mesh-principal: passthrough
 * Prints "PORT <n>" on stdout once listening. SIGTERM/SIGINT: mg_server_stop(grace) and
 * exit 0 (prints "closed <n>" with the number of on_close calls to stderr). SIGHUP:
 * mg_server_reload with a fresh config built from the same arguments (and the upstream
 * address re-read from --upstream-file, when given).
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/common.h"
#include "sidecar/config.h"
#include "sidecar/proxy.h"

/* config.c is not linked in: minimal refcounting for the hand-built snapshots. */
void mg_config_ref(struct mg_config *c) {
  __atomic_add_fetch(&c->refcnt, 1, __ATOMIC_RELAXED);
}
void mg_config_unref(struct mg_config *c) {
  if (__atomic_sub_fetch(&c->refcnt, 1, __ATOMIC_ACQ_REL) == 0) {
    free(c->listen_tls);
    free(c->upstream.address);
    free(c);
  }
}

static _Atomic uint64_t n_closed, n_requests;

static void fwd(struct mg_req *req, const char *path, size_t len) {
  char id[37];
  nghttp2_nv add[2] = {
      {(uint8_t *)"x-request-id", (uint8_t *)id, 12, 36, NGHTTP2_NV_FLAG_NONE},
      {(uint8_t *)"x-mesh-principal", (uint8_t *)"passthrough", 16, 11, NGHTTP2_NV_FLAG_NONE},
  };
  mg_uuidv7(id);
  if (mg_req_forward(req, path, len, add, 2) != 0)
    mg_req_respond(req, 500, "text/plain", "forward failed\n", 15, NULL, 0);
}

struct async_job {
  struct mg_worker *w;
  uint64_t handle;
};

static void async_forward(void *arg) {
  struct async_job *j = arg;
  struct mg_req *req = mg_worker_find_req(j->w, j->handle);
  if (req) {
    const struct mg_req_info *i = mg_req_info(req);
    fwd(req, i->path + 8, i->path_len - 8);
  }
  free(j);
}

static void *async_thread(void *arg) {
  struct async_job *j = arg;
  usleep(5000);
  mg_worker_post(j->w, async_forward, j);
  return NULL;
}

void mg_pipeline_on_request(struct mg_req *req) {
  const struct mg_req_info *i = mg_req_info(req);
  atomic_fetch_add(&n_requests, 1);
  if (strncmp(i->path, "/__local404", 11) == 0) {
    static const char body[] = "{\"error\":\"not_found\",\"detail\":\"no route\"}\n";
    mg_req_respond(req, 404, "application/json", body, sizeof body - 1, NULL, 0);
    return;
  }
  if (strcmp(i->path, "/__whoami") == 0) {
    struct mg_buf b;
    const char *sp = i->spiffe ? i->spiffe : "";
    nghttp2_nv extra[1] = {{(uint8_t *)"x-test-spiffe", (uint8_t *)sp, 13, strlen(sp),
                            NGHTTP2_NV_FLAG_NONE}};
    mg_buf_init(&b);
    mg_buf_appendf(&b, "{\"peer\":\"%s\",\"tls\":%s,\"npurposes\":%d,\"spiffe\":", i->peer,
                   i->tls ? "true" : "false", i->npurposes);
    mg_buf_append_json_str(&b, sp, strlen(sp));
    mg_buf_appends(&b, ",\"authority\":");
    mg_buf_append_json_str(&b, i->authority ? i->authority : "",
                           i->authority ? strlen(i->authority) : 0);
    mg_buf_appendf(&b, ",\"method\":\"%s\",\"authorization\":%s}\n", i->method,
                   i->authorization ? "true" : "false");
    mg_req_respond(req, 200, "application/json", b.data, b.len, extra, i->spiffe ? 1 : 0);
    mg_buf_clear(&b);
    return;
  }
  if (strcmp(i->path, "/__failverify") == 0) {
    int n = mg_req_count_failed_verify(req);
    char body[64];
    int len = snprintf(body, sizeof body, "{\"failed_verifies\":%d}\n", n);
    mg_req_respond(req, 401, "application/json", body, (size_t)len, NULL, 0);
    return;
  }
  if (strncmp(i->path, "/__async/", 9) == 0) {
    struct async_job *j = malloc(sizeof *j);
    pthread_t t;
    j->w = mg_req_worker(req);
    j->handle = mg_req_handle(req);
    if (pthread_create(&t, NULL, async_thread, j) == 0)
      pthread_detach(t);
    else
      async_forward(j);
    return;
  }
  fwd(req, i->path, i->path_len);
}

void mg_pipeline_on_close(struct mg_req *req, const struct mg_req_outcome *o) {
  atomic_fetch_add(&n_closed, 1);
  if (getenv("PASSTHROUGH_LOG_OUTCOMES"))
    fprintf(stderr,
            "{\"outcome\":{\"path\":\"%s\",\"forwarded\":%d,\"status\":%d,\"reset\":%lld,"
            "\"bytes_in\":%llu,\"bytes_out\":%llu,\"duration_us\":%llu}}\n",
            mg_req_info(req)->path, o->forwarded, o->status, (long long)o->reset,
            (unsigned long long)o->bytes_in, (unsigned long long)o->bytes_out,
            (unsigned long long)o->duration_us);
}

struct args {
  const char *listen, *upstream, *protocol, *cert, *key, *ca, *client_cert;
  const char *upstream_file; /* re-read on SIGHUP: the upstream address */
  char upstream_buf[512];
  int workers, max_streams, max_header, idle, failed, resp_ms, conn_ms, grace, conns;
  long body_buf;
  bool forward_token;
};

static struct mg_config *make_config(struct args *a) {
  struct mg_config *c = calloc(1, sizeof *c);
  if (a->upstream_file) {
    FILE *f = fopen(a->upstream_file, "r");
    if (f) {
      if (fgets(a->upstream_buf, sizeof a->upstream_buf, f)) {
        a->upstream_buf[strcspn(a->upstream_buf, "\r\n")] = 0;
        a->upstream = a->upstream_buf;
      }
      fclose(f);
    }
  }
  c->refcnt = 1;
  c->workers = a->workers;
  c->listen_address = (char *)a->listen;
  if (a->cert) {
    c->listen_tls = calloc(1, sizeof *c->listen_tls);
    c->listen_tls->cert = (char *)a->cert;
    c->listen_tls->key = (char *)a->key;
    c->listen_tls->client_ca = (char *)a->ca;
    c->listen_tls->client_cert = !a->ca ? MG_CLIENT_CERT_NONE
                                 : (a->client_cert && !strcmp(a->client_cert, "required"))
                                     ? MG_CLIENT_CERT_REQUIRED
                                     : MG_CLIENT_CERT_OPTIONAL;
  }
  c->upstream.address = strdup(a->upstream); /* a->upstream_buf changes on reload */
  c->upstream.protocol =
      a->protocol && !strcmp(a->protocol, "http1") ? MG_UPSTREAM_HTTP1 : MG_UPSTREAM_H2C;
  c->upstream.forward_token = a->forward_token;
  c->upstream.connections = a->conns;
  c->upstream.connect_timeout_ms = a->conn_ms;
  c->upstream.response_timeout_ms = a->resp_ms;
  c->max_concurrent_streams = a->max_streams;
  c->max_header_list_bytes = a->max_header;
  c->max_token_bytes = 8192;
  c->idle_timeout_s = a->idle;
  c->failed_verifies_per_conn = a->failed;
  c->shutdown_grace_s = a->grace;
  c->max_body_buffer = (size_t)a->body_buf;
  return c;
}

int main(int argc, char **argv) {
  struct args a = {.listen = "127.0.0.1:0", .upstream = "127.0.0.1:8080", .protocol = "h2c",
                   .workers = 2, .max_streams = 100, .max_header = 16384, .idle = 60,
                   .failed = 10, .resp_ms = 30000, .conn_ms = 2000, .grace = 30, .conns = 2,
                   .body_buf = 256 * 1024};
  static const struct option opts[] = {
      {"listen", 1, 0, 'l'}, {"upstream", 1, 0, 'u'}, {"protocol", 1, 0, 'p'},
      {"tls-cert", 1, 0, 'c'}, {"tls-key", 1, 0, 'k'}, {"tls-ca", 1, 0, 'a'},
      {"client-cert", 1, 0, 'C'}, {"workers", 1, 0, 'w'}, {"max-streams", 1, 0, 's'},
      {"max-header-bytes", 1, 0, 'H'}, {"idle-timeout", 1, 0, 'i'},
      {"failed-verifies", 1, 0, 'f'}, {"response-timeout-ms", 1, 0, 'r'},
      {"connect-timeout-ms", 1, 0, 't'}, {"grace", 1, 0, 'g'}, {"connections", 1, 0, 'n'},
      {"max-body-buffer", 1, 0, 'b'}, {"forward-token", 0, 0, 'F'},
      {"upstream-file", 1, 0, 'U'}, {0, 0, 0, 0}};
  int ch;
  struct mg_config *cfg;
  struct mg_server *srv;
  char err[256];
  sigset_t set;
  int sig;

  while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (ch) {
    case 'l': a.listen = optarg; break;
    case 'u': a.upstream = optarg; break;
    case 'p': a.protocol = optarg; break;
    case 'c': a.cert = optarg; break;
    case 'k': a.key = optarg; break;
    case 'a': a.ca = optarg; break;
    case 'C': a.client_cert = optarg; break;
    case 'w': a.workers = atoi(optarg); break;
    case 's': a.max_streams = atoi(optarg); break;
    case 'H': a.max_header = atoi(optarg); break;
    case 'i': a.idle = atoi(optarg); break;
    case 'f': a.failed = atoi(optarg); break;
    case 'r': a.resp_ms = atoi(optarg); break;
    case 't': a.conn_ms = atoi(optarg); break;
    case 'g': a.grace = atoi(optarg); break;
    case 'n': a.conns = atoi(optarg); break;
    case 'b': a.body_buf = atol(optarg); break;
    case 'F': a.forward_token = true; break;
    case 'U': a.upstream_file = optarg; break;
    default:
      fprintf(stderr, "usage: passthrough [--listen ip:port] [--upstream addr] ...\n");
      return 2;
    }
  }
  signal(SIGPIPE, SIG_IGN);
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, NULL); /* workers inherit: signals come to sigwait */

  cfg = make_config(&a);
  if (mg_server_start(cfg, &srv, err, sizeof err) != 0) {
    fprintf(stderr, "passthrough: %s\n", err);
    return 1;
  }
  mg_config_unref(cfg);
  printf("PORT %d\n", mg_server_port(srv));
  fflush(stdout);
  for (;;) {
    if (sigwait(&set, &sig) != 0)
      continue;
    if (sig == SIGHUP) {
      struct mg_config *n = make_config(&a);
      if (mg_server_reload(srv, n, err, sizeof err) != 0)
        fprintf(stderr, "passthrough: reload: %s\n", err);
      else
        fprintf(stderr, "passthrough: reloaded\n");
      mg_config_unref(n);
      continue;
    }
    break;
  }
  mg_server_stop(srv, a.grace);
  mg_server_free(srv);
  fprintf(stderr, "closed %llu requests %llu\n", (unsigned long long)n_closed,
          (unsigned long long)n_requests);
  return 0;
}

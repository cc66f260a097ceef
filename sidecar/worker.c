/*
 * worker.c — worker threads and server lifecycle.
 *
 * Each worker owns one event_base, one SO_REUSEPORT listener on the data address, its
 * downstream connections and its upstream pool; nothing on the hot path is shared between
 * workers, so there are no locks there. The kernel spreads new connections over the
 * listeners. Cross-thread work (pipeline completions, reload, stop) arrives through
 * mg_worker_post(): a mutex-protected list plus an event made active — libevent's
 * event_active() is thread-safe once evthread_use_pthreads() ran.
 *
 * Reload hands every worker a new config reference and TLS context through a post; open
 * connections keep the snapshot they started with. Stop: every worker closes its
 * listener and sends GOAWAY, streams in flight finish, and at the deadline whatever is
 * left is closed; then the loops exit and are joined.
 */
#include "sidecar/transport_int.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/thread.h>

#include "certs/certs.h"

static pthread_once_t evthread_once = PTHREAD_ONCE_INIT;
static void evthread_init(void) { evthread_use_pthreads(); }

struct mg_server *mg_tp_worker_server(struct mg_worker *w) { return w->srv; }

void mg_worker_set_data(struct mg_worker *w, void *data) { w->data = data; }
void *mg_worker_get_data(const struct mg_worker *w) { return w->data; }
int mg_worker_index(const struct mg_worker *w) { return w->index; }

int mg_tp_read_more(evutil_socket_t fd, int (*feed)(void *ctx, const uint8_t *p, size_t n),
                    void *ctx) {
  static __thread uint8_t buf[65536];
  size_t total = 0;
  while (total < MG_TP_READ_MORE) {
    ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return 0;
    int rv = feed(ctx, buf, (size_t)n);
    if (rv)
      return rv;
    total += (size_t)n;
    if ((size_t)n < sizeof buf)
      return 0; /* drained */
  }
  return 0;
}

static void later_cb(evutil_socket_t fd, short what, void *arg) {
  struct mg_worker *w = arg;
  (void)fd;
  (void)what;
  if (w->later_fn)
    w->later_fn(w->later_arg);
}

void mg_worker_set_later(struct mg_worker *w, void (*fn)(void *arg), void *arg) {
  w->later_fn = fn;
  w->later_arg = arg;
}

/* An event activated by hand joins the end of the active queue: every callback already
 * queued in this pass runs first (libevent coalesces a second activation). */
void mg_worker_later(struct mg_worker *w) {
  if (w->later_ev)
    event_active(w->later_ev, EV_TIMEOUT, 0);
}

void mg_worker_post(struct mg_worker *w, void (*fn)(void *arg), void *arg) {
  struct mg_post *p = malloc(sizeof *p);
  if (!p) {
    /* Out of memory on a list that promised never to fail: nothing sane is left. */
    mg_error("worker_post: out of memory");
    abort();
  }
  p->fn = fn;
  p->arg = arg;
  p->next = NULL;
  pthread_mutex_lock(&w->post_lock);
  if (w->post_tail)
    w->post_tail->next = p;
  else
    w->post_head = p;
  w->post_tail = p;
  pthread_mutex_unlock(&w->post_lock);
  event_active(w->post_ev, EV_READ, 0);
}

static void post_drain(evutil_socket_t fd, short what, void *arg) {
  struct mg_worker *w = arg;
  struct mg_post *list;
  pthread_mutex_lock(&w->post_lock);
  list = w->post_head;
  w->post_head = w->post_tail = NULL;
  pthread_mutex_unlock(&w->post_lock);
  while (list) {
    struct mg_post *next = list->next;
    list->fn(list->arg);
    free(list);
    list = next;
  }
}

/* ---- connection registry (serial -> conn) ---- */

void mg_tp_worker_conn_add(struct mg_worker *w, struct mg_conn *c) {
  size_t b;
  c->serial = ++w->next_serial;
  b = c->serial & (MG_CONN_HASH - 1);
  c->hnext = w->hash[b];
  w->hash[b] = c;
  c->prev = NULL;
  c->next = w->conns;
  if (w->conns)
    w->conns->prev = c;
  w->conns = c;
  w->nconns++;
  atomic_fetch_add_explicit(&w->srv->connections, 1, memory_order_relaxed);
}

void mg_tp_worker_conn_del(struct mg_worker *w, struct mg_conn *c) {
  struct mg_conn **pp = &w->hash[c->serial & (MG_CONN_HASH - 1)];
  while (*pp && *pp != c)
    pp = &(*pp)->hnext;
  if (*pp)
    *pp = c->hnext;
  if (c->prev)
    c->prev->next = c->next;
  else
    w->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  w->nconns--;
  atomic_fetch_sub_explicit(&w->srv->connections, 1, memory_order_relaxed);
}

struct mg_req *mg_worker_find_req(struct mg_worker *w, uint64_t handle) {
  uint64_t serial = handle >> 31;
  int32_t sid = (int32_t)(handle & 0x7fffffff);
  struct mg_conn *c;
  if (!handle)
    return NULL;
  for (c = w->hash[serial & (MG_CONN_HASH - 1)]; c; c = c->hnext)
    if (c->serial == serial)
      break;
  if (!c || c->dead || !c->sess)
    return NULL;
  return nghttp2_session_get_stream_user_data(c->sess, sid);
}

/* ---- listener ---- */

static void on_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg) {
  struct mg_worker *w = arg;
  int one = 1;
  if (w->stopping) {
    evutil_closesocket(fd);
    return;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  mg_tp_conn_accept(w, fd, sa, salen);
}

static void on_accept_error(struct evconnlistener *l, void *arg) {
  int e = EVUTIL_SOCKET_ERROR();
  /* EMFILE and friends: keep the listener; the kernel queue holds the connections. */
  mg_warn("accept: %s", evutil_socket_error_to_string(e));
}

static int parse_listen(const char *addr, int port_override, struct sockaddr_storage *ss,
                        socklen_t *len) {
  char host[256];
  const char *colon = strrchr(addr, ':');
  long port;
  char *end;
  size_t hl;
  if (!colon)
    return MG_ERR_INVALID;
  hl = (size_t)(colon - addr);
  if (addr[0] == '[' && hl >= 2 && addr[hl - 1] == ']') {
    addr++;
    hl -= 2;
  }
  if (hl == 0 || hl >= sizeof host)
    return MG_ERR_INVALID;
  memcpy(host, addr, hl);
  host[hl] = 0;
  port = strtol(colon + 1, &end, 10);
  if (*end || port < 0 || port > 65535)
    return MG_ERR_INVALID;
  if (port_override >= 0)
    port = port_override;
  memset(ss, 0, sizeof *ss);
  {
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
      s4->sin_family = AF_INET;
      s4->sin_port = htons((uint16_t)port);
      *len = sizeof *s4;
      return 0;
    }
    if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
      s6->sin6_family = AF_INET6;
      s6->sin6_port = htons((uint16_t)port);
      *len = sizeof *s6;
      return 0;
    }
  }
  return MG_ERR_INVALID;
}

/* ---- lifecycle ---- */

static void *worker_main(void *arg) {
  struct mg_worker *w = arg;
  event_base_loop(w->base, EVLOOP_NO_EXIT_ON_EMPTY);
  return NULL;
}

int mg_server_port(const struct mg_server *s) { return s->port; }

static int tls_ctx_for(struct mg_config *cfg, SSL_CTX **out, char *err, size_t errlen) {
  *out = NULL;
  if (!cfg->listen_tls)
    return 0;
  return mg_tls_server_ctx_new(cfg->listen_tls->cert, cfg->listen_tls->key,
                               cfg->listen_tls->client_ca, cfg->listen_tls->client_cert, 0,
                               out, err, errlen);
}

static void worker_free(struct mg_worker *w) {
  struct mg_post *p;
  while (w->conns)
    mg_tp_conn_destroy(w->conns);
  /* Posts that arrived after the loop stopped still run (exactly once, here): their
   * requests are gone, so mg_worker_find_req() returns NULL and they only clean up. */
  if (w->post_ev)
    post_drain(-1, 0, w);
  if (w->pool)
    mg_tp_pool_free(w->pool);
  if (w->dns)
    evdns_base_free(w->dns, 1); /* pending lookups fail; their connections are gone */
  if (w->listener)
    evconnlistener_free(w->listener);
  while (w->free_reqs) {
    struct mg_req *r = w->free_reqs;
    w->free_reqs = r->next;
    free(r);
  }
  if (w->stop_ev)
    event_free(w->stop_ev);
  if (w->post_ev)
    event_free(w->post_ev);
  if (w->later_ev)
    event_free(w->later_ev);
  while ((p = w->post_head)) {
    w->post_head = p->next;
    free(p);
  }
  if (w->base)
    event_base_free(w->base);
  if (w->cfg)
    mg_config_unref(w->cfg);
  if (w->ssl_ctx)
    SSL_CTX_free(w->ssl_ctx);
  pthread_mutex_destroy(&w->post_lock);
}

int mg_server_start(struct mg_config *cfg, struct mg_server **out, char *err, size_t errlen) {
  struct mg_server *s;
  struct sockaddr_storage ss;
  socklen_t sslen;
  int rc, n, i;

  pthread_once(&evthread_once, evthread_init);
  mg_certs_init();
  *out = NULL;
  n = cfg->workers > 0 ? cfg->workers : (int)sysconf(_SC_NPROCESSORS_ONLN);
  if (n <= 0)
    n = 1;
  if (n > 256)
    n = 256;
  s = calloc(1, sizeof *s);
  if (!s)
    return -ENOMEM;
  pthread_mutex_init(&s->lock, NULL);
  s->workers = calloc((size_t)n, sizeof *s->workers);
  if (!s->workers) {
    rc = -ENOMEM;
    goto fail_server;
  }
  mg_config_ref(cfg);
  s->cfg = cfg;
  rc = tls_ctx_for(cfg, &s->ssl_ctx, err, errlen);
  if (rc < 0)
    goto fail_workers;
  if (parse_listen(cfg->listen_address, -1, &ss, &sslen) < 0) {
    snprintf(err, errlen, "listen address \"%s\": expected ip:port", cfg->listen_address);
    rc = MG_ERR_INVALID;
    goto fail_workers;
  }
  s->nworkers = n;
  for (i = 0; i < n; i++) {
    struct mg_worker *w = &s->workers[i];
    w->srv = s;
    w->index = i;
    pthread_mutex_init(&w->post_lock, NULL);
    /* The epoll changelist folds the EV_WRITE add/remove a bufferevent does around every
     * flush into at most one epoll_ctl per loop pass (none when they cancel out). Its
     * caveat, fds dup()ed and closed behind libevent's back, does not apply here. */
    struct event_config *ec = event_config_new();
    if (ec) {
      event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
      w->base = event_base_new_with_config(ec);
      event_config_free(ec);
    }
    if (!w->base) {
      snprintf(err, errlen, "event_base_new failed");
      rc = -ENOMEM;
      goto fail_workers;
    }
    w->post_ev = event_new(w->base, -1, 0, post_drain, w);
    w->later_ev = event_new(w->base, -1, 0, later_cb, w);
    if (!w->post_ev || !w->later_ev) {
      rc = -ENOMEM;
      goto fail_workers;
    }
    mg_config_ref(cfg);
    w->cfg = cfg;
    if (s->ssl_ctx) {
      SSL_CTX_up_ref(s->ssl_ctx);
      w->ssl_ctx = s->ssl_ctx;
    }
    /* Every listener binds the port the first one got (matters for port 0). */
    if (i > 0 && parse_listen(cfg->listen_address, s->port, &ss, &sslen) < 0) {
      rc = MG_ERR_INVALID;
      goto fail_workers;
    }
    w->listener = evconnlistener_new_bind(
        w->base, on_accept, w,
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_REUSEABLE_PORT |
            LEV_OPT_CLOSE_ON_EXEC,
        1024, (struct sockaddr *)&ss, (int)sslen);
    if (!w->listener) {
      rc = -errno ? -errno : -EADDRINUSE;
      snprintf(err, errlen, "listen %s: %s", cfg->listen_address, strerror(-rc));
      goto fail_workers;
    }
    evconnlistener_set_error_cb(w->listener, on_accept_error);
    if (i == 0) {
      struct sockaddr_storage bound;
      socklen_t bl = sizeof bound;
      getsockname(evconnlistener_get_fd(w->listener), (struct sockaddr *)&bound, &bl);
      s->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                  : ((struct sockaddr_in *)&bound)->sin_port);
    }
    rc = mg_tp_pool_new(w, &w->pool);
    if (rc < 0) {
      snprintf(err, errlen, "upstream pool: %s", mg_strerror(rc));
      goto fail_workers;
    }
  }
  for (i = 0; i < n; i++) {
    struct mg_worker *w = &s->workers[i];
    rc = pthread_create(&w->thread, NULL, worker_main, w);
    if (rc) {
      snprintf(err, errlen, "pthread_create: %s", strerror(rc));
      rc = -rc;
      s->nworkers = i; /* stop the ones already running */
      mg_server_stop(s, 0);
      mg_server_free(s);
      return rc;
    }
    w->started = true;
  }
  *out = s;
  return 0;

fail_workers:
  for (i = 0; i < n; i++)
    if (s->workers[i].srv)
      worker_free(&s->workers[i]);
  free(s->workers);
  if (s->ssl_ctx)
    SSL_CTX_free(s->ssl_ctx);
  mg_config_unref(cfg);
fail_server:
  pthread_mutex_destroy(&s->lock);
  free(s);
  return rc;
}

struct reload_msg {
  struct mg_worker *w;
  struct mg_config *cfg;
  SSL_CTX *ctx;
};

static void reload_on_worker(void *arg) {
  struct reload_msg *m = arg;
  struct mg_worker *w = m->w;
  struct mg_config *old = w->cfg;
  SSL_CTX *oldctx = w->ssl_ctx;
  w->cfg = m->cfg;
  w->ssl_ctx = m->ctx;
  if (old && w->pool && (strcmp(old->upstream.address, w->cfg->upstream.address) != 0 ||
                         old->upstream.protocol != w->cfg->upstream.protocol))
    mg_tp_pool_retire(w->pool);
  if (old)
    mg_config_unref(old);
  if (oldctx)
    SSL_CTX_free(oldctx);
  free(m);
}

int mg_server_reload(struct mg_server *s, struct mg_config *cfg, char *err, size_t errlen) {
  SSL_CTX *ctx = NULL;
  struct mg_config *oldcfg;
  SSL_CTX *oldctx;
  int rc = tls_ctx_for(cfg, &ctx, err, errlen);
  if (rc < 0)
    return rc;
  if (strcmp(cfg->listen_address, s->cfg->listen_address) != 0)
    mg_warn("reload: listen address change needs a restart; keeping %s",
            s->cfg->listen_address);
  for (int i = 0; i < s->nworkers; i++) {
    struct reload_msg *m = malloc(sizeof *m);
    if (!m) {
      if (ctx)
        SSL_CTX_free(ctx);
      return -ENOMEM; /* workers already posted keep the new config: harmless */
    }
    m->w = &s->workers[i];
    mg_config_ref(cfg);
    m->cfg = cfg;
    m->ctx = ctx;
    if (ctx)
      SSL_CTX_up_ref(ctx);
    mg_worker_post(m->w, reload_on_worker, m);
  }
  pthread_mutex_lock(&s->lock);
  oldcfg = s->cfg;
  oldctx = s->ssl_ctx;
  mg_config_ref(cfg);
  s->cfg = cfg;
  s->ssl_ctx = ctx;
  pthread_mutex_unlock(&s->lock);
  mg_config_unref(oldcfg);
  if (oldctx)
    SSL_CTX_free(oldctx);
  return 0;
}

void mg_tp_worker_check_stopped(struct mg_worker *w) {
  if (w->stopping && w->nconns == 0)
    event_base_loopbreak(w->base);
}

static void stop_deadline(evutil_socket_t fd, short what, void *arg) {
  struct mg_worker *w = arg;
  while (w->conns)
    mg_tp_conn_destroy(w->conns);
  event_base_loopbreak(w->base);
}

struct stop_msg {
  struct mg_worker *w;
  int grace_s;
};

static void stop_on_worker(void *arg) {
  struct stop_msg *m = arg;
  struct mg_worker *w = m->w;
  struct timeval tv = {m->grace_s > 0 ? m->grace_s : 0, 0};
  free(m);
  if (w->stopping)
    return;
  w->stopping = true;
  if (w->listener) {
    evconnlistener_free(w->listener);
    w->listener = NULL;
  }
  for (struct mg_conn *c = w->conns, *next; c; c = next) {
    next = c->next;
    mg_tp_conn_goaway(c);
  }
  w->stop_ev = evtimer_new(w->base, stop_deadline, w);
  if (w->stop_ev)
    evtimer_add(w->stop_ev, &tv);
  mg_tp_worker_check_stopped(w);
}

void mg_server_stop(struct mg_server *s, int grace_s) {
  for (int i = 0; i < s->nworkers; i++) {
    struct mg_worker *w = &s->workers[i];
    struct stop_msg *m;
    if (!w->started)
      continue;
    m = malloc(sizeof *m);
    if (!m) {
      event_base_loopbreak(w->base);
      continue;
    }
    m->w = w;
    m->grace_s = grace_s;
    mg_worker_post(w, stop_on_worker, m);
  }
  for (int i = 0; i < s->nworkers; i++) {
    struct mg_worker *w = &s->workers[i];
    if (w->started) {
      pthread_join(w->thread, NULL);
      w->started = false;
    }
  }
}

void mg_server_free(struct mg_server *s) {
  if (!s)
    return;
  for (int i = 0; i < s->nworkers; i++)
    if (s->workers[i].srv)
      worker_free(&s->workers[i]);
  free(s->workers);
  if (s->ssl_ctx)
    SSL_CTX_free(s->ssl_ctx);
  if (s->cfg)
    mg_config_unref(s->cfg);
  pthread_mutex_destroy(&s->lock);
  free(s);
}

void mg_server_stats(struct mg_server *s, struct mg_server_stats *out) {
  out->connections = atomic_load_explicit(&s->connections, memory_order_relaxed);
  out->streams_active = atomic_load_explicit(&s->streams_active, memory_order_relaxed);
  out->requests_total = atomic_load_explicit(&s->requests_total, memory_order_relaxed);
  out->upstream_errors = atomic_load_explicit(&s->upstream_errors, memory_order_relaxed);
}

/*
 * app.h — the process-wide application context shared by the data path (pipeline.c),
 * the admin API (admin*.c) and main.c: config snapshot, policy store and current compiled
 * index, lineage writer, authn, metrics. One instance, created by `meshgate serve`.
 */
#ifndef MG_SIDECAR_APP_H
#define MG_SIDECAR_APP_H

#include <stdatomic.h>
#include <stdint.h>
#include <pthread.h>

#include "policy/policy.h"
#include "lineage/lineage.h"
#include "sidecar/config.h"
#include "sidecar/authn.h"

/* Latency histogram buckets (seconds) for meshgate_request_duration_seconds. */
#define MG_METRICS_NBUCKETS 12
extern const double mg_metrics_buckets[MG_METRICS_NBUCKETS];

enum mg_decision_kind { MG_DEC_ALLOW = 0, MG_DEC_DENY, MG_DEC_UNAUTH, MG_DEC_ERROR, MG_DEC_NONE,
                        MG_DEC_COUNT };

struct mg_metrics {
  _Atomic uint64_t requests[MG_DEC_COUNT];        /* by decision */
  _Atomic uint64_t status[6];                     /* by status class: 0 (none),1xx..5xx */
  _Atomic uint64_t latency_bucket[MG_METRICS_NBUCKETS + 1]; /* last = +Inf */
  _Atomic uint64_t latency_sum_us;
  _Atomic uint64_t latency_count;
  _Atomic uint64_t jwt_cache_hits, jwt_cache_misses, jwt_failures;
  _Atomic uint64_t lineage_failures;              /* requests refused with 503 for lineage */
  _Atomic uint64_t admin_requests;
};
void mg_metrics_observe(struct mg_metrics *m, enum mg_decision_kind d, int status,
                        uint64_t duration_us);

struct mg_app {
  _Atomic(struct mg_config *) cfg;        /* current snapshot (swapped on SIGHUP; retired
                                             snapshots live until exit) */
  struct mg_policy_store *policy;
  _Atomic(struct mg_policy_index *) index; /* current compiled index */
  pthread_mutex_t index_lock;             /* serialises rebuild+swap */
  _Atomic int index_stale;                /* the last rebuild failed: the index in force is
                                             older than the store (retried by the admin API) */
  struct mg_lineage_writer *lineage;
  _Atomic(struct mg_authn *) authn;      /* swapped by a reload that changes identity;
                                             replaced ones are stopped, freed at exit */
  struct mg_server *server;
  struct mg_metrics metrics;
  _Atomic int ready;                      /* 0 while starting or after lineage failure */
  _Atomic int stopping;
};

extern struct mg_app *mg_app;             /* the one instance (set by serve) */

/* Takes a reference on the current index (release with mg_policy_index_unref). */
struct mg_policy_index *mg_app_index_acquire(struct mg_app *app);
/* Rebuilds the index from the store and swaps it in (after an admin edit). */
int mg_app_index_rebuild(struct mg_app *app);

/* Admin API: starts its listener and thread (admin.c). */
struct mg_admin;
int mg_admin_start(struct mg_app *app, struct mg_admin **out, char *err, size_t errlen);
void mg_admin_stop(struct mg_admin *a);

#endif /* MG_SIDECAR_APP_H */

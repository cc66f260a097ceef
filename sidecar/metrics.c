/*
 * metrics.c — request counters and the latency histogram, updated lock-free by workers
 * and rendered by the admin API's /metrics. No principals ever go into labels.
 */
#include "sidecar/app.h"

const double mg_metrics_buckets[MG_METRICS_NBUCKETS] = {
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5,
};

void mg_metrics_observe(struct mg_metrics *m, enum mg_decision_kind d, int status,
                        uint64_t duration_us) {
  atomic_fetch_add_explicit(&m->requests[d], 1, memory_order_relaxed);
  int cls = status >= 100 && status < 600 ? status / 100 : 0;
  atomic_fetch_add_explicit(&m->status[cls], 1, memory_order_relaxed);
  double s = (double)duration_us / 1e6;
  int b = 0;
  while (b < MG_METRICS_NBUCKETS && s > mg_metrics_buckets[b]) b++;
  atomic_fetch_add_explicit(&m->latency_bucket[b], 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&m->latency_sum_us, duration_us, memory_order_relaxed);
  atomic_fetch_add_explicit(&m->latency_count, 1, memory_order_relaxed);
}

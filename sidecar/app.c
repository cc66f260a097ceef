/*
 * app.c — the process-wide context: the current compiled policy index and its swap.
 *
 * Readers take the index with one atomic load plus a reference; an admin edit rebuilds
 * the whole index from the store (one read transaction) and swaps the pointer, so the
 * data path sees an edit on its very next request and never waits for a rebuild.
 */
#include "sidecar/app.h"

#include <stdlib.h>

struct mg_app *mg_app;

struct mg_policy_index *mg_app_index_acquire(struct mg_app *app) {
  /* The lock makes load+ref atomic against a concurrent swap+unref of the same index. */
  pthread_mutex_lock(&app->index_lock);
  struct mg_policy_index *ix = atomic_load(&app->index);
  if (ix) mg_policy_index_ref(ix);
  pthread_mutex_unlock(&app->index_lock);
  return ix;
}

int mg_app_index_rebuild(struct mg_app *app) {
  struct mg_policy_index *nix = NULL;
  int rv = mg_policy_index_build(app->policy, &nix);
  if (rv) {
    mg_error("policy: index rebuild failed: %s (the previous policy keeps serving)", mg_strerror(rv));
    atomic_store(&app->index_stale, 1);
    return rv;
  }
  atomic_store(&app->index_stale, 0);
  pthread_mutex_lock(&app->index_lock);
  struct mg_policy_index *old = atomic_exchange(&app->index, nix);
  pthread_mutex_unlock(&app->index_lock);
  if (old) mg_policy_index_unref(old);
  mg_info("policy: revision %s (generation %llu, %zu grants) in force", mg_policy_index_revision(nix),
          (unsigned long long)mg_policy_index_generation(nix), mg_policy_index_count(nix));
  return 0;
}

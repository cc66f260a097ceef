/*
 * openlineage.c — one OpenLineage 2-0-2 RunEvent per forwarded request (an allowed access
 * entry and its outcome), for `lineage export --format openlineage`.
 *
 * eventType from the outcome: ABORT when the stream was reset, FAIL for status 0 or
 * >= 500, else COMPLETE; eventTime = the outcome's time; run.runId = request_id (a
 * UUIDv7); job = {namespace: origin, name: product}. Reads list the dataset as an input
 * (inputStatistics.size = bytes sent to the client), writes as an output
 * (outputStatistics.size = bytes received from it); a request without a dataset
 * (product-level grant) has neither. The custom run facet "meshgate_access" carries
 * principal, grant, purpose, decision, origin, index (of the access entry), method, path
 * and status. Built with jansson (JSON_COMPACT | JSON_SORT_KEYS): these lines are not
 * signed, so readability beats byte control here.
 */
#include "lineage/lineage_store.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define PRODUCER "https://github.com/meshgate/meshgate"
#define RUN_SCHEMA "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
#define FACET_SCHEMA "https://github.com/meshgate/meshgate/blob/main/README.md#meshgate_access"
#define IN_STATS_SCHEMA "https://openlineage.io/spec/facets/1-0-0/InputStatisticsInputDatasetFacet.json#/$defs/InputStatisticsInputDatasetFacet"
#define OUT_STATS_SCHEMA \
  "https://openlineage.io/spec/facets/1-0-2/OutputStatisticsOutputDatasetFacet.json#/$defs/OutputStatisticsOutputDatasetFacet"
#define JOBTYPE_SCHEMA "https://openlineage.io/spec/facets/2-0-4/JobTypeJobFacet.json#/$defs/JobTypeJobFacet"

static void copy(json_t *dst, const json_t *src, const char *key) {
  json_t *v = json_object_get(src, key);
  if (v) json_object_set(dst, key, v);
}

int mg_lineage_ol_event(const struct json_t *access_, const struct json_t *outcome_,
                        struct mg_buf *out) {
  json_t *a = (json_t *)access_, *o = (json_t *)outcome_;
  const char *product = json_string_value(json_object_get(a, "product"));
  const char *dataset = json_string_value(json_object_get(a, "dataset"));
  const char *action = json_string_value(json_object_get(a, "action"));
  const char *origin = json_string_value(json_object_get(a, "origin"));
  const char *rid = json_string_value(json_object_get(a, "request_id"));
  json_int_t status = json_integer_value(json_object_get(o, "status"));
  int rc = -ENOMEM;
  if (!origin || !rid || !json_string_value(json_object_get(o, "time"))) return MG_LINEAGE_E_FORMAT;
  const char *type = json_object_get(o, "reset") ? "ABORT"
                     : status == 0 || status >= 500 ? "FAIL"
                                                    : "COMPLETE";
  json_t *ev = json_object(), *facet = json_object();
  if (!ev || !facet) goto out;
  json_object_set_new(facet, "_producer", json_string(PRODUCER));
  json_object_set_new(facet, "_schemaURL", json_string(FACET_SCHEMA));
  static const char *const fkeys[] = {"principal", "grant", "purpose", "decision", "origin",
                                      "index", "method", "path", "policy_revision"};
  for (size_t i = 0; i < MG_ARRAY_LEN(fkeys); i++) copy(facet, a, fkeys[i]);
  copy(facet, o, "status");
  json_object_set_new(ev, "eventType", json_string(type));
  json_object_set(ev, "eventTime", json_object_get(o, "time"));
  json_object_set_new(ev, "producer", json_string(PRODUCER));
  json_object_set_new(ev, "schemaURL", json_string(RUN_SCHEMA));
  json_object_set_new(ev, "run", json_pack("{s:s, s:{s:o}}", "runId", rid, "facets",
                                           "meshgate_access", facet));
  facet = NULL;
  json_object_set_new(ev, "job",
                      json_pack("{s:s, s:s, s:{s:{s:s, s:s, s:s, s:s, s:s}}}", "namespace", origin,
                                "name", product ? product : "", "facets", "jobType",
                                "_producer", PRODUCER, "_schemaURL", JOBTYPE_SCHEMA,
                                "processingType", "BATCH", "integration", "MESHGATE", "jobType",
                                "REQUEST"));
  json_t *ins = json_array(), *outs = json_array();
  json_object_set_new(ev, "inputs", ins);
  json_object_set_new(ev, "outputs", outs);
  if (dataset && product && action) {
    char ns[512];
    snprintf(ns, sizeof ns, "meshgate://%s", product);
    bool write = strcmp(action, "write") == 0;
    json_int_t size = json_integer_value(json_object_get(o, write ? "bytes_in" : "bytes_out"));
    json_t *d = json_pack("{s:s, s:s, s:{s:{s:s, s:s, s:I}}}", "namespace", ns, "name", dataset,
                          write ? "outputFacets" : "inputFacets",
                          write ? "outputStatistics" : "inputStatistics", "_producer", PRODUCER,
                          "_schemaURL", write ? OUT_STATS_SCHEMA : IN_STATS_SCHEMA, "size", size);
    if (d) json_array_append_new(write ? outs : ins, d);
  }
  char *s = json_dumps(ev, JSON_COMPACT | JSON_SORT_KEYS);
  if (!s) goto out;
  rc = mg_buf_appends(out, s);
  if (!rc) rc = mg_buf_append(out, "\n", 1);
  free(s);
out:
  json_decref(facet);
  json_decref(ev);
  return rc;
}

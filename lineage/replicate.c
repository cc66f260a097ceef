/*
 * replicate.c — the public entry point that wires a JetStream shipper to a running
 * writer: the writer's log and read-back index go to mg_shipper_start, and the writer
 * takes ownership of the shipper (it notifies it after every commit and stops it at close).
 */
#include "lineage/lineage_int.h"

int mg_lineage_writer_replicate(struct mg_lineage_writer *w, const struct mg_lineage_nats *n) {
  struct mg_shipper_config sc = {
    .servers = n->servers, .nservers = n->nservers, .stream = n->stream, .subject = n->subject,
    .replicas = n->replicas, .creds = n->creds, .tls_ca = n->tls_ca,
    .origin = mg_lineage_writer_origin(w),
  };
  struct mg_shipper *s = NULL;
  uint64_t seq = 0, shipped = mg_lineage_writer_shipped(w, &seq);
  int rv = mg_shipper_start(&sc, mg_lineage_writer_log(w), shipped, seq, mg_lineage_writer_ack,
                            w, &s);
  if (rv) return rv;
  mg_lineage_writer_attach_shipper(w, s);
  return 0;
}

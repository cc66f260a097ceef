/*
 * errors.c — the lineage module's error namer (MG_LINEAGE_E_*), registered with
 * mg_strerror() by mg_lineage_init(). Kept in its own file so every program that links
 * any part of lineage/ (the CLI's verify, the fuzzers) can name the codes.
 */
#include "lineage/lineage.h"

static const char *lineage_strerror(int err) {
  switch (err) {
  case MG_LINEAGE_E_FULL: return "lineage log full (map or disk): failing closed";
  case MG_LINEAGE_E_STORE: return "lineage store (LMDB) failure";
  case MG_LINEAGE_E_CLOSED: return "lineage writer closed or failed";
  case MG_LINEAGE_E_KEY: return "bad, unreadable or unknown lineage key";
  case MG_LINEAGE_E_FORMAT: return "malformed lineage export, note or entry";
  case MG_LINEAGE_E_VERIFY: return "lineage verification failed";
  case MG_LINEAGE_E_RANGE: return "index or size out of range for a proof";
  case MG_LINEAGE_E_NATS: return "NATS / JetStream failure";
  case MG_LINEAGE_E_FOREIGN: return "stream holds a higher index for this origin than the log";
  case MG_LINEAGE_E_LAYOUT:
    return "lineage log has another on-disk layout than this meshgate reads (a pre-release log: "
           "export it with the build that wrote it, then start a new log)";
  default: return NULL;
  }
}

void mg_lineage_init(void) { mg_strerror_register(MG_ERR_LINEAGE_BASE, lineage_strerror); }

/*
 * shipper_int.h — what shipper.c and export_nats.c share: the subject token encoding of an
 * origin, the message header names, and a bounded reader of a stream's messages.
 * Private to lineage/.
 */
#ifndef MG_SHIPPER_INT_H
#define MG_SHIPPER_INT_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#include <nats/nats.h>

#include "common/common.h"

/* Headers of every meshgate lineage message (besides Nats-Msg-Id). */
#define MG_SHIP_H_KIND      "Mg-Kind"       /* "entries" | "checkpoint" */
#define MG_SHIP_H_FIRST     "Mg-First"      /* entries: first index of the body */
#define MG_SHIP_H_LAST      "Mg-Last"       /* entries: last index of the body */
#define MG_SHIP_H_SIZE      "Mg-Size"       /* checkpoint: tree size it signs */
#define MG_SHIP_H_ACKED     "Mg-Acked"      /* resume base: entries < it were stored ... */
#define MG_SHIP_H_ACKED_SEQ "Mg-Acked-Seq"  /* ... and later entries only at seq > this */
#define MG_SHIP_KIND_ENTRIES    "entries"
#define MG_SHIP_KIND_CHECKPOINT "checkpoint"

/* Encodes an origin as one NATS subject token: bytes 0x21..0x7E other than '.', '*', '>'
 * and '%' are kept, every other byte becomes "%XX" (uppercase hex). Injective, and the
 * result is never empty for a non-empty origin. Appends to out. MG_ERR_INVALID for "". */
int mg_shipper_token_encode(const char *origin, struct mg_buf *out);
/* The inverse; strict (rejects lowercase hex, a kept byte written as %XX, raw bytes that
 * would have been escaped). Appends to out. MG_ERR_INVALID. */
int mg_shipper_token_decode(const char *tok, size_t n, struct mg_buf *out);

/* Subject token of `subject` after the last '.', or the whole subject. */
const char *mg_shipper_last_token(const char *subject, size_t *n);

/* Reads a header as an unsigned decimal; MG_ERR_NOTFOUND / MG_ERR_INVALID. */
int mg_shipper_header_u64(natsMsg *m, const char *key, uint64_t *out);

/* Called for each message of a scan in stream order with its stream sequence; nonzero
 * stops the scan (and is returned). */
typedef int (*mg_shipper_scan_cb)(void *arg, natsMsg *m, uint64_t seq);
/* Reads the messages of `stream` matching `filter` (NULL: all) with stream sequence in
 * [from, to] through an ordered consumer, each wait bounded by wait_ms. Stops after `to`
 * or when the consumer reports nothing pending; for a filter without wildcards, only once
 * it reached the subject's last message on the stream leader (the consumer's replica may
 * lag behind). 0, a callback's value, or MG_LINEAGE_E_NATS. */
int mg_shipper_scan(jsCtx *js, const char *stream, const char *filter, uint64_t from,
                    uint64_t to, int wait_ms, mg_shipper_scan_cb cb, void *arg);
/* The same, but it stops where the consumer's replica ends (the caller compares the last
 * sequence read with `to`); with headers_only the messages carry their headers and no body. */
int mg_shipper_scan_opts(jsCtx *js, const char *stream, const char *filter, uint64_t from,
                         uint64_t to, int wait_ms, bool headers_only, mg_shipper_scan_cb cb,
                         void *arg);

#endif /* MG_SHIPPER_INT_H */

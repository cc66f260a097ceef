/*
 * shipper.c — replication of the local lineage log to NATS JetStream (SPEC "Replication").
 *
 * One background thread reads committed entries from the log and publishes them,
 * pipelined (up to MAX_INFLIGHT messages / MAX_INFLIGHT_BYTES in flight), to
 *   <subject>.<origin token>
 * where the origin token is the origin with every byte outside 0x21..0x7E, and '.', '*',
 * '>', '%', written as %XX (uppercase hex): injective, one token, readable for the usual
 * "lineage.example/orders/host-1" (-> "lineage%2Eexample/orders/host-1").
 *
 * Messages. An entries message is one local commit group (or a part of one, bodies are
 * capped at MAX_BODY so a message fits NATS' 1 MiB max_payload; after a restart or while
 * catching up, groups are re-formed from the log): body = the exact entry lines, each + LF;
 * Nats-Msg-Id "<origin>/<first>-<last>"; headers Mg-Kind: entries, Mg-First, Mg-Last. A
 * checkpoint message: Nats-Msg-Id "<origin>/cp/<size>", Mg-Kind: checkpoint, Mg-Size, body
 * = the signed note. It is sent once every entry below its size has been sent, so it
 * follows them in the stream (possibly after some later entries: export places it).
 *
 * Exactly once. Pipelining on NATS 2.9 cannot use a per-subject sequence expectation, so
 * a lost message followed by a stored one (leader election, a dropped TCP connection
 * whose tail is resent from the reconnect buffer) would leave a gap. Every message
 * therefore carries its resume base: Mg-Acked = P (all entries < P were acknowledged when
 * it was sent) and Mg-Acked-Seq = S (the stream sequence at or below which those
 * acknowledged messages lie; anything of ours with entries >= P lies above S). Resync —
 * at start, after every reconnect, publish error or duplicate ack — settles what is in
 * flight, reads the subject's last message L, and, unless L starts exactly at its P,
 * scans our subject's messages in (S, L.seq] with an ordered consumer. The union of
 * their ranges from P gives the contiguous end E and the holes below the highest index;
 * holes are re-read from the log and published synchronously (they carry L's base, so a
 * crash halfway repeats the same computation), and shipping resumes at the highest index
 * + 1. The stream may thus hold an origin's messages out of index order after a failure,
 * never an entry twice or a gap; export orders by index. Msg-Id dedup (a 2 minute
 * window) covers exact retries only.
 *
 * A start after a crash. A predecessor killed while publishing may still have messages on
 * their way into the stream: the first resync after start waits until the subject's last
 * sequence stands still (two reads 250 ms apart, at most 3 s) before resuming after it.
 *
 * Repeats alike. After a leader change or a restart of the cluster, nats-server 2.9 can leave
 * a stream's replicas disagreeing: a message that was in flight (or acknowledged) can be kept
 * by one replica at a sequence that the new leader, which never got it, gives to the next
 * message published; that replica keeps its own message there and skips the leader's. Reads
 * (resync's and the audit's consumers, an export) are served by any replica. Resuming with
 * those entries grouped differently would make the replicas hold different entries: one lacks
 * some, and re-sending them puts them twice in another. So the shipper remembers the last
 * HIST_CAP messages it published (ranges and checkpoints, in order), and after a resync that
 * finds the stream's entries ending where one of them ended, it first publishes the ones that
 * followed again exactly as they were (same ranges, so same Msg-Ids) and in the same order:
 * whatever a replica kept at those sequences then holds the same entries as the leader's
 * copy. Hole fills reuse a remembered message's range as well.
 *
 * Acks. The pub-ack handler (a libnats thread) only marks the in-flight record; the
 * shipper thread advances P contiguously. A duplicate ack means the identical range is
 * stored (Msg-Id is the range), so it counts, but forces a resync.
 *
 * Audit (read-back). An acknowledgement is not proof that the entries stay in the stream:
 * nats-server 2.9 acknowledges before fsync, and a leader killed at the wrong moment has
 * lost acknowledged messages here (nats-server#6236). So every AUDIT_EVERY_MS the shipper
 * reads our subject's messages back, headers only, from V_seq + 1 to the sequence of the
 * newest acknowledged message, and extends V, the prefix of entries it has seen in the
 * stream. An acknowledged entry below P that the read-back does not find is lost: it is
 * re-read from the local log and published again (with a Msg-Id of its own, so a dedup
 * entry left by the lost message cannot swallow it), and the next audit must find it. Such a
 * re-send is never deduplicated, so it is made only when two full passes in a row (each
 * through a new consumer, which may sit on another replica) found the range missing: a read
 * from a replica that lacks what the others hold, or a message that shows up late, does not
 * get the range stored twice.
 * V_seq is kept such that every message of ours holding an entry >= V lies above it, so
 * the pair (V, V_seq) resumes the audit after a restart. on_ack(V, V_seq) goes to the
 * writer, which stores it (meta "shipped", "shipped_seq") and prunes only below V
 * (lineage.nats.retention_s): nothing leaves the local log before it was read back.
 *
 * Start-up: connect (one bounded attempt; libnats keeps retrying in the background when
 * it fails), create or check the stream, resync. An unreachable NATS is not an error; a
 * stream that cannot work, or holding an index >= the local log's size for our origin
 * (MG_LINEAGE_E_FOREIGN), is. Locks: mu guards the in-flight ring and the queues; it is
 * never held across a libnats call that may wait for acks (the ack handler takes it).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nats/nats.h>

#include "lineage/lineage_int.h"
#include "lineage/shipper_int.h"

#define MAX_INFLIGHT       256
#define MAX_INFLIGHT_BYTES (32u << 20)
#define MAX_BODY           (1000u * 1024u) /* + headers < 1 MiB max_payload */
#define MAX_MSG_ENTRIES    16384
#define GROUPQ_CAP         65536
#define CPQ_CAP            16
#define DUP_WINDOW_NS      (120LL * 1000000000LL)
#define API_WAIT_MS        5000
#define SETTLE_MS          3000
#define ACK_WAIT_MS        5000  /* per async publish; libnats reports a timeout after it */
#define HEAD_STALL_US      ((ACK_WAIT_MS + 3000) * 1000LL) /* no answer at all: resync */
#define SCAN_WAIT_MS       5000
#define BACKOFF_MIN_MS     100
#define BACKOFF_MAX_MS     5000
#define AUDIT_EVERY_MS     1000
#define AUDIT_MAX_MSGS     50000 /* per pass: a first read-back of a long stream is spread */
#define SCAN_FULL          1     /* scan_cb: the pass read its maximum */
#define HIST_CAP           8192  /* messages remembered, in send order, to re-send them alike */

enum rec_state { REC_PENDING = 0, REC_OK, REC_FAILED };

struct rec {
  bool cp;
  uint64_t first, last; /* cp: first = last = size */
  uint64_t seq;
  int64_t sent_us;
  size_t bytes;
  char *note;           /* cp only, kept to requeue it when the publish fails */
  enum rec_state state;
  bool dup;
};

struct range { uint64_t first, last; };
struct sent { bool cp; uint64_t first, last; }; /* a message as published (cp: first = size) */
struct span { uint64_t first, last, seq; }; /* a message of ours seen in the stream */
struct cpent { uint64_t size; char *note; };

struct mg_shipper {
  /* config (copies) */
  char **servers;
  size_t nservers;
  char *stream, *subject, *full_subject, *origin, *creds, *tls_ca;
  int replicas;
  struct mg_lineage_log *log;
  mg_shipper_ack_cb on_ack;
  void *ack_arg;

  natsConnection *nc;
  jsCtx *js;

  pthread_t thr;
  bool thr_started;
  pthread_mutex_t mu;
  pthread_cond_t cv;

  /* under mu */
  bool stop;
  int64_t stop_deadline_us;
  bool need_setup, need_resync, fatal;
  bool closed;                 /* libnats' last callback ran: s may be freed */
  struct rec ring[MAX_INFLIGHT];
  size_t ring_head, ring_n, ring_bytes;
  struct range *gq;            /* commit groups notified by the writer */
  size_t gq_head, gq_n;
  struct cpent cpq[CPQ_CAP];   /* checkpoints waiting for their entries to be sent */
  size_t cpq_n;

  /* shipper thread only */
  uint64_t next;     /* next entry index to publish */
  uint64_t acked_p;  /* P: contiguous acknowledged prefix */
  uint64_t acked_s;  /* S */
  uint64_t ver_p;    /* V: every entry < V was read back from the stream */
  uint64_t ver_s;    /* every message of ours with an entry >= V has a sequence > this */
  uint64_t audit_hi; /* highest sequence of an audit's re-sent message */
  uint64_t hole_logged; /* 1 + first index of the last lost range logged (0: none) */
  uint64_t hole_seen;   /* 1 + first index of the lost range the last full audit pass found */
  struct sent *hist;    /* ring (HIST_CAP) of the messages published, in order; see replay */
  size_t hist_head, hist_n;
  size_t hist_cur;      /* records [hist_cur, hist_n) are to be published again, as they were */
  int64_t audit_due_us;
  uint64_t reported; /* last V given to on_ack */
  bool synced;       /* a resync succeeded since the last (re)connect / error */
  bool start_quiet;  /* the stream's end was seen to stand still once since start */
  bool audit_failing;
  bool limits;       /* the stream has max_age/max_msgs/max_bytes: no read-back (audit) */
  bool defer_ack;    /* in mg_shipper_start: on_ack runs on the shipper thread only */

  _Atomic uint64_t stat_acked;
  _Atomic uint64_t stat_verified;
  atomic_bool connected;
  atomic_int last_error;
};

/* ---- token encoding ----------------------------------------------------------- */

static bool token_keep(unsigned char c) {
  return c >= 0x21 && c <= 0x7e && c != '.' && c != '*' && c != '>' && c != '%';
}

int mg_shipper_token_encode(const char *origin, struct mg_buf *out) {
  static const char hex[] = "0123456789ABCDEF";
  if (!origin || !*origin)
    return MG_ERR_INVALID;
  for (const unsigned char *p = (const unsigned char *)origin; *p; p++) {
    char esc[3] = {'%', hex[*p >> 4], hex[*p & 15]};
    int rc = token_keep(*p) ? mg_buf_append(out, p, 1) : mg_buf_append(out, esc, 3);
    if (rc)
      return rc;
  }
  return 0;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

int mg_shipper_token_decode(const char *tok, size_t n, struct mg_buf *out) {
  if (n == 0)
    return MG_ERR_INVALID;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)tok[i];
    if (c == '%') {
      if (i + 2 >= n)
        return MG_ERR_INVALID;
      int h = hexval(tok[i + 1]), l = hexval(tok[i + 2]);
      if (h < 0 || l < 0)
        return MG_ERR_INVALID;
      unsigned char v = (unsigned char)(h << 4 | l);
      if (token_keep(v) || v == 0) /* canonical form only; NUL cannot be in an origin */
        return MG_ERR_INVALID;
      int rc = mg_buf_append(out, &v, 1);
      if (rc)
        return rc;
      i += 2;
    } else if (!token_keep(c)) {
      return MG_ERR_INVALID;
    } else {
      int rc = mg_buf_append(out, &c, 1);
      if (rc)
        return rc;
    }
  }
  return 0;
}

const char *mg_shipper_last_token(const char *subject, size_t *n) {
  const char *dot = strrchr(subject, '.');
  const char *t = dot ? dot + 1 : subject;
  *n = strlen(t);
  return t;
}

int mg_shipper_header_u64(natsMsg *m, const char *key, uint64_t *out) {
  const char *v = NULL;
  if (natsMsgHeader_Get(m, key, &v) != NATS_OK || !v)
    return MG_ERR_NOTFOUND;
  if (*v < '0' || *v > '9')
    return MG_ERR_INVALID;
  char *end = NULL;
  errno = 0;
  unsigned long long x = strtoull(v, &end, 10);
  if (errno || *end)
    return MG_ERR_INVALID;
  *out = x;
  return 0;
}

/* ---- scan ------------------------------------------------------------------------ */

/* Where the stream leader says the subject `filter` ends (its last message's sequence), at
 * most `to`; 0 when it cannot tell (a wildcard filter, an error). */
static uint64_t subject_end(jsCtx *js, const char *stream, const char *filter, uint64_t to) {
  natsMsg *m = NULL;
  jsErrCode jerr = 0;
  if (!filter || strpbrk(filter, "*>") ||
      js_GetLastMsg(&m, js, stream, filter, NULL, &jerr) != NATS_OK)
    return 0;
  uint64_t seq = natsMsg_GetSequence(m);
  natsMsg_Destroy(m);
  return MG_MIN(seq, to);
}

/* follow: when the consumer reports nothing pending before `to`, read on to the subject's
 * end on the leader (see shipper_int.h) */
static int scan_read(jsCtx *js, const char *stream, const char *filter, uint64_t from,
                     uint64_t to, int wait_ms, bool headers_only, bool follow,
                     mg_shipper_scan_cb cb, void *arg) {
  natsSubscription *sub = NULL;
  jsSubOptions so;
  jsErrCode jerr = 0;
  int rc = 0;
  bool extended = !follow;
  if (from == 0)
    from = 1;
  if (from > to)
    return 0;
  jsSubOptions_Init(&so);
  so.Stream = stream;
  so.Ordered = true;
  so.Config.DeliverPolicy = js_DeliverByStartSequence;
  so.Config.OptStartSeq = from;
  so.Config.HeadersOnly = headers_only;
  natsStatus st = js_SubscribeSync(&sub, js, filter, NULL, &so, &jerr);
  if (st != NATS_OK) {
    mg_warn("lineage nats: cannot read stream %s from %" PRIu64 ": %s (%d)", stream, from,
            natsStatus_GetText(st), (int)jerr);
    return MG_LINEAGE_E_NATS;
  }
  for (;;) {
    natsMsg *m = NULL;
    jsMsgMetaData *meta = NULL;
    st = natsSubscription_NextMsg(&m, sub, wait_ms);
    if (st != NATS_OK) {
      mg_warn("lineage nats: reading stream %s: %s", stream, natsStatus_GetText(st));
      rc = MG_LINEAGE_E_NATS;
      break;
    }
    if (natsMsg_GetMetaData(&meta, m) != NATS_OK) {
      natsMsg_Destroy(m);
      continue; /* not a stream message (status): the ordered consumer handles those */
    }
    uint64_t seq = meta->Sequence.Stream, pending = meta->NumPending;
    jsMsgMetaData_Destroy(meta);
    if (seq > to) {
      natsMsg_Destroy(m);
      break;
    }
    rc = cb(arg, m, seq);
    natsMsg_Destroy(m);
    if (rc || seq >= to)
      break;
    if (pending == 0 && !extended) {
      /* nothing more on the replica the consumer sits on, which may lag behind the leader (a
       * node catching up after a restart): read on to where the leader says the subject
       * ends (each message waited for up to wait_ms) */
      uint64_t end = subject_end(js, stream, filter, to);
      if (end <= seq)
        break;
      to = end;
      extended = true;
    }
  }
  natsSubscription_Unsubscribe(sub);
  natsSubscription_Destroy(sub);
  return rc;
}

int mg_shipper_scan(jsCtx *js, const char *stream, const char *filter, uint64_t from,
                    uint64_t to, int wait_ms, mg_shipper_scan_cb cb, void *arg) {
  return scan_read(js, stream, filter, from, to, wait_ms, false, true, cb, arg);
}

int mg_shipper_scan_opts(jsCtx *js, const char *stream, const char *filter, uint64_t from,
                         uint64_t to, int wait_ms, bool headers_only, mg_shipper_scan_cb cb,
                         void *arg) {
  return scan_read(js, stream, filter, from, to, wait_ms, headers_only, false, cb, arg);
}

/* ---- small helpers ----------------------------------------------------------------- */

static int64_t deadline_left_ms(int64_t deadline_us) {
  int64_t left = (deadline_us - mg_mono_now_us()) / 1000;
  return left < 0 ? 0 : left;
}

static void cv_wait_ms(struct mg_shipper *s, int ms) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += ms / 1000;
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_cond_timedwait(&s->cv, &s->mu, &ts);
}

static void set_error(struct mg_shipper *s, int err) { atomic_store(&s->last_error, err); }

static int nats_err(struct mg_shipper *s, const char *what, natsStatus st, jsErrCode jerr) {
  const char *txt = nats_GetLastError(NULL);
  mg_warn("lineage nats: %s: %s%s%s (jetstream error %d)", what, natsStatus_GetText(st),
          txt ? ": " : "", txt ? txt : "", (int)jerr);
  set_error(s, MG_LINEAGE_E_NATS);
  return MG_LINEAGE_E_NATS;
}

/* ---- connection callbacks (libnats threads) ----------------------------------------- */

static void on_connected(natsConnection *nc, void *arg) {
  struct mg_shipper *s = arg;
  (void)nc;
  pthread_mutex_lock(&s->mu);
  atomic_store(&s->connected, true);
  s->need_resync = true;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void on_disconnected(natsConnection *nc, void *arg) {
  struct mg_shipper *s = arg;
  (void)nc;
  pthread_mutex_lock(&s->mu);
  atomic_store(&s->connected, false);
  s->need_resync = true;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void on_closed(natsConnection *nc, void *arg) {
  struct mg_shipper *s = arg;
  (void)nc;
  pthread_mutex_lock(&s->mu);
  atomic_store(&s->connected, false);
  s->closed = true;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static struct rec *ring_find(struct mg_shipper *s, bool cp, uint64_t first) {
  for (size_t i = 0; i < s->ring_n; i++) {
    struct rec *r = &s->ring[(s->ring_head + i) % MAX_INFLIGHT];
    if (r->cp == cp && r->first == first && r->state == REC_PENDING)
      return r;
  }
  return NULL;
}

static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *arg) {
  struct mg_shipper *s = arg;
  const char *kind = NULL;
  uint64_t key = 0;
  (void)js;
  natsMsgHeader_Get(msg, MG_SHIP_H_KIND, &kind);
  bool cp = kind && strcmp(kind, MG_SHIP_KIND_CHECKPOINT) == 0;
  if (mg_shipper_header_u64(msg, cp ? MG_SHIP_H_SIZE : MG_SHIP_H_FIRST, &key) == 0) {
    pthread_mutex_lock(&s->mu);
    struct rec *r = ring_find(s, cp, key);
    if (r) {
      if (pa && !pae) {
        r->state = REC_OK;
        r->seq = pa->Sequence;
        r->dup = pa->Duplicate || pa->Sequence == 0;
      } else {
        r->state = REC_FAILED;
        s->need_resync = true; /* stop sending after a failure: later ones would fail too */
        if (pae)
          mg_warn("lineage nats: publish of %s %" PRIu64 " failed: %s (%s, jetstream error %d)",
                  cp ? "checkpoint" : "entries", key, natsStatus_GetText(pae->Err),
                  pae->ErrText ? pae->ErrText : "", (int)pae->ErrCode);
      }
      pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
  }
  natsMsg_Destroy(msg);
}

/* ---- messages ------------------------------------------------------------------------ */

struct readctx {
  struct mg_buf *body;
  size_t cap;
  uint64_t expect;
  uint64_t n;
  bool full;
  int err;
};

static int read_line(void *arg, uint64_t index, const char *line, size_t len) {
  struct readctx *c = arg;
  if (index != c->expect) {
    c->err = MG_LINEAGE_E_STORE;
    return 1;
  }
  if (c->n > 0 && c->body->len + len + 1 > c->cap) {
    c->full = true;
    return 1;
  }
  if (mg_buf_append(c->body, line, len) || mg_buf_append(c->body, "\n", 1)) {
    c->err = -ENOMEM;
    return 1;
  }
  c->expect++;
  c->n++;
  return 0;
}

/* Reads entries [first, first+max) (fewer when the body cap is reached). *n = count. */
static int read_entries(struct mg_shipper *s, uint64_t first, uint64_t max, struct mg_buf *body,
                        uint64_t *n) {
  struct readctx c = {.body = body, .expect = first, .cap = MAX_BODY};
  /* a server configured below the default 1 MiB max_payload: leave room for headers */
  int64_t mp = s->nc ? natsConnection_GetMaxPayload(s->nc) : 0;
  if (mp > 8192 && (uint64_t)mp - 4096 < MAX_BODY)
    c.cap = (size_t)mp - 4096;
  mg_buf_reset(body);
  int rc = mg_lineage_log_read(s->log, first, max, read_line, &c);
  if (c.err)
    return c.err;
  if (rc < 0 && !c.full)
    return rc;
  *n = c.n;
  return c.n ? 0 : MG_LINEAGE_E_STORE;
}

static int set_u64_header(natsMsg *m, const char *key, uint64_t v) {
  char num[24];
  snprintf(num, sizeof num, "%" PRIu64, v);
  return natsMsgHeader_Set(m, key, num) == NATS_OK ? 0 : -ENOMEM;
}

/* Builds an entries (cp=false: first..last) or checkpoint (first = size) message. */
static int build_msg(struct mg_shipper *s, bool cp, uint64_t first, uint64_t last,
                     const char *body, size_t len, uint64_t base_p, uint64_t base_s,
                     natsMsg **out, char *msgid, size_t msgid_len) {
  natsMsg *m = NULL;
  if (natsMsg_Create(&m, s->full_subject, NULL, body, (int)len) != NATS_OK)
    return -ENOMEM;
  if (cp)
    snprintf(msgid, msgid_len, "%s/cp/%" PRIu64, s->origin, first);
  else
    snprintf(msgid, msgid_len, "%s/%" PRIu64 "-%" PRIu64, s->origin, first, last);
  int rc = 0;
  if (natsMsgHeader_Set(m, MG_SHIP_H_KIND, cp ? MG_SHIP_KIND_CHECKPOINT : MG_SHIP_KIND_ENTRIES))
    rc = -ENOMEM;
  if (!rc && cp)
    rc = set_u64_header(m, MG_SHIP_H_SIZE, first);
  if (!rc && !cp)
    rc = set_u64_header(m, MG_SHIP_H_FIRST, first);
  if (!rc && !cp)
    rc = set_u64_header(m, MG_SHIP_H_LAST, last);
  if (!rc)
    rc = set_u64_header(m, MG_SHIP_H_ACKED, base_p);
  if (!rc)
    rc = set_u64_header(m, MG_SHIP_H_ACKED_SEQ, base_s);
  if (rc) {
    natsMsg_Destroy(m);
    return rc;
  }
  *out = m;
  return 0;
}

/* Synchronous publish (hole fills). */
static int publish_sync(struct mg_shipper *s, natsMsg *m, const char *msgid, uint64_t *seq) {
  jsPubOptions po;
  jsPubAck *pa = NULL;
  jsErrCode jerr = 0;
  jsPubOptions_Init(&po);
  po.MsgId = msgid;
  po.MaxWait = API_WAIT_MS;
  natsStatus st = js_PublishMsg(&pa, s->js, m, &po, &jerr);
  if (st != NATS_OK)
    return nats_err(s, "publish (resync)", st, jerr);
  *seq = pa->Sequence;
  jsPubAck_Destroy(pa);
  return 0;
}

/* ---- stream set-up -------------------------------------------------------------------- */

/* Does the subject pattern `pat` match the concrete subject `subj`? */
static bool subject_matches(const char *pat, const char *subj) {
  for (;;) {
    const char *pe = strchr(pat, '.'), *se = strchr(subj, '.');
    size_t pl = pe ? (size_t)(pe - pat) : strlen(pat);
    size_t sl = se ? (size_t)(se - subj) : strlen(subj);
    if (pl == 1 && pat[0] == '>')
      return true;
    if (!(pl == 1 && pat[0] == '*') && (pl != sl || memcmp(pat, subj, pl) != 0))
      return false;
    if (!pe || !se)
      return !pe && !se;
    pat = pe + 1;
    subj = se + 1;
  }
}

static int setup_stream(struct mg_shipper *s, char *why, size_t whylen) {
  jsStreamInfo *si = NULL;
  jsErrCode jerr = 0;
  int rc = 0;
  natsStatus st = js_GetStreamInfo(&si, s->js, s->stream, NULL, &jerr);
  if (st == NATS_NOT_FOUND || jerr == JSStreamNotFoundErr) {
    jsStreamConfig sc;
    char wild[512];
    snprintf(wild, sizeof wild, "%s.>", s->subject);
    const char *subjects[1] = {wild};
    jsStreamConfig_Init(&sc);
    sc.Name = s->stream;
    sc.Subjects = subjects;
    sc.SubjectsLen = 1;
    sc.Storage = js_FileStorage;
    sc.Replicas = s->replicas;
    sc.DenyDelete = true;
    sc.DenyPurge = true;
    sc.Duplicates = DUP_WINDOW_NS;
    jerr = 0;
    st = js_AddStream(&si, s->js, &sc, NULL, &jerr);
    if (st != NATS_OK) {
      const char *txt = nats_GetLastError(NULL);
      snprintf(why, whylen, "cannot create stream %s for %s.>: %s", s->stream, s->subject,
               txt ? txt : natsStatus_GetText(st));
      /* another sidecar may have created it meanwhile: check that one instead */
      if (jerr == JSStreamNameExistErr)
        return setup_stream(s, why, whylen);
      return (st == NATS_TIMEOUT || st == NATS_NO_RESPONDERS || st == NATS_CONNECTION_CLOSED ||
              jerr == 0) ? MG_LINEAGE_E_NATS : MG_LINEAGE_E_NATS - 1000;
    }
    mg_info("lineage nats: created stream %s (%s, replicas %d)", s->stream, wild, s->replicas);
    jsStreamInfo_Destroy(si);
    return 0;
  }
  if (st != NATS_OK) {
    const char *txt = nats_GetLastError(NULL);
    snprintf(why, whylen, "cannot read stream %s: %s", s->stream,
             txt ? txt : natsStatus_GetText(st));
    return MG_LINEAGE_E_NATS;
  }
  jsStreamConfig *c = si->Config;
  bool covered = false;
  for (int i = 0; c && i < c->SubjectsLen; i++)
    if (subject_matches(c->Subjects[i], s->full_subject))
      covered = true;
  if (!c)
    snprintf(why, whylen, "stream %s: no configuration returned", s->stream);
  else if (!covered)
    snprintf(why, whylen, "stream %s does not cover subject %s", s->stream, s->full_subject);
  else if (!c->DenyDelete || !c->DenyPurge)
    snprintf(why, whylen, "stream %s must have deny_delete and deny_purge", s->stream);
  else if (c->Storage != js_FileStorage)
    snprintf(why, whylen, "stream %s must use file storage", s->stream);
  else if (c->Replicas < s->replicas)
    snprintf(why, whylen, "stream %s has %d replicas, lineage.nats.replicas asks %d", s->stream,
             (int)c->Replicas, s->replicas);
  else if (c->Retention != js_LimitsPolicy)
    snprintf(why, whylen, "stream %s must use the limits retention policy", s->stream);
  else if (c->Sealed)
    snprintf(why, whylen, "stream %s is sealed", s->stream);
  else if (c->Duplicates <= 0)
    snprintf(why, whylen, "stream %s has no duplicates window", s->stream);
  else
    why[0] = 0;
  if (why[0])
    rc = MG_LINEAGE_E_NATS - 1000; /* marker: configuration, not connectivity */
  else if ((s->limits = c->MaxAge || c->MaxMsgs > 0 || c->MaxBytes > 0 ||
                       c->MaxMsgsPerSubject > 0))
    mg_warn("lineage nats: stream %s has limits (max_age/max_msgs/max_bytes/"
            "max_msgs_per_subject): old lineage will age out of the replica, and the read-back "
            "cannot tell aged-out messages from lost ones, so it trusts acknowledgements",
            s->stream);
  jsStreamInfo_Destroy(si);
  return rc;
}
#define SETUP_CONFIG_ERR (MG_LINEAGE_E_NATS - 1000)

/* ---- in-flight bookkeeping --------------------------------------------------------- */

static void rec_free(struct rec *r) {
  free(r->note);
  memset(r, 0, sizeof *r);
}

static void cpq_push_locked(struct mg_shipper *s, uint64_t size, char *take_note) {
  for (size_t i = 0; i < s->cpq_n; i++)
    if (s->cpq[i].size == size) {
      free(take_note);
      return;
    }
  if (s->cpq_n == CPQ_CAP) { /* the newest covers more: drop the oldest */
    free(s->cpq[0].note);
    memmove(&s->cpq[0], &s->cpq[1], (CPQ_CAP - 1) * sizeof s->cpq[0]);
    s->cpq_n--;
  }
  size_t i = s->cpq_n;
  while (i > 0 && s->cpq[i - 1].size > size) { /* kept sorted by size */
    s->cpq[i] = s->cpq[i - 1];
    i--;
  }
  s->cpq[i] = (struct cpent){size, take_note};
  s->cpq_n++;
}

/* Pops acknowledged records from the head; returns true when P moved. Sets need_resync
 * on a failed head or a duplicate. */
static bool advance_locked(struct mg_shipper *s) {
  bool moved = false;
  while (s->ring_n) {
    struct rec *r = &s->ring[s->ring_head];
    if (r->state == REC_PENDING)
      break;
    if (r->state == REC_FAILED) {
      s->need_resync = true;
      break;
    }
    /* a duplicate checkpoint is just stored already; a duplicate range may mean we are
     * behind the stream */
    if (r->dup && !r->cp)
      s->need_resync = true;
    if (!r->cp) {
      s->acked_p = r->last + 1;
      moved = true;
    }
    if (r->seq > s->acked_s)
      s->acked_s = r->seq;
    s->ring_bytes -= r->bytes;
    rec_free(r);
    s->ring_head = (s->ring_head + 1) % MAX_INFLIGHT;
    s->ring_n--;
  }
  return moved;
}

static void report_ack(struct mg_shipper *s) {
  atomic_store(&s->stat_acked, MG_MAX(s->acked_p, s->ver_p));
  if (!s->defer_ack && s->ver_p > s->reported) {
    s->reported = s->ver_p;
    if (s->on_ack) /* before the stats say so: the writer has it once they do */
      s->on_ack(s->ack_arg, s->ver_p, s->ver_s);
  }
  if (!s->defer_ack)
    atomic_store(&s->stat_verified, s->ver_p);
}

/* Waits (bounded) for what is in flight, then forgets the rest: checkpoints that were not
 * acknowledged go back to the queue; entries are reconciled by the resync that follows. */
static void settle(struct mg_shipper *s) {
  pthread_mutex_lock(&s->mu);
  size_t n = s->ring_n;
  pthread_mutex_unlock(&s->mu);
  if (n && s->js) {
    jsPubOptions po;
    natsMsgList pending = {0};
    jsPubOptions_Init(&po);
    po.MaxWait = SETTLE_MS;
    js_PublishAsyncComplete(s->js, &po);
    if (js_PublishAsyncGetPendingList(&pending, s->js) == NATS_OK)
      natsMsgList_Destroy(&pending);
  }
  pthread_mutex_lock(&s->mu);
  advance_locked(s);
  while (s->ring_n) {
    struct rec *r = &s->ring[s->ring_head];
    if (r->cp && r->state != REC_OK && r->note) {
      cpq_push_locked(s, r->first, r->note);
      r->note = NULL;
    }
    rec_free(r);
    s->ring_head = (s->ring_head + 1) % MAX_INFLIGHT;
    s->ring_n--;
  }
  s->ring_bytes = 0;
  pthread_mutex_unlock(&s->mu);
  report_ack(s);
}

/* ---- sent history ----------------------------------------------------------------------- */

static struct sent *hist_at(struct mg_shipper *s, size_t i) {
  return &s->hist[(s->hist_head + i) % HIST_CAP];
}

/* Records a message just published (not a repeat of a recorded one). */
static void hist_push(struct mg_shipper *s, bool cp, uint64_t first, uint64_t last) {
  s->hist_n = s->hist_cur; /* a replay given up: its rest is not what follows any more */
  if (s->hist_n == HIST_CAP) {
    s->hist_head = (s->hist_head + 1) % HIST_CAP;
    s->hist_n--;
  }
  *hist_at(s, s->hist_n) = (struct sent){cp, first, last};
  s->hist_cur = ++s->hist_n;
}

/* After a resync found the stream's end of our entries at `high`: every message published
 * after the one ending there is to be published again as it was, in the same order (see
 * the header). Without such a message the history is forgotten. */
static void hist_resume(struct mg_shipper *s, uint64_t high) {
  size_t cur = SIZE_MAX;
  for (size_t i = s->hist_n; i-- > 0;) {
    struct sent *r = hist_at(s, i);
    if (r->cp)
      continue;
    if (r->last + 1 == high) {
      cur = i + 1; /* with the checkpoints that followed it */
    } else if (r->first == high) {
      cur = i;
      continue; /* the one before may end at high */
    }
    if (cur != SIZE_MAX || r->last < high)
      break;
  }
  if (cur == SIZE_MAX)
    s->hist_n = s->hist_cur = 0;
  else
    s->hist_cur = cur;
}

/* The end of a recorded message that started at `first` (0: none). */
static uint64_t hist_last_from(struct mg_shipper *s, uint64_t first) {
  for (size_t i = s->hist_n; i-- > 0;) {
    struct sent *r = hist_at(s, i);
    if (!r->cp && r->first == first)
      return r->last;
  }
  return 0;
}

/* The recorded message to publish again next (*note: a checkpoint's, read from the log), or
 * NULL: nothing to repeat, or the replay no longer fits where shipping stands (given up). */
static struct sent *replay_next(struct mg_shipper *s, char **note) {
  *note = NULL;
  while (s->hist_cur < s->hist_n) {
    struct sent *r = hist_at(s, s->hist_cur);
    if (!r->cp) {
      if (r->first == s->next)
        return r;
      break;
    }
    uint64_t size = 0;
    if (mg_lineage_log_checkpoint(s->log, r->first, note, &size) == 0 && size == r->first)
      return r;
    free(*note);
    *note = NULL;
    s->hist_cur++; /* not in the log (any more): skip it */
  }
  s->hist_n = s->hist_cur;
  return NULL;
}

/* ---- resync --------------------------------------------------------------------------- */

struct scanctx {
  struct mg_shipper *s;
  struct span *v;
  size_t n, cap;
  uint64_t max_cp;
  size_t msgs, max_msgs; /* messages read; stop after max_msgs (0: no limit) */
  uint64_t last_seq;     /* of the last message read */
  int err;
};

static int scan_add(struct scanctx *c, uint64_t first, uint64_t last, uint64_t seq) {
  if (c->n == c->cap) {
    size_t nc = c->cap ? c->cap * 2 : 64;
    struct span *nv = realloc(c->v, nc * sizeof *nv);
    if (!nv)
      return -ENOMEM;
    c->v = nv;
    c->cap = nc;
  }
  c->v[c->n++] = (struct span){first, last, seq};
  return 0;
}

/* Records one of our messages (from a scan or the last-message read). */
static int scan_msg(struct scanctx *c, natsMsg *m, uint64_t seq) {
  const char *kind = NULL;
  uint64_t a = 0, b = 0;
  if (natsMsgHeader_Get(m, MG_SHIP_H_KIND, &kind) != NATS_OK || !kind) {
    mg_error("lineage nats: subject %s holds a message not written by meshgate",
             c->s->full_subject);
    return MG_LINEAGE_E_FORMAT;
  }
  if (strcmp(kind, MG_SHIP_KIND_CHECKPOINT) == 0) {
    if (mg_shipper_header_u64(m, MG_SHIP_H_SIZE, &a) == 0 && a > c->max_cp)
      c->max_cp = a;
    return 0;
  }
  if (mg_shipper_header_u64(m, MG_SHIP_H_FIRST, &a) || mg_shipper_header_u64(m, MG_SHIP_H_LAST, &b)
      || b < a)
    return MG_LINEAGE_E_FORMAT;
  return scan_add(c, a, b, seq);
}

static int scan_cb(void *arg, natsMsg *m, uint64_t seq) {
  struct scanctx *c = arg;
  int rc = scan_msg(c, m, seq);
  c->last_seq = seq;
  if (!rc && c->max_msgs && ++c->msgs >= c->max_msgs)
    return SCAN_FULL;
  return rc;
}

static int cmp_span(const void *x, const void *y) {
  const struct span *a = x, *b = y;
  return a->first < b->first ? -1 : a->first > b->first;
}

/* Publishes entries [first, last] from the log synchronously, in parts. A nonzero `tag`
 * makes the Msg-Ids differ from the original messages' ("<origin>/<first>-<last>/a<tag>"). */
static int fill_hole(struct mg_shipper *s, uint64_t first, uint64_t last, uint64_t base_p,
                     uint64_t base_s, uint64_t tag, uint64_t *max_seq) {
  struct mg_buf body;
  int rc = 0;
  mg_buf_init(&body);
  uint64_t pruned = mg_lineage_log_pruned(s->log);
  if (first < pruned) {
    /* gone from both copies: say so loudly, and keep shipping the rest */
    uint64_t lost = MG_MIN(last, pruned - 1);
    mg_error("lineage nats: stream %s lacks entries %" PRIu64 "-%" PRIu64 " of %s, which "
             "retention already pruned from the local log: they cannot be re-sent",
             s->stream, first, lost, s->origin);
    if (lost == last) {
      mg_buf_clear(&body);
      return 0;
    }
    first = pruned;
  }
  mg_warn("lineage nats: stream lacks entries %" PRIu64 "-%" PRIu64 " of %s: re-sending", first,
          last, s->origin);
  while (first <= last && !rc) {
    uint64_t n = 0, seq = 0;
    natsMsg *m = NULL;
    char msgid[1024];
    uint64_t max = MG_MIN(last - first + 1, (uint64_t)MAX_MSG_ENTRIES);
    uint64_t was = tag ? 0 : hist_last_from(s, first); /* a resync fill repeats a message */
    if (was && was <= last && was - first + 1 < max)
      max = was - first + 1;
    rc = read_entries(s, first, max, &body, &n);
    if (!rc)
      rc = build_msg(s, false, first, first + n - 1, body.data, body.len, base_p, base_s, &m,
                     msgid, sizeof msgid);
    if (!rc && tag) {
      size_t ml = strlen(msgid);
      snprintf(msgid + ml, sizeof msgid - ml, "/a%" PRIu64, tag);
    }
    if (!rc) {
      rc = publish_sync(s, m, msgid, &seq);
      natsMsg_Destroy(m);
    }
    if (!rc && seq > *max_seq)
      *max_seq = seq;
    first += n;
  }
  mg_buf_clear(&body);
  return rc;
}

/* The sequence of the subject's last message: 0 and *seq (0: the subject holds none), or
 * MG_LINEAGE_E_NATS. */
static int subject_last_seq(struct mg_shipper *s, uint64_t *seq) {
  natsMsg *m = NULL;
  jsErrCode je = 0;
  *seq = 0;
  natsStatus st = js_GetLastMsg(&m, s->js, s->stream, s->full_subject, NULL, &je);
  if (st == NATS_OK) {
    *seq = natsMsg_GetSequence(m);
    natsMsg_Destroy(m);
    return 0;
  }
  return st == NATS_NOT_FOUND || je == JSNoMessageFoundErr ? 0 : MG_LINEAGE_E_NATS;
}

static int resync(struct mg_shipper *s) {
  struct scanctx c = {.s = s};
  natsMsg *last = NULL;
  jsErrCode jerr = 0;
  uint64_t base_p = 0, base_s = 0, lseq = 0, end = 0;
  uint64_t log_size = mg_lineage_log_size(s->log);
  int rc = 0;

  settle(s);
  if (!s->start_quiet) {
    /* A predecessor killed while publishing (kill -9, a crash) can have messages still on
     * their way into the stream. Resuming below them would store their entries twice (the
     * new messages are grouped differently, so their Msg-Ids differ): first wait until the
     * subject's last sequence stands still. */
    uint64_t prev = UINT64_MAX;
    for (int i = 0; i < 12; i++) {
      uint64_t seq = 0;
      if (subject_last_seq(s, &seq))
        break; /* the read below reports it */
      if (seq == prev || i == 11) { /* still, or waited 3 s: once per start is enough */
        s->start_quiet = true;
        break;
      }
      prev = seq;
      nats_Sleep(250);
    }
  }
  natsStatus st = js_GetLastMsg(&last, s->js, s->stream, s->full_subject, NULL, &jerr);
  if (st == NATS_NOT_FOUND || jerr == JSNoMessageFoundErr) {
    if (s->reported > 0)
      mg_warn("lineage nats: stream %s holds nothing for %s although %" PRIu64
              " entries were read back from it: shipping again from 0", s->stream, s->origin,
              s->reported);
  } else if (st != NATS_OK) {
    rc = nats_err(s, "reading the last message", st, jerr);
    if (jerr == JSStreamNotFoundErr) { /* deleted under us: create it again */
      pthread_mutex_lock(&s->mu);
      s->need_setup = true;
      pthread_mutex_unlock(&s->mu);
    }
    goto out;
  } else {
    uint64_t lfirst = UINT64_MAX;
    lseq = natsMsg_GetSequence(last);
    rc = scan_msg(&c, last, lseq);
    if (!rc && (mg_shipper_header_u64(last, MG_SHIP_H_ACKED, &base_p) ||
                mg_shipper_header_u64(last, MG_SHIP_H_ACKED_SEQ, &base_s)))
      rc = MG_LINEAGE_E_FORMAT;
    if (rc) {
      mg_error("lineage nats: last message of %s is malformed", s->full_subject);
      goto out;
    }
    if (c.n)
      lfirst = c.v[0].first;
    if (lfirst != base_p && lseq > base_s + 1) {
      c.n = 0; /* the scan sees the last message again */
      rc = mg_shipper_scan(s->js, s->stream, s->full_subject, base_s + 1, lseq, SCAN_WAIT_MS,
                           scan_cb, &c);
      if (!rc && c.last_seq < lseq) {
        /* stopped early on a pending count of 0 (see audit()): holes judged from this read
         * could be messages it never delivered */
        mg_warn("lineage nats: reading stream %s stopped at sequence %" PRIu64 " before %" PRIu64
                ": resynchronising again", s->stream, c.last_seq, lseq);
        rc = MG_LINEAGE_E_NATS;
      }
      if (rc)
        goto out;
    }
  }

  /* contiguous end from P, the holes, and the highest index held */
  if (c.n)
    qsort(c.v, c.n, sizeof *c.v, cmp_span);
  end = base_p;
  for (size_t i = 0; i < c.n; i++)
    if (c.v[i].last + 1 > end && c.v[i].first <= end)
      end = c.v[i].last + 1;
  uint64_t high = end;
  for (size_t i = 0; i < c.n; i++)
    high = MG_MAX(high, c.v[i].last + 1);
  if (high > log_size || base_p > log_size) {
    mg_error("lineage nats: stream %s holds index %" PRIu64 " for origin %s but the local log "
             "has only %" PRIu64 " entries (restored or foreign disk?)", s->stream,
             MG_MAX(high, base_p) - 1, s->origin, log_size);
    rc = MG_LINEAGE_E_FOREIGN;
    goto out;
  }
  uint64_t max_seq = lseq;
  uint64_t cur = base_p;
  for (size_t i = 0; i < c.n && !rc; i++) {
    if (c.v[i].last < cur)
      continue; /* below the base, or already counted */
    if (c.v[i].first > cur)
      rc = fill_hole(s, cur, c.v[i].first - 1, base_p, base_s, 0, &max_seq);
    cur = MG_MAX(cur, c.v[i].last + 1);
  }
  if (rc)
    goto out;

  s->next = high;
  s->acked_p = high;
  s->acked_s = max_seq;
  hist_resume(s, high);
  pthread_mutex_lock(&s->mu);
  while (s->gq_n && s->gq[s->gq_head].last < s->next) {
    s->gq_head = (s->gq_head + 1) % GROUPQ_CAP;
    s->gq_n--;
  }
  pthread_mutex_unlock(&s->mu);
  /* The latest local checkpoint, unless the stream shows it: a checkpoint lost with the
   * connection (or never sent before a restart) would leave the tail uncovered. */
  {
    char *note = NULL;
    uint64_t cps = 0;
    if (mg_lineage_log_checkpoint(s->log, UINT64_MAX, &note, &cps) == 0 && cps > c.max_cp &&
        cps > 0) {
      pthread_mutex_lock(&s->mu);
      cpq_push_locked(s, cps, note);
      pthread_mutex_unlock(&s->mu);
    } else {
      free(note);
    }
  }
  if (high < s->ver_p || lseq < s->ver_s) {
    /* the stream lost messages an audit had read, or its sequence went back: read it
     * again from the start (headers only) */
    mg_warn("lineage nats: stream %s went back (index %" PRIu64 " < %" PRIu64 " read back, or "
            "sequence %" PRIu64 " < %" PRIu64 "): auditing it again", s->stream, high,
            s->ver_p, lseq, s->ver_s);
    s->ver_p = MG_MIN(s->ver_p, high);
    s->ver_s = 0;
    s->audit_hi = 0;
  }
  if (s->ver_p < s->reported)
    s->reported = s->ver_p; /* on_ack is only called when it moves up */
  report_ack(s);
  atomic_store(&s->stat_acked, s->acked_p);
  mg_info("lineage nats: %s resumes at index %" PRIu64 " (stream %s)", s->origin, s->next,
          s->stream);
out:
  free(c.v);
  natsMsg_Destroy(last);
  return rc;
}

/* ---- audit ----------------------------------------------------------------------------- */

/* One read-back pass (see the header): extends V over what the stream holds, re-sends
 * acknowledged entries it lacks. Shipper thread. 0 or an error (retried next period). */
static int audit(struct mg_shipper *s) {
  if (s->limits) { /* aged-out messages would look lost: the acknowledgement is all there is */
    if (s->acked_p > s->ver_p) {
      s->ver_p = s->acked_p;
      s->ver_s = s->acked_s;
      report_ack(s);
    }
    return 0;
  }
  uint64_t to = MG_MAX(s->acked_s, s->audit_hi), from = s->ver_s + 1;
  if (from > to || (s->ver_p >= s->acked_p && s->audit_hi <= s->ver_s))
    return 0;
  /* the subject's last message bounds the read: a lost message at `to` must not leave the
   * read-back waiting for one that never comes */
  uint64_t lseq = 0;
  if (subject_last_seq(s, &lseq))
    return MG_LINEAGE_E_NATS;
  /* messages above the subject's last one do not exist (lost with a leader): read to it */
  if (lseq < to)
    to = lseq;
  struct scanctx c = {.s = s, .max_msgs = AUDIT_MAX_MSGS};
  int rc = to < from ? 0 : mg_shipper_scan_opts(s->js, s->stream, s->full_subject, from, to,
                                                SCAN_WAIT_MS, true, scan_cb, &c);
  bool partial = rc == SCAN_FULL;
  if (partial) {
    /* read up to last_seq only: advance over what was seen, judge no hole yet */
    rc = 0;
    to = c.last_seq;
  } else if (!rc && to >= from && c.last_seq < to) {
    /* the consumer said nothing was pending before the read reached `to` (nats-server 2.9
     * can misreport a filtered consumer's pending count after a restart): a hole judged
     * from this read could be a message it never delivered, and re-sending it would store
     * it twice. Read again next pass. */
    rc = MG_LINEAGE_E_NATS;
  }
  if (rc) {
    free(c.v);
    return rc;
  }
  if (c.n)
    qsort(c.v, c.n, sizeof *c.v, cmp_span);
  /* entries below the pruned point are gone from the local log: nothing to re-send */
  uint64_t cur = MG_MAX(s->ver_p, mg_lineage_log_pruned(s->log));
  size_t i = 0;
  for (; i < c.n; i++) {
    if (c.v[i].last < cur)
      continue;
    if (c.v[i].first > cur)
      break;
    cur = c.v[i].last + 1;
  }
  /* V and the sequence below which no message of ours holds an entry >= V */
  uint64_t new_s = to;
  for (size_t j = 0; j < c.n; j++)
    if (c.v[j].last >= cur && c.v[j].seq - 1 < new_s)
      new_s = c.v[j].seq - 1;
  /* acknowledged entries the stream does not hold: re-sent once two full passes in a row
   * found them missing (see the header) */
  bool confirmed = false;
  if (!partial) {
    confirmed = cur < s->acked_p && s->hole_seen == cur + 1;
    s->hole_seen = cur < s->acked_p ? cur + 1 : 0;
  }
  uint64_t hole = cur, max_seq = s->audit_hi;
  for (; confirmed && i <= c.n && hole < s->acked_p && !rc; i++) {
    uint64_t end = i < c.n ? c.v[i].first : s->acked_p; /* exclusive */
    if (i < c.n && c.v[i].last < hole)
      continue;
    if (end > hole) {
      uint64_t hl = MG_MIN(end, s->acked_p) - 1;
      if (s->hole_logged != hole + 1) /* once per range, not once per failed retry */
        mg_error("lineage nats: stream %s lost entries %" PRIu64 "-%" PRIu64 " of %s after "
                 "acknowledging them: re-sending them from the local log", s->stream, hole,
                 hl, s->origin);
      s->hole_logged = hole + 1;
      rc = fill_hole(s, hole, hl, s->acked_p, s->acked_s, to, &max_seq);
    }
    if (i < c.n)
      hole = MG_MAX(hole, c.v[i].last + 1);
  }
  free(c.v);
  if (max_seq > s->audit_hi)
    s->audit_hi = max_seq;
  if (cur > s->ver_p || new_s != s->ver_s) {
    s->ver_p = cur;
    s->ver_s = new_s;
    report_ack(s);
  }
  return rc;
}

/* ---- sending ------------------------------------------------------------------------ */

/* Publishes one message if there is something to send and room. 1 sent, 0 nothing, <0. */
static int send_one(struct mg_shipper *s, struct mg_buf *body) {
  bool cp = false;
  uint64_t first = s->next, last = 0, target = UINT64_MAX;
  char *note = NULL;
  pthread_mutex_lock(&s->mu);
  bool full = s->ring_n >= MAX_INFLIGHT || s->ring_bytes >= MAX_INFLIGHT_BYTES;
  pthread_mutex_unlock(&s->mu);
  if (full)
    return 0;
  /* after a resync: the messages that were in flight again, alike and in order (header) */
  struct sent *rp = replay_next(s, &note);
  pthread_mutex_lock(&s->mu);
  if (rp && rp->cp) {
    cp = true;
    first = last = rp->first;
    for (size_t i = 0; i < s->cpq_n; i++)
      if (s->cpq[i].size == first) { /* queued again by the resync: this is it */
        free(s->cpq[i].note);
        memmove(&s->cpq[i], &s->cpq[i + 1], (s->cpq_n - i - 1) * sizeof s->cpq[0]);
        s->cpq_n--;
        break;
      }
  } else if (rp) {
    target = rp->last;
  } else if (s->cpq_n && s->cpq[0].size <= s->next) {
    cp = true;
    first = last = s->cpq[0].size;
    note = s->cpq[0].note;
    memmove(&s->cpq[0], &s->cpq[1], (s->cpq_n - 1) * sizeof s->cpq[0]);
    s->cpq_n--;
  } else {
    while (s->gq_n && s->gq[s->gq_head].last < s->next) {
      s->gq_head = (s->gq_head + 1) % GROUPQ_CAP;
      s->gq_n--;
    }
    if (s->gq_n) {
      struct range *g = &s->gq[s->gq_head];
      target = g->first <= s->next ? g->last : g->first - 1;
    }
  }
  pthread_mutex_unlock(&s->mu);

  if (!cp) {
    uint64_t size = mg_lineage_log_size(s->log);
    if (s->next >= size)
      return 0;
    uint64_t upto = MG_MIN(target, size - 1);
    uint64_t n = 0;
    int rc = read_entries(s, s->next, MG_MIN(upto - s->next + 1, (uint64_t)MAX_MSG_ENTRIES),
                          body, &n);
    if (rc)
      return rc;
    last = first + n - 1;
  } else {
    mg_buf_reset(body);
    if (mg_buf_appends(body, note)) {
      free(note);
      return -ENOMEM;
    }
  }

  natsMsg *m = NULL;
  char msgid[1024];
  int rc = build_msg(s, cp, first, last, body->data, body->len, s->acked_p, s->acked_s, &m,
                     msgid, sizeof msgid);
  if (rc) {
    free(note);
    return rc;
  }
  pthread_mutex_lock(&s->mu);
  struct rec *r = &s->ring[(s->ring_head + s->ring_n) % MAX_INFLIGHT];
  *r = (struct rec){.cp = cp, .first = first, .last = last, .bytes = body->len, .note = note,
                    .sent_us = mg_mono_now_us()};
  s->ring_n++;
  s->ring_bytes += body->len;
  pthread_mutex_unlock(&s->mu);

  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MsgId = msgid;
  po.MaxWait = ACK_WAIT_MS; /* an ack lost with a leader or a connection must not stall us */
  natsStatus st = js_PublishMsgAsync(s->js, &m, &po);
  natsMsg_Destroy(m); /* no-op when the library took it */
  if (st != NATS_OK) {
    pthread_mutex_lock(&s->mu);
    r->state = REC_FAILED;
    s->need_resync = true;
    pthread_mutex_unlock(&s->mu);
    return nats_err(s, "publish", st, 0);
  }
  if (!cp)
    s->next = last + 1;
  if (rp && (cp || last == rp->last))
    s->hist_cur++;
  else
    hist_push(s, cp, first, last);
  return 1;
}

/* ---- thread ---------------------------------------------------------------------------- */

static void *shipper_main(void *arg) {
  struct mg_shipper *s = arg;
  struct mg_buf body;
  int backoff = BACKOFF_MIN_MS;
  mg_buf_init(&body);
  report_ack(s); /* what the start-up resync found */
  pthread_mutex_lock(&s->mu);
  for (;;) {
    if (s->fatal)
      break;
    bool stopping = s->stop;
    if (stopping && mg_mono_now_us() >= s->stop_deadline_us)
      break;
    bool connected = atomic_load(&s->connected);
    if (!connected || !s->js) {
      if (stopping)
        break;
      cv_wait_ms(s, 200);
      continue;
    }
    if (s->need_setup || s->need_resync) {
      bool setup = s->need_setup;
      s->need_resync = false;
      pthread_mutex_unlock(&s->mu);
      char why[512] = "";
      int rc = setup ? setup_stream(s, why, sizeof why) : 0;
      if (rc == SETUP_CONFIG_ERR) {
        mg_error("lineage nats: %s", why);
        set_error(s, MG_LINEAGE_E_NATS);
      } else if (rc) {
        mg_warn("lineage nats: %s", why);
      }
      if (!rc)
        rc = resync(s);
      pthread_mutex_lock(&s->mu);
      if (rc == MG_LINEAGE_E_FOREIGN) { /* found after an outage at start: stop shipping */
        set_error(s, rc);
        s->fatal = true;
        atomic_store(&s->connected, false);
        break;
      }
      if (rc) {
        s->need_resync = true;
        if (stopping)
          break;
        cv_wait_ms(s, backoff);
        backoff = MG_MIN(backoff * 2, BACKOFF_MAX_MS);
        continue;
      }
      if (setup)
        s->need_setup = false;
      s->synced = true;
      backoff = BACKOFF_MIN_MS;
      set_error(s, 0);
    }
    bool moved = advance_locked(s);
    if (s->ring_n && s->ring[s->ring_head].state == REC_PENDING &&
        mg_mono_now_us() - s->ring[s->ring_head].sent_us > HEAD_STALL_US) {
      mg_warn("lineage nats: no acknowledgement for %.0f s: resynchronising",
              (double)HEAD_STALL_US / 1e6);
      s->need_resync = true;
    }
    if (s->need_resync)
      continue;
    int64_t now = mg_mono_now_us();
    bool audit_now = !stopping && s->synced && now >= s->audit_due_us;
    if (audit_now)
      s->audit_due_us = now + AUDIT_EVERY_MS * 1000LL;
    pthread_mutex_unlock(&s->mu);
    if (moved)
      report_ack(s);
    if (audit_now) {
      int arc = audit(s);
      if (arc && !s->audit_failing)
        mg_warn("lineage nats: reading stream %s back failed: %s (retrying every %d ms)",
                s->stream, mg_strerror(arc), AUDIT_EVERY_MS);
      else if (!arc && s->audit_failing)
        mg_info("lineage nats: reading stream %s back works again", s->stream);
      s->audit_failing = arc != 0;
    }
    int sent = 0, rc = 0;
    while (sent < 64 && (rc = send_one(s, &body)) == 1)
      sent++;
    pthread_mutex_lock(&s->mu);
    if (rc < 0) {
      s->need_resync = true;
      cv_wait_ms(s, backoff);
      backoff = MG_MIN(backoff * 2, BACKOFF_MAX_MS);
      continue;
    }
    if (sent == 0) {
      if (stopping && s->ring_n == 0 && s->next >= mg_lineage_log_size(s->log) &&
          (s->cpq_n == 0 || s->cpq[0].size > s->next))
        break; /* everything shipped */
      cv_wait_ms(s, stopping ? 20 : 50);
    }
  }
  pthread_mutex_unlock(&s->mu);
  mg_buf_clear(&body);
  return NULL;
}

/* ---- public ------------------------------------------------------------------------------ */

static void shipper_free(struct mg_shipper *s) {
  if (!s)
    return;
  if (s->nc) {
    /* libnats calls back on its own thread; the closed callback is the last one */
    natsConnection_Close(s->nc);
    pthread_mutex_lock(&s->mu);
    for (int i = 0; i < 100 && !s->closed; i++)
      cv_wait_ms(s, 50);
    pthread_mutex_unlock(&s->mu);
  }
  if (s->js)
    jsCtx_Destroy(s->js);
  if (s->nc)
    natsConnection_Destroy(s->nc);
  for (size_t i = 0; i < s->nservers; i++)
    free(s->servers[i]);
  free(s->servers);
  free(s->stream);
  free(s->subject);
  free(s->full_subject);
  free(s->origin);
  free(s->creds);
  free(s->tls_ca);
  for (size_t i = 0; i < MAX_INFLIGHT; i++)
    free(s->ring[i].note);
  for (size_t i = 0; i < s->cpq_n; i++)
    free(s->cpq[i].note);
  free(s->gq);
  free(s->hist);
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s);
}

static char *dupz(const char *x) { return x ? strdup(x) : NULL; }

int mg_shipper_start(const struct mg_shipper_config *cfg, struct mg_lineage_log *log,
                     uint64_t shipped, uint64_t shipped_seq, mg_shipper_ack_cb on_ack,
                     void *ack_arg, struct mg_shipper **out) {
  struct mg_shipper *s = NULL;
  natsOptions *o = NULL;
  pthread_condattr_t ca;
  struct mg_buf subj;
  int rc = 0;
  natsStatus st;

  mg_buf_init(&subj);
  if (!cfg || !cfg->nservers || !cfg->servers || !cfg->stream || !cfg->subject || !cfg->origin
      || !log || !out)
    return MG_ERR_INVALID;
  s = calloc(1, sizeof *s);
  if (!s)
    return -ENOMEM;
  pthread_mutex_init(&s->mu, NULL);
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&s->cv, &ca);
  pthread_condattr_destroy(&ca);
  s->log = log;
  s->on_ack = on_ack;
  s->ack_arg = ack_arg;
  s->replicas = cfg->replicas > 0 ? cfg->replicas : 1;
  s->reported = shipped;
  s->ver_p = shipped;
  s->ver_s = shipped_seq;
  atomic_store(&s->stat_acked, shipped);
  atomic_store(&s->stat_verified, shipped);
  s->servers = calloc(cfg->nservers, sizeof *s->servers);
  s->gq = calloc(GROUPQ_CAP, sizeof *s->gq);
  s->hist = calloc(HIST_CAP, sizeof *s->hist);
  s->stream = dupz(cfg->stream);
  s->subject = dupz(cfg->subject);
  s->origin = dupz(cfg->origin);
  s->creds = dupz(cfg->creds);
  s->tls_ca = dupz(cfg->tls_ca);
  if (!s->servers || !s->gq || !s->hist || !s->stream || !s->subject || !s->origin ||
      (cfg->creds && !s->creds) || (cfg->tls_ca && !s->tls_ca)) {
    rc = -ENOMEM;
    goto fail;
  }
  for (size_t i = 0; i < cfg->nservers; i++) {
    if (!(s->servers[i] = strdup(cfg->servers[i]))) {
      rc = -ENOMEM;
      goto fail;
    }
    s->nservers++;
  }
  if ((rc = mg_buf_appendf(&subj, "%s.", s->subject)) ||
      (rc = mg_shipper_token_encode(s->origin, &subj)))
    goto fail;
  s->full_subject = mg_buf_steal(&subj);

  if (natsOptions_Create(&o) != NATS_OK) {
    rc = -ENOMEM;
    goto fail;
  }
  st = natsOptions_SetServers(o, (const char **)s->servers, (int)s->nservers);
  if (st == NATS_OK) st = natsOptions_SetName(o, "meshgate-lineage");
  if (st == NATS_OK) st = natsOptions_SetTimeout(o, 2000);
  if (st == NATS_OK) st = natsOptions_SetMaxReconnect(o, -1);
  if (st == NATS_OK) st = natsOptions_SetReconnectWait(o, 250);
  if (st == NATS_OK) st = natsOptions_SetReconnectJitter(o, 100, 1000);
  if (st == NATS_OK) st = natsOptions_SetPingInterval(o, 2000);
  if (st == NATS_OK) st = natsOptions_SetMaxPingsOut(o, 2);
  if (st == NATS_OK) st = natsOptions_SetFailRequestsOnDisconnect(o, true);
  if (st == NATS_OK) st = natsOptions_SetDisconnectedCB(o, on_disconnected, s);
  if (st == NATS_OK) st = natsOptions_SetReconnectedCB(o, on_connected, s);
  if (st == NATS_OK) st = natsOptions_SetClosedCB(o, on_closed, s);
  if (st == NATS_OK) st = natsOptions_SetRetryOnFailedConnect(o, true, on_connected, s);
  if (st == NATS_OK && s->creds) st = natsOptions_SetUserCredentialsFromFiles(o, s->creds, NULL);
  if (st == NATS_OK && s->tls_ca) st = natsOptions_LoadCATrustedCertificates(o, s->tls_ca);
  if (st == NATS_OK && s->tls_ca) st = natsOptions_SetSecure(o, true);
  if (st != NATS_OK) {
    rc = nats_err(s, "connection options", st, 0);
    goto fail;
  }
  s->need_setup = true;
  s->defer_ack = true;
  st = natsConnection_Connect(&s->nc, o);
  if (st != NATS_OK && st != NATS_NOT_YET_CONNECTED) {
    rc = nats_err(s, "connect", st, 0);
    goto fail;
  }
  {
    jsOptions jo;
    jsOptions_Init(&jo);
    jo.Wait = API_WAIT_MS;
    jo.PublishAsync.AckHandler = on_pub_ack;
    jo.PublishAsync.AckHandlerClosure = s;
    jo.PublishAsync.MaxPending = 4 * MAX_INFLIGHT;
    if (natsConnection_JetStream(&s->js, s->nc, &jo) != NATS_OK) {
      rc = nats_err(s, "jetstream context", NATS_ERR, 0);
      goto fail;
    }
  }
  if (st == NATS_OK) {
    /* reachable now: set-up and resume synchronously so start-up reports what cannot work */
    char why[512] = "";
    atomic_store(&s->connected, true);
    rc = setup_stream(s, why, sizeof why);
    if (rc == SETUP_CONFIG_ERR) {
      mg_error("lineage nats: %s", why);
      rc = MG_LINEAGE_E_NATS;
      goto fail;
    }
    if (rc == 0) {
      s->need_setup = false;
      rc = resync(s);
      if (rc == MG_LINEAGE_E_FOREIGN)
        goto fail;
      s->need_resync = rc != 0;
      s->synced = rc == 0;
    } else {
      mg_warn("lineage nats: %s (will retry)", why);
    }
    rc = 0;
  } else {
    mg_warn("lineage nats: no server reachable yet; shipping starts when one is (backlog grows)");
  }
  s->defer_ack = false;
  if (pthread_create(&s->thr, NULL, shipper_main, s) != 0) {
    rc = -EAGAIN;
    goto fail;
  }
  s->thr_started = true;
  natsOptions_Destroy(o);
  *out = s;
  return 0;
fail:
  mg_buf_clear(&subj);
  if (o)
    natsOptions_Destroy(o);
  shipper_free(s);
  return rc;
}

void mg_shipper_notify_group(struct mg_shipper *s, uint64_t first, uint64_t last) {
  if (!s || last < first)
    return;
  pthread_mutex_lock(&s->mu);
  if (s->gq_n == GROUPQ_CAP) { /* far behind: fall back to size-based grouping */
    s->gq_head = (s->gq_head + 1) % GROUPQ_CAP;
    s->gq_n--;
  }
  s->gq[(s->gq_head + s->gq_n) % GROUPQ_CAP] = (struct range){first, last};
  s->gq_n++;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

void mg_shipper_notify_checkpoint(struct mg_shipper *s, uint64_t size, const char *note) {
  char *copy;
  if (!s || !note || size == 0 || !(copy = strdup(note)))
    return;
  pthread_mutex_lock(&s->mu);
  cpq_push_locked(s, size, copy);
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

void mg_shipper_stats(struct mg_shipper *s, uint64_t *acked, uint64_t *verified,
                      bool *connected) {
  if (acked)
    *acked = s ? atomic_load(&s->stat_acked) : 0;
  if (verified)
    *verified = s ? atomic_load(&s->stat_verified) : 0;
  if (connected)
    *connected = s ? atomic_load(&s->connected) : false;
}

void mg_shipper_stop(struct mg_shipper *s, int timeout_ms) {
  if (!s)
    return;
  if (s->thr_started) {
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    s->stop_deadline_us = mg_mono_now_us() + (int64_t)(timeout_ms < 0 ? 0 : timeout_ms) * 1000;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thr, NULL);
    /* acks that arrived after the thread left */
    if (s->js && atomic_load(&s->connected)) {
      jsPubOptions po;
      jsPubOptions_Init(&po);
      po.MaxWait = MG_MAX(1, deadline_left_ms(s->stop_deadline_us));
      if (s->ring_n)
        js_PublishAsyncComplete(s->js, &po);
      pthread_mutex_lock(&s->mu);
      bool moved = advance_locked(s);
      pthread_mutex_unlock(&s->mu);
      if (moved)
        report_ack(s);
    }
  }
  shipper_free(s);
}

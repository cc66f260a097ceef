/*
 * export_nats.c — `meshgate lineage export --nats URL --stream S [--origin O]`: reads the
 * replicated log back from JetStream and writes the same ndjson export as a local export,
 * one section per origin (origins in byte order).
 *
 * The stream is read in sequence order through ordered consumers (bounded waits) up to its
 * last sequence at the start of the export, one consumer per subject pattern of the stream
 * that holds messages (a consumer's filter must be covered by the stream's subjects; with
 * --origin, one per concrete subject of that origin). Messages without an Mg-Kind header
 * belong to other producers sharing the stream and are skipped. The origin is the decoded
 * last subject token (see shipper.c). After a publish failure the shipper may have stored
 * an origin's messages out of index order (never twice, never with a gap), so entries are
 * put back in index order here: bodies that arrive early wait in memory until the gap
 * before them is filled; in-order bodies go straight to a temporary file per origin.
 * Checkpoints are collected and placed right after the last entry they cover; the section
 * ends with the last checkpoint that the contiguous entries reach (entries after it are
 * not covered and are left out, as in a local export). Entries present twice (which the
 * shipper never writes) are skipped with a warning rather than failing the export, so an
 * auditor still gets a verifiable export and the warning.
 *
 * Filters and the openlineage format: each origin's covered entries [0, C) and the
 * stream's checkpoints up to C are loaded into a temporary local log (entries, Merkle
 * nodes, checkpoints; a directory under $TMPDIR, removed afterwards) and the local export
 * runs on it with the filters, so the result (inclusion proofs against the stream's latest
 * signed checkpoint, OpenLineage events) is exactly what `--db` writes. An origin whose
 * first messages aged out of the stream starts at its lowest index held: the unfiltered
 * export then starts there (verify reports it); a filtered one refuses that origin.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nats/nats.h>

#include "lineage/lineage_store.h"
#include "lineage/shipper_int.h"

#define EXPORT_WAIT_MS 5000

struct pend { uint64_t first, last; char *body; size_t len; };
struct cpn { uint64_t size; char *note; };

struct osec {
  char *origin;
  FILE *tmp;
  uint64_t base, next; /* entries [base, next) are in tmp */
  bool any;            /* tmp holds at least one entry */
  struct pend *pend;
  size_t npend, cappend;
  struct cpn *cps;
  size_t ncps, capcps;
  uint64_t dups;
  uint64_t last_seq;   /* overlapping patterns deliver a message twice: keep the first */
};

struct xctx {
  const char *origin; /* only this one, or NULL */
  struct osec *secs;
  size_t nsecs, capsecs;
  uint64_t foreign;   /* messages of other producers */
  int err;
  int tmp_err;        /* a temporary file could not be made (reported already) */
};

static bool filter_empty(const struct mg_lineage_filter *f) {
  return !f || (f->since_us == INT64_MIN && f->until_us == INT64_MAX && !f->principal &&
                !f->product && !f->dataset && !f->action);
}

/* An unlinked temporary file under $TMPDIR (tmpfile() always uses /tmp, which may be a
 * small tmpfs; the error message tells users to set TMPDIR, so it must be honoured). */
static FILE *tmp_in_tmpdir(void) {
  const char *td = getenv("TMPDIR");
  char path[4096];
  snprintf(path, sizeof path, "%s/meshgate-export-XXXXXX", td && *td ? td : "/tmp");
  int fd = mkstemp(path);
  if (fd < 0) return NULL;
  unlink(path);
  FILE *f = fdopen(fd, "w+");
  if (!f) close(fd);
  return f;
}

static struct osec *section(struct xctx *x, const char *origin) {
  for (size_t i = 0; i < x->nsecs; i++)
    if (strcmp(x->secs[i].origin, origin) == 0)
      return &x->secs[i];
  if (x->nsecs == x->capsecs) {
    size_t nc = x->capsecs ? 2 * x->capsecs : 8;
    struct osec *nv = realloc(x->secs, nc * sizeof *nv);
    if (!nv)
      return NULL;
    x->secs = nv;
    x->capsecs = nc;
  }
  struct osec *s = &x->secs[x->nsecs];
  memset(s, 0, sizeof *s);
  if (!(s->origin = strdup(origin))) return NULL;
  if (!(s->tmp = tmp_in_tmpdir())) {
    int e = errno;
    mg_error("lineage export: an export from the stream needs a temporary file: %s/: %s "
             "(set TMPDIR)", getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             strerror(e));
    free(s->origin);
    x->tmp_err = -e;
    return NULL;
  }
  x->nsecs++;
  return s;
}

/* Writes body lines of entries [first, last] from index sec->next on (skipping the
 * overlap already written). */
static int write_body(struct osec *sec, uint64_t first, const char *body, size_t len) {
  const char *p = body, *end = body + len;
  uint64_t idx = first;
  if (!sec->any) {
    sec->base = sec->next = first;
    sec->any = true;
  }
  while (p < end) {
    const char *lf = memchr(p, '\n', (size_t)(end - p));
    if (!lf)
      return MG_LINEAGE_E_FORMAT;
    if (idx == sec->next) {
      if (fwrite(p, 1, (size_t)(lf - p) + 1, sec->tmp) != (size_t)(lf - p) + 1)
        return -errno ? -errno : -EIO;
      sec->next++;
    } else if (idx < sec->next) {
      sec->dups++;
    }
    idx++;
    p = lf + 1;
  }
  return 0;
}

/* Writes every waiting body that now continues the contiguous range. */
static int drain(struct osec *sec) {
  bool progress = true;
  while (progress) {
    progress = false;
    for (size_t i = 0; i < sec->npend; i++) {
      struct pend *p = &sec->pend[i];
      if (p->first > sec->next)
        continue;
      int rc = write_body(sec, p->first, p->body, p->len);
      if (rc)
        return rc;
      free(p->body);
      sec->pend[i] = sec->pend[--sec->npend];
      progress = true;
      break;
    }
  }
  return 0;
}

static int count_lines(const char *body, size_t len, uint64_t *n) {
  uint64_t c = 0;
  for (size_t i = 0; i < len; i++)
    if (body[i] == '\n')
      c++;
  if (len == 0 || body[len - 1] != '\n')
    return MG_LINEAGE_E_FORMAT;
  *n = c;
  return 0;
}

static int on_msg(void *arg, natsMsg *m, uint64_t seq) {
  struct xctx *x = arg;
  const char *kind = NULL;
  struct mg_buf origin;
  size_t tn = 0;
  int rc = 0;
  const char *body = natsMsg_GetData(m);
  size_t len = (size_t)natsMsg_GetDataLength(m);

  if (natsMsgHeader_Get(m, MG_SHIP_H_KIND, &kind) != NATS_OK || !kind) {
    x->foreign++;
    return 0;
  }
  mg_buf_init(&origin);
  const char *tok = mg_shipper_last_token(natsMsg_GetSubject(m), &tn);
  if (mg_shipper_token_decode(tok, tn, &origin) || !origin.data) {
    mg_warn("lineage export: message %" PRIu64 " has an undecodable origin token", seq);
    goto done;
  }
  if (x->origin && strcmp(x->origin, origin.data) != 0)
    goto done;
  struct osec *sec = section(x, origin.data);
  if (!sec) {
    rc = x->tmp_err ? x->tmp_err : -ENOMEM;
    goto done;
  }
  if (seq <= sec->last_seq)
    goto done;
  sec->last_seq = seq;
  if (strcmp(kind, MG_SHIP_KIND_CHECKPOINT) == 0) {
    uint64_t size = 0;
    if (mg_shipper_header_u64(m, MG_SHIP_H_SIZE, &size) || len == 0) {
      rc = MG_LINEAGE_E_FORMAT;
      goto bad;
    }
    if (sec->ncps == sec->capcps) {
      size_t nc = sec->capcps ? 2 * sec->capcps : 16;
      struct cpn *nv = realloc(sec->cps, nc * sizeof *nv);
      if (!nv) {
        rc = -ENOMEM;
        goto done;
      }
      sec->cps = nv;
      sec->capcps = nc;
    }
    char *note = malloc(len + 1);
    if (!note) {
      rc = -ENOMEM;
      goto done;
    }
    memcpy(note, body, len);
    note[len] = 0;
    sec->cps[sec->ncps++] = (struct cpn){size, note};
    goto done;
  }
  uint64_t first = 0, last = 0, n = 0;
  if (mg_shipper_header_u64(m, MG_SHIP_H_FIRST, &first) ||
      mg_shipper_header_u64(m, MG_SHIP_H_LAST, &last) || last < first ||
      count_lines(body, len, &n) || n != last - first + 1) {
    rc = MG_LINEAGE_E_FORMAT;
    goto bad;
  }
  if ((!sec->any && first == 0) || (sec->any && first <= sec->next)) {
    if (sec->any && last < sec->next) {
      sec->dups += n;
      goto done;
    }
    if ((rc = write_body(sec, first, body, len)) == 0)
      rc = drain(sec);
    goto done;
  }
  if (sec->npend == sec->cappend) {
    size_t nc = sec->cappend ? 2 * sec->cappend : 16;
    struct pend *nv = realloc(sec->pend, nc * sizeof *nv);
    if (!nv) {
      rc = -ENOMEM;
      goto done;
    }
    sec->pend = nv;
    sec->cappend = nc;
  }
  char *copy = malloc(len);
  if (!copy) {
    rc = -ENOMEM;
    goto done;
  }
  memcpy(copy, body, len);
  sec->pend[sec->npend++] = (struct pend){first, last, copy, len};
  goto done;
bad:
  mg_error("lineage export: malformed lineage message at stream sequence %" PRIu64, seq);
done:
  mg_buf_clear(&origin);
  x->err = rc;
  return rc;
}

/* Scans the messages under one of the stream's subject patterns (a consumer's filter must
 * be covered by the stream's subjects, so a stream shared with other products is read one
 * pattern at a time). With --origin, only the concrete subjects of that origin. */
static int scan_pattern(jsCtx *js, const char *stream, const char *pattern, uint64_t first,
                        uint64_t last, struct xctx *x) {
  jsStreamInfo *si = NULL;
  jsOptions o;
  jsErrCode jerr = 0;
  int rc = 0;
  jsOptions_Init(&o);
  o.Wait = EXPORT_WAIT_MS;
  o.Stream.Info.SubjectsFilter = pattern;
  natsStatus st = js_GetStreamInfo(&si, js, stream, &o, &jerr);
  if (st != NATS_OK) {
    const char *txt = nats_GetLastError(NULL);
    mg_error("lineage export: stream %s subjects %s: %s", stream, pattern,
             txt ? txt : natsStatus_GetText(st));
    return MG_LINEAGE_E_NATS;
  }
  jsStreamStateSubjects *subs = si->State.Subjects;
  if (!subs || subs->Count == 0) {
    jsStreamInfo_Destroy(si);
    return 0; /* nothing under this pattern: a consumer would only wait */
  }
  if (!x->origin) {
    rc = mg_shipper_scan(js, stream, pattern, first, last, EXPORT_WAIT_MS, on_msg, x);
  } else {
    for (int i = 0; i < subs->Count && !rc; i++) {
      struct mg_buf dec;
      size_t tn = 0;
      const char *tok = mg_shipper_last_token(subs->List[i].Subject, &tn);
      mg_buf_init(&dec);
      if (mg_shipper_token_decode(tok, tn, &dec) == 0 && dec.data &&
          strcmp(dec.data, x->origin) == 0)
        rc = mg_shipper_scan(js, stream, subs->List[i].Subject, first, last, EXPORT_WAIT_MS,
                             on_msg, x);
      mg_buf_clear(&dec);
    }
  }
  jsStreamInfo_Destroy(si);
  return rc;
}

static int cmp_cp(const void *a, const void *b) {
  const struct cpn *x = a, *y = b;
  return x->size < y->size ? -1 : x->size > y->size;
}

static int cmp_sec(const void *a, const void *b) {
  return strcmp(((const struct osec *)a)->origin, ((const struct osec *)b)->origin);
}

static int cmp_pend(const void *a, const void *b) {
  const struct pend *x = a, *y = b;
  return x->first < y->first ? -1 : x->first > y->first;
}

static int out_err(FILE *out) {
  int e = errno;
  (void)out;
  return e ? -e : -EIO;
}

#define IMPORT_TXN_ENTRIES 65536

/* Loads entries [0, cover) from sec->tmp and the checkpoints up to cover into the empty
 * log `log`. */
static int import_section(struct osec *sec, uint64_t cover, struct mg_lineage_log *log) {
  struct mg_merkle_frontier fr;
  MDB_txn *txn = NULL;
  char *line = NULL;
  size_t cap = 0;
  int rc = 0, mrc = 0;
  mg_merkle_frontier_init(&fr);
  if (fflush(sec->tmp) || fseek(sec->tmp, 0, SEEK_SET))
    return -errno;
  for (uint64_t idx = 0; idx < cover && !rc && !mrc; idx++) {
    if (!txn && (mrc = mg_lineage_log_txn(log, true, &txn)))
      break;
    ssize_t n = getline(&line, &cap, sec->tmp);
    if (n <= 1 || line[n - 1] != '\n') {
      rc = MG_LINEAGE_E_FORMAT;
      break;
    }
    rc = mg_lineage_log_append_txn(log, txn, &fr, idx, line, (size_t)n - 1);
    if (!rc && (idx + 1) % IMPORT_TXN_ENTRIES == 0) {
      mrc = mdb_txn_commit(txn);
      txn = NULL;
    }
  }
  if (!rc && !mrc && !txn)
    mrc = mg_lineage_log_txn(log, true, &txn);
  for (size_t i = 0; i < sec->ncps && !rc && !mrc; i++) {
    if (sec->cps[i].size > cover)
      break;
    rc = mg_lineage_log_put_checkpoint_txn(log, txn, sec->cps[i].size, sec->cps[i].note);
  }
  if (!rc && !mrc) {
    mrc = mdb_txn_commit(txn);
    txn = NULL;
  }
  if (txn)
    mdb_txn_abort(txn);
  free(line);
  return rc ? rc : mrc ? mg_lineage_log_err(mrc) : 0;
}

/* The filtered or openlineage export of one origin's section [0, cover) (see the header). */
static int emit_filtered(struct osec *sec, uint64_t cover, const struct mg_lineage_filter *f,
                         enum mg_lineage_format fmt, FILE *out) {
  if (sec->base != 0) {
    mg_error("lineage export: origin %s: the stream holds it only from index %" PRIu64
             " (older messages aged out): a filtered export needs it from 0", sec->origin,
             sec->base);
    return MG_LINEAGE_E_RANGE;
  }
  const char *td = getenv("TMPDIR");
  char dir[4096], path[4200];
  snprintf(dir, sizeof dir, "%s/meshgate-export-XXXXXX", td && *td ? td : "/tmp");
  if (!mkdtemp(dir)) {
    int e = errno;
    mg_error("lineage export: a filtered export from the stream needs a temporary directory: "
             "%s: %s (set TMPDIR)", dir, strerror(e));
    return -e;
  }
  struct stat st;
  uint64_t bytes = fstat(fileno(sec->tmp), &st) == 0 ? (uint64_t)st.st_size : 0;
  /* lines, two B-tree copies' worth of slack, ~2 nodes of 41 bytes + overhead per entry */
  size_t map_mb = (size_t)((3 * bytes + 256 * cover) >> 20) + 64;
  struct mg_lineage_log *log = NULL;
  int rc = mg_lineage_log_open(dir, map_mb, false, &log);
  if (rc)
    mg_error("lineage export: temporary log in %s: %s", dir, mg_strerror(rc));
  if (!rc) {
    mdb_env_set_flags(log->env, MDB_NOSYNC, 1); /* a scratch copy: no flushes */
    rc = import_section(sec, cover, log);
    if (!rc) {
      struct mg_lineage_reader r = {.log = log, .owned = false};
      rc = mg_lineage_export(&r, f, fmt, out);
    }
    mg_lineage_log_close(log);
  }
  snprintf(path, sizeof path, "%s/data.mdb", dir);
  unlink(path);
  snprintf(path, sizeof path, "%s/lock.mdb", dir);
  unlink(path);
  rmdir(dir);
  return rc;
}

/* Writes one origin's section: entries [base, C) with checkpoints, C = the last
 * checkpoint size reached; with filters or openlineage, emit_filtered's export of it. */
static int emit(struct osec *sec, const struct mg_lineage_filter *f, enum mg_lineage_format fmt,
                FILE *out) {
  struct mg_buf cpline;
  char *line = NULL;
  size_t cap = 0;
  int rc = 0;

  /* bodies still waiting: a gap, unless nothing came before them (aged-out head) */
  if (sec->npend)
    qsort(sec->pend, sec->npend, sizeof *sec->pend, cmp_pend);
  if (!sec->any && sec->npend) {
    struct pend p0 = sec->pend[0];
    memmove(&sec->pend[0], &sec->pend[1], (sec->npend - 1) * sizeof *sec->pend);
    sec->npend--;
    rc = write_body(sec, p0.first, p0.body, p0.len);
    free(p0.body);
    if (rc)
      return rc;
  }
  if (sec->npend && (rc = drain(sec)))
    return rc;
  if (sec->npend)
    mg_warn("lineage export: origin %s: the stream lacks entries from %" PRIu64
            "; the export of this origin ends before them", sec->origin, sec->next);
  if (sec->dups)
    mg_warn("lineage export: origin %s: %" PRIu64 " entries are in the stream twice "
            "(exported once)", sec->origin, sec->dups);
  if (sec->ncps)
    qsort(sec->cps, sec->ncps, sizeof *sec->cps, cmp_cp);
  uint64_t cover = 0;
  for (size_t i = 0; i < sec->ncps; i++)
    if (sec->cps[i].size > sec->base && sec->cps[i].size <= sec->next)
      cover = sec->cps[i].size;
  if (!sec->any || cover == 0) {
    mg_warn("lineage export: origin %s: no checkpoint in the stream covers its entries; "
            "left out", sec->origin);
    return 0;
  }
  if (cover < sec->next)
    mg_info("lineage export: origin %s: entries from %" PRIu64 " are not covered by a "
            "checkpoint yet; left out", sec->origin, cover);
  if (fmt != MG_LINEAGE_NDJSON || !filter_empty(f))
    return emit_filtered(sec, cover, f, fmt, out);
  mg_buf_init(&cpline);
  if (fflush(sec->tmp) || fseek(sec->tmp, 0, SEEK_SET))
    return -errno;
  size_t ci = 0;
  while (ci < sec->ncps && sec->cps[ci].size <= sec->base)
    ci++;
  for (uint64_t idx = sec->base; idx < cover; idx++) {
    ssize_t n = getline(&line, &cap, sec->tmp);
    if (n <= 0) {
      rc = MG_LINEAGE_E_FORMAT;
      break;
    }
    if (fwrite(line, 1, (size_t)n, out) != (size_t)n) {
      rc = out_err(out);
      break;
    }
    uint64_t prev = 0;
    for (; ci < sec->ncps && sec->cps[ci].size == idx + 1; ci++) {
      if (sec->cps[ci].size == prev)
        continue; /* the same checkpoint twice (a retried publish) */
      prev = sec->cps[ci].size;
      mg_buf_reset(&cpline);
      if (mg_buf_appends(&cpline, "{\"checkpoint\":") ||
          mg_buf_append_json_str(&cpline, sec->cps[ci].note, strlen(sec->cps[ci].note)) ||
          mg_buf_appends(&cpline, "}\n")) {
        rc = -ENOMEM;
        break;
      }
      if (fwrite(cpline.data, 1, cpline.len, out) != cpline.len) {
        rc = out_err(out);
        break;
      }
    }
    if (rc)
      break;
  }
  free(line);
  mg_buf_clear(&cpline);
  return rc;
}

static void sec_free(struct osec *s) {
  free(s->origin);
  if (s->tmp)
    fclose(s->tmp);
  for (size_t i = 0; i < s->npend; i++)
    free(s->pend[i].body);
  free(s->pend);
  for (size_t i = 0; i < s->ncps; i++)
    free(s->cps[i].note);
  free(s->cps);
}

int mg_lineage_export_nats(const struct mg_lineage_nats_source *src,
                           const struct mg_lineage_filter *f, enum mg_lineage_format fmt,
                           FILE *out) {
  if (!src || !src->url || !src->stream || !out)
    return MG_ERR_INVALID;
  const char *url = src->url, *stream = src->stream, *origin = src->origin;
  natsOptions *o = NULL;
  natsConnection *nc = NULL;
  jsCtx *js = NULL;
  jsStreamInfo *si = NULL;
  jsOptions jo;
  jsErrCode jerr = 0;
  struct xctx x = {.origin = origin};
  int rc = 0;
  natsStatus st;

  if (natsOptions_Create(&o) != NATS_OK)
    return -ENOMEM;
  /* "nats://a:1,nats://b:2": a list of servers */
  char *list = strdup(url), *servers[16];
  int nservers = 0;
  if (!list) {
    natsOptions_Destroy(o);
    return -ENOMEM;
  }
  for (char *save = NULL, *t = strtok_r(list, ",", &save); t && nservers < 16;
       t = strtok_r(NULL, ",", &save))
    servers[nservers++] = t;
  st = nservers ? natsOptions_SetServers(o, (const char **)servers, nservers) : NATS_INVALID_ARG;
  if (st == NATS_OK) st = natsOptions_SetTimeout(o, EXPORT_WAIT_MS);
  if (st == NATS_OK) st = natsOptions_SetMaxReconnect(o, 10);
  if (st == NATS_OK) st = natsOptions_SetReconnectWait(o, 500);
  if (st == NATS_OK) st = natsOptions_SetName(o, "meshgate-export");
  if (st == NATS_OK && src->creds) st = natsOptions_SetUserCredentialsFromFiles(o, src->creds, NULL);
  if (st == NATS_OK && src->tls_ca) st = natsOptions_LoadCATrustedCertificates(o, src->tls_ca);
  if (st == NATS_OK && src->tls_ca) st = natsOptions_SetSecure(o, true);
  if (st == NATS_OK) st = natsConnection_Connect(&nc, o);
  free(list);
  if (st != NATS_OK) {
    const char *txt = nats_GetLastError(NULL);
    mg_error("lineage export: cannot connect to %s: %s", url, txt ? txt : natsStatus_GetText(st));
    rc = MG_LINEAGE_E_NATS;
    goto out;
  }
  jsOptions_Init(&jo);
  jo.Wait = EXPORT_WAIT_MS;
  if (natsConnection_JetStream(&js, nc, &jo) != NATS_OK) {
    rc = MG_LINEAGE_E_NATS;
    goto out;
  }
  st = js_GetStreamInfo(&si, js, stream, NULL, &jerr);
  if (st != NATS_OK) {
    const char *txt = nats_GetLastError(NULL);
    mg_error("lineage export: stream %s: %s", stream, txt ? txt : natsStatus_GetText(st));
    rc = MG_LINEAGE_E_NATS;
    goto out;
  }
  for (int i = 0; si->State.Msgs > 0 && si->Config && i < si->Config->SubjectsLen && !rc; i++)
    rc = scan_pattern(js, stream, si->Config->Subjects[i], si->State.FirstSeq,
                      si->State.LastSeq, &x);
  if (rc)
    goto out;
  if (x.nsecs)
    qsort(x.secs, x.nsecs, sizeof *x.secs, cmp_sec);
  for (size_t i = 0; i < x.nsecs && !rc; i++)
    rc = emit(&x.secs[i], f, fmt, out);
  if (!rc && fflush(out))
    rc = out_err(out);
  if (!rc && origin && x.nsecs == 0)
    mg_warn("lineage export: stream %s holds nothing for origin %s", stream, origin);
out:
  for (size_t i = 0; i < x.nsecs; i++)
    sec_free(&x.secs[i]);
  free(x.secs);
  if (si)
    jsStreamInfo_Destroy(si);
  if (js)
    jsCtx_Destroy(js);
  if (nc)
    natsConnection_Destroy(nc);
  if (o)
    natsOptions_Destroy(o);
  return rc;
}

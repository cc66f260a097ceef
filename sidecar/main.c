/*
 * main.c — the `meshgate` command: serve, keygen, policy check, lineage export/verify,
 * version. Exit codes: 0 success, 1 failure (one-line reason on stderr), 2 usage error.
 *
 * serve: signals are blocked before any thread starts and taken synchronously with
 * sigwait() here, so no handler ever runs inside a worker. SIGHUP builds a new config
 * snapshot and swaps it only if it validates; SIGTERM/SIGINT drain and exit 0.
 */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <jansson.h>
#include <lmdb.h>
#include <nats/nats.h>
#include <nghttp2/nghttp2ver.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <curl/curl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sidecar/app.h"
#include "sidecar/canon.h"
#include "sidecar/proxy.h"

#define EXIT_USAGE 2

static const char *prog = "meshgate";

static int die(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return 1;
}

static int usage_error(const char *cmd, const char *msg) {
  fprintf(stderr, "%s %s: %s (see `%s %s --help`)\n", prog, cmd, msg, prog, cmd);
  return EXIT_USAGE;
}

static void usage_main(FILE *out) {
  fprintf(out,
          "usage: meshgate <command> [options]\n\n"
          "commands:\n"
          "  serve -c FILE [--check]        run the sidecar (data + admin ports); --check validates and exits\n"
          "  keygen --name ORIGIN --out DIR  write DIR/lineage.key (Ed25519) and DIR/lineage.vkey\n"
          "  policy check FILE              validate a grants file (JSON array)\n"
          "  lineage export [--db DIR | --nats URL --stream S [--origin O]] [filters] [--format ndjson|openlineage]\n"
          "  lineage verify --key VKEY [--key VKEY...] FILE\n"
          "  version                        versions of meshgate and its libraries\n\n"
          "Every command takes --help. Exit status: 0 success, 1 failure, 2 usage error.\n");
}

/* ---- version ---- */

static int cmd_version(int argc, char **argv) {
  if (argc > 1 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
    printf("usage: meshgate version\n");
    return 0;
  }
  if (argc > 1) return usage_error("version", "takes no arguments");
  printf("meshgate %s\n", MG_VERSION);
  printf("openssl %s\n", OpenSSL_version(OPENSSL_VERSION_STRING));
  printf("nghttp2 %s\n", nghttp2_version(0)->version_str);
  printf("libevent %s\n", event_get_version());
  printf("lmdb %d.%d.%d\n", MDB_VERSION_MAJOR, MDB_VERSION_MINOR, MDB_VERSION_PATCH);
  printf("jansson %s\n", jansson_version_str());
  printf("libnats %s\n", nats_GetVersion());
  printf("libcurl %s\n", curl_version_info(CURLVERSION_NOW)->version);
  return 0;
}

/* ---- keygen ---- */

static int cmd_keygen(int argc, char **argv) {
  static const struct option opts[] = {
    {"name", required_argument, 0, 'n'}, {"out", required_argument, 0, 'o'},
    {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  const char *name = NULL, *out = NULL;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "n:o:h", opts, NULL)) != -1) {
    switch (c) {
    case 'n': name = optarg; break;
    case 'o': out = optarg; break;
    case 'h':
      printf("usage: meshgate keygen --name ORIGIN --out DIR\n"
             "Writes DIR/lineage.key (Ed25519 PKCS#8 PEM, mode 0600) and DIR/lineage.vkey\n"
             "(C2SP verifier key, one line). ORIGIN is the log's origin (lineage.origin).\n"
             "Refuses to overwrite an existing key.\n");
      return 0;
    default: return usage_error("keygen", "unknown option");
    }
  }
  if (!name || !out) return usage_error("keygen", "--name and --out are required");
  if (optind != argc) return usage_error("keygen", "unexpected argument");
  mg_lineage_init();
  int rv = mg_lineage_keygen(name, out);
  if (rv == -EEXIST) return die("keygen: %s/lineage.key already exists (refusing to overwrite)", out);
  if (rv) return die("keygen: %s", mg_strerror(rv));
  printf("%s/lineage.key\n%s/lineage.vkey\n", out, out);
  return 0;
}

/* ---- policy check ---- */

static int cmd_policy(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    FILE *o = argc < 2 ? stderr : stdout;
    fprintf(o, "usage: meshgate policy check FILE\n"
               "Validates a grants file (a JSON array of grants) and prints every problem with\n"
               "its JSON Pointer. Nothing is applied.\n");
    return argc < 2 ? EXIT_USAGE : 0;
  }
  if (strcmp(argv[1], "check") != 0) return usage_error("policy", "unknown subcommand");
  if (argc == 3 && (!strcmp(argv[2], "--help") || !strcmp(argv[2], "-h"))) {
    printf("usage: meshgate policy check FILE\n");
    return 0;
  }
  if (argc != 3) return usage_error("policy check", "expected one FILE");
  mg_policy_init();
  const char *path = argv[2];
  char *data = NULL;
  size_t len = 0;
  int rv = mg_file_read(path, 64u << 20, &data, &len);
  if (rv) return die("policy check: %s: %s", path, mg_strerror(rv));
  struct mg_grant **gs = NULL;
  size_t n = 0;
  struct mg_policy_diag diag = {0};
  rv = mg_policy_grants_parse(data, len, &gs, &n, &diag);
  free(data);
  if (rv) {
    for (size_t i = 0; i < diag.n; i++) fprintf(stderr, "%s: %s\n", path, diag.msgs[i]);
    if (diag.n == 0) fprintf(stderr, "%s: %s\n", path, mg_strerror(rv));
    mg_policy_diag_clear(&diag);
    return 1;
  }
  printf("%s: %zu grant%s OK\n", path, n, n == 1 ? "" : "s");
  mg_policy_grants_free(gs, n);
  return 0;
}

/* ---- lineage export / verify ---- */

static int parse_time_opt(const char *s, int64_t *out) {
  return mg_time_parse_rfc3339(s, strlen(s), out);
}

static int cmd_lineage_export(int argc, char **argv) {
  static const struct option opts[] = {
    {"db", required_argument, 0, 'd'}, {"nats", required_argument, 0, 'n'},
    {"stream", required_argument, 0, 's'}, {"origin", required_argument, 0, 'o'},
    {"since", required_argument, 0, 'S'}, {"until", required_argument, 0, 'U'},
    {"principal", required_argument, 0, 'p'}, {"product", required_argument, 0, 'P'},
    {"dataset", required_argument, 0, 'D'}, {"action", required_argument, 0, 'a'},
    {"format", required_argument, 0, 'f'}, {"creds", required_argument, 0, 'c'},
    {"tls-ca", required_argument, 0, 't'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  const char *db = NULL, *nats = NULL, *stream = NULL, *origin = NULL, *creds = NULL,
             *tls_ca = NULL;
  enum mg_lineage_format fmt = MG_LINEAGE_NDJSON;
  struct mg_lineage_filter f;
  mg_lineage_filter_init(&f);
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    switch (c) {
    case 'd': db = optarg; break;
    case 'n': nats = optarg; break;
    case 's': stream = optarg; break;
    case 'o': origin = optarg; break;
    case 'c': creds = optarg; break;
    case 't': tls_ca = optarg; break;
    case 'S': if (parse_time_opt(optarg, &f.since_us)) return usage_error("lineage export", "--since: expected RFC 3339"); break;
    case 'U': if (parse_time_opt(optarg, &f.until_us)) return usage_error("lineage export", "--until: expected RFC 3339"); break;
    case 'p': f.principal = optarg; break;
    case 'P': f.product = optarg; break;
    case 'D': f.dataset = optarg; break;
    case 'a':
      if (strcmp(optarg, "read") && strcmp(optarg, "write") && strcmp(optarg, "policy-write"))
        return usage_error("lineage export", "--action: expected read or write");
      f.action = optarg;
      break;
    case 'f':
      if (!strcmp(optarg, "ndjson")) fmt = MG_LINEAGE_NDJSON;
      else if (!strcmp(optarg, "openlineage")) fmt = MG_LINEAGE_OPENLINEAGE;
      else return usage_error("lineage export", "--format: expected ndjson or openlineage");
      break;
    case 'h':
      printf("usage: meshgate lineage export [--db DIR | --nats URL[,URL...] --stream S\n"
             "         [--origin O] [--creds FILE] [--tls-ca FILE]]\n"
             "         [--since T] [--until T] [--principal P] [--product P] [--dataset D]\n"
             "         [--action read|write] [--format ndjson|openlineage]\n"
             "Writes the lineage export to stdout. Without filters (or with --since alone) the\n"
             "export is a contiguous range ending with a checkpoint that covers it; with filters\n"
             "each entry carries an inclusion proof. --db reads the local log (also while serve\n"
             "runs); --nats reads the replicated stream, one section per origin (or --origin\n"
             "only), with NATS credentials (--creds) and TLS verified against --tls-ca.\n");
      return 0;
    default: return usage_error("lineage export", "unknown option");
    }
  }
  if (optind != argc) return usage_error("lineage export", "unexpected argument");
  if (!db == !nats) return usage_error("lineage export", "exactly one of --db and --nats is required");
  if (nats && !stream) return usage_error("lineage export", "--nats needs --stream");
  if ((origin || creds || tls_ca) && !nats)
    return usage_error("lineage export", "--origin, --creds and --tls-ca go with --nats");
  mg_lineage_init();
  int rv;
  if (db) {
    struct mg_lineage_reader *r = NULL;
    rv = mg_lineage_reader_open(db, &r);
    if (rv) return die("lineage export: %s: %s", db, mg_strerror(rv));
    rv = mg_lineage_export(r, &f, fmt, stdout);
    mg_lineage_reader_close(r);
  } else {
    struct mg_lineage_nats_source src = {.url = nats, .stream = stream, .origin = origin,
                                         .creds = creds, .tls_ca = tls_ca};
    rv = mg_lineage_export_nats(&src, &f, fmt, stdout);
  }
  if (fflush(stdout) != 0 && rv == 0) rv = -errno;
  if (rv == -EPIPE) return 1;
  if (rv) return die("lineage export: %s", mg_strerror(rv));
  return 0;
}

static int cmd_lineage_verify(int argc, char **argv) {
  static const struct option opts[] = {
    {"key", required_argument, 0, 'k'}, {"complete", no_argument, 0, 'c'},
    {"min-size", required_argument, 0, 'm'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  char *keys[64];
  size_t nkeys = 0;
  int c, status = 0;
  bool complete = false;
  uint64_t min_size = 0;
  optind = 1;
  while ((c = getopt_long(argc, argv, "k:h", opts, NULL)) != -1) {
    switch (c) {
    case 'c': complete = true; break;
    case 'm': {
      char *end = NULL;
      errno = 0;
      unsigned long long v = strtoull(optarg, &end, 10);
      if (!*optarg || *end || errno || optarg[0] == '-') {
        status = usage_error("lineage verify", "--min-size takes a number of entries");
        goto out;
      }
      min_size = v;
      break;
    }
    case 'k': {
      if (nkeys == MG_ARRAY_LEN(keys)) { status = usage_error("lineage verify", "too many keys"); goto out; }
      /* a path to a .vkey file, or the vkey text itself */
      char *text = NULL;
      size_t len = 0;
      if (strchr(optarg, '+') && access(optarg, R_OK) != 0) {
        text = strdup(optarg);
        len = strlen(text);
      } else {
        int rv = mg_file_read(optarg, 65536, &text, &len);
        if (rv) { status = die("lineage verify: %s: %s", optarg, mg_strerror(rv)); goto out; }
      }
      while (len && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' ')) text[--len] = 0;
      keys[nkeys++] = text;
      break;
    }
    case 'h':
      printf("usage: meshgate lineage verify --key VKEY [--key VKEY...] [--complete]\n"
             "                               [--min-size N] FILE\n"
             "Verifies an export (FILE or - for stdin): every entry intact and covered by a\n"
             "checkpoint signed by one of the keys (a .vkey file or the key text). Exit 0 when\n"
             "intact; otherwise 1 naming the first bad index. It prints, per origin, what was\n"
             "proven: the whole log, the entries after a prefix, or (filtered) the inclusion\n"
             "of the entries present, which says nothing of the ones left out.\n"
             "  --complete    fail unless every origin is whole from index 0 (not filtered,\n"
             "                no prefix): the markers are not signed, anyone can add them\n"
             "  --min-size N  fail if an origin's last checkpoint covers fewer than N entries\n"
             "                (a truncated export; N from a checkpoint you trust)\n");
      status = 0;
      goto out;
    default: status = usage_error("lineage verify", "unknown option"); goto out;
    }
  }
  if (nkeys == 0) { status = usage_error("lineage verify", "at least one --key is required"); goto out; }
  if (optind != argc - 1) { status = usage_error("lineage verify", "expected one FILE"); goto out; }
  mg_lineage_init();
  FILE *in = strcmp(argv[optind], "-") ? fopen(argv[optind], "r") : stdin;
  if (!in) { status = die("lineage verify: %s: %s", argv[optind], strerror(errno)); goto out; }
  struct mg_lineage_verify_result res;
  memset(&res, 0, sizeof res);
  int rv = mg_lineage_verify(in, (const char *const *)keys, nkeys, &res);
  if (in != stdin) fclose(in);
  if (rv) {
    if (res.bad_index != UINT64_MAX && res.reason[0])
      status = die("lineage verify: FAILED at index %llu: %s", (unsigned long long)res.bad_index, res.reason);
    else
      status = die("lineage verify: FAILED: %s", res.reason[0] ? res.reason : mg_strerror(rv));
    goto out;
  }
  for (size_t i = 0; i < res.norigins && i < MG_LINEAGE_VERIFY_MAX_ORIGINS; i++) {
    const struct mg_lineage_verify_origin *o = &res.origins[i];
    if (complete && o->kind != MG_VERIFY_COMPLETE) {
      status = die("lineage verify: FAILED (--complete): origin %s: %s", o->name,
                   o->kind == MG_VERIFY_FROM_PREFIX ? "the export starts after a prefix"
                                                    : "the export is filtered: completeness not proven");
      goto out;
    }
    if (o->size < min_size) {
      status = die("lineage verify: FAILED (--min-size %llu): origin %s: the last checkpoint covers "
                   "%llu entries (truncated export)", (unsigned long long)min_size, o->name,
                   (unsigned long long)o->size);
      goto out;
    }
  }
  if ((complete && res.incomplete) || res.min_size < min_size) { /* origins beyond the table */
    status = die("lineage verify: FAILED: an origin beyond the first %d is %s",
                 MG_LINEAGE_VERIFY_MAX_ORIGINS, res.min_size < min_size ? "truncated" : "not complete");
    goto out;
  }
  printf("OK: %llu entries, %llu checkpoints verified%s\n", (unsigned long long)res.entries,
         (unsigned long long)res.checkpoints,
         res.incomplete ? " (NOT a complete log: see below)" : "");
  for (size_t i = 0; i < res.norigins && i < MG_LINEAGE_VERIFY_MAX_ORIGINS; i++) {
    const struct mg_lineage_verify_origin *o = &res.origins[i];
    unsigned long long sz = o->size, n = o->entries, first = o->first;
    switch (o->kind) {
    case MG_VERIFY_COMPLETE:
      printf("  %s: complete, entries 0..%lld, checkpoint %llu\n", o->name, (long long)sz - 1, sz);
      break;
    case MG_VERIFY_FROM_PREFIX:
      printf("  %s: entries %llu..%lld after a prefix of %llu (not in this export), checkpoint %llu\n",
             o->name, first, (long long)sz - 1, first, sz);
      break;
    case MG_VERIFY_FILTERED:
      printf("  %s: filtered, %llu entries proven included in checkpoint %llu; completeness not proven\n",
             o->name, n, sz);
      break;
    case MG_VERIFY_NO_ENTRIES:
      printf("  %s: filtered, no entries; checkpoint %llu\n", o->name, sz);
      break;
    }
  }
  if (res.norigins > MG_LINEAGE_VERIFY_MAX_ORIGINS)
    printf("  (%zu more origins)\n", res.norigins - MG_LINEAGE_VERIFY_MAX_ORIGINS);
out:
  for (size_t i = 0; i < nkeys; i++) free(keys[i]);
  return status;
}

static int cmd_lineage(int argc, char **argv) {
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
    FILE *o = argc < 2 ? stderr : stdout;
    fprintf(o, "usage: meshgate lineage export|verify ... (see --help of each)\n");
    return argc < 2 ? EXIT_USAGE : 0;
  }
  if (!strcmp(argv[1], "export")) return cmd_lineage_export(argc - 1, argv + 1);
  if (!strcmp(argv[1], "verify")) return cmd_lineage_verify(argc - 1, argv + 1);
  return usage_error("lineage", "unknown subcommand");
}

/* ---- serve ---- */

/* An encrypted key would make OpenSSL prompt on the terminal: refuse it instead. */
static int no_passphrase(char *buf, int size, int rwflag, void *u) {
  (void)buf, (void)size, (void)rwflag, (void)u;
  return -1;
}

static int check_signing_key(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return -errno;
  EVP_PKEY *k = PEM_read_PrivateKey(f, NULL, no_passphrase, NULL);
  fclose(f);
  if (!k) return MG_ERR_INVALID;
  int ok = EVP_PKEY_get_base_id(k) == EVP_PKEY_ED25519;
  EVP_PKEY_free(k);
  return ok ? 0 : MG_ERR_INVALID;
}

static struct mg_config **retired;
static size_t nretired;
static struct mg_authn **retired_authn;
static size_t nretired_authn;

/* Everything mg_authn_new reads. */
static bool identity_equal(const struct mg_config *a, const struct mg_config *b) {
  if (a->nissuers != b->nissuers || a->max_token_bytes != b->max_token_bytes) return false;
  for (size_t i = 0; i < a->nissuers; i++) {
    const struct mg_config_issuer *x = &a->issuers[i], *y = &b->issuers[i];
    if (!mg_str_eq(x->name, y->name) || !mg_str_eq(x->issuer, y->issuer) ||
        !mg_strv_eq(x->audiences, x->naudiences, y->audiences, y->naudiences) ||
        !mg_str_eq(x->jwks_file, y->jwks_file) || !mg_str_eq(x->jwks_url, y->jwks_url) ||
        !mg_strv_eq(x->algorithms, x->nalgorithms, y->algorithms, y->nalgorithms) ||
        !mg_str_eq(x->groups_claim, y->groups_claim) || x->clock_skew_s != y->clock_skew_s ||
        x->jwks_refresh_s != y->jwks_refresh_s || x->jwks_min_refresh_s != y->jwks_min_refresh_s)
      return false;
  }
  return true;
}

static void reload(struct mg_app *app) {
  struct mg_config *old = atomic_load(&app->cfg);
  struct mg_config *ncfg = NULL;
  char err[1024];
  if (mg_config_load(old->path, &ncfg, err, sizeof err)) {
    mg_error("reload rejected, the running configuration stays: %s", err);
    return;
  }
  if (strcmp(ncfg->listen_address, old->listen_address) || strcmp(ncfg->lineage_db, old->lineage_db) ||
      strcmp(ncfg->policy_db, old->policy_db) || strcmp(ncfg->admin_address, old->admin_address) ||
      strcmp(ncfg->origin, old->origin) || ncfg->workers != old->workers)
    mg_warn("reload: listen/admin address, workers, databases and origin change only on restart");
  if (!mg_str_eq(ncfg->signing_key, old->signing_key) ||
      !mg_strv_eq(ncfg->old_signing_keys, ncfg->nold_signing_keys, old->old_signing_keys,
               old->nold_signing_keys) ||
      ncfg->lineage_map_size_mb != old->lineage_map_size_mb ||
      ncfg->policy_map_size_mb != old->policy_map_size_mb || ncfg->durability != old->durability ||
      ncfg->checkpoint_every_ms != old->checkpoint_every_ms ||
      ncfg->deny_entries_per_s != old->deny_entries_per_s || (!ncfg->nats) != (!old->nats) ||
      (ncfg->nats && (!mg_strv_eq(ncfg->nats->servers, ncfg->nats->nservers, old->nats->servers,
                               old->nats->nservers) ||
                      !mg_str_eq(ncfg->nats->stream, old->nats->stream) ||
                      !mg_str_eq(ncfg->nats->subject, old->nats->subject))) ||
      (ncfg->admin_tls != NULL) != (old->admin_tls != NULL))
    mg_warn("reload: the lineage settings (signing keys, map sizes, durability, checkpoint "
            "period, deny budget, NATS) and the admin listener's TLS change only on restart");
  ncfg->durability = old->durability; /* the writer's mode, fixed at start: keep them one */
  if (ncfg->max_body_buffer != old->max_body_buffer) {
    /* the upstream connections' stream windows were sized from it: keep one value */
    mg_warn("reload: limits.max_body_buffer changes only on restart");
    ncfg->max_body_buffer = old->max_body_buffer;
  }
  /* Identity: a changed issuer list must take effect (a removed issuer's tokens refused),
   * so a new verifier is built first; if it cannot load its keys, the reload is refused. */
  struct mg_authn *nauthn = NULL, *oauthn = atomic_load(&app->authn);
  if (!identity_equal(ncfg, old) && mg_authn_new(ncfg, &nauthn, err, sizeof err)) {
    mg_error("reload rejected, the running configuration stays: %s", err);
    mg_config_unref(ncfg);
    return;
  }
  struct mg_authn **ra = nauthn ? realloc(retired_authn, (nretired_authn + 1) * sizeof *ra) : NULL;
  if (nauthn && !ra) {
    mg_error("reload rejected, the running configuration stays: out of memory");
    mg_authn_free(nauthn);
    mg_config_unref(ncfg);
    return;
  }
  if (mg_server_reload(app->server, ncfg, err, sizeof err)) {
    mg_error("reload rejected, the running configuration stays: %s", err);
    mg_authn_free(nauthn);
    mg_config_unref(ncfg);
    return;
  }
  if (nauthn) {
    /* requests verifying with the old one finish with it; it is freed at exit */
    retired_authn = ra;
    retired_authn[nretired_authn++] = oauthn;
    atomic_store(&app->authn, nauthn);
    mg_authn_stop(oauthn);
    mg_info("reload: identity settings changed: issuers and their keys reloaded");
  } else {
    mg_authn_reload(oauthn);
  }
  struct mg_config **r = realloc(retired, (nretired + 1) * sizeof *r);
  if (r) { retired = r; retired[nretired++] = old; }
  atomic_store(&app->cfg, ncfg);
  mg_info("configuration reloaded from %s", ncfg->path);
}

static int cmd_serve(int argc, char **argv) {
  static const struct option opts[] = {
    {"config", required_argument, 0, 'c'}, {"check", no_argument, 0, 'C'},
    {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  const char *path = NULL;
  bool check = false;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
    switch (c) {
    case 'c': path = optarg; break;
    case 'C': check = true; break;
    case 'h':
      printf("usage: meshgate serve -c FILE [--check]\n"
             "Runs the sidecar. SIGHUP reloads the config, identity, JWKS and the data\n"
             "listener's certificates (a bad config is rejected and the old one keeps\n"
             "serving); SIGTERM drains and exits 0.\n\n");
      mg_config_print_help(stdout);
      return 0;
    default: return usage_error("serve", "unknown option");
    }
  }
  if (!path) return usage_error("serve", "-c FILE is required");
  if (optind != argc) return usage_error("serve", "unexpected argument");

  mg_policy_init();
  mg_lineage_init();
  struct mg_config *cfg = NULL;
  char err[1024];
  if (mg_config_load(path, &cfg, err, sizeof err)) return die("%s", err);
  /* Signals: blocked before any thread starts (the JWKS refresh thread and libcurl's
   * resolver threads inherit the mask), taken by the main thread with sigwait. A thread
   * with them unblocked would die of a SIGHUP or SIGTERM at their default action. */
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  if (!check) pthread_sigmask(SIG_BLOCK, &set, NULL);
  int rv = check_signing_key(cfg->signing_key);
  if (rv) {
    die("%s: /lineage/signing_key: %s is not a readable Ed25519 private key (%s)", path, cfg->signing_key,
        rv == MG_ERR_INVALID ? "wrong format" : mg_strerror(rv));
    mg_config_unref(cfg);
    return 1;
  }
  struct mg_authn *authn = NULL;
  if (mg_authn_new(cfg, &authn, err, sizeof err)) {
    mg_config_unref(cfg);
    return die("%s: %s", path, err);
  }
  if (check) {
    printf("%s: configuration OK\n", path);
    mg_authn_free(authn);
    mg_config_unref(cfg);
    return 0;
  }

  signal(SIGPIPE, SIG_IGN);

  static struct mg_app app;
  mg_app = &app;
  pthread_mutex_init(&app.index_lock, NULL);
  atomic_store(&app.cfg, cfg);
  app.authn = authn;
  struct mg_admin *admin = NULL;
  int status = 1;

  if ((rv = mg_mkdir_p(cfg->policy_db, 0700)) ||
      (rv = mg_policy_store_open(cfg->policy_db, cfg->policy_map_size_mb, false, &app.policy))) {
    die("policy store %s: %s", cfg->policy_db, mg_strerror(rv));
    goto fail_policy;
  }
  if ((rv = mg_app_index_rebuild(&app))) {
    die("policy store %s: %s", cfg->policy_db, mg_strerror(rv));
    goto fail_index;
  }
  struct mg_lineage_config lc = {
    .db = cfg->lineage_db, .map_size_mb = cfg->lineage_map_size_mb, .signing_key = cfg->signing_key,
    .old_signing_keys = (const char *const *)cfg->old_signing_keys, .nold_signing_keys = cfg->nold_signing_keys,
    .origin = cfg->origin, .durability = (enum mg_lineage_durability)cfg->durability,
    .checkpoint_every_ms = cfg->checkpoint_every_ms, .deny_entries_per_s = cfg->deny_entries_per_s,
    .retention_s = cfg->nats ? cfg->nats->retention_s : 0,
  };
  if ((rv = mg_mkdir_p(cfg->lineage_db, 0700)) || (rv = mg_lineage_writer_open(&lc, &app.lineage))) {
    die("lineage log %s: %s", cfg->lineage_db, mg_strerror(rv));
    goto fail_lineage;
  }
  if (cfg->nats) {
    struct mg_lineage_nats nc = {
      .servers = (const char *const *)cfg->nats->servers, .nservers = cfg->nats->nservers,
      .stream = cfg->nats->stream, .subject = cfg->nats->subject, .replicas = cfg->nats->replicas,
      .creds = cfg->nats->creds, .tls_ca = cfg->nats->tls_ca,
    };
    if ((rv = mg_lineage_writer_replicate(app.lineage, &nc))) {
      die("lineage replication to %s stream %s: %s", cfg->nats->servers[0], cfg->nats->stream, mg_strerror(rv));
      goto fail_server;
    }
  }
  if ((rv = mg_server_start(cfg, &app.server, err, sizeof err))) {
    die("data listener %s: %s", cfg->listen_address, err);
    goto fail_server;
  }
  if ((rv = mg_admin_start(&app, &admin, err, sizeof err))) {
    die("admin listener %s: %s", cfg->admin_address, err);
    goto fail_admin;
  }
  atomic_store(&app.ready, 1);
  mg_info("meshgate %s serving product %s on %s (admin %s), lineage origin %s, %s", MG_VERSION, cfg->product,
          cfg->listen_address, cfg->admin_address, cfg->origin,
          cfg->durability == MG_LINEAGE_WRITE_AHEAD ? "write-ahead" : "async");

  for (;;) {
    int sig = 0;
    if (sigwait(&set, &sig) != 0) continue;
    if (sig == SIGHUP) { reload(&app); continue; }
    mg_info("signal %d: draining (grace %d s)", sig, atomic_load(&app.cfg)->shutdown_grace_s);
    break;
  }
  atomic_store(&app.stopping, 1);
  atomic_store(&app.ready, 0);
  status = 0;
  mg_server_stop(app.server, atomic_load(&app.cfg)->shutdown_grace_s);
  mg_admin_stop(admin);
fail_admin:
  if (status) mg_server_stop(app.server, 0);
  /* The writer's last callbacks and the JWKS waiters post to the workers: both end
   * before the workers and their pipeline state are freed. */
  mg_lineage_writer_close(app.lineage);
  app.lineage = NULL;
  mg_authn_stop(atomic_load(&app.authn));
  for (size_t i = 0; i < nretired_authn; i++) mg_authn_stop(retired_authn[i]);
  mg_server_free(app.server);
  mg_pipeline_shutdown();
fail_server:
  mg_lineage_writer_close(app.lineage);
fail_lineage:
  mg_policy_index_unref(atomic_load(&app.index));
fail_index:
  mg_policy_store_close(app.policy);
fail_policy:
  mg_authn_free(atomic_load(&app.authn));
  for (size_t i = 0; i < nretired_authn; i++) mg_authn_free(retired_authn[i]);
  free(retired_authn);
  mg_config_unref(atomic_load(&app.cfg));
  for (size_t i = 0; i < nretired; i++) mg_config_unref(retired[i]);
  free(retired);
  if (status == 0) mg_info("stopped");
  return status;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    usage_main(stderr);
    return EXIT_USAGE;
  }
  const char *cmd = argv[1];
  if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
    usage_main(stdout);
    return 0;
  }
  if (!strcmp(cmd, "--version")) return cmd_version(1, argv + 1);
  if (!strcmp(cmd, "serve")) return cmd_serve(argc - 1, argv + 1);
  if (!strcmp(cmd, "keygen")) return cmd_keygen(argc - 1, argv + 1);
  if (!strcmp(cmd, "policy")) return cmd_policy(argc - 1, argv + 1);
  if (!strcmp(cmd, "lineage")) return cmd_lineage(argc - 1, argv + 1);
  if (!strcmp(cmd, "version")) return cmd_version(argc - 1, argv + 1);
  fprintf(stderr, "%s: unknown command '%s'\n", prog, cmd);
  usage_main(stderr);
  return EXIT_USAGE;
}

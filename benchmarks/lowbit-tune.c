/*
 * lowbit-tune -- searches the launch parameters of lowbit's kernels on one device and writes them to the
 * tuning cache file (README.md, "Tuning").
 *
 * For each kernel family (quantize, dequantize, int8 GEMM blocking) it measures the built-in table (the
 * cache file is not read, so every run starts from the same baseline), then walks the parameters one at a
 * time: each candidate is set with lowbit_tune_set, the op runs on poisoned outputs and its result is
 * compared bit for bit with the CPU backend's (a wrong result disqualifies the candidate before it is
 * timed), then it is timed (median of several runs after a warm-up) over two shape buckets.  A value is
 * kept only when it beats the best so far by more than the noise margin, and the family's final table is
 * timed against the baseline again: if it is not faster, nothing is written for it.  The result is merged
 * into the cache file atomically (lowbit_tune_save).
 *
 * Uses only the public API.
 */
#include "config.h"

#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define MAX_CAND 8
#define MAX_KEYS 4
#define MAX_WORK 4
#define MARGIN 0.98 /* a candidate must be 2% faster (geometric mean over the shapes) to replace the best */

enum op { OP_QUANT, OP_DEQUANT, OP_INT8 };

typedef struct param {
    const char *key;         /* may contain one %s: the format name */
    int64_t cand[MAX_CAND];  /* the full search */
    int ncand;
    int nquick;              /* --quick tries the first nquick */
} param_t;

typedef struct family {
    const char *name;        /* --op matches the part before the first '.' */
    const char *backends;    /* "cpu", "opencl", "gpu" (cuda, hip) */
    enum op op;
    int per_format;          /* 1: one family per format (the keys contain the format) */
    param_t params[MAX_KEYS];
} family_t;

static const family_t families[] = {
    {"quantize", "gpu", OP_QUANT, 1,
     {{"quantize.%s.threads", {64, 128, 256, 512, 1024}, 5, 3},
      {"quantize.%s.vec", {1, 2}, 2, 2},
      {"quantize.%s.ctas_per_sm", {0, 2, 4, 8, 16}, 5, 2}}},
    {"dequantize", "gpu", OP_DEQUANT, 1,
     {{"dequantize.%s.threads", {64, 128, 256, 512, 1024}, 5, 3},
      {"dequantize.%s.vec", {1, 2}, 2, 2},
      {"dequantize.%s.ctas_per_sm", {0, 2, 4, 8, 16}, 5, 2}}},
    {"quantize", "opencl", OP_QUANT, 0,
     {{"opencl.quantize.threads", {16, 64, 256, 8, 32, 128}, 6, 3},
      {"opencl.quantize.vpt", {16, 8, 4}, 3, 2},
      {"opencl.quantize.max_groups", {64, 256, 1024, 4096}, 4, 0}}},
    {"dequantize", "opencl", OP_DEQUANT, 0,
     {{"opencl.quantize.dequant_threads", {64, 256, 32, 128}, 4, 2},
      {"opencl.quantize.dequant_vpt", {16, 8, 4}, 3, 2},
      {"opencl.quantize.dequant_max_groups", {64, 1024, 65536}, 3, 0}}},
    {"quantize", "cpu", OP_QUANT, 0, {{"cpu.quantize.chunk_blocks", {0, 16, 128, 4, 64, 256, 1024}, 7, 3}}},
    {"int8", "cpu", OP_INT8, 0,
     {{"cpu.int8.gemm_kc", {512, 256, 1024, 128}, 4, 2},
      {"cpu.int8.gemm_nc", {512, 256, 1024}, 3, 2},
      {"cpu.int8.gemm_mc", {192, 96, 384}, 3, 2}}},
};

static const lowbit_qformat_t formats[] = {LOWBIT_QFORMAT_NF4, LOWBIT_QFORMAT_8BIT, LOWBIT_QFORMAT_FP4};

typedef struct opts {
    const char *backend;
    int device;
    int quick;
    int dry_run;
    const char *only;        /* --op */
    const char *output;
    int reps;
} opts_t;

/* One workload: an op on one shape, with its reference result. */
typedef struct work {
    enum op op;
    lowbit_qformat_t format;
    int64_t n;               /* elements (quantize) or M for int8 */
    int64_t N, K;            /* int8 */
    lowbit_buffer_t *in, *out, *w;
    lowbit_qtensor_t q;
    void *ref;               /* expected output bytes */
    size_t ref_bytes;
    void *got;
    double base_ms;
} work_t;

typedef struct tuner {
    opts_t o;
    lowbit_context_t *ctx, *ref;  /* device under tuning, CPU reference */
    lowbit_device_info_t dev;
    lowbit_event_t *ev0, *ev1;
    lowbit_dtype_t dtype;
    double t_start;
    int tried, rejected;
} tuner_t;

/* ---- command line ------------------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: lowbit-tune [OPTION]...\n"
            "Search the kernels' launch parameters on one device and save the best to the tuning cache.\n\n"
            "  -b, --backend NAME   cuda, hip, opencl or cpu (default: as lowbit_context_create)\n"
            "  -d, --device N       device index within the backend (default: the backend's first GPU)\n"
            "      --op FAMILY      tune only FAMILY: quantize, dequantize, int8 (comma-separated list)\n"
            "      --quick          fewer candidates, smaller shapes, fewer repetitions\n"
            "      --reps N         timed runs per measurement (default 9, --quick 5); the median is used\n"
            "  -o, --output FILE    cache file to update (default: LOWBIT_TUNING_FILE, else\n"
            "                       $XDG_CACHE_HOME/lowbit/tuning.json or ~/.cache/lowbit/tuning.json)\n"
            "  -n, --dry-run        search and report, write nothing\n"
            "  -h, --help           this text\n"
            "  -V, --version        print the lowbit version\n\n"
            "Progress goes to stderr, the summary to stdout.  Exit status: 0 on success, 1 on an error.\n");
}

CLI_NORETURN CLI_PRINTF(1, 2) static void usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "%s: ", cli_prog);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help'.\n", cli_prog);
    exit(1);
}

static void parse_args(int argc, char **argv, opts_t *o)
{
    static const struct option lopts[] = {
        {"backend", required_argument, NULL, 'b'}, {"device", required_argument, NULL, 'd'},
        {"op", required_argument, NULL, 'p'},      {"quick", no_argument, NULL, 'q'},
        {"reps", required_argument, NULL, 'r'},    {"output", required_argument, NULL, 'o'},
        {"dry-run", no_argument, NULL, 'n'},       {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},       {NULL, 0, NULL, 0}};
    memset(o, 0, sizeof *o);
    o->device = -1;
    int c;
    int64_t v;
    while ((c = getopt_long(argc, argv, "b:d:o:nhV", lopts, NULL)) != -1) {
        switch (c) {
        case 'b': o->backend = optarg; break;
        case 'd':
            if (cli_parse_i64(optarg, &v) != 0 || v < 0 || v > 1024)
                usage_error("--device: '%s' is not a device index", optarg);
            o->device = (int)v;
            break;
        case 'p': o->only = optarg; break;
        case 'q': o->quick = 1; break;
        case 'r':
            if (cli_parse_i64(optarg, &v) != 0 || v < 1 || v > 1000)
                usage_error("--reps: '%s' is not in [1, 1000]", optarg);
            o->reps = (int)v;
            break;
        case 'o': o->output = optarg; break;
        case 'n': o->dry_run = 1; break;
        case 'h': usage(stdout); exit(0);
        case 'V': printf("lowbit-tune %s\n", lowbit_version_string()); exit(0);
        default: usage_error("unknown option");
        }
    }
    if (optind < argc)
        usage_error("unexpected argument '%s'", argv[optind]);
    if (o->only != NULL) {
        char buf[256], *items[8];
        snprintf(buf, sizeof buf, "%s", o->only);
        int n = cli_split_list(buf, items, 8);
        for (int i = 0; i < n; i++)
            if (strcmp(items[i], "quantize") && strcmp(items[i], "dequantize") && strcmp(items[i], "int8"))
                usage_error("--op: '%s' is not quantize, dequantize or int8", items[i]);
        if (n <= 0)
            usage_error("--op: empty or too long list");
    }
    if (o->reps == 0)
        o->reps = o->quick ? 5 : 9;
}

/* The cache file path, by the library's rules (README.md, "Tuning"). */
static void output_path(const opts_t *o, char *out, size_t len)
{
    const char *env = getenv("LOWBIT_TUNING_FILE"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (o->output != NULL)
        snprintf(out, len, "%s", o->output);
    else if (env != NULL && strcmp(env, "0") == 0)
        cli_die("LOWBIT_TUNING_FILE=0 disables the cache file; name one with --output or use --dry-run");
    else if (env != NULL && *env != '\0')
        snprintf(out, len, "%s", env);
    else if (xdg != NULL && xdg[0] == '/')
        snprintf(out, len, "%s/lowbit/tuning.json", xdg);
    else if (home != NULL && *home != '\0')
        snprintf(out, len, "%s/.cache/lowbit/tuning.json", home);
    else
        cli_die("no HOME to find the cache in; name the file with --output");
}

static int family_selected(const tuner_t *t, const family_t *f)
{
    const char *be = t->dev.backend;
    int gpu = strcmp(be, "cuda") == 0 || strcmp(be, "hip") == 0;
    if (strcmp(f->backends, gpu ? "gpu" : be) != 0)
        return 0;
    if (t->o.only == NULL)
        return 1;
    char buf[256], *items[8];
    snprintf(buf, sizeof buf, "%s", t->o.only);
    int n = cli_split_list(buf, items, 8);
    for (int i = 0; i < n; i++)
        if (strcmp(items[i], f->name) == 0)
            return 1;
    return 0;
}

/* ---- workloads ---------------------------------------------------------------------------------------- */

static void fill_random(void *dst, int64_t n, lowbit_dtype_t dtype, uint64_t seed)
{
    for (int64_t i = 0; i < n; i += 2) {
        double z0, z1;
        cli_randn_pair(seed, (uint64_t)i / 2, &z0, &z1);
        for (int k = 0; k < 2 && i + k < n; k++) {
            float x = (float)(k ? z1 : z0);
            if (dtype == LOWBIT_F32)
                ((float *)dst)[i + k] = x;
            else
                ((uint16_t *)dst)[i + k] = dtype == LOWBIT_F16 ? cli_f32_to_f16(x) : cli_f32_to_bf16(x);
        }
    }
}

/* Runs w's op on ctx with outputs poisoned first. */
static lowbit_status_t work_run(lowbit_context_t *ctx, work_t *w, int poison)
{
    lowbit_status_t st = LOWBIT_SUCCESS;
    switch (w->op) {
    case OP_QUANT:
        if (poison && ((st = lowbit_buffer_fill(ctx, NULL, w->q.data, 0xa5)) ||
                       (st = lowbit_buffer_fill(ctx, NULL, w->q.absmax, 0xa5))))
            return st;
        return lowbit_quantize_blockwise(ctx, NULL, w->in, &w->q, NULL);
    case OP_DEQUANT:
        if (poison && (st = lowbit_buffer_fill(ctx, NULL, w->out, 0xa5)))
            return st;
        return lowbit_dequantize_blockwise(ctx, NULL, &w->q, LOWBIT_F32, w->out);
    case OP_INT8:
        if (poison && (st = lowbit_buffer_fill(ctx, NULL, w->out, 0xa5)))
            return st;
        return lowbit_int8_gemm(ctx, NULL, w->n, w->N, w->K, w->in, w->w, w->out);
    }
    return st;
}

/* The bytes a workload is checked on: codes and absmax for quantize, the output otherwise. */
static void work_result(lowbit_context_t *ctx, work_t *w, void *dst)
{
    if (w->op == OP_QUANT) {
        lowbit_qtensor_sizes_t s;
        CLI_CHECK("lowbit_qtensor_sizes", lowbit_qtensor_sizes(w->q.format, w->q.n, w->q.blocksize, 0, &s));
        CLI_CHECK("lowbit_buffer_download", lowbit_buffer_download(ctx, NULL, w->q.data, 0, dst, s.data_bytes));
        CLI_CHECK("lowbit_buffer_download", lowbit_buffer_download(ctx, NULL, w->q.absmax, 0,
                                                                   (char *)dst + s.data_bytes, s.absmax_bytes));
    } else {
        CLI_CHECK("lowbit_buffer_download", lowbit_buffer_download(ctx, NULL, w->out, 0, dst, w->ref_bytes));
    }
}

/* Allocates w's buffers on ctx and uploads its inputs (host arrays in/wt). */
static void work_alloc(lowbit_context_t *ctx, work_t *w, lowbit_dtype_t dtype, const void *in, const void *wt)
{
    if (w->op == OP_INT8) {
        CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(ctx, (size_t)(w->n * w->K), 0, &w->in));
        CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(ctx, (size_t)(w->N * w->K), 0, &w->w));
        CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(ctx, (size_t)(w->n * w->N) * 4, 0, &w->out));
        CLI_CHECK("lowbit_buffer_upload", lowbit_buffer_upload(ctx, NULL, w->in, 0, in, (size_t)(w->n * w->K)));
        CLI_CHECK("lowbit_buffer_upload", lowbit_buffer_upload(ctx, NULL, w->w, 0, wt, (size_t)(w->N * w->K)));
        w->ref_bytes = (size_t)(w->n * w->N) * 4;
        return;
    }
    size_t bytes = (size_t)w->n * lowbit_dtype_size(dtype);
    int32_t bs = w->format == LOWBIT_QFORMAT_8BIT ? 256 : 64;
    CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(ctx, bytes, 0, &w->in));
    CLI_CHECK("lowbit_buffer_upload", lowbit_buffer_upload(ctx, NULL, w->in, 0, in, bytes));
    CLI_CHECK("lowbit_qtensor_alloc", lowbit_qtensor_alloc(ctx, w->format, dtype, w->n, bs, 0, &w->q));
    CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(ctx, (size_t)w->n * 4, 0, &w->out));
    lowbit_qtensor_sizes_t s;
    CLI_CHECK("lowbit_qtensor_sizes", lowbit_qtensor_sizes(w->format, w->n, bs, 0, &s));
    w->ref_bytes = w->op == OP_QUANT ? s.data_bytes + s.absmax_bytes : (size_t)w->n * 4;
    if (w->op == OP_DEQUANT) /* the input of dequantize: this backend's own quantization, checked below */
        CLI_CHECK("lowbit_quantize_blockwise", lowbit_quantize_blockwise(ctx, NULL, w->in, &w->q, NULL));
}

static void work_free(work_t *w)
{
    lowbit_qtensor_free(&w->q);
    lowbit_buffer_free(w->in);
    lowbit_buffer_free(w->out);
    lowbit_buffer_free(w->w);
    free(w->ref);
    free(w->got);
}

/* Sets up a workload on the device and computes its reference on the CPU backend. */
static void work_setup(tuner_t *t, work_t *w)
{
    size_t in_bytes = w->op == OP_INT8 ? (size_t)(w->n * w->K) : (size_t)w->n * lowbit_dtype_size(t->dtype);
    void *in = cli_xmalloc(in_bytes), *wt = NULL;
    if (w->op == OP_INT8) {
        wt = cli_xmalloc((size_t)(w->N * w->K));
        for (size_t i = 0; i < in_bytes; i++)
            ((int8_t *)in)[i] = (int8_t)(cli_mix64(i) % 255 - 127);
        for (int64_t i = 0; i < w->N * w->K; i++)
            ((int8_t *)wt)[i] = (int8_t)(cli_mix64((uint64_t)i + (1ull << 40)) % 255 - 127);
    } else {
        fill_random(in, w->n, t->dtype, 0x7475u + (uint64_t)w->n);
    }
    work_t r = *w;
    work_alloc(t->ref, &r, t->dtype, in, wt);
    CLI_CHECK("reference op", work_run(t->ref, &r, 1));
    w->ref = cli_xmalloc(r.ref_bytes);
    w->got = cli_xmalloc(r.ref_bytes);
    work_result(t->ref, &r, w->ref);
    r.ref = r.got = NULL;
    work_free(&r);
    work_alloc(t->ctx, w, t->dtype, in, wt);
    free(in);
    free(wt);
}

/* ---- measuring ---------------------------------------------------------------------------------------- */

/* Runs w once on poisoned outputs and compares with the reference: 0 when equal. */
static int work_check(tuner_t *t, work_t *w)
{
    if (work_run(t->ctx, w, 1) != LOWBIT_SUCCESS)
        return -1;
    work_result(t->ctx, w, w->got);
    return memcmp(w->got, w->ref, w->ref_bytes) == 0 ? 0 : -1;
}

/* Median time of w in ms (after one warm-up run). */
static double work_time(tuner_t *t, work_t *w)
{
    double ms[1000];
    CLI_CHECK("warm-up", work_run(t->ctx, w, 0));
    for (int r = 0; r < t->o.reps; r++) {
        float e;
        CLI_CHECK("lowbit_event_record", lowbit_event_record(t->ctx, NULL, t->ev0));
        CLI_CHECK("op", work_run(t->ctx, w, 0));
        CLI_CHECK("lowbit_event_record", lowbit_event_record(t->ctx, NULL, t->ev1));
        CLI_CHECK("lowbit_event_elapsed", lowbit_event_elapsed(t->ctx, t->ev0, t->ev1, &e));
        ms[r] = e;
    }
    double med, mn, p90;
    cli_order_stats(ms, t->o.reps, &med, &mn, &p90);
    return med;
}

/* Checks then times all workloads; returns the geometric mean of time / baseline, or -1 for a wrong
 * result.  base = 1 stores the times as the baseline. */
static double measure(tuner_t *t, work_t *ws, int nw, int base, double *total_ms)
{
    double logsum = 0;
    *total_ms = 0;
    for (int i = 0; i < nw; i++)
        if (work_check(t, &ws[i]) != 0)
            return -1;
    for (int i = 0; i < nw; i++) {
        double ms = work_time(t, &ws[i]);
        if (base)
            ws[i].base_ms = ms;
        logsum += log(ms / ws[i].base_ms);
        *total_ms += ms;
    }
    return exp(logsum / nw);
}

static void progress(tuner_t *t, const char *fam, const char *what, double score, double ms)
{
    if (score < 0)
        fprintf(stderr, "lowbit-tune: [%5.1fs] %-22s %-40s wrong result: rejected\n", cli_now() - t->t_start, fam,
                what);
    else
        fprintf(stderr, "lowbit-tune: [%5.1fs] %-22s %-40s %9.3f ms  %.3fx\n", cli_now() - t->t_start, fam, what,
                ms, score);
}

/* ---- the search --------------------------------------------------------------------------------------- */

typedef struct result {
    char name[64];
    double base_ms, tuned_ms; /* summed over the shapes */
    double ratio;             /* geometric mean of tuned / built-in time over the shapes */
    int changed;
    char values[256];
} result_t;

/* The shape buckets: small and large, sized for the device class. */
static int make_work(const tuner_t *t, const family_t *f, lowbit_qformat_t fmt, work_t *ws)
{
    int gpu = t->dev.is_gpu, nw = 0;
    memset(ws, 0, sizeof(work_t) * MAX_WORK);
    if (f->op == OP_INT8) {
        int64_t dims[2][3] = {{64, 1024, 1024}, {512, 1024, 1024}};
        if (t->o.quick)
            dims[0][0] = 16, dims[1][0] = 256, dims[0][1] = dims[0][2] = dims[1][1] = dims[1][2] = 512;
        for (int i = 0; i < 2; i++)
            ws[nw++] = (work_t){.op = OP_INT8, .n = dims[i][0], .N = dims[i][1], .K = dims[i][2]};
        return nw;
    }
    int64_t small = gpu ? 1 << 20 : 1 << 18, large = gpu ? 1 << 26 : 1 << 22;
    if (t->o.quick)
        small >>= 2, large >>= 4;
    lowbit_qformat_t fl[2] = {fmt, fmt};
    int nf = 1;
    if (!f->per_format) /* the keys hold for every format: a 4-bit and the 8-bit one (--quick: NF4 only,
                           which halves the kernel builds on OpenCL) */
        fl[0] = LOWBIT_QFORMAT_NF4, fl[1] = LOWBIT_QFORMAT_8BIT, nf = t->o.quick ? 1 : 2;
    for (int k = 0; k < nf; k++) {
        ws[nw++] = (work_t){.op = f->op, .format = fl[k], .n = small + 333};
        ws[nw++] = (work_t){.op = f->op, .format = fl[k], .n = large};
    }
    return nw;
}

/* Times the built-in and the tuned table alternately (machines shared with other work drift between two
 * measurements taken far apart) and keeps the tuned one only when the median ratio over the rounds says it
 * is faster.  Leaves the tuned overrides set when it returns 1. */
static int confirm(tuner_t *t, work_t *ws, int nw, char keys[][64], const int64_t *chosen, int nk, result_t *res)
{
    enum { ROUNDS = 3 };
    double ratio[ROUNDS], base[ROUNDS], tuned[ROUNDS];
    for (int r = 0; r < ROUNDS; r++) {
        for (int k = 0; k < nk; k++)
            lowbit_tune_reset(t->ctx, keys[k]);
        measure(t, ws, nw, 1, &base[r]);
        for (int k = 0; k < nk; k++)
            if (chosen[k] >= 0)
                lowbit_tune_set(t->ctx, keys[k], chosen[k]);
        ratio[r] = measure(t, ws, nw, 0, &tuned[r]);
        if (ratio[r] < 0)
            return 0;
    }
    double mr, mn, p90;
    cli_order_stats(ratio, ROUNDS, &mr, &mn, &p90);
    cli_order_stats(base, ROUNDS, &res->base_ms, &mn, &p90);
    cli_order_stats(tuned, ROUNDS, &res->tuned_ms, &mn, &p90);
    progress(t, res->name, "tuned vs built-in (median of 3)", mr, res->tuned_ms);
    if (mr >= 1.0) {
        res->tuned_ms = res->base_ms;
        return 0;
    }
    res->changed = 1;
    res->ratio = mr;
    for (int k = 0; k < nk; k++)
        if (chosen[k] >= 0) {
            size_t u = strlen(res->values);
            snprintf(res->values + u, sizeof res->values - u, "%s%s=%lld", u ? " " : "", keys[k],
                     (long long)chosen[k]);
        }
    return 1;
}

static void tune_family(tuner_t *t, const family_t *f, lowbit_qformat_t fmt, result_t *res)
{
    const char *fname = lowbit_qformat_name(fmt);
    char keys[MAX_KEYS][64];
    int nk = 0;
    for (; nk < MAX_KEYS && f->params[nk].key != NULL; nk++)
        snprintf(keys[nk], sizeof keys[nk], f->params[nk].key, fname);
    snprintf(res->name, sizeof res->name, f->per_format ? "%s.%s" : "%s", f->name, fname);
    work_t ws[MAX_WORK];
    int nw = make_work(t, f, fmt, ws);
    for (int i = 0; i < nw; i++)
        work_setup(t, &ws[i]);
    /* the baseline: the built-in table (and the reference check of the dequantize input) */
    for (int k = 0; k < nk; k++)
        lowbit_tune_reset(t->ctx, keys[k]);
    double base_total;
    double s = measure(t, ws, nw, 1, &base_total);
    progress(t, res->name, "built-in table", s, base_total);
    if (s < 0)
        cli_die("%s: the built-in table gives a result different from the CPU backend's", res->name);
    double best_score = 1.0;
    int64_t chosen[MAX_KEYS]; /* -1: no override (the built-in table) */
    for (int k = 0; k < nk; k++) {
        const param_t *p = &f->params[k];
        int64_t dflt = 0;
        int have_dflt = lowbit_tune_get(t->ctx, keys[k], &dflt) == LOWBIT_SUCCESS;
        int nc = t->o.quick ? p->nquick : p->ncand;
        chosen[k] = -1;
        for (int c = 0; c < nc; c++) {
            if (have_dflt && p->cand[c] == dflt)
                continue; /* that is the current table */
            if (lowbit_tune_set(t->ctx, keys[k], p->cand[c]) != LOWBIT_SUCCESS)
                continue;
            char what[96];
            snprintf(what, sizeof what, "%s = %lld", keys[k], (long long)p->cand[c]);
            double total, sc = measure(t, ws, nw, 0, &total);
            t->tried++;
            t->rejected += sc < 0;
            progress(t, res->name, what, sc, total);
            if (sc >= 0 && sc < best_score * MARGIN) {
                best_score = sc;
                chosen[k] = p->cand[c];
            }
        }
        if (chosen[k] >= 0)
            lowbit_tune_set(t->ctx, keys[k], chosen[k]);
        else
            lowbit_tune_reset(t->ctx, keys[k]);
    }
    res->base_ms = res->tuned_ms = base_total;
    res->changed = 0;
    res->ratio = 1.0;
    res->values[0] = '\0';
    int any = 0;
    for (int k = 0; k < nk; k++)
        any |= chosen[k] >= 0;
    if (any && !confirm(t, ws, nw, keys, chosen, nk, res)) {
        progress(t, res->name, "tuned table not faster: built-in kept", 1.0, res->base_ms);
        for (int k = 0; k < nk; k++)
            lowbit_tune_reset(t->ctx, keys[k]);
    }
    /* Keys left at the built-in value are written with it too, so an older run's entry in the file does
     * not outlive this measurement (keys whose default the kernel computes have no value to write). */
    for (int k = 0; k < nk; k++) {
        int64_t v;
        if ((!res->changed || chosen[k] < 0) && lowbit_tune_get(t->ctx, keys[k], &v) == LOWBIT_SUCCESS)
            lowbit_tune_set(t->ctx, keys[k], v);
    }
    for (int i = 0; i < nw; i++)
        work_free(&ws[i]);
}

int main(int argc, char **argv)
{
    cli_prog = "lowbit-tune";
    tuner_t t;
    memset(&t, 0, sizeof t);
    parse_args(argc, argv, &t.o);
    char path[4096] = "";
    if (!t.o.dry_run)
        output_path(&t.o, path, sizeof path);
    /* measure from the built-in tables, whatever an earlier run left in the cache */
    setenv("LOWBIT_TUNING_FILE", "0", 1);
    CLI_CHECK("lowbit_init", lowbit_init());
    CLI_CHECK("lowbit_context_create", lowbit_context_create(t.o.backend, t.o.device, &t.ctx));
    CLI_CHECK("lowbit_context_create(cpu)", lowbit_context_create("cpu", 0, &t.ref));
    CLI_CHECK("lowbit_context_device_info", lowbit_context_device_info(t.ctx, &t.dev));
    CLI_CHECK("lowbit_event_create", lowbit_event_create(t.ctx, &t.ev0));
    CLI_CHECK("lowbit_event_create", lowbit_event_create(t.ctx, &t.ev1));
    lowbit_tune_info_t ti;
    CLI_CHECK("lowbit_tune_info", lowbit_tune_info(t.ctx, &ti));
    t.dtype = t.dev.is_gpu ? LOWBIT_F16 : LOWBIT_F32;
    printf("lowbit-tune %s: %s device %d, %s (%s)%s\n", lowbit_version_string(), t.dev.backend, t.dev.index,
           t.dev.name, ti.arch_key, t.o.quick ? ", quick" : "");
    printf("baseline: built-in table %s\n", ti.table);
    t.t_start = cli_now();

    result_t res[16];
    int nres = 0;
    for (size_t i = 0; i < sizeof families / sizeof families[0]; i++) {
        const family_t *f = &families[i];
        if (!family_selected(&t, f))
            continue;
        int nfmt = f->per_format ? 3 : 1;
        for (int k = 0; k < nfmt && nres < 16; k++)
            tune_family(&t, f, formats[k], &res[nres++]);
    }
    if (nres == 0)
        cli_die("no kernel family to tune on %s%s%s", t.dev.backend, t.o.only ? " for --op " : "",
                t.o.only ? t.o.only : "");

    printf("\n%-16s %12s %12s %8s  %s\n", "family", "built-in ms", "tuned ms", "speedup", "values written");
    for (int i = 0; i < nres; i++)
        printf("%-16s %12.3f %12.3f %7.1f%%  %s\n", res[i].name, res[i].base_ms, res[i].tuned_ms,
               100.0 * (1.0 / res[i].ratio - 1.0), res[i].changed ? res[i].values : "(built-in kept)");
    printf("%d candidates tried (%d rejected for a wrong result) in %.1f s\n", t.tried, t.rejected,
           cli_now() - t.t_start);
    if (t.o.dry_run) {
        printf("dry run: nothing written\n");
    } else {
        CLI_CHECK("lowbit_tune_save", lowbit_tune_save(t.ctx, path));
        printf("written to %s (entries for %s)\n", path, ti.arch_key);
    }
    lowbit_event_destroy(t.ev0);
    lowbit_event_destroy(t.ev1);
    lowbit_context_destroy(t.ref);
    lowbit_context_destroy(t.ctx);
    return 0;
}

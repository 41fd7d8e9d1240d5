/*
 * lowbit -- the command-line front end of liblowbit.
 *
 *   lowbit info [--json]          library version, backends (and why each is or is not used), devices,
 *                                 module search path, tuning table
 *   lowbit demo [options]         quantize a random 4096x4096 weight in every format the README lists and
 *                                 report footprint, round-trip error and speed
 *   lowbit quantize IN OUT ...    quantize a safetensors checkpoint (tools/cmd_quantize.c)
 *   lowbit inspect FILE|DIR       list a checkpoint's tensors (tools/cmd_inspect.c)
 *
 * Uses the public API only (lowbit.h).  Every lowbit_* status is checked; a failure prints
 * "lowbit: <what>: <status>: <message>" and exits 1.  Usage errors exit 2.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* dladdr */
#endif

#include <dlfcn.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "cmd.h"
#include "lowbit.h"

#ifndef LOWBIT_MODULEDIR
#define LOWBIT_MODULEDIR "(unknown)"
#endif
#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.1.0"
#endif
#ifndef PACKAGE_BUGREPORT
#define PACKAGE_BUGREPORT "https://github.com/lowbit/lowbit/issues"
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: lowbit COMMAND [OPTIONS]\n"
            "\n"
            "Commands:\n"
            "  info [--json]        version, backends in probe order (with the reason each is or is not\n"
            "                       used), devices, module search path and tuning table\n"
            "  demo [OPTIONS]       quantize a random N x N fp32 weight to NF4, FP4, NF4 with double\n"
            "                       quantization and 8-bit, and report memory, error and speed\n"
            "      --backend NAME   cuda, hip, opencl or cpu (default: LOWBIT_BACKEND, else the first\n"
            "                       backend with a GPU, else cpu)\n"
            "      --device N       device index within the backend (default: LOWBIT_DEVICE, else 0)\n"
            "      --size N         matrix side (default 4096: a 4096 x 4096 weight)\n"
            "      --seed S         seed of the random weight (default 1)\n"
            "  quantize IN OUT --format nf4|fp4|int8 [--blocksize B] [--double-quant] [--skip PATTERN]...\n"
            "                       quantize a safetensors checkpoint (file or directory) into the layout\n"
            "                       transformers + bitsandbytes load (see 'lowbit quantize --help')\n"
            "  inspect FILE|DIR     tensors, dtypes, shapes, formats and footprint of a checkpoint\n"
            "  help                 this text\n"
            "\n"
            "Options:\n"
            "  -h, --help           this text\n"
            "  -V, --version        print the version\n"
            "\n"
            "Environment: LOWBIT_BACKEND, LOWBIT_DEVICE, LOWBIT_MODULE_PATH, LOWBIT_LOG, LOWBIT_TUNING_FILE\n"
            "(see lowbit.h).  Report bugs to <%s>.\n",
            PACKAGE_BUGREPORT);
}

/* ------------------------------------------------------------------------------------------------------ */
/* info                                                                                                   */
/* ------------------------------------------------------------------------------------------------------ */

static const char *library_file(void)
{
#ifdef HAVE_DLADDR
    static char path[LOWBIT_PATH_MAX];
    Dl_info dli;
    if (dladdr((void *)&lowbit_version_string, &dli) && dli.dli_fname) {
        snprintf(path, sizeof path, "%s", dli.dli_fname);
        return path;
    }
#endif
    return "";
}

static const char *yes_no(int v)
{
    return v ? "yes" : "no";
}

static const char *backend_state(const lowbit_backend_info_t *b, char *buf, size_t len)
{
    if (!b->available)
        snprintf(buf, len, "not used");
    else
        snprintf(buf, len, "%s, %d device%s", b->selected ? "selected" : "available", b->device_count,
                 b->device_count == 1 ? "" : "s");
    return buf;
}

/* Powers of two as 2^k: element limits are usually 2^31 - 1, 2^32 or 2^63 - 1. */
static const char *fmt_count(int64_t v, char *buf, size_t len)
{
    int k;
    for (k = 0; k < 63; k++)
        if (v == (int64_t)1 << k && k >= 10) {
            snprintf(buf, len, "2^%d", k);
            return buf;
        } else if (k >= 10 && v == (int64_t)(((uint64_t)1 << k) - 1)) {
            snprintf(buf, len, "2^%d-1", k);
            return buf;
        }
    if (v == INT64_MAX)
        snprintf(buf, len, "2^63-1");
    else
        snprintf(buf, len, "%lld", (long long)v);
    return buf;
}

typedef struct info_data {
    int nbackends;
    lowbit_backend_info_t *backends;
    int ndevices;
    lowbit_device_info_t *devices;
    int have_tune;
    lowbit_tune_info_t tune;
    lowbit_device_info_t tune_device;
    lowbit_status_t tune_status;
    char tune_error[512];
    const char *tune_what;
} info_data_t;

static void info_collect(info_data_t *d)
{
    int i, j;
    lowbit_context_t *ctx = NULL;
    lowbit_status_t st;

    memset(d, 0, sizeof *d);
    CLI_CHECK("lowbit_init", lowbit_init());
    CLI_CHECK("lowbit_backend_count", lowbit_backend_count(&d->nbackends));
    d->backends = cli_xmalloc(sizeof *d->backends * (size_t)(d->nbackends > 0 ? d->nbackends : 1));
    for (i = 0; i < d->nbackends; i++)
        CLI_CHECK("lowbit_backend_info", lowbit_backend_info(i, &d->backends[i]));
    for (i = 0; i < d->nbackends; i++) {
        int count = 0;
        if (!d->backends[i].available)
            continue;
        CLI_CHECK("lowbit_device_count", lowbit_device_count(d->backends[i].name, &count));
        d->devices = realloc(d->devices, sizeof *d->devices * (size_t)(d->ndevices + count + 1));
        if (!d->devices)
            cli_die("out of host memory");
        for (j = 0; j < count; j++)
            CLI_CHECK("lowbit_device_info", lowbit_device_info(d->backends[i].name, j, &d->devices[d->ndevices++]));
    }

    /* The tuning table belongs to a context: take the one a program gets by default. */
    st = lowbit_context_create(NULL, -1, &ctx);
    if (st != LOWBIT_SUCCESS) {
        d->tune_status = st;
        d->tune_what = "lowbit_context_create";
        snprintf(d->tune_error, sizeof d->tune_error, "%s", lowbit_last_error());
        return;
    }
    CLI_CHECK("lowbit_context_device_info", lowbit_context_device_info(ctx, &d->tune_device));
    st = lowbit_tune_info(ctx, &d->tune);
    if (st == LOWBIT_SUCCESS) {
        d->have_tune = 1;
    } else {
        d->tune_status = st;
        d->tune_what = "lowbit_tune_info";
        snprintf(d->tune_error, sizeof d->tune_error, "%s", lowbit_last_error());
    }
    CLI_CHECK("lowbit_context_destroy", lowbit_context_destroy(ctx));
}

static void info_print_text(const info_data_t *d)
{
    static const char *envs[] = {"LOWBIT_BACKEND", "LOWBIT_DEVICE", "LOWBIT_LOG", "LOWBIT_TUNING_FILE"};
    const char *modpath = getenv("LOWBIT_MODULE_PATH");
    const char *libfile = library_file();
    cli_table_t *t;
    char state[64], cnt[32];
    int i, any_env = 0, state_w = 0, name_w = 0;

    printf("lowbit %s (library %s%s%s)\n", PACKAGE_VERSION, lowbit_version_string(), *libfile ? ", " : "",
           libfile);

    printf("\nBackends, in probe order:\n");
    for (i = 0; i < d->nbackends; i++) {
        int w = (int)strlen(backend_state(&d->backends[i], state, sizeof state));
        if (w > state_w)
            state_w = w;
        w = (int)strlen(d->backends[i].name);
        if (w > name_w)
            name_w = w;
    }
    for (i = 0; i < d->nbackends; i++) {
        const lowbit_backend_info_t *b = &d->backends[i];
        printf("  %-*s  %-*s  — %s\n", name_w, b->name, state_w, backend_state(b, state, sizeof state),
               b->reason[0] ? b->reason : "(no reason given)");
        if (b->module_path[0])
            printf("  %-*s  %-*s    module %s\n", name_w, "", state_w, "", b->module_path);
    }

    printf("\nDevices of the available backends:\n");
    if (!d->ndevices) {
        printf("  (none)\n");
    } else {
        t = cli_table_new(10, "llrrllllrl");
        cli_table_row(t);
        cli_table_cell(t, "device");
        cli_table_cell(t, "type");
        cli_table_cell(t, "CUs");
        cli_table_cell(t, "memory");
        cli_table_cell(t, "fp16");
        cli_table_cell(t, "bf16");
        cli_table_cell(t, "arch");
        cli_table_cell(t, "driver");
        cli_table_cell(t, "max elements");
        cli_table_cell(t, "name");
        for (i = 0; i < d->ndevices; i++) {
            const lowbit_device_info_t *v = &d->devices[i];
            cli_table_row(t);
            cli_table_cell(t, "%s:%d", v->backend, v->index);
            cli_table_cell(t, "%s", v->is_gpu ? "GPU" : "CPU");
            cli_table_cell(t, "%d", v->compute_units);
            if (v->free_memory)
                cli_table_cell(t, "%.1f GiB (%.1f free)", (double)v->total_memory / 1073741824.0,
                               (double)v->free_memory / 1073741824.0);
            else
                cli_table_cell(t, "%.1f GiB", (double)v->total_memory / 1073741824.0);
            cli_table_cell(t, "%s", yes_no(v->fp16));
            cli_table_cell(t, "%s", yes_no(v->bf16));
            cli_table_cell(t, "%s", v->arch);
            cli_table_cell(t, "%s", v->driver[0] ? v->driver : "-");
            cli_table_cell(t, "%s", fmt_count(v->max_elements, cnt, sizeof cnt));
            cli_table_cell(t, "%s", v->name);
        }
        cli_table_print(t, stdout, "  ");
        cli_table_free(t);
    }

    printf("\nModule search path, in order:\n");
    printf("  LOWBIT_MODULE_PATH  %s\n", modpath ? modpath : "(not set)");
    if (*libfile) {
        /* Modules are installed in $(pkglibdir) = $(libdir)/lowbit, found relative to liblowbit itself. */
        const char *slash = strrchr(libfile, '/');
        printf("  next to liblowbit   %.*s/lowbit\n", slash ? (int)(slash - libfile) : 1, slash ? libfile : ".");
    }
    printf("  configured          %s\n", LOWBIT_MODULEDIR);

    printf("\nEnvironment:\n");
    for (i = 0; i < (int)(sizeof envs / sizeof envs[0]); i++) {
        const char *v = getenv(envs[i]);
        if (v) {
            printf("  %-19s %s\n", envs[i], v);
            any_env = 1;
        }
    }
    if (!any_env)
        printf("  (no other LOWBIT_* variables set)\n");

    printf("\nTuning table in use (default context):\n");
    if (d->have_tune) {
        printf("  device    %s:%d %s\n", d->tune_device.backend, d->tune_device.index, d->tune_device.name);
        printf("  arch key  %s\n", d->tune.arch_key);
        printf("  table     %s\n", d->tune.table);
        printf("  file      %s\n", d->tune.file[0] ? d->tune.file : d->tune.file_status);
        if (d->tune.file[0])
            printf("            %d entries for %s in use, %d for other architectures, %d rejected\n",
                   d->tune.file_entries, d->tune.arch_key, d->tune.file_other, d->tune.file_rejected);
        printf("  entries   %d (%d overridden in this process)\n", d->tune.entries, d->tune.overrides);
    } else {
        printf("  %s: %s: %s\n", d->tune_what, lowbit_status_string(d->tune_status),
               d->tune_error[0] ? d->tune_error : "(no message)");
    }
}

static void json_kv_str(FILE *f, const char *key, const char *value, int comma)
{
    cli_json_string(f, key);
    fputs(": ", f);
    if (value)
        cli_json_string(f, value);
    else
        fputs("null", f);
    if (comma)
        fputs(", ", f);
}

static void json_device(FILE *f, const lowbit_device_info_t *v)
{
    fputc('{', f);
    json_kv_str(f, "backend", v->backend, 1);
    fprintf(f, "\"index\": %d, ", v->index);
    json_kv_str(f, "name", v->name, 1);
    json_kv_str(f, "arch", v->arch, 1);
    json_kv_str(f, "driver", v->driver, 1);
    fprintf(f,
            "\"is_gpu\": %s, \"compute_units\": %d, \"total_memory\": %llu, \"free_memory\": %llu, "
            "\"fp16\": %s, \"bf16\": %s, \"max_elements\": %lld}",
            v->is_gpu ? "true" : "false", v->compute_units, (unsigned long long)v->total_memory,
            (unsigned long long)v->free_memory, v->fp16 ? "true" : "false", v->bf16 ? "true" : "false",
            (long long)v->max_elements);
}

static void info_print_json(const info_data_t *d)
{
    FILE *f = stdout;
    int i;
    fputc('{', f);
    json_kv_str(f, "version", lowbit_version_string(), 1);
    json_kv_str(f, "tools_version", PACKAGE_VERSION, 1);
    json_kv_str(f, "library_file", library_file(), 1);
    fputs("\n \"backends\": [", f);
    for (i = 0; i < d->nbackends; i++) {
        const lowbit_backend_info_t *b = &d->backends[i];
        fprintf(f, "%s\n  {", i ? "," : "");
        json_kv_str(f, "name", b->name, 1);
        fprintf(f, "\"available\": %s, \"selected\": %s, \"device_count\": %d, ", b->available ? "true" : "false",
                b->selected ? "true" : "false", b->device_count);
        json_kv_str(f, "reason", b->reason, 1);
        json_kv_str(f, "module_path", b->module_path, 0);
        fputc('}', f);
    }
    fputs("],\n \"devices\": [", f);
    for (i = 0; i < d->ndevices; i++) {
        fprintf(f, "%s\n  ", i ? "," : "");
        json_device(f, &d->devices[i]);
    }
    fputs("],\n ", f);
    json_kv_str(f, "module_path_env", getenv("LOWBIT_MODULE_PATH"), 1);
    json_kv_str(f, "module_dir", LOWBIT_MODULEDIR, 1);
    fputs("\n \"tuning\": ", f);
    if (d->have_tune) {
        fputc('{', f);
        json_kv_str(f, "arch_key", d->tune.arch_key, 1);
        json_kv_str(f, "table", d->tune.table, 1);
        json_kv_str(f, "file", d->tune.file, 1);
        json_kv_str(f, "file_status", d->tune.file_status, 1);
        fprintf(f, "\"file_entries\": %d, \"file_other\": %d, \"file_rejected\": %d, ", d->tune.file_entries,
                d->tune.file_other, d->tune.file_rejected);
        fprintf(f, "\"entries\": %d, \"overrides\": %d}", d->tune.entries, d->tune.overrides);
    } else {
        fputc('{', f);
        json_kv_str(f, "error", lowbit_status_string(d->tune_status), 1);
        json_kv_str(f, "message", d->tune_error, 0);
        fputc('}', f);
    }
    fputs("\n}\n", f);
}

static int cmd_info(int argc, char **argv)
{
    static const struct option opts[] = {{"json", no_argument, NULL, 'j'}, {"help", no_argument, NULL, 'h'}, {0}};
    int json = 0, c;
    info_data_t d;
    optind = 1;
    while ((c = getopt_long(argc, argv, "jh", opts, NULL)) != -1) {
        switch (c) {
        case 'j': json = 1; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "lowbit: info: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    info_collect(&d);
    if (json)
        info_print_json(&d);
    else
        info_print_text(&d);
    free(d.backends);
    free(d.devices);
    return 0;
}

/* ------------------------------------------------------------------------------------------------------ */
/* demo                                                                                                   */
/* ------------------------------------------------------------------------------------------------------ */

#define DEMO_RUNS 10

typedef struct demo {
    lowbit_context_t *ctx;
    lowbit_device_info_t dev;
    cli_pool_t *pool;
    int64_t side, n;
    uint64_t seed;
    float *host_w;            /* the weight, fp32, on the host */
    float *host_out;          /* downloads */
    lowbit_buffer_t *w;       /* the weight on the device */
    lowbit_buffer_t *out;     /* dequantized weight on the device, fp32 */
} demo_t;

/* Round-trip error of x_hat against x, in double. */
typedef struct demo_err {
    double mean_abs, rel_l2, max_abs;
} demo_err_t;

static demo_err_t demo_error(const float *x, const float *x_hat, int64_t n)
{
    demo_err_t e;
    double sum_abs = 0, sum_sq = 0, ref_sq = 0, max_abs = 0;
    int64_t i;
    for (i = 0; i < n; i++) {
        double d = (double)x[i] - (double)x_hat[i], a = fabs(d);
        sum_abs += a;
        sum_sq += d * d;
        ref_sq += (double)x[i] * (double)x[i];
        if (a > max_abs || a != a)
            max_abs = a;
    }
    e.mean_abs = sum_abs / (double)n;
    e.rel_l2 = ref_sq > 0 ? sqrt(sum_sq / ref_sq) : sqrt(sum_sq);
    e.max_abs = max_abs;
    return e;
}

static double demo_median(double *v, int n)
{
    double med, mn, p90;
    cli_order_stats(v, n, &med, &mn, &p90);
    return med;
}

/* "not available on <backend>: <message>" for UNSUPPORTED; any other failure is fatal.  Returns 1 if
 * the call succeeded. */
static int demo_try(const demo_t *d, const char *what, lowbit_status_t st)
{
    if (st == LOWBIT_SUCCESS)
        return 1;
    if (st == LOWBIT_ERR_UNSUPPORTED) {
        printf("    %s: not available on %s: %s\n", what, d->dev.backend, lowbit_last_error());
        return 0;
    }
    cli_die_status(what, st);
}

typedef struct demo_case {
    const char *label;
    lowbit_qformat_t format;
    int32_t blocksize;
    int32_t nested;
    double bnb_mean_abs; /* spec Appendix B: bitsandbytes on H100, randn 1024x1024 */
} demo_case_t;

typedef struct demo_result {
    int ok;
    char note[LOWBIT_REASON_MAX + 64];
    size_t footprint;
    demo_err_t err;
    double q_s, dq_s;
} demo_result_t;

static size_t qtensor_footprint(const lowbit_qtensor_sizes_t *s)
{
    return s->data_bytes + s->absmax_bytes + s->nested_absmax_bytes + s->nested_offset_bytes;
}

static void demo_quant_case(demo_t *d, const demo_case_t *c, demo_result_t *r)
{
    lowbit_qtensor_sizes_t sizes;
    lowbit_qtensor_t q;
    lowbit_status_t st;
    double tq[DEMO_RUNS], tdq[DEMO_RUNS], t0;
    int i;

    memset(r, 0, sizeof *r);
    CLI_CHECK("lowbit_qtensor_sizes", lowbit_qtensor_sizes(c->format, d->n, c->blocksize, c->nested, &sizes));
    r->footprint = qtensor_footprint(&sizes);
    CLI_CHECK("lowbit_qtensor_alloc",
              lowbit_qtensor_alloc(d->ctx, c->format, LOWBIT_F32, d->n, c->blocksize, c->nested, &q));

    /* Warm-up (first-touch of pages, module/kernel loading, tuning lookups). */
    st = lowbit_quantize_blockwise(d->ctx, NULL, d->w, &q, NULL);
    if (st == LOWBIT_ERR_UNSUPPORTED) {
        snprintf(r->note, sizeof r->note, "quantize not available on %s: %s", d->dev.backend, lowbit_last_error());
        goto free_q;
    }
    if (st != LOWBIT_SUCCESS)
        cli_die_status("lowbit_quantize_blockwise", st);
    CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(d->ctx, NULL));
    st = lowbit_dequantize_blockwise(d->ctx, NULL, &q, LOWBIT_F32, d->out);
    if (st == LOWBIT_ERR_UNSUPPORTED) {
        snprintf(r->note, sizeof r->note, "dequantize not available on %s: %s", d->dev.backend,
                 lowbit_last_error());
        goto free_q;
    }
    if (st != LOWBIT_SUCCESS)
        cli_die_status("lowbit_dequantize_blockwise", st);
    CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(d->ctx, NULL));

    for (i = 0; i < DEMO_RUNS; i++) {
        t0 = cli_now();
        CLI_CHECK("lowbit_quantize_blockwise", lowbit_quantize_blockwise(d->ctx, NULL, d->w, &q, NULL));
        CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(d->ctx, NULL));
        tq[i] = cli_now() - t0;
    }
    for (i = 0; i < DEMO_RUNS; i++) {
        t0 = cli_now();
        CLI_CHECK("lowbit_dequantize_blockwise", lowbit_dequantize_blockwise(d->ctx, NULL, &q, LOWBIT_F32, d->out));
        CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(d->ctx, NULL));
        tdq[i] = cli_now() - t0;
    }
    r->q_s = demo_median(tq, DEMO_RUNS);
    r->dq_s = demo_median(tdq, DEMO_RUNS);

    CLI_CHECK("lowbit_buffer_download",
              lowbit_buffer_download(d->ctx, NULL, d->out, 0, d->host_out, (size_t)d->n * sizeof(float)));
    r->err = demo_error(d->host_w, d->host_out, d->n);
    r->ok = 1;

free_q:
    CLI_CHECK("lowbit_qtensor_free", lowbit_qtensor_free(&q));
}

/* Device copy of the fp32 tensor (the float baseline).  Returns seconds, or < 0 if unavailable. */
static double demo_copy_time(demo_t *d, char *why, size_t why_len)
{
    void *src, *dst;
    size_t off_src, off_dst, bytes = (size_t)d->n * sizeof(float);
    double t[DEMO_RUNS], t0;
    int i;

    if (strcmp(d->dev.backend, "cpu") != 0) {
        lowbit_status_t st = lowbit_buffer_copy(d->ctx, NULL, d->out, 0, d->w, 0, bytes);
        if (st == LOWBIT_ERR_UNSUPPORTED) {
            snprintf(why, why_len, "n/a on %s: %s", d->dev.backend, lowbit_last_error());
            return -1;
        }
        if (st != LOWBIT_SUCCESS)
            cli_die_status("lowbit_buffer_copy", st);
        CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(d->ctx, NULL));
        for (i = 0; i < DEMO_RUNS; i++) {
            t0 = cli_now();
            CLI_CHECK("lowbit_buffer_copy", lowbit_buffer_copy(d->ctx, NULL, d->out, 0, d->w, 0, bytes));
            CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(d->ctx, NULL));
            t[i] = cli_now() - t0;
        }
        snprintf(why, why_len, "lowbit_buffer_copy");
        return demo_median(t, DEMO_RUNS);
    }
    /* On the CPU backend the device is the host: a buffer's native handle is a host pointer, and the copy
     * runs on as many threads as the library's OpenMP team. */
    CLI_CHECK("lowbit_buffer_native", lowbit_buffer_native(d->w, &src, &off_src));
    CLI_CHECK("lowbit_buffer_native", lowbit_buffer_native(d->out, &dst, &off_dst));
    cli_pool_memcpy(d->pool, dst, src, bytes);
    for (i = 0; i < DEMO_RUNS; i++) {
        t0 = cli_now();
        cli_pool_memcpy(d->pool, dst, src, bytes);
        t[i] = cli_now() - t0;
    }
    snprintf(why, why_len, "host memcpy, %d threads", cli_pool_threads(d->pool));
    return demo_median(t, DEMO_RUNS);
}

static double gbps(double bytes, double seconds)
{
    return seconds > 0 ? bytes / seconds / 1e9 : 0;
}

/* ==== 4-bit GEMV row ====
 * y[N] = dequant(W) x, W the demo weight as NF4 B=64 with double quantization (bitsandbytes' inference
 * default).  The entry point exists; backends without the kernel return UNSUPPORTED, which is reported and
 * skipped.  The issue that implements the kernels may refine this row (fp16 activations, more shapes). */
static void demo_gemv_4bit(demo_t *d)
{
    const int64_t N = d->side, K = d->side;
    lowbit_qtensor_t q;
    lowbit_buffer_t *x = NULL, *y = NULL;
    float *hx = cli_xmalloc((size_t)K * sizeof(float)), *hy = cli_xmalloc((size_t)N * sizeof(float));
    double t[DEMO_RUNS], t0, num_q = 0, num_f = 0, den_q = 0, den_f = 0;
    lowbit_qtensor_sizes_t sizes;
    int64_t i, k;
    int r;

    cli_pool_randn(d->pool, hx, K, LOWBIT_F32, d->seed + 1);
    CLI_CHECK("lowbit_qtensor_sizes", lowbit_qtensor_sizes(LOWBIT_QFORMAT_NF4, d->n, 64, 256, &sizes));
    CLI_CHECK("lowbit_qtensor_alloc", lowbit_qtensor_alloc(d->ctx, LOWBIT_QFORMAT_NF4, LOWBIT_F32, d->n, 64, 256, &q));
    CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(d->ctx, (size_t)K * sizeof(float), 0, &x));
    CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(d->ctx, (size_t)N * sizeof(float), 0, &y));
    CLI_CHECK("lowbit_buffer_upload", lowbit_buffer_upload(d->ctx, NULL, x, 0, hx, (size_t)K * sizeof(float)));
    if (!demo_try(d, "4-bit GEMV (quantize)", lowbit_quantize_blockwise(d->ctx, NULL, d->w, &q, NULL)))
        goto out;
    if (!demo_try(d, "4-bit GEMV (dequantize)", lowbit_dequantize_blockwise(d->ctx, NULL, &q, LOWBIT_F32, d->out)))
        goto out;
    CLI_CHECK("lowbit_buffer_download",
              lowbit_buffer_download(d->ctx, NULL, d->out, 0, d->host_out, (size_t)d->n * sizeof(float)));
    if (!demo_try(d, "4-bit GEMV", lowbit_gemv_4bit(d->ctx, NULL, LOWBIT_F32, N, K, x, &q, NULL, y)))
        goto out;
    CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(d->ctx, NULL));
    for (r = 0; r < DEMO_RUNS; r++) {
        t0 = cli_now();
        CLI_CHECK("lowbit_gemv_4bit", lowbit_gemv_4bit(d->ctx, NULL, LOWBIT_F32, N, K, x, &q, NULL, y));
        CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(d->ctx, NULL));
        t[r] = cli_now() - t0;
    }
    CLI_CHECK("lowbit_buffer_download", lowbit_buffer_download(d->ctx, NULL, y, 0, hy, (size_t)N * sizeof(float)));
    /* Two references in double: with the dequantized weight (the kernel's own accuracy) and with the fp32
     * weight (what the user gets end to end). */
    for (i = 0; i < N; i++) {
        double sq = 0, sf = 0;
        for (k = 0; k < K; k++) {
            sq += (double)d->host_out[i * K + k] * hx[k];
            sf += (double)d->host_w[i * K + k] * hx[k];
        }
        num_q += (hy[i] - sq) * (hy[i] - sq);
        den_q += sq * sq;
        num_f += (hy[i] - sf) * (hy[i] - sf);
        den_f += sf * sf;
    }
    {
        double med = demo_median(t, DEMO_RUNS);
        double bytes = (double)qtensor_footprint(&sizes) + (double)(K + N) * sizeof(float);
        printf("    4-bit GEMV NF4+DQ B=64, y[%lld] = W[%lld x %lld] x, f32: %.3f ms, %.1f GB/s; "
               "rel L2 error vs dequantized W %.2e, vs fp32 W %.4f\n",
               (long long)N, (long long)N, (long long)K, med * 1e3, gbps(bytes, med), sqrt(num_q / den_q),
               sqrt(num_f / den_f));
    }
out:
    CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(d->ctx, NULL));
    CLI_CHECK("lowbit_buffer_free", lowbit_buffer_free(x));
    CLI_CHECK("lowbit_buffer_free", lowbit_buffer_free(y));
    CLI_CHECK("lowbit_qtensor_free", lowbit_qtensor_free(&q));
    free(hx);
    free(hy);
}

/* ==== LLM.int8 matmul row ====
 * out[M, N] = X[M, K] W^T with W row-quantized to int8 (threshold 0: CB, SCB) and X carrying a few outlier
 * columns (|x| >= 6) that go through the float path.  UNSUPPORTED is reported and skipped.  The issue that
 * implements LLM.int8 may refine this row (fp16 activations, more shapes, TOP/s). */
static void demo_int8_matmul(demo_t *d)
{
    const int64_t M = 16, N = d->side, K = d->side;
    const float threshold = 6.0f;
    lowbit_buffer_t *X = NULL, *CB = NULL, *SCB = NULL, *out = NULL;
    float *hX = cli_xmalloc((size_t)(M * K) * sizeof(float)), *hout = cli_xmalloc((size_t)(M * N) * sizeof(float));
    double t[DEMO_RUNS], t0, num = 0, den = 0;
    int64_t i, j, k, outlier_cols = 0;
    int r;

    /* Activations: randn, with ~0.5% of the columns scaled by 10 so they cross the threshold (the outlier
     * feature pattern LLM.int8 was designed for). */
    cli_pool_randn(d->pool, hX, M * K, LOWBIT_F32, d->seed + 2);
    for (k = 0; k < K; k++)
        if (cli_mix64(d->seed * 31 + (uint64_t)k) % 200 == 0) {
            outlier_cols++;
            for (i = 0; i < M; i++)
                hX[i * K + k] *= 10.0f;
        }
    CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(d->ctx, (size_t)(M * K) * sizeof(float), 0, &X));
    CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(d->ctx, (size_t)(N * K), 0, &CB));
    CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(d->ctx, (size_t)N * sizeof(float), 0, &SCB));
    CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(d->ctx, (size_t)(M * N) * sizeof(float), 0, &out));
    CLI_CHECK("lowbit_buffer_upload",
              lowbit_buffer_upload(d->ctx, NULL, X, 0, hX, (size_t)(M * K) * sizeof(float)));
    if (!demo_try(d, "LLM.int8 matmul (weight quantization)",
                  lowbit_int8_quantize_rows(d->ctx, NULL, LOWBIT_F32, N, K, d->w, 0.0f, CB, SCB, NULL, NULL)))
        goto out;
    if (!demo_try(d, "LLM.int8 matmul",
                  lowbit_int8_matmul(d->ctx, NULL, LOWBIT_F32, M, N, K, X, CB, SCB, NULL, threshold, out)))
        goto out;
    CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(d->ctx, NULL));
    for (r = 0; r < DEMO_RUNS; r++) {
        t0 = cli_now();
        CLI_CHECK("lowbit_int8_matmul",
                  lowbit_int8_matmul(d->ctx, NULL, LOWBIT_F32, M, N, K, X, CB, SCB, NULL, threshold, out));
        CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(d->ctx, NULL));
        t[r] = cli_now() - t0;
    }
    CLI_CHECK("lowbit_buffer_download",
              lowbit_buffer_download(d->ctx, NULL, out, 0, hout, (size_t)(M * N) * sizeof(float)));
    for (i = 0; i < M; i++)
        for (j = 0; j < N; j++) {
            double s = 0;
            for (k = 0; k < K; k++)
                s += (double)hX[i * K + k] * d->host_w[j * K + k];
            num += (hout[i * N + j] - s) * (hout[i * N + j] - s);
            den += s * s;
        }
    {
        double med = demo_median(t, DEMO_RUNS), ops = 2.0 * (double)M * (double)N * (double)K / med;
        printf("    LLM.int8 matmul [%lld x %lld] x [%lld x %lld]^T, f32, threshold %.0f (%lld outlier columns): "
               "%.3f ms, %.2f %s; rel L2 error vs fp32 %.4f\n",
               (long long)M, (long long)K, (long long)N, (long long)K, threshold, (long long)outlier_cols,
               med * 1e3, ops >= 1e12 ? ops / 1e12 : ops / 1e9, ops >= 1e12 ? "TOP/s" : "GOP/s", sqrt(num / den));
    }
out:
    CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(d->ctx, NULL));
    CLI_CHECK("lowbit_buffer_free", lowbit_buffer_free(X));
    CLI_CHECK("lowbit_buffer_free", lowbit_buffer_free(CB));
    CLI_CHECK("lowbit_buffer_free", lowbit_buffer_free(SCB));
    CLI_CHECK("lowbit_buffer_free", lowbit_buffer_free(out));
    free(hX);
    free(hout);
}

static int cmd_demo(int argc, char **argv)
{
    static const struct option opts[] = {{"backend", required_argument, NULL, 'b'},
                                         {"device", required_argument, NULL, 'd'},
                                         {"size", required_argument, NULL, 'n'},
                                         {"seed", required_argument, NULL, 's'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    static const demo_case_t cases[] = {
        {"NF4", LOWBIT_QFORMAT_NF4, 64, 0, 0.072822},
        {"FP4", LOWBIT_QFORMAT_FP4, 64, 0, 0.096552},
        {"NF4+DQ", LOWBIT_QFORMAT_NF4, 64, 256, 0.072879},
        {"8-bit", LOWBIT_QFORMAT_8BIT, 4096, 0, 0.010021},
        {"8-bit", LOWBIT_QFORMAT_8BIT, 256, 0, 0.008518},
    };
    enum { NCASES = sizeof cases / sizeof cases[0] };
    demo_result_t res[NCASES];
    const char *backend = NULL;
    int64_t device = -1, side = 4096, seed = 1, v;
    demo_t d;
    cli_table_t *t;
    double t0, upload_s, copy_s;
    size_t fbytes;
    char why[256], b1[32];
    int c, i, failed = 0, tty = isatty(2);

    optind = 1;
    while ((c = getopt_long(argc, argv, "b:d:n:s:h", opts, NULL)) != -1) {
        switch (c) {
        case 'b': backend = optarg; break;
        case 'd':
            if (cli_parse_i64(optarg, &device) || device < 0 || device > 1000000) {
                fprintf(stderr, "lowbit: demo: invalid --device '%s'\n", optarg);
                return 2;
            }
            break;
        case 'n':
            if (cli_parse_i64(optarg, &side) || side < 1 || side > 16384) {
                fprintf(stderr, "lowbit: demo: invalid --size '%s' (1 .. 16384)\n", optarg);
                return 2;
            }
            break;
        case 's':
            if (cli_parse_i64(optarg, &v) || v < 0) {
                fprintf(stderr, "lowbit: demo: invalid --seed '%s'\n", optarg);
                return 2;
            }
            seed = v;
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "lowbit: demo: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return 2;
    }

    memset(&d, 0, sizeof d);
    d.side = side;
    d.n = side * side;
    d.seed = (uint64_t)seed;
    fbytes = (size_t)d.n * sizeof(float);
    CLI_CHECK("lowbit_init", lowbit_init());
    CLI_CHECK("lowbit_context_create", lowbit_context_create(backend, (int)device, &d.ctx));
    CLI_CHECK("lowbit_context_device_info", lowbit_context_device_info(d.ctx, &d.dev));
    d.pool = cli_pool_create(cli_default_threads());

    printf("lowbit %s demo on %s:%d — %s (%s, %s, %d %s)\n", lowbit_version_string(), d.dev.backend, d.dev.index,
           d.dev.name, d.dev.arch, d.dev.is_gpu ? "GPU" : "CPU", d.dev.compute_units,
           d.dev.is_gpu ? "compute units" : "threads");
    printf("weight: %lld x %lld fp32 = %lld parameters, randn (Box-Muller on splitmix64), seed %llu\n",
           (long long)side, (long long)side, (long long)d.n, (unsigned long long)d.seed);
    printf("times: median of %d runs after one warm-up, each synchronized; GB/s counts bytes read + written\n\n",
           DEMO_RUNS);

    d.host_w = cli_xmalloc_aligned(fbytes);
    d.host_out = cli_xmalloc_aligned(fbytes);
    cli_pool_randn(d.pool, d.host_w, d.n, LOWBIT_F32, d.seed);
    CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(d.ctx, fbytes, 0, &d.w));
    CLI_CHECK("lowbit_buffer_alloc", lowbit_buffer_alloc(d.ctx, fbytes, 0, &d.out));
    t0 = cli_now();
    CLI_CHECK("lowbit_buffer_upload", lowbit_buffer_upload(d.ctx, NULL, d.w, 0, d.host_w, fbytes));
    upload_s = cli_now() - t0;

    for (i = 0; i < NCASES; i++) {
        if (tty)
            fprintf(stderr, "\r%s: demo: %s B=%d ...", cli_prog, cases[i].label, cases[i].blocksize);
        demo_quant_case(&d, &cases[i], &res[i]);
        if (!res[i].ok)
            failed++;
    }
    if (tty)
        fprintf(stderr, "\r%*s\r", 60, "");
    copy_s = demo_copy_time(&d, why, sizeof why);

    t = cli_table_new(13, "lrlrrrrrrrrrr");
    cli_table_row(t);
    cli_table_cell(t, "format");
    cli_table_cell(t, "block");
    cli_table_cell(t, "nested");
    cli_table_cell(t, "footprint");
    cli_table_cell(t, "bits/param");
    cli_table_cell(t, "mean abs err");
    cli_table_cell(t, "(bnb)");
    cli_table_cell(t, "rel L2 err");
    cli_table_cell(t, "max abs err");
    cli_table_cell(t, "quant ms");
    cli_table_cell(t, "GB/s");
    cli_table_cell(t, "dequant ms");
    cli_table_cell(t, "GB/s");
    cli_table_row(t);
    cli_table_cell(t, "fp32");
    cli_table_cell(t, "-");
    cli_table_cell(t, "-");
    cli_table_cell(t, "%s", cli_fmt_bytes((double)fbytes, b1, sizeof b1));
    cli_table_cell(t, "%.2f", 32.0);
    for (i = 0; i < 8; i++)
        cli_table_cell(t, "-");
    for (i = 0; i < NCASES; i++) {
        const demo_case_t *c2 = &cases[i];
        const demo_result_t *r = &res[i];
        double in_bytes = (double)fbytes, q_bytes = (double)r->footprint, rate;
        cli_table_row(t);
        cli_table_cell(t, "%s", c2->label);
        cli_table_cell(t, "%d", c2->blocksize);
        cli_table_cell(t, "%s", c2->nested ? "256" : "-");
        cli_table_cell(t, "%s", cli_fmt_bytes(q_bytes, b1, sizeof b1));
        cli_table_cell(t, "%.3f", 8.0 * q_bytes / (double)d.n);
        if (!r->ok) {
            cli_table_cell(t, "not available");
            continue;
        }
        cli_table_cell(t, "%.6f", r->err.mean_abs);
        cli_table_cell(t, "%.6f", c2->bnb_mean_abs);
        cli_table_cell(t, "%.5f", r->err.rel_l2);
        cli_table_cell(t, "%.5f", r->err.max_abs);
        cli_table_cell(t, "%.3f", r->q_s * 1e3);
        rate = gbps(in_bytes + q_bytes, r->q_s);
        cli_table_cell(t, rate < 10 ? "%.2f" : "%.1f", rate);
        cli_table_cell(t, "%.3f", r->dq_s * 1e3);
        rate = gbps(in_bytes + q_bytes, r->dq_s);
        cli_table_cell(t, rate < 10 ? "%.2f" : "%.1f", rate);
    }
    cli_table_print(t, stdout, "  ");
    cli_table_free(t);
    for (i = 0; i < NCASES; i++)
        if (!res[i].ok)
            printf("  %s B=%d: %s\n", cases[i].label, cases[i].blocksize, res[i].note);

    printf("\n  footprint = codes + absmax (+ nested absmax and offset); (bnb) = bitsandbytes' mean abs error on "
           "randn (spec, Appendix B)\n");
    printf("  float baseline: fp32 copy %s", copy_s > 0 ? "" : why);
    if (copy_s > 0)
        printf("%.3f ms = %.1f GB/s (read + write; %s)", copy_s * 1e3, gbps(2.0 * (double)fbytes, copy_s), why);
    printf("; upload host -> device %.3f ms = %.1f GB/s\n", upload_s * 1e3, gbps((double)fbytes, upload_s));

    printf("\n  Matrix products:\n");
    /* ==== 4-bit GEMV row (4-bit matmul issue) ==== */
    demo_gemv_4bit(&d);
    /* ==== LLM.int8 matmul row (LLM.int8 issue) ==== */
    demo_int8_matmul(&d);

    CLI_CHECK("lowbit_stream_synchronize", lowbit_stream_synchronize(d.ctx, NULL));
    CLI_CHECK("lowbit_buffer_free", lowbit_buffer_free(d.w));
    CLI_CHECK("lowbit_buffer_free", lowbit_buffer_free(d.out));
    CLI_CHECK("lowbit_context_destroy", lowbit_context_destroy(d.ctx));
    cli_pool_destroy(d.pool);
    free(d.host_w);
    free(d.host_out);
    if (failed) {
        fprintf(stderr, "lowbit: demo: %d of %d quantization rows are not available on %s\n", failed, (int)NCASES,
                d.dev.backend);
        return 1;
    }
    return 0;
}

/* ------------------------------------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
    const char *cmd;
    cli_prog = "lowbit";
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    cmd = argv[1];
    if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(cmd, "--version") || !strcmp(cmd, "-V")) {
        printf("lowbit %s (library %s)\n", PACKAGE_VERSION, lowbit_version_string());
        return 0;
    }
    if (!strcmp(cmd, "info"))
        return cmd_info(argc - 1, argv + 1);
    if (!strcmp(cmd, "demo"))
        return cmd_demo(argc - 1, argv + 1);
    if (!strcmp(cmd, "quantize"))
        return cmd_quantize(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect"))
        return cmd_inspect(argc - 1, argv + 1);
    fprintf(stderr, "lowbit: unknown command '%s'\n\n", cmd);
    usage(stderr);
    return 2;
}

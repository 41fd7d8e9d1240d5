/*
 * cmd_quantize.c -- `lowbit quantize IN OUT --format nf4|fp4|int8 ...`: converts a safetensors checkpoint
 * into the layout transformers + bitsandbytes load as a pre-quantized model (lowbit_checkpoint_quantize),
 * with a progress bar on a terminal and a summary: sizes, bits per parameter, per-tensor error.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "cmd.h"
#include "lowbit.h"

static void quantize_usage(FILE *f)
{
    fprintf(f,
            "Usage: lowbit quantize IN OUT --format nf4|fp4|int8 [OPTIONS]\n"
            "  IN is a safetensors file or a directory (model.safetensors, or shards with\n"
            "  model.safetensors.index.json); OUT (which must not exist) gets the same layout.\n"
            "  -f, --format F       nf4, fp4 (bitsandbytes 4-bit) or int8 (LLM.int8)\n"
            "  -b, --blocksize B    4-bit block size, 32 ... 4096 (default 64)\n"
            "  -d, --double-quant   4-bit: quantize absmax again (blocks of 256), as QLoRA\n"
            "  -s, --skip PATTERN   keep tensors whose name contains PATTERN or matches it as a glob\n"
            "                       (repeatable)\n"
            "      --backend NAME   cuda, hip, opencl or cpu (default: the best available)\n"
            "      --device N       device index within the backend\n"
            "  -q, --quiet          no progress bar and no per-tensor table\n"
            "Exit status: 0 done, 1 error (nothing is left at OUT), 2 usage error.\n");
}

typedef struct row {
    char *name;
    char shape[96];
    char dtype[8];
    uint64_t in, out;
    int quantized;
    char note[160];
    double err;
} row_t;

typedef struct summary {
    row_t *rows;
    int nrows, cap;
    int64_t params, qparams;
    uint64_t in, out, qin, qout;
    int bar;
} summary_t;

static void progress_bar(const lowbit_checkpoint_progress_t *p)
{
    enum { WIDTH = 30 };
    int done = (p->index + 1) * WIDTH / (p->count > 0 ? p->count : 1);
    fprintf(stderr, "\r[%.*s%*s] %d/%d %-40.40s", done, "##############################", WIDTH - done, "",
            p->index + 1, p->count, p->name);
    if (p->index + 1 == p->count)
        fprintf(stderr, "\r%*s\r", WIDTH + 60, "");
    fflush(stderr);
}

static void on_progress(void *user, const lowbit_checkpoint_progress_t *p)
{
    summary_t *s = user;
    int64_t n = 1;
    for (int d = 0; d < p->ndim; d++)
        n *= p->shape[d];
    if (s->nrows == s->cap) {
        s->cap = s->cap ? 2 * s->cap : 64;
        s->rows = realloc(s->rows, sizeof *s->rows * (size_t)s->cap);
        if (s->rows == NULL)
            cli_die("out of host memory");
    }
    row_t *r = &s->rows[s->nrows++];
    memset(r, 0, sizeof *r);
    r->name = strdup(p->name);
    size_t off = (size_t)snprintf(r->shape, sizeof r->shape, "[");
    for (int d = 0; d < p->ndim && off < sizeof r->shape; d++)
        off += (size_t)snprintf(r->shape + off, sizeof r->shape - off, "%s%" PRId64, d ? ", " : "", p->shape[d]);
    if (off < sizeof r->shape)
        snprintf(r->shape + off, sizeof r->shape - off, "]");
    snprintf(r->dtype, sizeof r->dtype, "%s", p->dtype);
    r->in = p->bytes_in;
    r->out = p->bytes_out;
    r->quantized = p->quantized;
    r->err = p->rel_l2;
    snprintf(r->note, sizeof r->note, "%s", p->quantized ? "" : p->kept_because);
    s->params += n;
    s->in += p->bytes_in;
    s->out += p->bytes_out;
    if (p->quantized) {
        s->qparams += n;
        s->qin += p->bytes_in;
        s->qout += p->bytes_out;
    }
    if (s->bar)
        progress_bar(p);
}

static void print_summary(const summary_t *s, const char *in, const char *out, int table)
{
    char b1[32], b2[32];
    printf("%s -> %s\n", in, out);
    if (table) {
        cli_table_t *t = cli_table_new(6, "lllrrl");
        cli_table_row(t);
        cli_table_cell(t, "tensor");
        cli_table_cell(t, "dtype");
        cli_table_cell(t, "shape");
        cli_table_cell(t, "before");
        cli_table_cell(t, "after");
        cli_table_cell(t, "rel L2 error");
        for (int i = 0; i < s->nrows; i++) {
            const row_t *r = &s->rows[i];
            cli_table_row(t);
            cli_table_cell(t, "%s", r->name);
            cli_table_cell(t, "%s", r->dtype);
            cli_table_cell(t, "%s", r->shape);
            cli_table_cell(t, "%s", cli_fmt_bytes((double)r->in, b1, sizeof b1));
            cli_table_cell(t, "%s", cli_fmt_bytes((double)r->out, b2, sizeof b2));
            if (r->quantized)
                cli_table_cell(t, "%.6f", r->err);
            else
                cli_table_cell(t, "kept (%s)", r->note);
        }
        cli_table_print(t, stdout, "  ");
        cli_table_free(t);
        printf("\n");
    }
    printf("  size: %s -> %s (%.2fx smaller)\n", cli_fmt_bytes((double)s->in, b1, sizeof b1),
           cli_fmt_bytes((double)s->out, b2, sizeof b2), s->out ? (double)s->in / (double)s->out : 0.0);
    printf("  bits per parameter: %.3f -> %.3f over all %" PRId64 " parameters",
           s->params ? 8.0 * (double)s->in / (double)s->params : 0.0,
           s->params ? 8.0 * (double)s->out / (double)s->params : 0.0, s->params);
    if (s->qparams)
        printf("; %.3f -> %.3f over the %" PRId64 " quantized ones", 8.0 * (double)s->qin / (double)s->qparams,
               8.0 * (double)s->qout / (double)s->qparams, s->qparams);
    printf("\n");
}

static int parse_format(const char *s, lowbit_ckpt_format_t *f)
{
    if (!strcmp(s, "nf4"))
        *f = LOWBIT_CKPT_NF4;
    else if (!strcmp(s, "fp4"))
        *f = LOWBIT_CKPT_FP4;
    else if (!strcmp(s, "int8"))
        *f = LOWBIT_CKPT_INT8;
    else
        return -1;
    return 0;
}

int cmd_quantize(int argc, char **argv)
{
    static const struct option opts[] = {{"format", required_argument, NULL, 'f'},
                                         {"blocksize", required_argument, NULL, 'b'},
                                         {"double-quant", no_argument, NULL, 'd'},
                                         {"skip", required_argument, NULL, 's'},
                                         {"backend", required_argument, NULL, 'B'},
                                         {"device", required_argument, NULL, 'D'},
                                         {"quiet", no_argument, NULL, 'q'},
                                         {"help", no_argument, NULL, 'h'},
                                         {0}};
    lowbit_checkpoint_quantize_opts_t o;
    const char *backend = NULL;
    int64_t device = -1, bs = 0;
    int c, have_format = 0, quiet = 0;
    memset(&o, 0, sizeof o);
    const char **skip = cli_xmalloc(sizeof *skip * (size_t)(argc + 1));
    optind = 1;
    while ((c = getopt_long(argc, argv, "f:b:ds:qh", opts, NULL)) != -1) {
        switch (c) {
        case 'f':
            if (parse_format(optarg, &o.format)) {
                fprintf(stderr, "lowbit: quantize: unknown --format '%s' (nf4, fp4 or int8)\n", optarg);
                return 2;
            }
            have_format = 1;
            break;
        case 'b':
            if (cli_parse_i64(optarg, &bs) || bs <= 0 || bs > 1 << 20) {
                fprintf(stderr, "lowbit: quantize: invalid --blocksize '%s'\n", optarg);
                return 2;
            }
            o.blocksize = (int32_t)bs;
            break;
        case 'd': o.double_quant = 1; break;
        case 's': skip[o.nskip++] = optarg; break;
        case 'B': backend = optarg; break;
        case 'D':
            if (cli_parse_i64(optarg, &device) || device < 0 || device > 1000000) {
                fprintf(stderr, "lowbit: quantize: invalid --device '%s'\n", optarg);
                return 2;
            }
            break;
        case 'q': quiet = 1; break;
        case 'h': quantize_usage(stdout); return 0;
        default: quantize_usage(stderr); return 2;
        }
    }
    if (argc - optind != 2 || !have_format) {
        fprintf(stderr, "lowbit: quantize: %s\n", have_format ? "expected IN and OUT" : "--format is required");
        quantize_usage(stderr);
        return 2;
    }
    if (o.format == LOWBIT_CKPT_INT8 && (o.blocksize || o.double_quant)) {
        fprintf(stderr, "lowbit: quantize: --blocksize and --double-quant apply to nf4/fp4 only\n");
        return 2;
    }
    o.skip = skip;
    lowbit_context_t *ctx;
    CLI_CHECK("quantize: context", lowbit_context_create(backend, (int)device, &ctx));
    summary_t s;
    memset(&s, 0, sizeof s);
    s.bar = !quiet && isatty(STDERR_FILENO);
    lowbit_status_t st = lowbit_checkpoint_quantize(ctx, argv[optind], argv[optind + 1], &o, on_progress, &s);
    if (s.bar)
        fprintf(stderr, "\r%*s\r", 90, "");
    if (st != LOWBIT_SUCCESS)
        cli_die_status("quantize", st);
    lowbit_context_destroy(ctx);
    print_summary(&s, argv[optind], argv[optind + 1], !quiet);
    for (int i = 0; i < s.nrows; i++)
        free(s.rows[i].name);
    free(s.rows);
    free(skip);
    return 0;
}

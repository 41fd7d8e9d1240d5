/*
 * cmd_inspect.c -- `lowbit inspect FILE|DIR`: the tensors of a safetensors checkpoint (plain or
 * quantized by bitsandbytes or `lowbit quantize`) with dtypes, shapes, formats and memory footprint.
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "cmd.h"
#include "lowbit.h"

static const char *shape_str(int ndim, const int64_t *shape, char *buf, size_t len)
{
    size_t off = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < ndim && off < len; d++)
        off += (size_t)snprintf(buf + off, len - off, "%s%" PRId64, d ? ", " : "", shape[d]);
    if (off < len)
        snprintf(buf + off, len - off, "]");
    return buf;
}

static const char *format_str(const lowbit_checkpoint_tensor_t *t, char *buf, size_t len)
{
    char shp[128];
    switch (t->format) {
    case LOWBIT_CKPT_NF4:
    case LOWBIT_CKPT_FP4:
        snprintf(buf, len, "%s B=%d%s%s -> %s %s", t->format == LOWBIT_CKPT_NF4 ? "nf4" : "fp4", (int)t->blocksize,
                 t->nested_blocksize ? " nested=" : "", t->nested_blocksize ? "256" : "", t->orig_dtype,
                 shape_str(t->orig_ndim, t->orig_shape, shp, sizeof shp));
        if (t->nested_blocksize && t->nested_blocksize != 256)
            snprintf(buf + strlen(buf), len - strlen(buf), " (nested block %d)", (int)t->nested_blocksize);
        return buf;
    case LOWBIT_CKPT_INT8: return "int8 (LLM.int8, row)";
    case LOWBIT_CKPT_STATE: snprintf(buf, len, "state of %s", t->owner); return buf;
    default: return "plain";
    }
}

/* Logical parameters of a tensor: quantized weights count their original elements, states none. */
static int64_t params_of(const lowbit_checkpoint_tensor_t *t)
{
    int64_t n = 1;
    if (t->format == LOWBIT_CKPT_STATE)
        return 0;
    int nd = t->format == LOWBIT_CKPT_PLAIN ? t->ndim : t->orig_ndim;
    const int64_t *shape = t->format == LOWBIT_CKPT_PLAIN ? t->shape : t->orig_shape;
    for (int d = 0; d < nd; d++)
        n *= shape[d];
    return n;
}

static void inspect_usage(FILE *f)
{
    fprintf(f, "Usage: lowbit inspect FILE|DIR\n"
               "  Lists the tensors of a safetensors checkpoint (a file, or a directory with model.safetensors or\n"
               "  model.safetensors.index.json and its shards): name, stored dtype and shape, format (plain,\n"
               "  nf4/fp4 with block size and original dtype and shape, int8, or the weight a state tensor belongs\n"
               "  to) and bytes; then totals and bits per parameter.  Exit status 0, 1 on a bad checkpoint, 2 on\n"
               "  a usage error.\n");
}

int cmd_inspect(int argc, char **argv)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'h') {
            inspect_usage(stdout);
            return 0;
        }
        inspect_usage(stderr);
        return 2;
    }
    if (argc - optind != 1) {
        inspect_usage(stderr);
        return 2;
    }
    const char *path = argv[optind];
    lowbit_checkpoint_t *ck;
    int count;
    lowbit_status_t st = lowbit_checkpoint_open(path, &ck);
    if (st != LOWBIT_SUCCESS)
        cli_die_status("inspect", st);
    CLI_CHECK("inspect", lowbit_checkpoint_tensor_count(ck, &count));
    cli_table_t *t = cli_table_new(5, "lllll");
    cli_table_row(t);
    cli_table_cell(t, "tensor");
    cli_table_cell(t, "dtype");
    cli_table_cell(t, "shape");
    cli_table_cell(t, "format");
    cli_table_cell(t, "bytes");
    uint64_t total = 0, qbytes = 0;
    int64_t params = 0, qparams = 0;
    int nq = 0;
    for (int i = 0; i < count; i++) {
        lowbit_checkpoint_tensor_t info;
        char shp[128], fmt[512], b[32];
        CLI_CHECK("inspect", lowbit_checkpoint_tensor_info(ck, i, &info));
        cli_table_row(t);
        cli_table_cell(t, "%s", info.name);
        cli_table_cell(t, "%s", info.dtype);
        cli_table_cell(t, "%s", shape_str(info.ndim, info.shape, shp, sizeof shp));
        cli_table_cell(t, "%s", format_str(&info, fmt, sizeof fmt));
        cli_table_cell(t, "%s", cli_fmt_bytes((double)info.bytes, b, sizeof b));
        total += info.bytes;
        params += params_of(&info);
        if (info.format != LOWBIT_CKPT_PLAIN && info.format != LOWBIT_CKPT_STATE) {
            nq++;
            qparams += params_of(&info);
            qbytes += info.footprint;
        }
    }
    char b1[32];
    printf("%s: %d tensors, %s\n", path, count, cli_fmt_bytes((double)total, b1, sizeof b1));
    cli_table_print(t, stdout, "  ");
    cli_table_free(t);
    printf("\n  parameters %" PRId64 ", %.3f bits per parameter", params, params ? 8.0 * (double)total / (double)params : 0.0);
    if (nq)
        printf("; %d quantized weights (%" PRId64 " parameters) at %.3f bits per parameter including their state",
               nq, qparams, 8.0 * (double)qbytes / (double)qparams);
    printf("\n");
    lowbit_checkpoint_close(ck);
    return 0;
}

/*
 * test_tune.c -- tests/test-tune: the tuning table (lib/tune*.c) on the CPU backend, plus an OpenCL part
 * that runs when an OpenCL device (PoCL) is present.
 *
 *   - the cache file parser against bad files: each is reported (file_status / file_rejected) and ignored,
 *     while the good entries of a file with bad entries still apply;
 *   - LOWBIT_TUNING_FILE=0 disables the file;
 *   - the lookup order: override -> file -> built-in device -> architecture -> vendor -> generic;
 *   - an override changes the launch (the CPU quantize path logs its chunking at debug level; a child
 *     process of this program runs the op with LOWBIT_LOG=debug and the parent reads its log);
 *   - concurrent writers never leave a torn file and lose no update.
 *
 * Files go to a mkdtemp directory under $TMPDIR (or /tmp), removed at the end; nothing is written to the
 * source or build tree.  The built-in tables are checked directly: lib/tune_tables.c is compiled into this
 * program (its symbols are hidden in liblowbit).
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lowbit.h"
#include "tune.h"

static char tmpdir[256];
static char self_exe[1024];
static char cpu_arch[64]; /* "cpu:x86_64" */

/* Writes `text` to <tmpdir>/<name> and returns the path (static storage, one at a time). */
static const char *put_file(const char *name, const char *text)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    ck_assert_msg(f != NULL, "cannot create %s: %s", path, strerror(errno));
    fputs(text, f);
    fclose(f);
    return path;
}

/* A file with the given entries (JSON fragments, "@A" replaced by the CPU arch key). */
static const char *put_entries(const char *name, const char *entries)
{
    char text[4096], *o = text;
    o += sprintf(o, "{\"format\": \"lowbit-tuning\", \"version\": 1, \"entries\": [");
    for (const char *p = entries; *p; p++)
        if (p[0] == '@' && p[1] == 'A') {
            o += sprintf(o, "%s", cpu_arch);
            p++;
        } else {
            *o++ = *p;
        }
    sprintf(o, "]}\n");
    return put_file(name, text);
}

/* Points LOWBIT_TUNING_FILE at `path`, rereads it, and returns a new CPU context. */
static lowbit_context_t *ctx_with_file(const char *path)
{
    setenv("LOWBIT_TUNING_FILE", path, 1);
    ck_assert_int_eq(lowbit_tune_reload(), LOWBIT_SUCCESS);
    lowbit_context_t *ctx = NULL;
    ck_assert_int_eq(lowbit_context_create("cpu", 0, &ctx), LOWBIT_SUCCESS);
    return ctx;
}

static int64_t get(const lowbit_context_t *ctx, const char *key)
{
    int64_t v = -1;
    lowbit_status_t st = lowbit_tune_get(ctx, key, &v);
    ck_assert_msg(st == LOWBIT_SUCCESS, "lowbit_tune_get(%s): %s", key, lowbit_last_error());
    return v;
}

static lowbit_tune_info_t info_of(const lowbit_context_t *ctx)
{
    lowbit_tune_info_t ti;
    ck_assert_int_eq(lowbit_tune_info(ctx, &ti), LOWBIT_SUCCESS);
    return ti;
}

#define GOOD "{\"arch\": \"@A\", \"key\": \"cpu.int8.gemm_kc\", \"value\": 256}"

/* ---- built-in tables ---------------------------------------------------------------------------------- */

START_TEST(builtin_valid)
{
    char msg[256] = "";
    ck_assert_msg(lb_tune_builtin_check(msg, sizeof msg) == 0, "%s", msg);
}
END_TEST

static void expect_builtin(const char *arch, const char *device, int gpu, const char *key, int64_t value,
                           const char *table)
{
    lb_tune_target_t t = {arch, device, gpu};
    int64_t v = -1;
    const char *tb = NULL;
    ck_assert_msg(lb_tune_builtin_get(&t, key, &v, &tb) == 1, "%s on %s: no value", key, arch);
    ck_assert_msg(v == value && strcmp(tb, table) == 0, "%s on %s (%s): %lld from %s, expected %lld from %s", key,
                  arch, device, (long long)v, tb, (long long)value, table);
}

START_TEST(builtin_hierarchy)
{
    /* device -> architecture -> vendor -> generic */
    expect_builtin("cuda:sm_90", "NVIDIA H100 80GB HBM3", 1, "quantize.nf4.threads", 256, "cuda/sm_90/H100");
    expect_builtin("cuda:sm_90", "NVIDIA GH200 480GB", 1, "quantize.nf4.threads", 256, "cuda/sm_90");
    expect_builtin("cuda:sm_75", "Tesla T4", 1, "quantize.8bit.threads", 128, "cuda/sm_75");
    expect_builtin("cuda:sm_75", "Tesla T4", 1, "dequantize.8bit.threads", 256, "cuda/sm_75");
    expect_builtin("cuda:sm_61", "GeForce GTX 1080", 1, "quantize.fp4.vec", 2, "cuda");
    expect_builtin("hip:gfx90a:sramecc+:xnack-", "AMD Instinct MI210", 1, "quantize.8bit.vec", 2, "hip/gfx90a");
    expect_builtin("hip:gfx1100", "Radeon RX 7900 XTX", 1, "quantize.8bit.vec", 1, "hip/gfx1100");
    expect_builtin("hip:gfx1030", "Radeon RX 6800", 1, "quantize.8bit.vec", 2, "hip");
    expect_builtin("opencl:pthread-haswell-amd-epyc", "pthread-haswell-AMD EPYC", 0, "opencl.quantize.threads", 64,
                   "opencl/pocl-cpu");
    expect_builtin("opencl:intel-r-core-tm", "Intel(R) Core(TM)", 0, "opencl.quantize.threads", 64, "opencl/cpu");
    expect_builtin("opencl:nvidia-h100", "NVIDIA H100", 1, "opencl.quantize.threads", 256, "opencl/gpu");
    expect_builtin("cpu:x86_64", "cpu", 0, "cpu.int8.gemm_kc", 512, "cpu/x86_64");
    expect_builtin("cpu:riscv64", "cpu", 0, "cpu.int8.gemm_kc", 512, "cpu");
    expect_builtin("metal:apple-m3", "Apple M3", 1, "dequantize.nf4.vec", 1, "generic");
    /* a key no table holds for this device: the kernel's default applies */
    lb_tune_target_t t = {"cuda:sm_90", "NVIDIA H100", 1};
    int64_t v;
    ck_assert_int_eq(lb_tune_builtin_get(&t, "cpu.int8.gemm_kc", &v, NULL), 0);
    ck_assert_int_eq(lb_tune_builtin_get(&t, "opencl.quantize.max_groups", &v, NULL), 0);
    char desc[256];
    ck_assert_int_gt(lb_tune_builtin_describe(&t, desc, sizeof desc), 0);
    ck_assert_msg(strstr(desc, "measured sm_90 (H100)") != NULL, "%s", desc);
}
END_TEST

/* ---- lookup order on a CPU context -------------------------------------------------------------------- */

START_TEST(lookup_order)
{
    const char *path = put_entries("order.json", GOOD ", {\"arch\": \"cuda:sm_90\", \"key\": "
                                                 "\"quantize.nf4.threads\", \"value\": 512}");
    lowbit_context_t *ctx = ctx_with_file(path);
    /* the file beats the built-in table; entries of another arch are kept but unused */
    ck_assert_int_eq(get(ctx, "cpu.int8.gemm_kc"), 256);
    ck_assert_int_eq(get(ctx, "cpu.int8.gemm_mc"), 192);
    lowbit_tune_info_t ti = info_of(ctx);
    ck_assert_str_eq(ti.file, path);
    ck_assert_int_eq(ti.file_entries, 1);
    ck_assert_int_eq(ti.file_other, 1);
    ck_assert_int_eq(ti.file_rejected, 0);
    ck_assert_msg(strncmp(ti.file_status, "loaded", 6) == 0, "%s", ti.file_status);
    ck_assert_msg(strstr(ti.table, "cpu") != NULL, "%s", ti.table);
    /* an override beats the file; reset goes back to it */
    ck_assert_int_eq(lowbit_tune_set(ctx, "cpu.int8.gemm_kc", 1024), LOWBIT_SUCCESS);
    ck_assert_int_eq(get(ctx, "cpu.int8.gemm_kc"), 1024);
    ck_assert_int_eq(info_of(ctx).overrides, 1);
    ck_assert_int_eq(lowbit_tune_reset(ctx, "cpu.int8.gemm_kc"), LOWBIT_SUCCESS);
    ck_assert_int_eq(get(ctx, "cpu.int8.gemm_kc"), 256);
    ck_assert_int_eq(lowbit_tune_reset(ctx, NULL), LOWBIT_SUCCESS);
    /* no table holds it: UNSUPPORTED, the kernel decides */
    int64_t v = 77;
    ck_assert_int_eq(lowbit_tune_get(ctx, "opencl.quantize.max_groups", &v), LOWBIT_ERR_UNSUPPORTED);
    ck_assert_int_eq(v, 77);
    /* bad arguments */
    ck_assert_int_eq(lowbit_tune_get(ctx, "no.such.key", &v), LOWBIT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(lowbit_tune_set(ctx, "no.such.key", 1), LOWBIT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(lowbit_tune_set(ctx, "cpu.int8.gemm_kc", 1 << 20), LOWBIT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(lowbit_tune_reset(ctx, "no.such.key"), LOWBIT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(lowbit_tune_set(NULL, "cpu.int8.gemm_kc", 64), LOWBIT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(get(ctx, "cpu.int8.gemm_kc"), 256);
    /* a context created before a reload keeps what it read */
    setenv("LOWBIT_TUNING_FILE", "0", 1);
    ck_assert_int_eq(lowbit_tune_reload(), LOWBIT_SUCCESS);
    ck_assert_int_eq(get(ctx, "cpu.int8.gemm_kc"), 256);
    lowbit_context_destroy(ctx);
}
END_TEST

START_TEST(disabled)
{
    const char *path = put_entries("disabled.json", GOOD);
    (void)path;
    lowbit_context_t *ctx = ctx_with_file("0");
    ck_assert_int_eq(get(ctx, "cpu.int8.gemm_kc"), 512);
    lowbit_tune_info_t ti = info_of(ctx);
    ck_assert_str_eq(ti.file, "");
    ck_assert_msg(strstr(ti.file_status, "disabled") != NULL, "%s", ti.file_status);
    /* saving to the default path is refused while the file is disabled; outputs untouched */
    ck_assert_int_eq(lowbit_tune_save(ctx, NULL), LOWBIT_ERR_INVALID_ARGUMENT);
    lowbit_context_destroy(ctx);
    /* the default path is used when LOWBIT_TUNING_FILE is unset */
    unsetenv("LOWBIT_TUNING_FILE");
    char xdg[300];
    snprintf(xdg, sizeof xdg, "%s/xdg", tmpdir);
    setenv("XDG_CACHE_HOME", xdg, 1);
    ck_assert_int_eq(lowbit_tune_reload(), LOWBIT_SUCCESS);
    ck_assert_int_eq(lowbit_context_create("cpu", 0, &ctx), LOWBIT_SUCCESS);
    ck_assert_msg(strncmp(info_of(ctx).file_status, "not found", 9) == 0, "%s", info_of(ctx).file_status);
    ck_assert_int_eq(lowbit_tune_set(ctx, "cpu.int8.gemm_nc", 1024), LOWBIT_SUCCESS);
    ck_assert_int_eq(lowbit_tune_save(ctx, NULL), LOWBIT_SUCCESS);
    lowbit_context_destroy(ctx);
    ck_assert_int_eq(lowbit_tune_reload(), LOWBIT_SUCCESS);
    ck_assert_int_eq(lowbit_context_create("cpu", 0, &ctx), LOWBIT_SUCCESS);
    ck_assert_int_eq(get(ctx, "cpu.int8.gemm_nc"), 1024);
    char expect[400];
    snprintf(expect, sizeof expect, "%s/lowbit/tuning.json", xdg);
    ck_assert_str_eq(info_of(ctx).file, expect);
    lowbit_context_destroy(ctx);
}
END_TEST

/* ---- bad files ---------------------------------------------------------------------------------------- */

/* A file that must be ignored as a whole: status says so, the built-in value applies. */
static void expect_ignored(const char *path, const char *what)
{
    lowbit_context_t *ctx = ctx_with_file(path);
    lowbit_tune_info_t ti = info_of(ctx);
    ck_assert_msg(strstr(ti.file_status, what) != NULL, "%s: status '%s' lacks '%s'", path, ti.file_status, what);
    ck_assert_str_eq(ti.file, "");
    ck_assert_int_eq(ti.file_entries, 0);
    ck_assert_int_eq(get(ctx, "cpu.int8.gemm_kc"), 512);
    lowbit_context_destroy(ctx);
}

START_TEST(bad_whole_files)
{
    expect_ignored(put_file("notjson.json", "this is not json\n"), "ignored");
    expect_ignored(put_file("empty.json", ""), "ignored");
    /* a good file cut in the middle */
    char text[512];
    snprintf(text, sizeof text,
             "{\"format\": \"lowbit-tuning\", \"version\": 1, \"entries\": [{\"arch\": \"%s\", \"key\": \"cpu.int8.gem",
             cpu_arch);
    expect_ignored(put_file("truncated.json", text), "ignored");
    expect_ignored(put_file("v2.json", "{\"format\": \"lowbit-tuning\", \"version\": 2, \"entries\": []}"),
                   "version 2");
    expect_ignored(put_file("vstr.json", "{\"format\": \"lowbit-tuning\", \"version\": \"1\", \"entries\": []}"),
                   "version");
    expect_ignored(put_file("noformat.json", "{\"version\": 1, \"entries\": []}"), "not a lowbit tuning file");
    expect_ignored(put_file("array.json", "[1, 2, 3]"), "not a lowbit tuning file");
    expect_ignored(put_file("entries.json", "{\"format\": \"lowbit-tuning\", \"version\": 1, \"entries\": {}}"),
                   "not an array");
    expect_ignored(put_file("dupkey.json", "{\"format\": \"lowbit-tuning\", \"format\": \"x\", \"version\": 1}"),
                   "ignored");
    char dir[300];
    snprintf(dir, sizeof dir, "%s/adir.json", tmpdir);
    ck_assert_int_eq(mkdir(dir, 0755), 0);
    expect_ignored(dir, "not a regular file");
    snprintf(dir, sizeof dir, "%s/missing.json", tmpdir);
    expect_ignored(dir, "not found");
    /* unreadable: only meaningful when not running as root */
    const char *path = put_entries("unreadable.json", GOOD);
    ck_assert_int_eq(chmod(path, 0), 0);
    if (geteuid() != 0)
        expect_ignored(path, "cannot open");
}
END_TEST

/* A file with one bad entry among good ones: the bad one is rejected, the rest applies. */
static void expect_rejected(const char *name, const char *bad, int rejected, int loaded)
{
    char entries[2048];
    snprintf(entries, sizeof entries, "%s, " GOOD ", {\"arch\": \"@A\", \"key\": \"cpu.int8.gemm_mc\", \"value\": 96}",
             bad);
    lowbit_context_t *ctx = ctx_with_file(put_entries(name, entries));
    lowbit_tune_info_t ti = info_of(ctx);
    ck_assert_msg(ti.file_rejected == rejected && ti.file_entries == loaded, "%s: %d rejected, %d loaded (%s)", name,
                  ti.file_rejected, ti.file_entries, ti.file_status);
    ck_assert_int_eq(get(ctx, "cpu.int8.gemm_kc"), 256);
    ck_assert_int_eq(get(ctx, "cpu.int8.gemm_mc"), 96);
    ck_assert_int_eq(get(ctx, "cpu.int8.gemm_nc"), 512);
    lowbit_context_destroy(ctx);
}

START_TEST(bad_entries)
{
    expect_rejected("strvalue.json", "{\"arch\": \"@A\", \"key\": \"cpu.int8.gemm_nc\", \"value\": \"1024\"}", 1, 2);
    expect_rejected("realvalue.json", "{\"arch\": \"@A\", \"key\": \"cpu.int8.gemm_nc\", \"value\": 1024.5}", 1, 2);
    expect_rejected("noarch.json", "{\"key\": \"cpu.int8.gemm_nc\", \"value\": 1024}", 1, 2);
    expect_rejected("numarch.json", "{\"arch\": 7, \"key\": \"cpu.int8.gemm_nc\", \"value\": 1024}", 1, 2);
    expect_rejected("badarch.json", "{\"arch\": \"x86\", \"key\": \"cpu.int8.gemm_nc\", \"value\": 1024}", 1, 2);
    expect_rejected("unknownkey.json", "{\"arch\": \"@A\", \"key\": \"cpu.int8.gemm_xx\", \"value\": 1024}", 1, 2);
    expect_rejected("range.json", "{\"arch\": \"@A\", \"key\": \"cpu.int8.gemm_nc\", \"value\": 8}", 1, 2);
    expect_rejected("range2.json", "{\"arch\": \"@A\", \"key\": \"cpu.int8.gemm_nc\", \"value\": 99999999999}", 1, 2);
    expect_rejected("notobj.json", "42", 1, 2);
    expect_rejected("devtype.json", "{\"arch\": \"@A\", \"key\": \"cpu.int8.gemm_nc\", \"value\": 1024, \"device\": 3}",
                    1, 2);
    /* the second value for the same (arch, key) is the one rejected */
    expect_rejected("dup.json", "{\"arch\": \"@A\", \"key\": \"cpu.int8.gemm_nc\", \"value\": 512}, "
                                "{\"arch\": \"@A\", \"key\": \"cpu.int8.gemm_nc\", \"value\": 1024}",
                    1, 3);
}
END_TEST

/* ---- an override changes the launch ------------------------------------------------------------------- */

/* Child mode (argv[1] = "--launch"): quantizes on the CPU backend with cpu.quantize.chunk_blocks = argv[2]
 * (-1: no override) and prints the value lowbit_tune_get reports; stderr carries the debug log. */
static int launch_child(int64_t chunk)
{
    lowbit_context_t *ctx;
    lowbit_buffer_t *in;
    lowbit_qtensor_t q;
    const int64_t n = 64 * 1000;
    if (lowbit_context_create("cpu", 0, &ctx) != LOWBIT_SUCCESS || lowbit_buffer_alloc(ctx, n * 4, 0, &in) ||
        lowbit_qtensor_alloc(ctx, LOWBIT_QFORMAT_NF4, LOWBIT_F32, n, 64, 0, &q) ||
        lowbit_buffer_fill(ctx, NULL, in, 0x3c) || (chunk >= 0 && lowbit_tune_set(ctx, "cpu.quantize.chunk_blocks", chunk)))
        return 2;
    int64_t v = -1;
    lowbit_tune_get(ctx, "cpu.quantize.chunk_blocks", &v);
    printf("chunk_blocks %lld\n", (long long)v);
    if (lowbit_quantize_blockwise(ctx, NULL, in, &q, NULL) || lowbit_stream_synchronize(ctx, NULL))
        return 3;
    lowbit_qtensor_free(&q);
    lowbit_buffer_free(in);
    lowbit_context_destroy(ctx);
    return 0;
}

/* Runs the child with LOWBIT_LOG=debug and returns its stderr and stdout concatenated. */
static void run_child(int64_t chunk, char *out, size_t len)
{
    char log[300], arg[32];
    snprintf(log, sizeof log, "%s/child.log", tmpdir);
    snprintf(arg, sizeof arg, "%lld", (long long)chunk);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fd = open(log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        setenv("LOWBIT_LOG", "debug", 1);
        setenv("LOWBIT_TUNING_FILE", "0", 1);
        execl(self_exe, self_exe, "--launch", arg, (char *)NULL);
        _exit(127);
    }
    int status;
    waitpid(pid, &status, 0);
    FILE *f = fopen(log, "r");
    size_t got = f ? fread(out, 1, len - 1, f) : 0;
    out[got] = '\0';
    if (f)
        fclose(f);
    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed: %s", out);
}

START_TEST(override_changes_launch)
{
    char out[16384];
    run_child(-1, out, sizeof out);
    /* default: 32768 elements' worth of 64-element blocks per chunk */
    ck_assert_msg(strstr(out, "chunk_blocks 0") && strstr(out, "1000 blocks of 64 in chunks of 512 blocks"), "%s",
                  out);
    run_child(8, out, sizeof out);
    ck_assert_msg(strstr(out, "chunk_blocks 8") && strstr(out, "1000 blocks of 64 in chunks of 8 blocks"), "%s",
                  out);
}
END_TEST

/* ---- save / merge / concurrent writers ---------------------------------------------------------------- */

START_TEST(save_merges)
{
    const char *path = put_entries("merge.json", "{\"arch\": \"cuda:sm_90\", \"key\": \"quantize.nf4.threads\", "
                                                 "\"value\": 512}, " GOOD);
    char saved[512];
    snprintf(saved, sizeof saved, "%s", path);
    lowbit_context_t *ctx = ctx_with_file(saved);
    ck_assert_int_eq(lowbit_tune_set(ctx, "cpu.int8.gemm_kc", 1024), LOWBIT_SUCCESS);
    ck_assert_int_eq(lowbit_tune_set(ctx, "cpu.quantize.chunk_blocks", 32), LOWBIT_SUCCESS);
    ck_assert_int_eq(lowbit_tune_save(ctx, saved), LOWBIT_SUCCESS);
    lowbit_context_destroy(ctx);
    ctx = ctx_with_file(saved);
    lowbit_tune_info_t ti = info_of(ctx);
    ck_assert_int_eq(ti.file_entries, 2);
    ck_assert_int_eq(ti.file_other, 1);
    ck_assert_int_eq(ti.file_rejected, 0);
    ck_assert_int_eq(get(ctx, "cpu.int8.gemm_kc"), 1024);
    ck_assert_int_eq(get(ctx, "cpu.quantize.chunk_blocks"), 32);
    /* the entry names the device and version that tuned it */
    FILE *f = fopen(saved, "r");
    char text[8192];
    size_t got = fread(text, 1, sizeof text - 1, f);
    text[got] = '\0';
    fclose(f);
    ck_assert_msg(strstr(text, "\"lowbit\": \"" PACKAGE_VERSION "\"") && strstr(text, "\"device\"") &&
                      strstr(text, "\"driver\"") && strstr(text, "quantize.nf4.threads"),
                  "%s", text);
    /* an unwritable place: an error, the file untouched */
    ck_assert_int_eq(lowbit_tune_save(ctx, "/proc/lowbit-no/tuning.json"), LOWBIT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(lowbit_tune_save(ctx, ""), LOWBIT_ERR_INVALID_ARGUMENT);
    ck_assert_int_eq(lowbit_tune_save(NULL, saved), LOWBIT_ERR_INVALID_ARGUMENT);
    lowbit_context_destroy(ctx);
}
END_TEST

enum { WRITERS = 3, ROUNDS = 25 };

START_TEST(concurrent_writers)
{
    static const char *keys[WRITERS] = {"cpu.int8.gemm_mc", "cpu.int8.gemm_nc", "cpu.int8.gemm_kc"};
    char path[300];
    snprintf(path, sizeof path, "%s/concurrent.json", tmpdir);
    pid_t pids[WRITERS];
    for (int w = 0; w < WRITERS; w++) {
        pids[w] = fork();
        ck_assert_int_ge(pids[w], 0);
        if (pids[w] == 0) {
            lowbit_context_t *ctx;
            setenv("LOWBIT_TUNING_FILE", "0", 1);
            if (lowbit_context_create("cpu", 0, &ctx) != LOWBIT_SUCCESS)
                _exit(2);
            for (int r = 1; r <= ROUNDS; r++)
                if (lowbit_tune_set(ctx, keys[w], 96 * r) || lowbit_tune_save(ctx, path))
                    _exit(3);
            _exit(0);
        }
    }
    /* meanwhile every read must see a complete file (or none yet) */
    int reads = 0;
    for (int done = 0; !done;) {
        lowbit_context_t *rctx = ctx_with_file(path);
        lowbit_tune_info_t ti = info_of(rctx);
        ck_assert_msg(strncmp(ti.file_status, "loaded", 6) == 0 || strncmp(ti.file_status, "not found", 9) == 0,
                      "torn read: %s", ti.file_status);
        ck_assert_int_eq(ti.file_rejected, 0);
        lowbit_context_destroy(rctx);
        reads++;
        done = 1;
        for (int w = 0; w < WRITERS; w++)
            if (pids[w] > 0) {
                int status;
                pid_t r = waitpid(pids[w], &status, WNOHANG);
                if (r == 0)
                    done = 0;
                else {
                    ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0, "writer %d failed", w);
                    pids[w] = -1;
                }
            }
    }
    /* no update was lost: every writer's last value is there */
    lowbit_context_t *ctx = ctx_with_file(path);
    for (int w = 0; w < WRITERS; w++)
        ck_assert_int_eq(get(ctx, keys[w]), 96 * ROUNDS);
    ck_assert_int_eq(info_of(ctx).file_rejected, 0);
    lowbit_context_destroy(ctx);
    ck_assert_int_gt(reads, 0);
}
END_TEST

/* ---- OpenCL (PoCL) ------------------------------------------------------------------------------------ */

START_TEST(opencl_override)
{
    lowbit_context_t *ocl = NULL, *cpu = NULL;
    setenv("LOWBIT_TUNING_FILE", "0", 1);
    lowbit_tune_reload();
    if (lowbit_context_create("opencl", 0, &ocl) != LOWBIT_SUCCESS) {
        printf("opencl part skipped: %s\n", lowbit_last_error());
        return;
    }
    ck_assert_int_eq(lowbit_context_create("cpu", 0, &cpu), LOWBIT_SUCCESS);
    lowbit_tune_info_t ti = info_of(ocl);
    ck_assert_msg(strncmp(ti.arch_key, "opencl:", 7) == 0 && strstr(ti.table, "opencl/") != NULL, "%s / %s",
                  ti.arch_key, ti.table);
    ck_assert_int_eq(lowbit_tune_set(ocl, "opencl.quantize.threads", 16), LOWBIT_SUCCESS);
    ck_assert_int_eq(lowbit_tune_set(ocl, "opencl.quantize.vpt", 4), LOWBIT_SUCCESS);
    ck_assert_int_eq(get(ocl, "opencl.quantize.threads"), 16);
    /* the result with unusual launch parameters is still bit-identical to the CPU backend's */
    const int64_t n = 64 * 333 + 17;
    float *x = malloc(n * sizeof *x);
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)((i * 7919) % 2001 - 1000) / 37.0f;
    lowbit_context_t *ctxs[2] = {cpu, ocl};
    uint8_t *data[2];
    size_t bytes = (size_t)(n + 1) / 2;
    for (int c = 0; c < 2; c++) {
        lowbit_buffer_t *in;
        lowbit_qtensor_t q;
        ck_assert_int_eq(lowbit_buffer_alloc(ctxs[c], n * 4, 0, &in), LOWBIT_SUCCESS);
        ck_assert_int_eq(lowbit_qtensor_alloc(ctxs[c], LOWBIT_QFORMAT_NF4, LOWBIT_F32, n, 64, 0, &q), LOWBIT_SUCCESS);
        ck_assert_int_eq(lowbit_buffer_upload(ctxs[c], NULL, in, 0, x, n * 4), LOWBIT_SUCCESS);
        ck_assert_int_eq(lowbit_quantize_blockwise(ctxs[c], NULL, in, &q, NULL), LOWBIT_SUCCESS);
        data[c] = malloc(bytes);
        ck_assert_int_eq(lowbit_buffer_download(ctxs[c], NULL, q.data, 0, data[c], bytes), LOWBIT_SUCCESS);
        lowbit_qtensor_free(&q);
        lowbit_buffer_free(in);
    }
    ck_assert_int_eq(memcmp(data[0], data[1], bytes), 0);
    free(data[0]);
    free(data[1]);
    free(x);
    lowbit_context_destroy(ocl);
    lowbit_context_destroy(cpu);
}
END_TEST

/* ---- runner ------------------------------------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb, (void)type, (void)ftw;
    return remove(path);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--launch") == 0)
        return launch_child(strtoll(argv[2], NULL, 10));
    ssize_t len = readlink("/proc/self/exe", self_exe, sizeof self_exe - 1);
    if (len <= 0)
        snprintf(self_exe, sizeof self_exe, "%s", argv[0]);
    else
        self_exe[len] = '\0';
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/lowbit-tune-test.XXXXXX", t && *t ? t : "/tmp");
    if (mkdtemp(tmpdir) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    /* the CPU backend's arch key, without initializing the library before Check forks */
    struct utsname u;
    snprintf(cpu_arch, sizeof cpu_arch, "cpu:%s", uname(&u) == 0 ? u.machine : "unknown");
    printf("tuning tests in %s (arch %s)\n", tmpdir, cpu_arch);

    Suite *s = suite_create("tune");
    TCase *tc = tcase_create("tune");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, builtin_valid);
    tcase_add_test(tc, builtin_hierarchy);
    tcase_add_test(tc, lookup_order);
    tcase_add_test(tc, disabled);
    tcase_add_test(tc, bad_whole_files);
    tcase_add_test(tc, bad_entries);
    tcase_add_test(tc, override_changes_launch);
    tcase_add_test(tc, save_merges);
    tcase_add_test(tc, concurrent_writers);
    tcase_add_test(tc, opencl_override);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return failed == 0 ? 0 : 1;
}

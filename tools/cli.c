/*
 * cli.c -- helpers shared by `lowbit` and `lowbit-bench` (see cli.h).
 */
#ifdef HAVE_CONFIG_H
#include "config.h"
#endif
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* sched_getaffinity, CPU_COUNT */
#endif

#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const char *cli_prog = "lowbit";

void cli_die_status(const char *what, lowbit_status_t status)
{
    const char *msg = lowbit_last_error();
    fflush(stdout);
    fprintf(stderr, "%s: %s: %s: %s\n", cli_prog, what, lowbit_status_string(status),
            (msg && *msg) ? msg : "(no message)");
    exit(1);
}

void cli_die(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "%s: ", cli_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

void cli_warn(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "%s: warning: ", cli_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void *cli_xmalloc(size_t bytes)
{
    void *p = malloc(bytes ? bytes : 1);
    if (!p)
        cli_die("out of host memory (%zu bytes)", bytes);
    return p;
}

void *cli_xmalloc_aligned(size_t bytes)
{
    void *p = NULL;
    int err = posix_memalign(&p, 4096, bytes ? bytes : 1);
    if (err)
        cli_die("out of host memory (%zu bytes): %s", bytes, strerror(err));
    return p;
}

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- random numbers ---- */

#define CLI_GOLDEN 0x9E3779B97F4A7C15ull

uint64_t cli_mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void cli_randn_pair(uint64_t seed, uint64_t pair_index, double *z0, double *z1)
{
    /* Outputs 2k and 2k+1 of splitmix64 started at `seed`. */
    uint64_t h1 = cli_mix64(seed + (2 * pair_index + 1) * CLI_GOLDEN);
    uint64_t h2 = cli_mix64(seed + (2 * pair_index + 2) * CLI_GOLDEN);
    double u1 = ((double)(h1 >> 11) + 1.0) * 0x1p-53; /* (0, 1]: log(u1) is finite */
    double u2 = (double)(h2 >> 11) * 0x1p-53;         /* [0, 1) */
    double r = sqrt(-2.0 * log(u1));
    double a = 6.283185307179586476925287 * u2;
    *z0 = r * cos(a);
    *z1 = r * sin(a);
}

uint64_t cli_seed_from_clock(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return cli_mix64(((uint64_t)ts.tv_sec << 30) ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 48)) >> 1;
}

/* ---- 16-bit floats ---- */

uint16_t cli_f32_to_f16(float f)
{
    uint32_t x, absx, sign, h, rem;
    memcpy(&x, &f, 4);
    sign = (x >> 16) & 0x8000u;
    absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u) /* NaN: keep the top payload bits, force quiet */
        return (uint16_t)(sign | 0x7e00u | ((absx >> 13) & 0x3ffu));
    if (absx >= 0x477ff000u) /* >= 65520 rounds to infinity (also +-inf) */
        return (uint16_t)(sign | 0x7c00u);
    if (absx < 0x38800000u) { /* below 2^-14: subnormal half or zero */
        uint32_t e = absx >> 23, m, shift, q, half;
        if (e < 102) /* < 2^-25: rounds to zero */
            return (uint16_t)sign;
        m = (absx & 0x7fffffu) | 0x800000u;
        shift = 126 - e; /* value / 2^-24 = m * 2^(e - 126) */
        q = m >> shift;
        rem = m & ((1u << shift) - 1);
        half = 1u << (shift - 1);
        if (rem > half || (rem == half && (q & 1)))
            q++;
        return (uint16_t)(sign | q);
    }
    h = (absx - (112u << 23)) >> 13;
    rem = absx & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1)))
        h++;
    return (uint16_t)(sign | h);
}

uint16_t cli_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((x >> 16) | 0x40u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (uint16_t)(x >> 16);
}

float cli_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    float f;
    if (e == 0) {
        f = (float)m * 0x1p-24f;
        return sign ? -f : f;
    }
    if (e == 31)
        x = sign | 0x7f800000u | (m << 13);
    else
        x = sign | ((e + 112u) << 23) | (m << 13);
    memcpy(&f, &x, 4);
    return f;
}

float cli_bf16_to_f32(uint16_t h)
{
    uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

/* ---- parsing ---- */

int cli_parse_i64(const char *s, int64_t *value_p)
{
    char *end;
    long long v;
    int base = 10;
    if (!s || !*s)
        return -1;
    while (isspace((unsigned char)*s))
        s++;
    if (s[0] == '2' && s[1] == '^') {
        errno = 0;
        v = strtoll(s + 2, &end, 10);
        if (errno || *end || end == s + 2 || v < 0 || v > 62)
            return -1;
        *value_p = (int64_t)1 << v;
        return 0;
    }
    if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
        base = 16;
    errno = 0;
    v = strtoll(s, &end, base);
    if (errno || end == s)
        return -1;
    if (*end) {
        int shift;
        switch (*end) {
        case 'k': case 'K': shift = 10; break;
        case 'm': case 'M': shift = 20; break;
        case 'g': case 'G': shift = 30; break;
        default: return -1;
        }
        if (end[1] && !(end[1] == 'i' && end[2] == '\0'))
            return -1;
        if (v > (INT64_MAX >> shift) || v < -(INT64_MAX >> shift))
            return -1;
        v *= (long long)1 << shift;
    }
    *value_p = (int64_t)v;
    return 0;
}

int cli_split_list(char *s, char **items, int max_items)
{
    int n = 0;
    char *save = NULL, *tok;
    for (tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        while (isspace((unsigned char)*tok))
            tok++;
        if (!*tok)
            continue;
        if (n == max_items)
            return -1;
        items[n++] = tok;
    }
    return n;
}

int cli_parse_dtype(const char *s, lowbit_dtype_t *dtype_p)
{
    if (!strcmp(s, "f32") || !strcmp(s, "fp32") || !strcmp(s, "float32"))
        *dtype_p = LOWBIT_F32;
    else if (!strcmp(s, "f16") || !strcmp(s, "fp16") || !strcmp(s, "float16"))
        *dtype_p = LOWBIT_F16;
    else if (!strcmp(s, "bf16") || !strcmp(s, "bfloat16"))
        *dtype_p = LOWBIT_BF16;
    else
        return -1;
    return 0;
}

int cli_parse_qformat(const char *s, lowbit_qformat_t *format_p)
{
    if (!strcmp(s, "8bit") || !strcmp(s, "int8") || !strcmp(s, "8"))
        *format_p = LOWBIT_QFORMAT_8BIT;
    else if (!strcmp(s, "nf4"))
        *format_p = LOWBIT_QFORMAT_NF4;
    else if (!strcmp(s, "fp4"))
        *format_p = LOWBIT_QFORMAT_FP4;
    else
        return -1;
    return 0;
}

/* ---- statistics ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void cli_order_stats(double *v, int n, double *median_p, double *min_p, double *p90_p)
{
    int r;
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    *median_p = (n & 1) ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
    *min_p = v[0];
    r = (int)ceil(0.9 * n) - 1; /* nearest rank */
    *p90_p = v[r < 0 ? 0 : r];
}

/* ---- thread pool ---- */

struct cli_pool {
    int n;
    pthread_t *threads;
    pthread_barrier_t start, done;
    cli_pool_fn fn;
    void *arg;
    int quit;
};

typedef struct {
    cli_pool_t *pool;
    int index;
} cli_worker_t;

static void *cli_worker_main(void *p)
{
    cli_worker_t w = *(cli_worker_t *)p;
    free(p);
    for (;;) {
        pthread_barrier_wait(&w.pool->start);
        if (w.pool->quit)
            break;
        w.pool->fn(w.pool->arg, w.index, w.pool->n);
        pthread_barrier_wait(&w.pool->done);
    }
    return NULL;
}

int cli_default_threads(void)
{
    const char *env = getenv("OMP_NUM_THREADS");
    long n;
    if (env && *env) {
        char *end;
        n = strtol(env, &end, 10);
        if (n > 0 && (*end == '\0' || *end == ','))
            return (int)n;
    }
#ifdef CPU_COUNT
    {
        cpu_set_t set;
        if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
            return CPU_COUNT(&set);
    }
#endif
    n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

cli_pool_t *cli_pool_create(int nthreads)
{
    cli_pool_t *pool = cli_xmalloc(sizeof *pool);
    int i, err;
    memset(pool, 0, sizeof *pool);
    pool->n = nthreads < 1 ? 1 : nthreads;
    if (pool->n == 1)
        return pool;
    pool->threads = cli_xmalloc(sizeof *pool->threads * (size_t)pool->n);
    if (pthread_barrier_init(&pool->start, NULL, (unsigned)pool->n) ||
        pthread_barrier_init(&pool->done, NULL, (unsigned)pool->n))
        cli_die("pthread_barrier_init failed");
    for (i = 1; i < pool->n; i++) {
        cli_worker_t *w = cli_xmalloc(sizeof *w);
        w->pool = pool;
        w->index = i;
        err = pthread_create(&pool->threads[i], NULL, cli_worker_main, w);
        if (err)
            cli_die("pthread_create: %s", strerror(err));
    }
    return pool;
}

int cli_pool_threads(const cli_pool_t *pool)
{
    return pool->n;
}

void cli_pool_run(cli_pool_t *pool, cli_pool_fn fn, void *arg)
{
    if (pool->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    pool->fn = fn;
    pool->arg = arg;
    pthread_barrier_wait(&pool->start);
    fn(arg, 0, pool->n);
    pthread_barrier_wait(&pool->done);
}

void cli_pool_destroy(cli_pool_t *pool)
{
    int i;
    if (!pool)
        return;
    if (pool->n > 1) {
        pool->quit = 1;
        pthread_barrier_wait(&pool->start);
        for (i = 1; i < pool->n; i++)
            pthread_join(pool->threads[i], NULL);
        pthread_barrier_destroy(&pool->start);
        pthread_barrier_destroy(&pool->done);
        free(pool->threads);
    }
    free(pool);
}

typedef struct {
    char *dst;
    const char *src;
    size_t bytes;
} cli_copy_job_t;

/* [lo, hi) of `total` units for thread t of n, boundaries rounded to `align` units. */
static void cli_slice(size_t total, size_t align, int t, int n, size_t *lo_p, size_t *hi_p)
{
    size_t chunks = (total + align - 1) / align;
    size_t lo = chunks * (size_t)t / (size_t)n * align, hi = chunks * (size_t)(t + 1) / (size_t)n * align;
    *lo_p = lo < total ? lo : total;
    *hi_p = hi < total ? hi : total;
}

static void cli_copy_worker(void *arg, int t, int n)
{
    const cli_copy_job_t *job = arg;
    size_t lo, hi;
    cli_slice(job->bytes, 4096, t, n, &lo, &hi);
    if (hi > lo)
        memcpy(job->dst + lo, job->src + lo, hi - lo);
}

void cli_pool_memcpy(cli_pool_t *pool, void *dst, const void *src, size_t bytes)
{
    cli_copy_job_t job = {dst, src, bytes};
    cli_pool_run(pool, cli_copy_worker, &job);
}

typedef struct {
    void *dst;
    int64_t n;
    lowbit_dtype_t dtype;
    uint64_t seed;
} cli_randn_job_t;

static void cli_store(void *dst, lowbit_dtype_t dtype, int64_t i, double v)
{
    if (dtype == LOWBIT_F32)
        ((float *)dst)[i] = (float)v;
    else if (dtype == LOWBIT_F16)
        ((uint16_t *)dst)[i] = cli_f32_to_f16((float)v);
    else
        ((uint16_t *)dst)[i] = cli_f32_to_bf16((float)v);
}

static void cli_randn_worker(void *arg, int t, int n)
{
    const cli_randn_job_t *job = arg;
    size_t lo, hi, k;
    size_t pairs = (size_t)(job->n + 1) / 2;
    cli_slice(pairs, 1024, t, n, &lo, &hi);
    for (k = lo; k < hi; k++) {
        double z0, z1;
        cli_randn_pair(job->seed, k, &z0, &z1);
        cli_store(job->dst, job->dtype, (int64_t)(2 * k), z0);
        if ((int64_t)(2 * k + 1) < job->n)
            cli_store(job->dst, job->dtype, (int64_t)(2 * k + 1), z1);
    }
}

void cli_pool_randn(cli_pool_t *pool, void *dst, int64_t n, lowbit_dtype_t dtype, uint64_t seed)
{
    cli_randn_job_t job = {dst, n, dtype, seed};
    cli_pool_run(pool, cli_randn_worker, &job);
}

/* ---- output ---- */

const char *cli_fmt_bytes(double bytes, char *buf, size_t len)
{
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int u = 0;
    while (bytes >= 1024.0 && u < 4) {
        bytes /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(buf, len, "%.0f B", bytes);
    else
        snprintf(buf, len, "%.*f %s", bytes < 10 ? 2 : 1, bytes, units[u]);
    return buf;
}

void cli_json_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\t')
            fputs("\\t", f);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

const char *cli_utc_now(char *buf, size_t len)
{
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

static int cli_read_line(const char *path, char *buf, size_t len)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    if (!fgets(buf, (int)len, f)) {
        fclose(f);
        return -1;
    }
    fclose(f);
    buf[strcspn(buf, "\n")] = '\0';
    return 0;
}

size_t cli_llc_bytes(void)
{
    int i, best_level = 0;
    size_t best = 0;
    for (i = 0; i < 16; i++) {
        char path[128], line[64], *end;
        long level, size;
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/level", i);
        if (cli_read_line(path, line, sizeof line))
            break;
        level = strtol(line, NULL, 10);
        snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu0/cache/index%d/size", i);
        if (cli_read_line(path, line, sizeof line))
            continue;
        size = strtol(line, &end, 10);
        if (*end == 'K')
            size *= 1024;
        else if (*end == 'M')
            size *= 1024 * 1024;
        if (level >= best_level && size > 0) {
            best_level = (int)level;
            best = (size_t)size;
        }
    }
#ifdef _SC_LEVEL3_CACHE_SIZE
    if (!best) {
        long s = sysconf(_SC_LEVEL3_CACHE_SIZE);
        if (s > 0)
            best = (size_t)s;
    }
#endif
    return best;
}

double cli_loadavg(void)
{
    char line[128];
    if (cli_read_line("/proc/loadavg", line, sizeof line))
        return -1;
    return strtod(line, NULL);
}

const char *cli_cpu_model(char *buf, size_t len)
{
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    buf[0] = '\0';
    if (!f)
        return buf;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "model name", 10)) {
            char *p = strchr(line, ':');
            if (p) {
                p++;
                while (*p == ' ' || *p == '\t')
                    p++;
                p[strcspn(p, "\n")] = '\0';
                snprintf(buf, len, "%s", p);
            }
            break;
        }
    }
    fclose(f);
    return buf;
}

/* ---- tables ---- */

#define CLI_TABLE_MAX_COLS 24

struct cli_table {
    int ncols;
    char align[CLI_TABLE_MAX_COLS];
    int nrows, cap, cur; /* cur: cells filled in the last row */
    char **cells;        /* nrows * ncols */
};

cli_table_t *cli_table_new(int ncols, const char *align)
{
    cli_table_t *t = cli_xmalloc(sizeof *t);
    int i;
    if (ncols < 1 || ncols > CLI_TABLE_MAX_COLS)
        cli_die("internal: table with %d columns", ncols);
    memset(t, 0, sizeof *t);
    t->ncols = ncols;
    for (i = 0; i < ncols; i++)
        t->align[i] = (align && i < (int)strlen(align)) ? align[i] : 'l';
    return t;
}

void cli_table_row(cli_table_t *t)
{
    int i;
    if (t->nrows == t->cap) {
        char **cells;
        t->cap = t->cap ? 2 * t->cap : 16;
        cells = realloc(t->cells, sizeof *cells * (size_t)t->cap * (size_t)t->ncols);
        if (!cells)
            cli_die("out of host memory");
        t->cells = cells;
    }
    for (i = 0; i < t->ncols; i++)
        t->cells[(size_t)t->nrows * (size_t)t->ncols + (size_t)i] = NULL;
    t->nrows++;
    t->cur = 0;
}

void cli_table_cell(cli_table_t *t, const char *fmt, ...)
{
    va_list ap;
    char buf[1024];
    if (!t->nrows || t->cur >= t->ncols)
        cli_die("internal: table cell outside a row");
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    t->cells[(size_t)(t->nrows - 1) * (size_t)t->ncols + (size_t)t->cur++] = strdup(buf);
}

/* Display width: UTF-8 code points (the tables use "—", "µ", "×"). */
static int cli_width(const char *s)
{
    int w = 0;
    for (; s && *s; s++)
        if (((unsigned char)*s & 0xc0) != 0x80)
            w++;
    return w;
}

void cli_table_print(const cli_table_t *t, FILE *f, const char *indent)
{
    int width[CLI_TABLE_MAX_COLS] = {0};
    int r, c, last;
    for (r = 0; r < t->nrows; r++)
        for (c = 0; c < t->ncols; c++) {
            int w = cli_width(t->cells[(size_t)r * (size_t)t->ncols + (size_t)c]);
            if (w > width[c])
                width[c] = w;
        }
    for (r = 0; r < t->nrows; r++) {
        const char *const *row = (const char *const *)t->cells + (size_t)r * (size_t)t->ncols;
        for (last = t->ncols - 1; last > 0 && (!row[last] || !*row[last]); last--)
            ;
        fputs(indent ? indent : "", f);
        for (c = 0; c <= last; c++) {
            const char *s = row[c] ? row[c] : "";
            int pad = width[c] - cli_width(s);
            if (c)
                fputs("  ", f);
            if (t->align[c] == 'r')
                fprintf(f, "%*s%s", pad, "", s);
            else if (c == last)
                fputs(s, f); /* no trailing blanks */
            else
                fprintf(f, "%s%*s", s, pad, "");
        }
        fputc('\n', f);
        if (r == 0) {
            int total = 0;
            for (c = 0; c < t->ncols; c++)
                total += width[c] + (c ? 2 : 0);
            fputs(indent ? indent : "", f);
            for (c = 0; c < total; c++)
                fputc('-', f);
            fputc('\n', f);
        }
    }
}

void cli_table_free(cli_table_t *t)
{
    size_t i;
    if (!t)
        return;
    for (i = 0; i < (size_t)t->nrows * (size_t)t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(t);
}

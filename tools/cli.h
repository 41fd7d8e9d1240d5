/*
 * cli.h -- helpers shared by the `lowbit` command and `lowbit-bench`: error reporting, the monotonic
 * clock, a counter-based normal generator, fp16/bf16 conversion, number and list parsing, order
 * statistics, a small host thread pool (the CPU copy baseline) and a minimal JSON writer.
 *
 * Only the public API (lowbit.h), libc, pthreads and libm are used: these programs are what a user of the
 * installed library could write.
 */
#ifndef LOWBIT_TOOLS_CLI_H
#define LOWBIT_TOOLS_CLI_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "lowbit.h"

#define CLI_NORETURN __attribute__((noreturn))
#define CLI_PRINTF(f, a) __attribute__((format(printf, f, a)))

/* Program name used as the prefix of every message ("lowbit", "lowbit-bench"). */
extern const char *cli_prog;

/* "<prog>: <what>: <status string>: <last error>" on stderr, then exit(1). */
CLI_NORETURN void cli_die_status(const char *what, lowbit_status_t status);
/* "<prog>: <message>" on stderr, then exit(1). */
CLI_NORETURN void cli_die(const char *fmt, ...) CLI_PRINTF(1, 2);
/* "<prog>: warning: <message>" on stderr. */
void cli_warn(const char *fmt, ...) CLI_PRINTF(1, 2);

/* Checks the status of a lowbit_* call; `what` names the call for the message. */
#define CLI_CHECK(what, call)                                                                              \
    do {                                                                                                   \
        lowbit_status_t cli_st_ = (call);                                                                  \
        if (cli_st_ != LOWBIT_SUCCESS)                                                                     \
            cli_die_status((what), cli_st_);                                                               \
    } while (0)

void *cli_xmalloc(size_t bytes);
/* Page-aligned host allocation (large benchmark arrays); free with free(). */
void *cli_xmalloc_aligned(size_t bytes);

/* Seconds on CLOCK_MONOTONIC. */
double cli_now(void);

/* ---- random numbers ---- */

/* splitmix64 finalizer: a good 64-bit mix, used counter-based so any element can be drawn independently. */
uint64_t cli_mix64(uint64_t x);
/* Standard normal value number `index` of the stream `seed` (Box-Muller on two counter-based uniforms);
 * the result does not depend on how the work is split between threads. */
void cli_randn_pair(uint64_t seed, uint64_t pair_index, double *z0, double *z1);
/* A seed from the clock and the process id, for when the user gives none. */
uint64_t cli_seed_from_clock(void);

/* ---- 16-bit floats (round to nearest even, NaN kept quiet) ---- */

uint16_t cli_f32_to_f16(float f);
uint16_t cli_f32_to_bf16(float f);
float cli_f16_to_f32(uint16_t h);
float cli_bf16_to_f32(uint16_t h);

/* ---- parsing ---- */

/* Integers: decimal, 0x hex, "2^k", or with a binary suffix k/K, m/M, g/G (1024-based).  0 on success. */
int cli_parse_i64(const char *s, int64_t *value_p);
/* Splits a comma-separated list in place; returns the number of items (at most max_items) or -1 if more. */
int cli_split_list(char *s, char **items, int max_items);
int cli_parse_dtype(const char *s, lowbit_dtype_t *dtype_p);
int cli_parse_qformat(const char *s, lowbit_qformat_t *format_p);

/* ---- statistics ---- */

/* Sorts v (n > 0) and returns the median (mean of the middle two for even n), min and 90th percentile
 * (nearest rank). */
void cli_order_stats(double *v, int n, double *median_p, double *min_p, double *p90_p);

/* ---- host thread pool ---- */

typedef struct cli_pool cli_pool_t;
typedef void (*cli_pool_fn)(void *arg, int thread, int nthreads);

/* The number of threads the library's OpenMP CPU backend uses by default: OMP_NUM_THREADS (first value)
 * when set, else the CPUs this process may run on (libgomp's default), else the online CPUs. */
int cli_default_threads(void);
/* A pool of `nthreads` (>= 1) threads; the calling thread is thread 0, so nthreads - 1 are spawned.
 * Workers stay parked on a barrier between jobs, like an OpenMP team, so the per-job overhead is small. */
cli_pool_t *cli_pool_create(int nthreads);
int cli_pool_threads(const cli_pool_t *pool);
/* Runs fn(arg, t, nthreads) on every thread t and returns when all are done. */
void cli_pool_run(cli_pool_t *pool, cli_pool_fn fn, void *arg);
void cli_pool_destroy(cli_pool_t *pool);
/* memcpy of `bytes` split in cache-line-aligned slices over the pool's threads. */
void cli_pool_memcpy(cli_pool_t *pool, void *dst, const void *src, size_t bytes);
/* Fills dst[0..n) with standard normal values of the stream `seed` as f32, f16 or bf16 (element i is
 * always the same value whatever the thread count). */
void cli_pool_randn(cli_pool_t *pool, void *dst, int64_t n, lowbit_dtype_t dtype, uint64_t seed);

/* ---- output ---- */

/* A text table printed with aligned columns.  align: one 'l' or 'r' per column.  The first row added is
 * the header; a rule of dashes follows it. */
typedef struct cli_table cli_table_t;
cli_table_t *cli_table_new(int ncols, const char *align);
/* Starts a new row; cells are then appended left to right with cli_table_cell. */
void cli_table_row(cli_table_t *t);
void cli_table_cell(cli_table_t *t, const char *fmt, ...) CLI_PRINTF(2, 3);
void cli_table_print(const cli_table_t *t, FILE *f, const char *indent);
void cli_table_free(cli_table_t *t);

/* Size with a binary unit ("64.0 MiB"). */
const char *cli_fmt_bytes(double bytes, char *buf, size_t len);
/* JSON string literal with escapes. */
void cli_json_string(FILE *f, const char *s);
/* Current UTC time as "YYYY-MM-DDTHH:MM:SSZ". */
const char *cli_utc_now(char *buf, size_t len);
/* Size of the last-level cache of CPU 0 in bytes (0 if unknown). */
size_t cli_llc_bytes(void);
/* 1-minute load average from /proc/loadavg (< 0 if unknown). */
double cli_loadavg(void);
/* CPU model name from /proc/cpuinfo ("" if unknown). */
const char *cli_cpu_model(char *buf, size_t len);

#endif /* LOWBIT_TOOLS_CLI_H */

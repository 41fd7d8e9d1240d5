# benchmarks: lowbit-bench (installed), see BENCHMARKS.md.  It reuses the helpers of tools/.
bin_PROGRAMS += benchmarks/lowbit-bench

benchmarks_lowbit_bench_SOURCES = benchmarks/lowbit-bench.c tools/cli.c tools/cli.h
benchmarks_lowbit_bench_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools
benchmarks_lowbit_bench_CFLAGS = $(AM_CFLAGS) $(PTHREAD_CFLAGS)
benchmarks_lowbit_bench_LDFLAGS = $(PTHREAD_CFLAGS)
benchmarks_lowbit_bench_LDADD = lib/liblowbit.la $(PTHREAD_LIBS)
# An OpenBLAS sgemm baseline op may be added later under `if HAVE_OPENBLAS` (OPENBLAS_CFLAGS/OPENBLAS_LIBS).

# Family benchmarks against a vendor baseline in the same run (built by `make`, not installed).
# bench_int8: lowbit_int8_gemm vs OpenBLAS cblas_sgemm (only the lowbit column without OpenBLAS).
noinst_PROGRAMS += benchmarks/bench_int8
benchmarks_bench_int8_SOURCES = benchmarks/bench_int8.c
benchmarks_bench_int8_CFLAGS = $(AM_CFLAGS) $(OPENBLAS_CFLAGS)
benchmarks_bench_int8_LDADD = lib/liblowbit.la $(OPENBLAS_LIBS)
# bench-optim: one 8-bit and one 32-bit Adam step against a multi-threaded memcpy.
noinst_PROGRAMS += benchmarks/bench-optim
benchmarks_bench_optim_SOURCES = benchmarks/bench_optim.c
benchmarks_bench_optim_CFLAGS = $(AM_CFLAGS) $(OPENMP_CFLAGS)
benchmarks_bench_optim_LDFLAGS = $(OPENMP_CFLAGS)
benchmarks_bench_optim_LDADD = lib/liblowbit.la -lm
# bench-gemm4: 4-bit GEMV against a same-size memcpy on the same threads.
noinst_PROGRAMS += benchmarks/bench-gemm4
benchmarks_bench_gemm4_SOURCES = benchmarks/bench_gemm4.c tools/cli.c tools/cli.h
benchmarks_bench_gemm4_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools
benchmarks_bench_gemm4_CFLAGS = $(AM_CFLAGS) $(PTHREAD_CFLAGS)
benchmarks_bench_gemm4_LDFLAGS = $(PTHREAD_CFLAGS)
benchmarks_bench_gemm4_LDADD = lib/liblowbit.la $(PTHREAD_LIBS)
# lowbit-tune (installed): searches the kernels' launch parameters and writes the tuning cache file.
bin_PROGRAMS += benchmarks/lowbit-tune
benchmarks_lowbit_tune_SOURCES = benchmarks/lowbit-tune.c tools/cli.c tools/cli.h
benchmarks_lowbit_tune_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools
benchmarks_lowbit_tune_CFLAGS = $(AM_CFLAGS) $(PTHREAD_CFLAGS)
benchmarks_lowbit_tune_LDFLAGS = $(PTHREAD_CFLAGS)
benchmarks_lowbit_tune_LDADD = lib/liblowbit.la $(PTHREAD_LIBS) -lm

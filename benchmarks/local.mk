# benchmarks: lowbit-bench (installed), see BENCHMARKS.md.  It reuses the helpers of tools/.
bin_PROGRAMS += benchmarks/lowbit-bench

benchmarks_lowbit_bench_SOURCES = benchmarks/lowbit-bench.c tools/cli.c tools/cli.h
benchmarks_lowbit_bench_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/tools
benchmarks_lowbit_bench_CFLAGS = $(AM_CFLAGS) $(PTHREAD_CFLAGS)
benchmarks_lowbit_bench_LDFLAGS = $(PTHREAD_CFLAGS)
benchmarks_lowbit_bench_LDADD = lib/liblowbit.la $(PTHREAD_LIBS)
# An OpenBLAS sgemm baseline op may be added later under `if HAVE_OPENBLAS` (OPENBLAS_CFLAGS/OPENBLAS_LIBS).

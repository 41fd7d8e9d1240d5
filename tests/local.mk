# tests: Check suites, one program per backend built from the same sources (LB_TEST_BACKEND).  A program
# whose backend has no usable device prints why and exits 77 (SKIP).  Uninstalled GPU modules are found
# through LOWBIT_MODULE_PATH.  Nothing is written to the source tree (make distcheck).

LB_TEST_SOURCES = \
	tests/main.c tests/suites.h tests/lbt.c tests/lbt.h tests/ref.c tests/ref.h tests/ref_tables.c \
	tests/test_runtime.c tests/test_codes.c tests/test_quant.c tests/test_nested.c \
	tests/test_stochastic.c tests/test_badinput.c tests/test_stats.c tests/test_int8.c tests/test_gemm4.c tests/test_optim.c \
	tests/test_concurrency.c
# -ffp-contract=off: the reference's float32 steps must round exactly as written (no FMA contraction)
LB_TEST_CFLAGS = $(AM_CFLAGS) $(CHECK_CFLAGS) $(PTHREAD_CFLAGS) $(OPENMP_CFLAGS) -ffp-contract=off
LB_TEST_LDADD = lib/liblowbit.la $(CHECK_LIBS) $(PTHREAD_LIBS) $(OPENMP_CFLAGS) -lm

if HAVE_CHECK
LB_TEST_BINS = tests/test-cpu tests/test-opencl tests/test-cuda tests/test-hip
check_PROGRAMS += $(LB_TEST_BINS)
TESTS += $(LB_TEST_BINS)

tests_test_cpu_SOURCES = $(LB_TEST_SOURCES)
tests_test_cpu_CPPFLAGS = $(AM_CPPFLAGS) -DLB_TEST_BACKEND=\"cpu\"
tests_test_cpu_CFLAGS = $(LB_TEST_CFLAGS)
tests_test_cpu_LDADD = $(LB_TEST_LDADD)

tests_test_opencl_SOURCES = $(LB_TEST_SOURCES)
tests_test_opencl_CPPFLAGS = $(AM_CPPFLAGS) -DLB_TEST_BACKEND=\"opencl\"
tests_test_opencl_CFLAGS = $(LB_TEST_CFLAGS)
tests_test_opencl_LDADD = $(LB_TEST_LDADD)

tests_test_cuda_SOURCES = $(LB_TEST_SOURCES)
tests_test_cuda_CPPFLAGS = $(AM_CPPFLAGS) -DLB_TEST_BACKEND=\"cuda\"
tests_test_cuda_CFLAGS = $(LB_TEST_CFLAGS)
tests_test_cuda_LDADD = $(LB_TEST_LDADD)

tests_test_hip_SOURCES = $(LB_TEST_SOURCES)
tests_test_hip_CPPFLAGS = $(AM_CPPFLAGS) -DLB_TEST_BACKEND=\"hip\"
tests_test_hip_CFLAGS = $(LB_TEST_CFLAGS)
tests_test_hip_LDADD = $(LB_TEST_LDADD)

# test-tune: the tuning cache file, lookup order and launch parameters (CPU backend; OpenCL part when
# present).  lib/tune_tables.c is compiled in so the built-in tables can be checked directly.
check_PROGRAMS += tests/test-tune
TESTS += tests/test-tune
tests_test_tune_SOURCES = tests/test_tune.c lib/tune_tables.c
tests_test_tune_CFLAGS = $(AM_CFLAGS) $(CHECK_CFLAGS) $(PTHREAD_CFLAGS)
tests_test_tune_LDADD = lib/liblowbit.la $(CHECK_LIBS) $(PTHREAD_LIBS)
else
# configure warned that Check is missing: make check fails (hard error) rather than passing empty
TESTS += tests/no-check.sh
endif
EXTRA_DIST += tests/no-check.sh tests/README.md

# The build tree's module directories first, so uninstalled modules are found (and installed ones of
# another version are not).
AM_TESTS_ENVIRONMENT = \
	LOWBIT_MODULE_PATH='$(abs_top_builddir)/backends/cuda/.libs:$(abs_top_builddir)/backends/hip/.libs:$(abs_top_builddir)/opencl/.libs'; \
	export LOWBIT_MODULE_PATH;

# Module-loader tests (tests/modules/, fake modules that must be refused)
include tests/modules/local.mk.part

# checkpoints: tests/test-checkpoint (CPU; generates its checkpoints in a temporary directory) and the CLI test
if HAVE_CHECK
check_PROGRAMS += tests/test-checkpoint
TESTS += tests/test-checkpoint tests/test-cli-checkpoint.sh
tests_test_checkpoint_SOURCES = tests/test_checkpoint.c tests/lbt.c tests/lbt.h tests/ref.c tests/ref.h tests/ref_tables.c
tests_test_checkpoint_CPPFLAGS = $(AM_CPPFLAGS) -DLB_TEST_BACKEND=\"cpu\"
tests_test_checkpoint_CFLAGS = $(LB_TEST_CFLAGS) $(JANSSON_CFLAGS)
tests_test_checkpoint_LDADD = $(LB_TEST_LDADD) $(JANSSON_LIBS)
endif
EXTRA_DIST += tests/test-cli-checkpoint.sh
# end checkpoints

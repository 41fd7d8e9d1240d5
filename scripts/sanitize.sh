#!/bin/sh
# Runs the test suites under a dynamic checker, in a fresh build directory of its own.
#
#   scripts/sanitize.sh [asan|tsan|valgrind] [BUILD_DIR]
#
#   asan      AddressSanitizer + UndefinedBehaviorSanitizer (LeakSanitizer included): the CPU and OpenCL
#             test programs and the module-loader tests (CI runs this one).
#   tsan      ThreadSanitizer over the CPU test program, built without OpenMP: libgomp is not instrumented
#             and would report its own synchronisation as races; what is checked is the runtime's locking
#             (probe, contexts, buffers, streams, error state) and the tests' threaded cases.
#   valgrind  memcheck over the CPU test program of an ordinary build (slow: run by hand).
#
# The source tree must not be configured in place (run `make distclean` first): the build is out of tree.
# LOWBIT_TEST_SCALE defaults to 0.25 here, so the matrix and statistics cases shrink but all run.
set -eu
mode=${1:-asan}
src=$(cd "$(dirname "$0")/.." && pwd)
build=${2:-$src/_build-$mode}
jobs=$(nproc 2>/dev/null || echo 2)
: "${LOWBIT_TEST_SCALE:=0.25}"
export LOWBIT_TEST_SCALE

case $mode in
asan) flags="--enable-sanitizers=address,undefined --enable-opencl" ;;
tsan) flags="--enable-sanitizers=thread --disable-openmp --disable-opencl" ;;
valgrind) flags="--disable-opencl" ;;
*)
    echo "usage: $0 [asan|tsan|valgrind] [BUILD_DIR]" >&2
    exit 2
    ;;
esac

[ -x "$src/configure" ] || (cd "$src" && autoreconf -fi)
mkdir -p "$build"
cd "$build"
# shellcheck disable=SC2086
"$src/configure" --enable-werror --disable-cuda --disable-hip $flags >configure.log ||
    { tail -n 30 configure.log; exit 1; }
make -j"$jobs" >make.log 2>&1 || { tail -n 40 make.log; exit 1; }

# Every finding is fatal: -fno-sanitize-recover makes UBSan abort, ASan/TSan exit non-zero.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1"
export LSAN_OPTIONS="suppressions=$src/tests/sanitizers.supp:print_suppressions=0"

case $mode in
asan)
    make -j"$jobs" check TESTS="tests/test-cpu tests/test-opencl tests/test-modules" ||
        { cat test-suite.log; exit 1; }
    ;;
tsan)
    make -j"$jobs" check TESTS="tests/test-cpu" || { cat test-suite.log; exit 1; }
    ;;
valgrind)
    make -j"$jobs" check TESTS= >/dev/null
    # the libtool wrapper would be checked instead of the program: run the real binary
    LD_LIBRARY_PATH=$build/lib/.libs valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
        --suppressions="$src/tests/valgrind.supp" tests/.libs/test-cpu || exit 1
    ;;
esac
for t in tests/test-*.log; do
    [ -f "$t" ] && { echo "== $t"; tail -n 2 "$t"; }
done
echo "sanitize: $mode passed"

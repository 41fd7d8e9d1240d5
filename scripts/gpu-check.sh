#!/bin/bash
# One device-machine run (see ../shared/device/README.md): build the `make dist` tarball carried in .devdeps
# with the CUDA and OpenCL backends, run `make check` (CPU, CUDA, OpenCL on NVIDIA's driver and PoCL),
# compute-sanitizer memcheck/racecheck over the CUDA test program, and the benchmarks.  Everything is logged
# under $OUT; a short summary is printed last.  Usage (on the device):  bash scripts/gpu-check.sh [bench-args]
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT/logs"
L=$OUT/logs
. .devdeps/setup.sh
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv > "$L/nvidia-smi.txt" 2>&1
rm -rf /tmp/b && mkdir -p /tmp/b && tar xf .devdeps/lowbit-*.tar.* -C /tmp/b && cd /tmp/b/lowbit-* || exit 1
step() { local name=$1 limit=$2; shift 2; local t0=$SECONDS; timeout "$limit" "$@" > "$L/$name.log" 2>&1; local rc=$?
         echo "$name: rc=$rc ($((SECONDS - t0)) s)" | tee -a "$L/summary.txt"; return $rc; }
step configure 120 ./configure --enable-cuda --enable-opencl --disable-hip --with-cuda-arch=90 || { tail -40 "$L/configure.log"; exit 1; }
step build 400 make -j16 || { grep -B2 -A8 -E "error" "$L/build.log" | head -60; exit 1; }
step check ${CHECK_LIMIT:-500} make -j8 check
cp tests/*.log "$L/" 2>/dev/null
for t in tests/test-*.log; do echo "== $t: $(grep -hE '^[0-9]+%: Checks' "$t" | tail -1) $(grep -h 'SKIP\|seed' "$t" | head -2 | tr '\n' ' ')"; done | tee -a "$L/summary.txt"
grep -hE ':[FE]:' tests/test-*.log | head -40 | tee -a "$L/summary.txt"
export LOWBIT_MODULE_PATH=$PWD/backends/cuda/.libs:$PWD/opencl/.libs
LT="./libtool --mode=execute"
SAN_CASES=${SAN_CASES:-}
step memcheck ${SAN_LIMIT:-300} env CK_RUN_CASE="$SAN_CASES" $LT compute-sanitizer --tool memcheck --leak-check full --error-exitcode 9 tests/test-cuda
step racecheck ${SAN_LIMIT:-300} env CK_RUN_CASE="$SAN_CASES" $LT compute-sanitizer --tool racecheck --error-exitcode 9 tests/test-cuda
tail -3 "$L/memcheck.log" "$L/racecheck.log" | tee -a "$L/summary.txt"
step info 60 $LT tools/lowbit info
step bench-cuda ${BENCH_LIMIT:-400} $LT benchmarks/lowbit-bench --backend cuda --json "$OUT/bench-cuda.json" "$@"
step bench-opencl ${BENCH_LIMIT:-300} $LT benchmarks/lowbit-bench --backend opencl --json "$OUT/bench-opencl.json" "$@"
step demo 120 $LT tools/lowbit demo
tail -40 "$L/bench-cuda.log"; tail -25 "$L/bench-opencl.log"
tar czf "$OUT/logs.tar.gz" -C "$OUT" logs && rm -rf "$OUT/logs"
cat /dev/null

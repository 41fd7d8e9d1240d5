# LOWBIT_CUDA
# -----------
# Looks for the CUDA toolkit (nvcc, cudart, cuBLAS, cuBLASLt).  --enable-cuda=auto (default) builds the
# module when everything is found; --enable-cuda fails configure with the missing piece named.
# Sets: NVCC, CUDA_CPPFLAGS, CUDA_LDFLAGS, CUDA_LIBS, NVCC_ARCH_FLAGS; AM_CONDITIONAL BUILD_CUDA;
# lowbit_cuda_summary for the configure summary.
AC_DEFUN([LOWBIT_CUDA], [
AC_ARG_ENABLE([cuda],
  [AS_HELP_STRING([--enable-cuda], [build the CUDA backend module lowbit-cuda (default: auto)])],
  [], [enable_cuda=auto])
AC_ARG_WITH([cuda],
  [AS_HELP_STRING([--with-cuda=PATH], [CUDA toolkit prefix (default: $CUDA_HOME, then nvcc on PATH, then /usr/local/cuda)])],
  [lowbit_cuda_prefix=$withval], [lowbit_cuda_prefix=${CUDA_HOME:-}])
AC_ARG_WITH([cuda-arch],
  [AS_HELP_STRING([--with-cuda-arch=LIST], [compute capabilities to build, comma-separated (default: 75,80,86,89,90,100,120 with PTX of the highest); e.g. 90])],
  [lowbit_cuda_arch=$withval; lowbit_cuda_arch_explicit=yes],
  [lowbit_cuda_arch="75,80,86,89,90,100,120"; lowbit_cuda_arch_explicit=no])
AC_ARG_VAR([NVCC], [CUDA compiler])
AC_ARG_VAR([NVCCFLAGS], [extra flags for nvcc])

lowbit_cuda_summary=no
lowbit_cuda_missing=
AS_IF([test "x$enable_cuda" != xno], [
  AS_IF([test -n "$lowbit_cuda_prefix"],
    [AC_PATH_PROG([NVCC], [nvcc], [], [$lowbit_cuda_prefix/bin])],
    [AC_PATH_PROG([NVCC], [nvcc], [], [$PATH:/usr/local/cuda/bin])])
  AS_IF([test -z "$NVCC"], [lowbit_cuda_missing="nvcc not found (use --with-cuda=PATH)"], [
    AS_IF([test -z "$lowbit_cuda_prefix"], [lowbit_cuda_prefix=`AS_DIRNAME(["$NVCC"])`; lowbit_cuda_prefix=`AS_DIRNAME(["$lowbit_cuda_prefix"])`])
    CUDA_CPPFLAGS="-I$lowbit_cuda_prefix/include"
    lowbit_cuda_libdir=
    for d in "$lowbit_cuda_prefix/lib64" "$lowbit_cuda_prefix/targets/x86_64-linux/lib" "$lowbit_cuda_prefix/lib"; do
      AS_IF([test -z "$lowbit_cuda_libdir" && test -f "$d/libcudart.so"], [lowbit_cuda_libdir=$d])
    done
    AS_IF([test -z "$lowbit_cuda_libdir"], [lowbit_cuda_missing="libcudart.so not found under $lowbit_cuda_prefix"], [
      CUDA_LDFLAGS="-L$lowbit_cuda_libdir -Wl,-rpath,$lowbit_cuda_libdir"
      CUDA_LIBS="-lcublasLt -lcublas -lcudart"
      lowbit_save_CPPFLAGS=$CPPFLAGS; lowbit_save_LIBS=$LIBS; lowbit_save_LDFLAGS=$LDFLAGS
      CPPFLAGS="$CPPFLAGS $CUDA_CPPFLAGS"; LDFLAGS="$LDFLAGS $CUDA_LDFLAGS"
      AC_CHECK_HEADER([cuda_runtime.h], [], [lowbit_cuda_missing="cuda_runtime.h not found"])
      AC_CHECK_HEADER([cublasLt.h], [], [lowbit_cuda_missing="cublasLt.h not found"])
      AC_CHECK_LIB([cudart], [cudaGetDeviceCount], [], [lowbit_cuda_missing="cudart does not link"])
      AC_CHECK_LIB([cublasLt], [cublasLtMatmul], [], [lowbit_cuda_missing="cuBLASLt does not link"])
      CPPFLAGS=$lowbit_save_CPPFLAGS; LIBS=$lowbit_save_LIBS; LDFLAGS=$lowbit_save_LDFLAGS
    ])
  ])
  AS_IF([test -z "$lowbit_cuda_missing"], [
    # Turn "75,80,90" into -gencode flags, with PTX of the highest so newer GPUs can JIT.  Archs this nvcc
    # does not know are dropped from the default list (with a warning) but are an error when asked for.
    AC_MSG_CHECKING([which CUDA architectures $NVCC accepts])
    printf '__global__ void k(int *p) { *p = 1; }\n' > conftest.cu
    NVCC_ARCH_FLAGS=
    lowbit_cuda_ok=
    lowbit_cuda_last=
    for a in `echo "$lowbit_cuda_arch" | tr ',' ' '`; do
      AS_IF([$NVCC -c -o conftest.o conftest.cu -gencode arch=compute_$a,code=sm_$a >/dev/null 2>&1], [
        NVCC_ARCH_FLAGS="$NVCC_ARCH_FLAGS -gencode arch=compute_$a,code=sm_$a"
        lowbit_cuda_ok="$lowbit_cuda_ok $a"; lowbit_cuda_last=$a
      ], [
        AS_IF([test "x$lowbit_cuda_arch_explicit" = xyes],
          [lowbit_cuda_missing="$NVCC does not accept architecture $a"],
          [AC_MSG_WARN([$NVCC does not accept sm_$a; dropped from the default list])])
      ])
    done
    rm -f conftest.cu conftest.o
    AS_IF([test -n "$lowbit_cuda_last"],
      [NVCC_ARCH_FLAGS="$NVCC_ARCH_FLAGS -gencode arch=compute_$lowbit_cuda_last,code=compute_$lowbit_cuda_last"],
      [AS_IF([test -z "$lowbit_cuda_missing"], [lowbit_cuda_missing="$NVCC accepts none of the architectures $lowbit_cuda_arch"])])
    AC_MSG_RESULT([${lowbit_cuda_ok:-none}])
  ])
  AS_IF([test -n "$lowbit_cuda_missing"], [
    AS_IF([test "x$enable_cuda" = xyes], [AC_MSG_ERROR([--enable-cuda was given but $lowbit_cuda_missing])])
    lowbit_cuda_summary="no ($lowbit_cuda_missing)"
  ], [lowbit_cuda_summary="yes (nvcc $NVCC, sm:$lowbit_cuda_ok + PTX)"])
], [lowbit_cuda_summary="no (disabled)"])
AM_CONDITIONAL([BUILD_CUDA], [test "x$enable_cuda" != xno && test -z "$lowbit_cuda_missing"])
AC_SUBST([CUDA_CPPFLAGS])
AC_SUBST([CUDA_LDFLAGS])
AC_SUBST([CUDA_LIBS])
AC_SUBST([NVCC_ARCH_FLAGS])
])

# LOWBIT_HIP
# ----------
# Looks for hipcc and the HIP runtime (libamdhip64).  --enable-hip=auto (default) builds the module when
# found; --enable-hip fails configure with the missing piece named.  No hipBLAS is needed: the HIP backend
# has its own kernels for every product.
# Sets: HIPCC, HIP_CPPFLAGS, HIP_LDFLAGS, HIP_LIBS, HIP_ARCH_FLAGS; AM_CONDITIONAL BUILD_HIP.
AC_DEFUN([LOWBIT_HIP], [
AC_ARG_ENABLE([hip],
  [AS_HELP_STRING([--enable-hip], [build the HIP backend module lowbit-hip (default: auto)])],
  [], [enable_hip=auto])
AC_ARG_WITH([hip-arch],
  [AS_HELP_STRING([--with-hip-arch=LIST], [AMD GPU targets, comma-separated (default: every one of gfx900,gfx906,gfx908,gfx90a,gfx940,gfx942,gfx1030,gfx1100 that hipcc accepts)])],
  [lowbit_hip_arch=$withval; lowbit_hip_arch_explicit=yes],
  [lowbit_hip_arch="gfx900,gfx906,gfx908,gfx90a,gfx940,gfx942,gfx1030,gfx1100"; lowbit_hip_arch_explicit=no])
AC_ARG_VAR([HIPCC], [HIP compiler])
AC_ARG_VAR([HIPCCFLAGS], [extra flags for hipcc])

lowbit_hip_summary=no
lowbit_hip_missing=
AS_IF([test "x$enable_hip" != xno], [
  AC_PATH_PROG([HIPCC], [hipcc], [], [$PATH:/opt/rocm/bin])
  AS_IF([test -z "$HIPCC"], [lowbit_hip_missing="hipcc not found"], [
    lowbit_save_LIBS=$LIBS
    AC_CHECK_LIB([amdhip64], [hipGetDeviceCount], [HIP_LIBS=-lamdhip64],
      [lowbit_hip_missing="libamdhip64 not found"])
    LIBS=$lowbit_save_LIBS
  ])
  AS_IF([test -z "$lowbit_hip_missing"], [
    AC_MSG_CHECKING([which AMD GPU targets $HIPCC accepts])
    printf '#include <hip/hip_runtime.h>\n__global__ void k(int *p) { *p = 1; }\n' > conftest.hip
    HIP_ARCH_FLAGS=
    lowbit_hip_ok=
    for a in `echo "$lowbit_hip_arch" | tr ',' ' '`; do
      AS_IF([$HIPCC -c -fPIC -o conftest.o conftest.hip --offload-arch=$a >/dev/null 2>&1], [
        HIP_ARCH_FLAGS="$HIP_ARCH_FLAGS --offload-arch=$a"; lowbit_hip_ok="$lowbit_hip_ok $a"
      ], [
        AS_IF([test "x$lowbit_hip_arch_explicit" = xyes],
          [lowbit_hip_missing="$HIPCC does not accept target $a"],
          [AC_MSG_WARN([$HIPCC does not accept $a; dropped from the default list])])
      ])
    done
    rm -f conftest.hip conftest.o
    AC_MSG_RESULT([${lowbit_hip_ok:-none}])
    AS_IF([test -z "$lowbit_hip_ok" && test -z "$lowbit_hip_missing"],
      [lowbit_hip_missing="$HIPCC accepts none of $lowbit_hip_arch"])
  ])
  AS_IF([test -n "$lowbit_hip_missing"], [
    AS_IF([test "x$enable_hip" = xyes], [AC_MSG_ERROR([--enable-hip was given but $lowbit_hip_missing])])
    lowbit_hip_summary="no ($lowbit_hip_missing)"
  ], [lowbit_hip_summary="yes (hipcc $HIPCC,$lowbit_hip_ok)"])
], [lowbit_hip_summary="no (disabled)"])
AM_CONDITIONAL([BUILD_HIP], [test "x$enable_hip" != xno && test -z "$lowbit_hip_missing"])
AC_SUBST([HIP_CPPFLAGS])
AC_SUBST([HIP_LDFLAGS])
AC_SUBST([HIP_LIBS])
AC_SUBST([HIP_ARCH_FLAGS])
])

# LOWBIT_OPENCL
# -------------
# Looks for the OpenCL ICD loader and headers (pkg-config OpenCL, else -lOpenCL) and for CLBlast
# (pkg-config clblast), which the OpenCL backend uses for float GEMMs inside composite ops.
# --enable-opencl=auto (default) builds the module when both are found; --enable-opencl fails configure
# with the missing piece named.
# Sets: OPENCL_CFLAGS, OPENCL_LIBS, CLBLAST_CFLAGS, CLBLAST_LIBS; AM_CONDITIONAL BUILD_OPENCL.
AC_DEFUN([LOWBIT_OPENCL], [
AC_ARG_ENABLE([opencl],
  [AS_HELP_STRING([--enable-opencl], [build the OpenCL backend module lowbit-opencl (default: auto)])],
  [], [enable_opencl=auto])

lowbit_opencl_summary=no
lowbit_opencl_missing=
AS_IF([test "x$enable_opencl" != xno], [
  PKG_CHECK_MODULES([OPENCL], [OpenCL], [], [
    lowbit_save_LIBS=$LIBS
    AC_CHECK_LIB([OpenCL], [clGetPlatformIDs], [OPENCL_LIBS=-lOpenCL],
      [lowbit_opencl_missing="the OpenCL ICD loader was not found (Debian: ocl-icd-opencl-dev)"])
    LIBS=$lowbit_save_LIBS
  ])
  AS_IF([test -z "$lowbit_opencl_missing"], [
    lowbit_save_CPPFLAGS=$CPPFLAGS; CPPFLAGS="$CPPFLAGS $OPENCL_CFLAGS"
    AC_CHECK_HEADER([CL/cl.h], [], [lowbit_opencl_missing="CL/cl.h not found (Debian: opencl-headers)"])
    CPPFLAGS=$lowbit_save_CPPFLAGS
  ])
  AS_IF([test -z "$lowbit_opencl_missing"], [
    PKG_CHECK_MODULES([CLBLAST], [clblast], [],
      [lowbit_opencl_missing="CLBlast was not found by pkg-config (Debian: libclblast-dev)"])
  ])
  AS_IF([test -n "$lowbit_opencl_missing"], [
    AS_IF([test "x$enable_opencl" = xyes], [AC_MSG_ERROR([--enable-opencl was given but $lowbit_opencl_missing])])
    lowbit_opencl_summary="no ($lowbit_opencl_missing)"
  ], [lowbit_opencl_summary="yes (OpenCL ICD loader, CLBlast)"])
], [lowbit_opencl_summary="no (disabled)"])
AM_CONDITIONAL([BUILD_OPENCL], [test "x$enable_opencl" != xno && test -z "$lowbit_opencl_missing"])
])

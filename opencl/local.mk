# opencl: the OpenCL backend module lowbit-opencl.so (a libtool module in $(pkglibdir), loaded by the
# runtime with dlopen; its only exported symbol is lowbit_backend_module).
#
# The kernels (*.cl) are embedded at build time: build-aux/cl2c.sh turns them into byte arrays in
# opencl/kernels_cl.c, generated in the build tree (VPATH builds and distcheck's read-only srcdir work)
# and not distributed; the .cl files and the script are.

OPENCL_CL_FILES = opencl/quantize.cl opencl/common.cl opencl/optim.cl opencl/gemm4.cl opencl/int8.cl

if BUILD_OPENCL
pkglib_LTLIBRARIES += opencl/lowbit-opencl.la
BUILT_SOURCES += opencl/kernels_cl.c
endif

opencl_lowbit_opencl_la_SOURCES = opencl/ocl.h opencl/ocl_backend.c opencl/ocl_program.c opencl/ocl_quant.c \
	opencl/ocl_q8.c opencl/ocl_optim.c opencl/ocl_gemm4.c \
	opencl/ocl_int8.c opencl/ocl_event.c
nodist_opencl_lowbit_opencl_la_SOURCES = opencl/kernels_cl.c
opencl_lowbit_opencl_la_CPPFLAGS = $(AM_CPPFLAGS) $(OPENCL_CFLAGS) $(CLBLAST_CFLAGS) \
	-DCL_TARGET_OPENCL_VERSION=120
opencl_lowbit_opencl_la_CFLAGS = $(AM_CFLAGS) $(LOWBIT_VIS_CFLAGS) $(PTHREAD_CFLAGS)
opencl_lowbit_opencl_la_LIBADD = $(OPENCL_LIBS) $(CLBLAST_LIBS) $(PTHREAD_LIBS)
opencl_lowbit_opencl_la_LDFLAGS = -module -avoid-version -shared -no-undefined $(PTHREAD_CFLAGS)

opencl/kernels_cl.c: $(OPENCL_CL_FILES:%=$(srcdir)/%) $(srcdir)/build-aux/cl2c.sh
	$(AM_V_GEN)$(MKDIR_P) opencl && \
	$(SHELL) $(srcdir)/build-aux/cl2c.sh $@ $(OPENCL_CL_FILES:%=$(srcdir)/%)

EXTRA_DIST += $(OPENCL_CL_FILES) build-aux/cl2c.sh
CLEANFILES += opencl/kernels_cl.c

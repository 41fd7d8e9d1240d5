# liblowbit: the runtime, argument validation, code tables, tuning table and the CPU backend.
lib_LTLIBRARIES += lib/liblowbit.la
include_HEADERS += lib/lowbit.h
noinst_HEADERS += lib/backend.h lib/runtime.h lib/half.h lib/codes.h lib/cpu.h lib/validate.h lib/tune.h lib/optim_math.h lib/rng.h

lib_liblowbit_la_SOURCES = \
	lib/error.c lib/log.c lib/registry.c lib/context.c lib/buffer.c lib/stream.c \
	lib/event.c lib/validate.c lib/qtensor.c lib/api_quant.c lib/api_int8.c lib/api_gemm4.c lib/api_optim.c \
	lib/codes.c lib/tune.c lib/tune_tables.c lib/tune_file.c lib/cpu_backend.c lib/cpu_quant.c lib/cpu_int8.c lib/cpu_gemm4.c lib/cpu_optim.c
lib_liblowbit_la_CPPFLAGS = $(AM_CPPFLAGS) -DLOWBIT_MODULEDIR='"$(pkglibdir)"' -DLOWBIT_BUILDING
lib_liblowbit_la_CFLAGS = $(AM_CFLAGS) -fno-math-errno $(LOWBIT_VIS_CFLAGS) $(OPENMP_CFLAGS) $(PTHREAD_CFLAGS) \
	$(JANSSON_CFLAGS)
lib_liblowbit_la_LIBADD = $(PTHREAD_LIBS) $(JANSSON_LIBS)
lib_liblowbit_la_LDFLAGS = -version-info $(LOWBIT_LT_VERSION) -no-undefined $(OPENMP_CFLAGS) $(PTHREAD_CFLAGS)
if BUILD_CUDA
lib_liblowbit_la_CPPFLAGS += -DLOWBIT_BUILT_CUDA=1
endif
if BUILD_HIP
lib_liblowbit_la_CPPFLAGS += -DLOWBIT_BUILT_HIP=1
endif
if BUILD_OPENCL
lib_liblowbit_la_CPPFLAGS += -DLOWBIT_BUILT_OPENCL=1
endif

# checkpoints: safetensors reader/writer and the bitsandbytes checkpoint layouts (lowbit_checkpoint_*)
lib_liblowbit_la_SOURCES += lib/safetensors.c lib/checkpoint.c lib/api_checkpoint.c
noinst_HEADERS += lib/safetensors.h lib/checkpoint.h

# backends: the CUDA and HIP backend modules, lowbit-cuda.so and lowbit-hip.so, installed in $(pkglibdir).
#
# Both are built from the same sources in backends/gpu (see backends/README.md): nvcc compiles them into
# backends/cuda/*.lo, hipcc into backends/hip/*.lo.  libtool has no tag for these compilers, so
# build-aux/nvcc-lt.sh compiles one source into a PIC object and writes the libtool object (.lo) for it;
# the modules are then ordinary libtool modules linked from those objects with the C++ linker (the objects
# need libstdc++) and the GPU runtime.  Only lowbit_backend_module is exported.

lowbit_gpu_srcs = backends/gpu/quant.cu backends/gpu/optim.cu backends/gpu/gemm4.cu backends/gpu/int8.cu \
	backends/gpu/module.cu
lowbit_gpu_hdrs = backends/gpu/compat.h backends/gpu/gpu.h
lowbit_gpu_map = backends/gpu/module.map
# lib/rng.h (the stochastic-rounding stream) and lib/optim_math.h (the optimizers' equations), shared with
# the CPU backend, are listed too because the kernels include them; automake drops duplicate distribution
# entries.
EXTRA_DIST += $(lowbit_gpu_srcs) $(lowbit_gpu_hdrs) $(lowbit_gpu_map) backends/README.md lib/rng.h \
	lib/optim_math.h

# Every object depends on every header: few files, and no compiler-generated dependency tracking.
lowbit_gpu_deps = \
	$(top_srcdir)/build-aux/nvcc-lt.sh \
	$(top_srcdir)/backends/gpu/compat.h $(top_srcdir)/backends/gpu/gpu.h \
	$(top_srcdir)/lib/backend.h $(top_srcdir)/lib/lowbit.h $(top_srcdir)/lib/rng.h \
	$(top_srcdir)/lib/optim_math.h

lowbit_gpu_cppflags = -I$(top_srcdir)/lib -I$(top_srcdir)/backends/gpu
lowbit_gpu_lt = $(SHELL) $(top_srcdir)/build-aux/nvcc-lt.sh

# Only lowbit_backend_module is exported: hidden visibility for our code, and a version script for what
# the compilers emit with default visibility anyway (HIP's kernel handles).
lowbit_gpu_ldflags = -module -avoid-version -shared -no-undefined \
	-export-symbols-regex '^lowbit_backend_module$$' -Wl,--version-script=$(top_srcdir)/$(lowbit_gpu_map)

# Numerics must match the CPU reference bit for bit: no fast math, no FMA contraction (-fmad=false,
# -ffp-contract=off), IEEE division and denormals (the defaults once fast math is off).
lowbit_nvcc_flags = -c -std=c++17 -O3 $(NVCC_ARCH_FLAGS) -fmad=false -Wno-deprecated-gpu-targets \
	-Xcompiler -fPIC -Xcompiler -fvisibility=hidden -Xcompiler -ffp-contract=off \
	$(CUDA_CPPFLAGS) $(lowbit_gpu_cppflags) $(NVCCFLAGS)
lowbit_hipcc_flags = -c -x hip -std=c++17 -O3 $(HIP_ARCH_FLAGS) -ffp-contract=off -fPIC -fvisibility=hidden \
	$(HIP_CPPFLAGS) $(lowbit_gpu_cppflags) $(HIPCCFLAGS)

lowbit_v_nvcc = $(lowbit_v_nvcc_@AM_V@)
lowbit_v_nvcc_ = $(lowbit_v_nvcc_@AM_DEFAULT_V@)
lowbit_v_nvcc_0 = @echo "  NVCC     $@";
lowbit_v_nvcc_1 =
lowbit_v_hipcc = $(lowbit_v_hipcc_@AM_V@)
lowbit_v_hipcc_ = $(lowbit_v_hipcc_@AM_DEFAULT_V@)
lowbit_v_hipcc_0 = @echo "  HIPCC    $@";
lowbit_v_hipcc_1 =

# ---- CUDA -------------------------------------------------------------------------------------------------

if BUILD_CUDA
pkglib_LTLIBRARIES += backends/cuda/lowbit-cuda.la
endif
lowbit_cuda_objs = backends/cuda/quant.lo backends/cuda/optim.lo backends/cuda/gemm4.lo backends/cuda/int8.lo \
	backends/cuda/module.lo
backends_cuda_lowbit_cuda_la_SOURCES =
# Never compiled: it only makes automake link with the C++ compiler (libstdc++ for the nvcc objects).
nodist_EXTRA_backends_cuda_lowbit_cuda_la_SOURCES = backends/cuda/link-cxx.cxx
backends_cuda_lowbit_cuda_la_LIBADD = $(lowbit_cuda_objs) $(CUDA_LIBS)
backends_cuda_lowbit_cuda_la_DEPENDENCIES = $(lowbit_cuda_objs) $(top_srcdir)/$(lowbit_gpu_map)
backends_cuda_lowbit_cuda_la_LDFLAGS = $(lowbit_gpu_ldflags) $(CUDA_LDFLAGS)

backends/cuda/quant.lo: $(top_srcdir)/backends/gpu/quant.cu $(lowbit_gpu_deps)
	$(lowbit_v_nvcc)$(lowbit_gpu_lt) $@ $(NVCC) $(lowbit_nvcc_flags) $(top_srcdir)/backends/gpu/quant.cu
backends/cuda/optim.lo: $(top_srcdir)/backends/gpu/optim.cu $(lowbit_gpu_deps)
	$(lowbit_v_nvcc)$(lowbit_gpu_lt) $@ $(NVCC) $(lowbit_nvcc_flags) $(top_srcdir)/backends/gpu/optim.cu
backends/cuda/gemm4.lo: $(top_srcdir)/backends/gpu/gemm4.cu $(lowbit_gpu_deps)
	$(lowbit_v_nvcc)$(lowbit_gpu_lt) $@ $(NVCC) $(lowbit_nvcc_flags) $(top_srcdir)/backends/gpu/gemm4.cu
backends/cuda/int8.lo: $(top_srcdir)/backends/gpu/int8.cu $(lowbit_gpu_deps)
	$(lowbit_v_nvcc)$(lowbit_gpu_lt) $@ $(NVCC) $(lowbit_nvcc_flags) $(top_srcdir)/backends/gpu/int8.cu
backends/cuda/module.lo: $(top_srcdir)/backends/gpu/module.cu $(lowbit_gpu_deps)
	$(lowbit_v_nvcc)$(lowbit_gpu_lt) $@ $(NVCC) $(lowbit_nvcc_flags) $(top_srcdir)/backends/gpu/module.cu

# ---- HIP --------------------------------------------------------------------------------------------------

if BUILD_HIP
pkglib_LTLIBRARIES += backends/hip/lowbit-hip.la
endif
lowbit_hip_objs = backends/hip/quant.lo backends/hip/optim.lo backends/hip/gemm4.lo backends/hip/int8.lo \
	backends/hip/module.lo
backends_hip_lowbit_hip_la_SOURCES =
nodist_EXTRA_backends_hip_lowbit_hip_la_SOURCES = backends/hip/link-cxx.cxx
backends_hip_lowbit_hip_la_LIBADD = $(lowbit_hip_objs) $(HIP_LIBS)
backends_hip_lowbit_hip_la_DEPENDENCIES = $(lowbit_hip_objs) $(top_srcdir)/$(lowbit_gpu_map)
backends_hip_lowbit_hip_la_LDFLAGS = $(lowbit_gpu_ldflags) $(HIP_LDFLAGS)

backends/hip/quant.lo: $(top_srcdir)/backends/gpu/quant.cu $(lowbit_gpu_deps)
	$(lowbit_v_hipcc)$(lowbit_gpu_lt) $@ $(HIPCC) $(lowbit_hipcc_flags) $(top_srcdir)/backends/gpu/quant.cu
backends/hip/optim.lo: $(top_srcdir)/backends/gpu/optim.cu $(lowbit_gpu_deps)
	$(lowbit_v_hipcc)$(lowbit_gpu_lt) $@ $(HIPCC) $(lowbit_hipcc_flags) $(top_srcdir)/backends/gpu/optim.cu
backends/hip/gemm4.lo: $(top_srcdir)/backends/gpu/gemm4.cu $(lowbit_gpu_deps)
	$(lowbit_v_hipcc)$(lowbit_gpu_lt) $@ $(HIPCC) $(lowbit_hipcc_flags) $(top_srcdir)/backends/gpu/gemm4.cu
backends/hip/int8.lo: $(top_srcdir)/backends/gpu/int8.cu $(lowbit_gpu_deps)
	$(lowbit_v_hipcc)$(lowbit_gpu_lt) $@ $(HIPCC) $(lowbit_hipcc_flags) $(top_srcdir)/backends/gpu/int8.cu
backends/hip/module.lo: $(top_srcdir)/backends/gpu/module.cu $(lowbit_gpu_deps)
	$(lowbit_v_hipcc)$(lowbit_gpu_lt) $@ $(HIPCC) $(lowbit_hipcc_flags) $(top_srcdir)/backends/gpu/module.cu

# The objects are not automake's, so cleaning them is ours (libtool's clean removes the .libs folders).
CLEANFILES += $(lowbit_cuda_objs) $(lowbit_hip_objs) \
	backends/cuda/.libs/quant.o backends/cuda/.libs/optim.o backends/cuda/.libs/gemm4.o \
	backends/cuda/.libs/int8.o backends/cuda/.libs/module.o \
	backends/hip/.libs/quant.o backends/hip/.libs/optim.o backends/hip/.libs/gemm4.o \
	backends/hip/.libs/int8.o backends/hip/.libs/module.o

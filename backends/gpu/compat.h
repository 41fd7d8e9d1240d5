/*
 * compat.h -- lets one source compile as CUDA (nvcc) and as HIP (hipcc / clang -x hip).
 *
 * Host side: the runtime API under one prefix (lbgpu*), the platform's name for messages and the few calls
 * whose signatures differ (managed-memory prefetch).  Device side: the warp size as a compile-time constant
 * (LBGPU_WARP: 32 on NVIDIA, the wavefront size of the target on AMD, so kernels never spell a warp-size
 * literal), lane masks and shuffles, and IEEE float32 arithmetic that can never be contracted or
 * approximated (lb_mul, lb_add, lb_sub, lb_rcp): results must match the CPU reference bit for bit.
 *
 * The HIP build is selected by __HIPCC__ (defined by hipcc and clang -x hip).  Everything else is CUDA.
 */
#ifndef LOWBIT_GPU_COMPAT_H
#define LOWBIT_GPU_COMPAT_H

#include <stdint.h>
#include <stdio.h>

#if defined(__HIPCC__)
/* ======================================================================================== HIP ===== */
#include <hip/hip_runtime.h>
#include <hip/hip_fp16.h>

#define LBGPU_HIP 1
#define LBGPU_NAME "hip"
#define LBGPU_NAME_UPPER "HIP"

typedef hipError_t lbgpuError_t;
typedef hipStream_t lbgpuStream_t;
typedef hipDeviceProp_t lbgpuDeviceProp;
#define lbgpuSuccess hipSuccess
#define lbgpuErrorMemoryAllocation hipErrorOutOfMemory
#define lbgpuGetErrorString hipGetErrorString
#define lbgpuGetLastError hipGetLastError
#define lbgpuGetDeviceCount hipGetDeviceCount
#define lbgpuSetDevice hipSetDevice
#define lbgpuGetDeviceProperties hipGetDeviceProperties
#define lbgpuDeviceGetAttribute hipDeviceGetAttribute
#define lbgpuDevAttrConcurrentManagedAccess hipDeviceAttributeConcurrentManagedAccess
#define lbgpuDriverGetVersion hipDriverGetVersion
#define lbgpuRuntimeGetVersion hipRuntimeGetVersion
#define lbgpuMalloc hipMalloc
#define lbgpuMallocManaged(p, n) hipMallocManaged((p), (n), hipMemAttachGlobal)
#define lbgpuFree hipFree
#define lbgpuMemGetInfo hipMemGetInfo
#define lbgpuMemcpyAsync hipMemcpyAsync
#define lbgpuMemcpyHostToDevice hipMemcpyHostToDevice
#define lbgpuMemcpyDeviceToHost hipMemcpyDeviceToHost
#define lbgpuMemcpyDeviceToDevice hipMemcpyDeviceToDevice
typedef hipEvent_t lbgpuEvent_t;
#define lbgpuEventCreate hipEventCreate
#define lbgpuEventRecord hipEventRecord
#define lbgpuEventSynchronize hipEventSynchronize
#define lbgpuEventElapsedTime hipEventElapsedTime
#define lbgpuEventDestroy hipEventDestroy
#define lbgpuMemsetAsync hipMemsetAsync
#define lbgpuStreamCreateWithFlags hipStreamCreateWithFlags
#define lbgpuStreamNonBlocking hipStreamNonBlocking
#define lbgpuStreamSynchronize hipStreamSynchronize
#define lbgpuStreamDestroy hipStreamDestroy
#define lbgpuOccupancyMaxActiveBlocksPerMultiprocessor(nb, k, t, s) \
    hipOccupancyMaxActiveBlocksPerMultiprocessor((nb), (const void *)(k), (t), (s))

/* HIP 5.x: hipMemPrefetchAsync(ptr, bytes, device, stream), hipCpuDeviceId for the host. */
static inline lbgpuError_t lbgpu_prefetch(const void *p, size_t bytes, int device, int to_device,
                                          lbgpuStream_t s)
{
    return hipMemPrefetchAsync(p, bytes, to_device ? device : hipCpuDeviceId, s);
}

/* Architecture key: gcnArchName up to the first ':' ("gfx90a:sramecc+:xnack-" -> "gfx90a"). */
static inline void lbgpu_arch_name(const lbgpuDeviceProp *p, char *out, size_t len)
{
    size_t i = 0;
    for (; i + 1 < len && p->gcnArchName[i] != '\0' && p->gcnArchName[i] != ':'; i++)
        out[i] = p->gcnArchName[i];
    if (len > 0)
        out[i] = '\0';
    if (i == 0 && len > 8)
        snprintf(out, len, "gfx%d", p->gcnArch);
}

/* bf16 arithmetic in hardware: CDNA2 (gfx90a), CDNA3 (gfx94x/95x), RDNA3+ (gfx11xx, gfx12xx). */
static inline int lbgpu_native_bf16(const lbgpuDeviceProp *p)
{
    const char *a = p->gcnArchName;
    return (a[0] == 'g' && a[1] == 'f' && a[2] == 'x') &&
           ((a[3] == '9' && (a[4] == '0' && a[5] == 'a')) || (a[3] == '9' && (a[4] == '4' || a[4] == '5')) ||
            (a[3] == '1' && (a[4] == '1' || a[4] == '2')));
}

/* Device-side warp (wavefront) size: the target's when compiling for the device; the host pass only needs
 * some constant (host code asks the device's warpSize at run time). */
#if defined(__AMDGCN_WAVEFRONT_SIZE)
#define LBGPU_WARP __AMDGCN_WAVEFRONT_SIZE
#else
#define LBGPU_WARP 64
#endif
typedef uint64_t lbgpu_lanemask_t;

/* All lanes of the wavefront must be active (callers guarantee it: no shuffles under divergence). */
#define lbgpu_shfl_xor(v, lanemask) __shfl_xor((v), (lanemask))

/* IEEE float32 arithmetic.  HIP's __fmul_rn & co. are plain operators that clang may contract and
 * __frcp_rn is the approximate v_rcp_f32, so: the HIP objects are compiled with -ffp-contract=off (which
 * makes the operators below single roundings) and division is clang's correctly rounded default. */
__device__ static inline float lb_mul(float a, float b)
{
    return a * b;
}
__device__ static inline float lb_add(float a, float b)
{
    return a + b;
}
__device__ static inline float lb_sub(float a, float b)
{
    return a - b;
}
__device__ static inline float lb_rcp(float a)
{
    return 1.0f / a;
}

/* float -> binary16, round to nearest even (v_cvt_f16_f32 under the default round mode, denormals kept). */
__device__ static inline uint16_t lbgpu_f32_to_f16_hw(float f)
{
    return __half_as_ushort(__float2half_rn(f));
}

#else
/* ======================================================================================= CUDA ===== */
#include <cuda_runtime.h>
#include <cuda_fp16.h>

#define LBGPU_CUDA 1
#define LBGPU_NAME "cuda"
#define LBGPU_NAME_UPPER "CUDA"

typedef cudaError_t lbgpuError_t;
typedef cudaStream_t lbgpuStream_t;
typedef cudaDeviceProp lbgpuDeviceProp;
#define lbgpuSuccess cudaSuccess
#define lbgpuErrorMemoryAllocation cudaErrorMemoryAllocation
#define lbgpuGetErrorString cudaGetErrorString
#define lbgpuGetLastError cudaGetLastError
#define lbgpuGetDeviceCount cudaGetDeviceCount
#define lbgpuSetDevice cudaSetDevice
#define lbgpuGetDeviceProperties cudaGetDeviceProperties
#define lbgpuDeviceGetAttribute cudaDeviceGetAttribute
#define lbgpuDevAttrConcurrentManagedAccess cudaDevAttrConcurrentManagedAccess
#define lbgpuDriverGetVersion cudaDriverGetVersion
#define lbgpuRuntimeGetVersion cudaRuntimeGetVersion
#define lbgpuMalloc cudaMalloc
#define lbgpuMallocManaged(p, n) cudaMallocManaged((p), (n), cudaMemAttachGlobal)
#define lbgpuFree cudaFree
#define lbgpuMemGetInfo cudaMemGetInfo
#define lbgpuMemcpyAsync cudaMemcpyAsync
#define lbgpuMemcpyHostToDevice cudaMemcpyHostToDevice
#define lbgpuMemcpyDeviceToHost cudaMemcpyDeviceToHost
#define lbgpuMemcpyDeviceToDevice cudaMemcpyDeviceToDevice
typedef cudaEvent_t lbgpuEvent_t;
#define lbgpuEventCreate cudaEventCreate
#define lbgpuEventRecord cudaEventRecord
#define lbgpuEventSynchronize cudaEventSynchronize
#define lbgpuEventElapsedTime cudaEventElapsedTime
#define lbgpuEventDestroy cudaEventDestroy
#define lbgpuMemsetAsync cudaMemsetAsync
#define lbgpuStreamCreateWithFlags cudaStreamCreateWithFlags
#define lbgpuStreamNonBlocking cudaStreamNonBlocking
#define lbgpuStreamSynchronize cudaStreamSynchronize
#define lbgpuStreamDestroy cudaStreamDestroy
#define lbgpuOccupancyMaxActiveBlocksPerMultiprocessor(nb, k, t, s) \
    cudaOccupancyMaxActiveBlocksPerMultiprocessor((nb), (k), (t), (s))

/* CUDA 13 (and 12.2+ as cudaMemPrefetchAsync_v2) takes a cudaMemLocation and flags; older: a device id. */
static inline lbgpuError_t lbgpu_prefetch(const void *p, size_t bytes, int device, int to_device,
                                          lbgpuStream_t s)
{
#if CUDART_VERSION >= 13000
    cudaMemLocation loc;
    loc.type = to_device ? cudaMemLocationTypeDevice : cudaMemLocationTypeHost;
    loc.id = to_device ? device : 0;
    return cudaMemPrefetchAsync(p, bytes, loc, 0, s);
#else
    return cudaMemPrefetchAsync(p, bytes, to_device ? device : cudaCpuDeviceId, s);
#endif
}

static inline void lbgpu_arch_name(const lbgpuDeviceProp *p, char *out, size_t len)
{
    snprintf(out, len, "sm_%d%d", p->major, p->minor);
}

static inline int lbgpu_native_bf16(const lbgpuDeviceProp *p)
{
    return p->major >= 8;
}

#define LBGPU_WARP 32
typedef unsigned lbgpu_lanemask_t;

#define lbgpu_shfl_xor(v, lanemask) __shfl_xor_sync(0xffffffffu, (v), (lanemask))

/* IEEE float32 arithmetic: the _rn intrinsics are never contracted into FMA nor approximated (the objects
 * are also compiled with -fmad=false and without --use_fast_math). */
__device__ static inline float lb_mul(float a, float b)
{
    return __fmul_rn(a, b);
}
__device__ static inline float lb_add(float a, float b)
{
    return __fadd_rn(a, b);
}
__device__ static inline float lb_sub(float a, float b)
{
    return __fsub_rn(a, b);
}
__device__ static inline float lb_rcp(float a)
{
    return __frcp_rn(a); /* correctly rounded 1/a, denormals kept: the same bits as 1.0f / a */
}

__device__ static inline uint16_t lbgpu_f32_to_f16_hw(float f)
{
    return __half_as_ushort(__float2half_rn(f));
}

#endif /* platform */

/* ======================================================================================= common ===== */

/* binary16 -> float32 (exact for every non-NaN; a NaN stays a NaN, payload unspecified). */
__device__ static inline float lbgpu_f16_to_f32(uint16_t h)
{
    return __half2float(__ushort_as_half(h));
}

/* float32 -> binary16 with the bits of lib/half.h's lb_f32_to_f16: round to nearest even in hardware, and
 * NaN made the canonical quiet NaN of its sign (0x7e00), which is all the hardware may do differently. */
__device__ static inline uint16_t lbgpu_f32_to_f16(float f)
{
    uint32_t u = __float_as_uint(f);
    uint16_t h = lbgpu_f32_to_f16_hw(f);
    return (u & 0x7fffffffu) > 0x7f800000u ? (uint16_t)(((u >> 16) & 0x8000u) | 0x7e00u) : h;
}

/* bfloat16 <-> float32, integer-only (lib/half.h's rules: ties to even, NaN -> sign | 0x7fc0). */
__device__ static inline float lbgpu_bf16_to_f32(uint16_t h)
{
    return __uint_as_float((uint32_t)h << 16);
}

__device__ static inline uint16_t lbgpu_f32_to_bf16(float f)
{
    uint32_t u = __float_as_uint(f);
    uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = ((u >> 16) & 0x8000u) | 0x7fc0u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : r);
}

/* The NaN that an x86-64 CPU (SSE/AVX) returns for a float32 operation on a and b whose IEEE result r is
 * NaN: a NaN operand propagates, made quiet; an invalid operation (0 * inf, inf - inf) gives the "default
 * NaN" 0xffc00000, which is negative.  GPUs return one positive canonical NaN instead.  The CPU reference
 * (lib/cpu_quant.c) runs on x86-64 and the sign of a NaN survives the conversion to f16/bf16, so without
 * this the dequantized outputs of blocks holding inf would differ in their NaNs' bits. */
__device__ static inline float lbgpu_x86_nan(float r, float a, float b)
{
    if (r == r)
        return r;
    const uint32_t q = a != a   ? (__float_as_uint(a) | 0x00400000u)
                       : b != b ? (__float_as_uint(b) | 0x00400000u)
                                : 0xffc00000u;
    return __uint_as_float(q);
}

/* Lane index within the warp. */
__device__ static inline int lbgpu_lane(void)
{
    return (int)(threadIdx.x & (LBGPU_WARP - 1));
}

#endif /* LOWBIT_GPU_COMPAT_H */

/*
 * lowbit.h -- the whole public API of liblowbit.
 *
 * lowbit provides blockwise 8-bit and 4-bit (NF4/FP4) quantization with double quantization, LLM.int8()
 * matrix multiplication with outlier decomposition, 4-bit weight-only matrix products and 8-bit optimizers,
 * with the data formats of bitsandbytes, on CUDA, HIP, OpenCL or the CPU.
 *
 * Conventions (they hold for every function below unless its comment says otherwise):
 *
 *  - Every function returns a lowbit_status_t.  LOWBIT_SUCCESS is 0.  On any other status a message naming
 *    the offending argument and the reason is recorded for the calling thread (lowbit_last_error()), and
 *    no output -- neither a buffer nor a pointer argument -- has been modified.
 *  - Arguments are validated before anything is launched.  Typical statuses:
 *      LOWBIT_ERR_INVALID_ARGUMENT  NULL pointer, zero or negative size, unknown enum value, unsorted code
 *                                   table, buffer of another context;
 *      LOWBIT_ERR_UNSUPPORTED       a valid request this library or the chosen backend does not implement
 *                                   (block size, dtype or format not allowed for the op, op not yet
 *                                   implemented on the backend: the message names backend and op);
 *      LOWBIT_ERR_BUFFER_TOO_SMALL  a buffer holds fewer bytes than the sizes imply;
 *      LOWBIT_ERR_OVERLAP           an output overlaps an input or another output;
 *      LOWBIT_ERR_TOO_LARGE         a size beyond what the backend can index (lowbit_device_info_t.max_elements).
 *  - Element counts and dimensions are int64_t; byte sizes and offsets are size_t.
 *  - Matrices are dense and row-major.  "[M, K]" means M rows of K elements, row stride K.
 *  - Device memory is always passed as lowbit_buffer_t handles (or views of them); small host tables
 *    (code tables) are passed as host pointers and only read during the call.
 *  - Every op takes a context and a stream (NULL = the context's default stream) and is asynchronous with
 *    respect to the host: it may return before the device has finished.  lowbit_stream_synchronize()
 *    waits.  The CPU backend executes eagerly, inside the call.  Argument errors are always reported by the
 *    call itself; errors raised by the device while running are reported by lowbit_stream_synchronize().
 *  - Thread safety: a context may be used from several threads at once provided each thread uses its own
 *    stream.  A stream must not be used by two threads at the same time.
 *  - Numerics follow IEEE-754 float32 (no fast-math) with the algorithms and tie rules of bitsandbytes,
 *    so quantized data and optimizer states are interchangeable with bitsandbytes checkpoints.
 */
#ifndef LOWBIT_H
#define LOWBIT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define LOWBIT_API
#elif defined(__GNUC__)
#define LOWBIT_API __attribute__((visibility("default")))
#else
#define LOWBIT_API
#endif

/* ------------------------------------------------------------------------------------------------------ */
/* Version                                                                                                 */
/* ------------------------------------------------------------------------------------------------------ */

#define LOWBIT_VERSION_MAJOR 0
#define LOWBIT_VERSION_MINOR 1
#define LOWBIT_VERSION_PATCH 0

/* The version of the library actually loaded (may differ from the header's if the .so was upgraded). */
LOWBIT_API const char *lowbit_version_string(void);

/* ------------------------------------------------------------------------------------------------------ */
/* Status and errors                                                                                       */
/* ------------------------------------------------------------------------------------------------------ */

typedef enum lowbit_status {
    LOWBIT_SUCCESS = 0,
    LOWBIT_ERR_INVALID_ARGUMENT = 1, /* NULL, out-of-range value, unknown enum, inconsistent arguments */
    LOWBIT_ERR_UNSUPPORTED = 2,      /* valid, but not supported by the library or the chosen backend */
    LOWBIT_ERR_BUFFER_TOO_SMALL = 3, /* a buffer is smaller than the sizes require */
    LOWBIT_ERR_OVERLAP = 4,          /* an output aliases an input or another output */
    LOWBIT_ERR_TOO_LARGE = 5,        /* size exceeds what the backend can index */
    LOWBIT_ERR_OUT_OF_MEMORY = 6,    /* host or device allocation failed */
    LOWBIT_ERR_NO_DEVICE = 7,        /* the requested backend or device is not available */
    LOWBIT_ERR_DEVICE = 8,           /* the device runtime reported an error (message has its text) */
    LOWBIT_ERR_MODULE = 9,           /* a backend module could not be loaded or has the wrong API version */
    LOWBIT_ERR_IO = 10,              /* a file could not be read or written */
    LOWBIT_ERR_FORMAT = 11,          /* a file or table is malformed */
    LOWBIT_ERR_INTERNAL = 12         /* a bug in lowbit: please report it with the message */
} lowbit_status_t;

/* A constant, human-readable name for a status ("invalid argument", ...); never NULL. */
LOWBIT_API const char *lowbit_status_string(lowbit_status_t status);

/* The message of the last lowbit call made on this thread if it failed, "" if it succeeded.  The pointer
 * is valid until the next lowbit call on the same thread. */
LOWBIT_API const char *lowbit_last_error(void);

/* ------------------------------------------------------------------------------------------------------ */
/* Data types and formats                                                                                  */
/* ------------------------------------------------------------------------------------------------------ */

typedef enum lowbit_dtype {
    LOWBIT_F32 = 0,  /* IEEE binary32 */
    LOWBIT_F16 = 1,  /* IEEE binary16 */
    LOWBIT_BF16 = 2, /* bfloat16 (upper half of a binary32) */
    LOWBIT_U8 = 3,
    LOWBIT_I8 = 4,
    LOWBIT_I32 = 5
} lowbit_dtype_t;

/* Size in bytes of one element of dtype, or 0 for an unknown value. */
LOWBIT_API size_t lowbit_dtype_size(lowbit_dtype_t dtype);
/* "f32", "f16", "bf16", "u8", "i8", "i32", or "?" */
LOWBIT_API const char *lowbit_dtype_name(lowbit_dtype_t dtype);

typedef enum lowbit_qformat {
    LOWBIT_QFORMAT_8BIT = 0, /* one byte per element, index into a sorted 256-entry float code table */
    LOWBIT_QFORMAT_NF4 = 1,  /* 4-bit NormalFloat, two elements per byte, first in the high nibble */
    LOWBIT_QFORMAT_FP4 = 2   /* bitsandbytes' 4-bit float (sign, 2 exponent bits, 1 mantissa bit) */
} lowbit_qformat_t;

/* "8bit", "nf4", "fp4", or "?" */
LOWBIT_API const char *lowbit_qformat_name(lowbit_qformat_t format);

/* Built-in code tables. */
typedef enum lowbit_code {
    LOWBIT_CODE_DYNAMIC_SIGNED = 0,   /* 256 entries, bitsandbytes create_dynamic_map(signed=True) */
    LOWBIT_CODE_DYNAMIC_UNSIGNED = 1, /* 256 entries, create_dynamic_map(signed=False) */
    LOWBIT_CODE_LINEAR = 2,           /* 256 entries, create_linear_map(signed=True): linspace(-1,1,255) + 0 */
    LOWBIT_CODE_NF4 = 3,              /* 16 entries, index = nibble */
    LOWBIT_CODE_FP4 = 4               /* 16 entries, index = nibble (index 8 is -0.0) */
} lowbit_code_t;

/* Copies the table of `code` into out[0 .. *count_p-1].  `capacity` is the number of floats out can hold
 * (256 is always enough).  The dynamic maps are generated with bitsandbytes' recipe at first use and are
 * bit-identical to the tables bitsandbytes persists.
 * Statuses: INVALID_ARGUMENT (unknown code, NULL out or count_p), BUFFER_TOO_SMALL (capacity too small). */
LOWBIT_API lowbit_status_t lowbit_code_table(lowbit_code_t code, float *out, size_t capacity, size_t *count_p);

/* ------------------------------------------------------------------------------------------------------ */
/* Runtime: backends, devices, contexts                                                                    */
/* ------------------------------------------------------------------------------------------------------ */
/*
 * The runtime probes the machine once, at the first lowbit_init() or the first call that needs it (never in
 * a library constructor).  Backends are tried in the order CUDA, HIP, OpenCL (GPU devices), CPU; the GPU
 * backends are modules (lowbit-cuda.so, lowbit-hip.so, lowbit-opencl.so) loaded from the library's module
 * directory ($(pkglibdir), found relative to liblowbit.so) and from the colon-separated LOWBIT_MODULE_PATH.
 *
 * Environment:
 *   LOWBIT_BACKEND=cuda|hip|opencl|cpu  use only this backend; contexts fail with NO_DEVICE if it is absent
 *   LOWBIT_DEVICE=N                     default device index within the chosen backend
 *   LOWBIT_MODULE_PATH=dir[:dir...]     extra directories searched for backend modules (searched first)
 *   LOWBIT_LOG=error|warn|info|debug    log to stderr; debug says why each backend and device was taken
 *                                       or rejected (default: warn)
 *   LOWBIT_TUNING_FILE=path|0           tuning cache to load (0 disables the user cache)
 */

/* Probes backends and devices (idempotent, thread-safe).  Returns SUCCESS even if only the CPU backend is
 * usable; it only fails for an invalid environment (e.g. LOWBIT_BACKEND names an unknown backend:
 * INVALID_ARGUMENT) or when the host is out of memory. */
LOWBIT_API lowbit_status_t lowbit_init(void);

#define LOWBIT_NAME_MAX 128
#define LOWBIT_REASON_MAX 256
#define LOWBIT_PATH_MAX 1024

typedef struct lowbit_backend_info {
    char name[32];                     /* "cuda", "hip", "opencl", "cpu" */
    int available;                     /* 1 if it has at least one usable device */
    int selected;                      /* 1 if it is the default backend for new contexts */
    int device_count;                  /* usable devices */
    char reason[LOWBIT_REASON_MAX];    /* why it is or is not available, in words */
    char module_path[LOWBIT_PATH_MAX]; /* file the module was loaded from ("" for the built-in CPU backend) */
} lowbit_backend_info_t;

/* Number of backends known to this build (including ones that turned out unavailable), in probe order. */
LOWBIT_API lowbit_status_t lowbit_backend_count(int *count_p);
/* Information on backend `index` (0 <= index < count).  Statuses: INVALID_ARGUMENT. */
LOWBIT_API lowbit_status_t lowbit_backend_info(int index, lowbit_backend_info_t *info_p);

typedef struct lowbit_device_info {
    char backend[32];             /* backend name */
    char name[LOWBIT_NAME_MAX];   /* e.g. "NVIDIA H100 80GB HBM3" */
    char arch[64];                /* tuning key architecture: "sm_90", "gfx90a", "opencl:<device>", "cpu:x86_64" */
    char driver[64];              /* driver / runtime version */
    int index;                    /* index within the backend */
    int is_gpu;                   /* 1 for a GPU; 0 for CPU devices (the CPU backend, PoCL, ...) */
    int compute_units;            /* SMs, CUs, or CPU threads */
    uint64_t total_memory;        /* bytes */
    uint64_t free_memory;         /* bytes at the time of the query (0 if unknown) */
    int fp16;                     /* 1 if fp16 arithmetic is native */
    int bf16;                     /* 1 if bf16 arithmetic is native */
    int64_t max_elements;         /* largest element count an op accepts on this device */
} lowbit_device_info_t;

/* Devices of backend `backend` ("cuda", "hip", "opencl", "cpu"; NULL = the default backend). */
LOWBIT_API lowbit_status_t lowbit_device_count(const char *backend, int *count_p);
LOWBIT_API lowbit_status_t lowbit_device_info(const char *backend, int index, lowbit_device_info_t *info_p);

typedef struct lowbit_context lowbit_context_t;
typedef struct lowbit_buffer lowbit_buffer_t;
typedef struct lowbit_stream lowbit_stream_t;

/* Creates a context on one device.  backend: NULL = LOWBIT_BACKEND or the first backend in probe order
 * that has a GPU device (OpenCL CPU devices such as PoCL are only used when asked for by name), else the
 * CPU backend; device: -1 = LOWBIT_DEVICE, else the backend's first GPU device, else 0.  Statuses: NO_DEVICE (backend absent or device index out of range, the
 * message says which), DEVICE, OUT_OF_MEMORY, INVALID_ARGUMENT. */
LOWBIT_API lowbit_status_t lowbit_context_create(const char *backend, int device, lowbit_context_t **ctx_p);
/* Waits for all work of the context, then frees it.  Buffers and streams of the context must have been
 * freed before (leftovers are reported with a warning; using them afterwards is undefined).  NULL is
 * accepted and ignored. */
LOWBIT_API lowbit_status_t lowbit_context_destroy(lowbit_context_t *ctx);
/* Device information of the context's device. */
LOWBIT_API lowbit_status_t lowbit_context_device_info(const lowbit_context_t *ctx, lowbit_device_info_t *info_p);

/* ------------------------------------------------------------------------------------------------------ */
/* Streams                                                                                                 */
/* ------------------------------------------------------------------------------------------------------ */

/* A stream is an in-order queue of work (a cudaStream_t, hipStream_t or cl_command_queue). */
LOWBIT_API lowbit_status_t lowbit_stream_create(lowbit_context_t *ctx, lowbit_stream_t **stream_p);
/* Wraps a caller-owned native stream (cudaStream_t, hipStream_t, cl_command_queue cast to void*) so lowbit
 * work is ordered with the caller's own (e.g. PyTorch's current stream).  The native stream is not destroyed
 * by lowbit_stream_destroy.  The CPU backend has no native streams (UNSUPPORTED). */
LOWBIT_API lowbit_status_t lowbit_stream_wrap(lowbit_context_t *ctx, void *native, lowbit_stream_t **stream_p);
/* Waits until all work queued on the stream (NULL = the default stream of ctx) is done.  Reports errors the
 * device raised while running it (DEVICE). */
LOWBIT_API lowbit_status_t lowbit_stream_synchronize(lowbit_context_t *ctx, lowbit_stream_t *stream);
/* Synchronizes, then frees the stream.  NULL is accepted and ignored. */
LOWBIT_API lowbit_status_t lowbit_stream_destroy(lowbit_stream_t *stream);

/* Timing events (cudaEvent_t, hipEvent_t, OpenCL profiling, or the host clock on the CPU backend), for
 * benchmarks: record one before and one after the work on the same stream, then ask for the time between. */
typedef struct lowbit_event lowbit_event_t;
LOWBIT_API lowbit_status_t lowbit_event_create(lowbit_context_t *ctx, lowbit_event_t **event_p);
/* Records the event on the stream (NULL = default): it completes when all earlier work on it has. */
LOWBIT_API lowbit_status_t lowbit_event_record(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                               lowbit_event_t *event);
/* Waits for `end`, then stores in *ms_p the time in milliseconds between the two records. */
LOWBIT_API lowbit_status_t lowbit_event_elapsed(lowbit_context_t *ctx, const lowbit_event_t *start,
                                                const lowbit_event_t *end, float *ms_p);
/* NULL is accepted and ignored. */
LOWBIT_API lowbit_status_t lowbit_event_destroy(lowbit_event_t *event);

/* ------------------------------------------------------------------------------------------------------ */
/* Memory                                                                                                  */
/* ------------------------------------------------------------------------------------------------------ */

typedef enum lowbit_mem_flags {
    LOWBIT_MEM_DEFAULT = 0,
    /* Paged (managed / unified) memory that the driver migrates between host and device on demand, for
     * optimizer states that may not fit: cudaMallocManaged / hipMallocManaged.  On backends without it
     * (OpenCL, CPU) this is ordinary memory (logged at info level). */
    LOWBIT_MEM_PAGED = 1
} lowbit_mem_flags_t;

/* Allocates `bytes` (> 0) of device memory.  Contents are undefined.
 * Statuses: INVALID_ARGUMENT, OUT_OF_MEMORY (for paged memory also when more is requested than the device
 * has free), DEVICE. */
LOWBIT_API lowbit_status_t lowbit_buffer_alloc(lowbit_context_t *ctx, size_t bytes, unsigned flags,
                                               lowbit_buffer_t **buf_p);
/* Wraps caller-owned memory without copying: a device pointer (CUDA/HIP, e.g. a PyTorch tensor's
 * data_ptr()), a cl_mem (OpenCL), or host memory (CPU).  The memory must stay valid until the buffer and all
 * its views are freed; lowbit never frees it. */
LOWBIT_API lowbit_status_t lowbit_buffer_wrap(lowbit_context_t *ctx, void *native, size_t bytes,
                                              lowbit_buffer_t **buf_p);
/* A view of bytes [offset, offset + bytes) of `parent` (which may itself be a view).  The memory is freed
 * when the last of the buffer and its views is freed.  Statuses: INVALID_ARGUMENT, BUFFER_TOO_SMALL (range
 * outside the parent). */
LOWBIT_API lowbit_status_t lowbit_buffer_view(lowbit_buffer_t *parent, size_t offset, size_t bytes,
                                              lowbit_buffer_t **view_p);
/* Releases a buffer or view.  NULL is accepted and ignored.  Work already queued that uses the buffer must
 * have completed (synchronize first). */
LOWBIT_API lowbit_status_t lowbit_buffer_free(lowbit_buffer_t *buf);
/* Size in bytes of the buffer or view. */
LOWBIT_API lowbit_status_t lowbit_buffer_size(const lowbit_buffer_t *buf, size_t *bytes_p);
/* The native handle: device pointer (CUDA/HIP, already advanced by a view's offset), cl_mem of the root
 * allocation (OpenCL: add *offset_p yourself), host pointer (CPU). */
LOWBIT_API lowbit_status_t lowbit_buffer_native(const lowbit_buffer_t *buf, void **native_p, size_t *offset_p);

/* Copies host memory into bytes [offset, offset+bytes) of buf, ordered on the stream (NULL = default),
 * and returns when the copy is complete, so `src` may be reused at once.
 * Statuses: INVALID_ARGUMENT, BUFFER_TOO_SMALL, DEVICE. */
LOWBIT_API lowbit_status_t lowbit_buffer_upload(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                lowbit_buffer_t *buf, size_t offset, const void *src,
                                                size_t bytes);
/* Copies bytes [offset, offset+bytes) of buf to host memory after all earlier work on the stream, and
 * returns when `dst` holds the data. */
LOWBIT_API lowbit_status_t lowbit_buffer_download(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                  const lowbit_buffer_t *buf, size_t offset, void *dst,
                                                  size_t bytes);
/* Copies bytes [src_offset, src_offset+bytes) of src to [dst_offset, ...) of dst on the device, ordered on
 * the stream (asynchronous).  The ranges must not overlap (OVERLAP).  Statuses: INVALID_ARGUMENT,
 * BUFFER_TOO_SMALL, OVERLAP, DEVICE. */
LOWBIT_API lowbit_status_t lowbit_buffer_copy(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                              lowbit_buffer_t *dst, size_t dst_offset,
                                              const lowbit_buffer_t *src, size_t src_offset, size_t bytes);
/* Sets every byte of the buffer to `value`, ordered on the stream. */
LOWBIT_API lowbit_status_t lowbit_buffer_fill(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                              lowbit_buffer_t *buf, uint8_t value);
/* Migrates a paged buffer to the device (to_device = 1) or the host (0), asynchronously on the stream.
 * A no-op for non-paged buffers, the CPU backend, and devices without concurrent managed access. */
LOWBIT_API lowbit_status_t lowbit_buffer_prefetch(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                  lowbit_buffer_t *buf, int to_device);

/* ------------------------------------------------------------------------------------------------------ */
/* Blockwise quantization                                                                                  */
/* ------------------------------------------------------------------------------------------------------ */
/*
 * A tensor of n elements (flat, row-major) is split into ceil(n / blocksize) blocks of consecutive
 * elements; the last block may be partial.  For block j, absmax[j] = max |x| over its elements (float32,
 * no epsilon), and each element is stored as the index of the code value nearest to x / absmax[j]:
 *
 *   8-bit: one byte per element, an index into a sorted 256-entry code table (default: the signed dynamic
 *          map).  Nearest code by float32 midpoints; an exact midpoint goes to the even index; values beyond
 *          the table clamp; NaN gives index 0.  Block sizes 64, 128, ..., 4096.
 *   NF4/FP4: two elements per byte, element 2i in the high nibble of byte i; for odd n the final low nibble
 *          encodes 0.0.  Fixed comparison trees with strict '>' (ties go to the lower code, FP4: the lower
 *          magnitude).  Block sizes 32, 64, ..., 4096.
 *
 * An all-zero block stores absmax 0 and code 0 and dequantizes to (signed) zero.  Dequantization computes
 * T(code[q] * absmax[j]) with one float32 multiply and one rounding to the output type T.
 *
 * Double ("nested") quantization replaces the float32 absmax vector by uint8 codes: offset = mean(absmax)
 * (float32, accumulated in float64), then absmax - offset is 8-bit quantized with block size
 * nested_blocksize and the signed dynamic map (or nested_code), so absmax[j] is reconstructed as
 * nested_code[qabsmax[j]] * nested_absmax[j / nested_blocksize] + offset.  bitsandbytes uses 256 for 4-bit
 * (required by its fused 4-bit matmul) and the outer block size for 8-bit.
 *
 * Sizes, with nb = ceil(n / blocksize) and nb2 = ceil(nb / nested_blocksize):
 *   data:           n bytes (8-bit) or ceil(n / 2) bytes (4-bit)
 *   absmax:         4 * nb bytes (float32), or nb bytes (uint8) when nested
 *   nested_absmax:  4 * nb2 bytes (float32)
 *   nested_offset:  4 bytes (one float32)
 */

typedef struct lowbit_qtensor {
    lowbit_qformat_t format;
    lowbit_dtype_t dtype;             /* dtype of the unquantized tensor: f32, f16 or bf16 */
    int64_t n;                        /* number of elements (> 0) */
    int32_t blocksize;                /* elements per block (power of two, see above) */
    const float *code;                /* 8-bit: host array of 256 ascending floats, NULL = signed dynamic map;
                                         NF4/FP4: must be NULL (the tables are fixed) */
    lowbit_buffer_t *data;            /* quantized codes */
    lowbit_buffer_t *absmax;          /* float32[nb], or uint8[nb] when nested_blocksize > 0 */
    int32_t nested_blocksize;         /* 0 = plain float32 absmax; else 64 ... 4096 (power of two);
                                         negative: INVALID_ARGUMENT */
    const float *nested_code;         /* host float[256] ascending, NULL = signed dynamic map */
    lowbit_buffer_t *nested_absmax;   /* float32[nb2]; only when nested */
    lowbit_buffer_t *nested_offset;   /* float32[1]; only when nested */
} lowbit_qtensor_t;

typedef struct lowbit_qtensor_sizes {
    int64_t blocks;             /* nb */
    int64_t nested_blocks;      /* nb2, 0 when not nested */
    size_t data_bytes;
    size_t absmax_bytes;
    size_t nested_absmax_bytes; /* 0 when not nested */
    size_t nested_offset_bytes; /* 0 when not nested */
    size_t total_bytes;         /* sum of the above, each rounded up to 256 bytes (lowbit_qtensor_alloc layout) */
} lowbit_qtensor_sizes_t;

/* Computes the sizes above.  Statuses: INVALID_ARGUMENT, UNSUPPORTED (block size not allowed for format). */
LOWBIT_API lowbit_status_t lowbit_qtensor_sizes(lowbit_qformat_t format, int64_t n, int32_t blocksize,
                                                int32_t nested_blocksize, lowbit_qtensor_sizes_t *sizes_p);

/* Fills *q (format, dtype, n, blocksize, nested_blocksize and the buffers, as views of one allocation) for
 * a tensor of n elements; code and nested_code are left NULL.  Free with lowbit_qtensor_free. */
LOWBIT_API lowbit_status_t lowbit_qtensor_alloc(lowbit_context_t *ctx, lowbit_qformat_t format,
                                                lowbit_dtype_t dtype, int64_t n, int32_t blocksize,
                                                int32_t nested_blocksize, lowbit_qtensor_t *q);
/* Frees the buffers of *q (any that are non-NULL) and sets them to NULL. */
LOWBIT_API lowbit_status_t lowbit_qtensor_free(lowbit_qtensor_t *q);

typedef struct lowbit_quantize_opts {
    int stochastic;     /* 1: stochastic rounding (unbiased; the neighbour code on x's side is taken with
                           probability proportional to proximity) instead of round-to-nearest */
    uint64_t seed;      /* stochastic rounding: the random stream is a counter-based hash of (seed, element
                           index), so results are reproducible and identical on every backend */
} lowbit_quantize_opts_t;

/* Quantizes `input` (q->n elements of q->dtype) into q->data and q->absmax (and the nested buffers when
 * q->nested_blocksize > 0).  opts may be NULL (round to nearest).
 * Statuses: INVALID_ARGUMENT, UNSUPPORTED, BUFFER_TOO_SMALL, OVERLAP, TOO_LARGE, DEVICE. */
LOWBIT_API lowbit_status_t lowbit_quantize_blockwise(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                     const lowbit_buffer_t *input, const lowbit_qtensor_t *q,
                                                     const lowbit_quantize_opts_t *opts);

/* Dequantizes q into `output` (q->n elements of out_dtype: f32, f16 or bf16).
 * Statuses: as lowbit_quantize_blockwise. */
LOWBIT_API lowbit_status_t lowbit_dequantize_blockwise(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                       const lowbit_qtensor_t *q, lowbit_dtype_t out_dtype,
                                                       lowbit_buffer_t *output);

/* ------------------------------------------------------------------------------------------------------ */
/* LLM.int8()                                                                                              */
/* ------------------------------------------------------------------------------------------------------ */
/*
 * Row-wise ("vector-wise") int8 quantization of A [rows, cols] (f16, bf16 or f32):
 *   stat[r] = max |A[r,c]| over the row, excluding outliers (|A[r,c]| >= threshold) when threshold > 0;
 *   q[r,c] = round_half_even(A[r,c] * 127 / stat[r]) as int8, 0 for outliers; when threshold > 0 and
 *   rows > 1, every column that holds an outlier in any row is zeroed entirely.  A zero row gives zeros.
 * The weight of an int8 layer is quantized with threshold 0: CB = q, SCB = stat.
 */

/* threshold: 0 disables outlier handling (must be >= 0 and finite).
 * q: int8 [rows, cols]; row_stats: float32 [rows];
 * outlier_cols (optional, may be NULL): int32 [cols]; receives the ascending indices of the outlier columns
 * followed by -1 padding; outlier_count (optional, NULL when outlier_cols is NULL): int32 [1], their number.
 * Statuses: INVALID_ARGUMENT, UNSUPPORTED (dtype), BUFFER_TOO_SMALL, OVERLAP, TOO_LARGE, DEVICE. */
LOWBIT_API lowbit_status_t lowbit_int8_quantize_rows(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                     lowbit_dtype_t dtype, int64_t rows, int64_t cols,
                                                     const lowbit_buffer_t *A, float threshold,
                                                     lowbit_buffer_t *q, lowbit_buffer_t *row_stats,
                                                     lowbit_buffer_t *outlier_cols,
                                                     lowbit_buffer_t *outlier_count);

/* Column-wise quantization for training: col_stats[c] = max_r |A[r,c]| with outliers (>= threshold, when
 * threshold > 0) counted as 0; q[r,c] = round_half_even(A'[r,c] * 127 / col_stats[c]) in the same
 * [rows, cols] layout (not transposed).  q: int8 [rows, cols]; col_stats: float32 [cols]. */
LOWBIT_API lowbit_status_t lowbit_int8_quantize_cols(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                     lowbit_dtype_t dtype, int64_t rows, int64_t cols,
                                                     const lowbit_buffer_t *A, float threshold,
                                                     lowbit_buffer_t *q, lowbit_buffer_t *col_stats);

/* Exact integer product C[M, N] = X[M, K] * W[N, K]^T: X, W int8 row-major, C int32 row-major.
 * 1 <= K <= 131071, the longest K whose sums cannot overflow int32 (TOO_LARGE beyond). */
LOWBIT_API lowbit_status_t lowbit_int8_gemm(lowbit_context_t *ctx, lowbit_stream_t *stream, int64_t M,
                                            int64_t N, int64_t K, const lowbit_buffer_t *X,
                                            const lowbit_buffer_t *W, lowbit_buffer_t *C);

/* out[r, c] = T(C[r, c] * row_stats[r] * col_stats[c] * (1/16129) + bias[c]), evaluated in float32 with one
 * final rounding; C int32 [M, N], row_stats float32 [M], col_stats float32 [N], bias [N] of out_dtype or
 * NULL, out [M, N] of out_dtype (f16, bf16 or f32). */
LOWBIT_API lowbit_status_t lowbit_int8_dequant(lowbit_context_t *ctx, lowbit_stream_t *stream, int64_t M,
                                               int64_t N, const lowbit_buffer_t *C,
                                               const lowbit_buffer_t *row_stats,
                                               const lowbit_buffer_t *col_stats, const lowbit_buffer_t *bias,
                                               lowbit_dtype_t out_dtype, lowbit_buffer_t *out);

/* The whole LLM.int8() forward: out[M, N] = X[M, K] * dequant(CB, SCB)^T + bias, with X of dtype (f16, bf16,
 * f32), CB int8 [N, K], SCB float32 [N], bias [N] of dtype or NULL, out [M, N] of dtype.  X is row-quantized
 * with `threshold`; when threshold > 0 the outlier columns of X are multiplied in float against the
 * int8-dequantized weight columns CB * SCB / 127 and added.  Temporary memory is allocated internally. */
LOWBIT_API lowbit_status_t lowbit_int8_matmul(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                              lowbit_dtype_t dtype, int64_t M, int64_t N, int64_t K,
                                              const lowbit_buffer_t *X, const lowbit_buffer_t *CB,
                                              const lowbit_buffer_t *SCB, const lowbit_buffer_t *bias,
                                              float threshold, lowbit_buffer_t *out);

/* ------------------------------------------------------------------------------------------------------ */
/* 4-bit weight-only matrix products                                                                       */
/* ------------------------------------------------------------------------------------------------------ */
/*
 * W is a 4-bit (NF4/FP4) qtensor holding a weight [N, K] row-major (W->n == N * K), with plain or nested
 * absmax; blocks may straddle rows (K % blocksize != 0 is allowed).  Activations, bias and outputs have
 * dtype f32, f16 or bf16; the products accumulate in float32.
 */

/* y[M, N] = x[M, K] * dequant(W)^T + bias (bias [N] or NULL). */
LOWBIT_API lowbit_status_t lowbit_gemm_4bit(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                            lowbit_dtype_t dtype, int64_t M, int64_t N, int64_t K,
                                            const lowbit_buffer_t *x, const lowbit_qtensor_t *W,
                                            const lowbit_buffer_t *bias, lowbit_buffer_t *y);
/* The batch-1 case of lowbit_gemm_4bit: y[N] = dequant(W) * x[K] + bias. */
LOWBIT_API lowbit_status_t lowbit_gemv_4bit(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                            lowbit_dtype_t dtype, int64_t N, int64_t K,
                                            const lowbit_buffer_t *x, const lowbit_qtensor_t *W,
                                            const lowbit_buffer_t *bias, lowbit_buffer_t *y);
/* Input gradient for adapters trained on a 4-bit base (QLoRA): dx[M, K] = dy[M, N] * dequant(W). */
LOWBIT_API lowbit_status_t lowbit_gemm_4bit_grad_input(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                       lowbit_dtype_t dtype, int64_t M, int64_t N, int64_t K,
                                                       const lowbit_buffer_t *dy, const lowbit_qtensor_t *W,
                                                       lowbit_buffer_t *dx);

/* ------------------------------------------------------------------------------------------------------ */
/* Optimizers                                                                                              */
/* ------------------------------------------------------------------------------------------------------ */

typedef enum lowbit_optimizer {
    LOWBIT_OPT_ADAM = 0,     /* decoupled weight decay applied after the step, as bitsandbytes */
    LOWBIT_OPT_ADAMW = 1,    /* same kernel as ADAM, default weight_decay 1e-2 */
    LOWBIT_OPT_ADEMAMIX = 2, /* two first moments (beta1, beta3) mixed with alpha */
    LOWBIT_OPT_LION = 3,
    LOWBIT_OPT_SGD = 4,      /* SGD with momentum (beta1 = momentum), coupled L2 weight decay */
    LOWBIT_OPT_RMSPROP = 5,  /* beta1 = alpha (smoothing) */
    LOWBIT_OPT_ADAGRAD = 6,
    LOWBIT_OPT_LAMB = 7,     /* Adam with the per-tensor update norm capped at max_unorm * ||p|| */
    LOWBIT_OPT_LARS = 8      /* SGD-momentum with the same cap */
} lowbit_optimizer_t;

typedef struct lowbit_optimizer_config {
    lowbit_optimizer_t kind;
    int state_bits;             /* 32 or 8 (8-bit blockwise states, block 256) */
    float lr;
    float beta1, beta2, beta3;  /* meaning per optimizer as in bitsandbytes; beta3 for AdEMAMix */
    float alpha;                /* AdEMAMix mixing coefficient */
    float eps;
    float weight_decay;
    float max_unorm;            /* 0 = off; LAMB/LARS update-norm cap relative to ||p|| */
    float percentile_clipping;  /* 100 = off; else clip gradients at this percentile of the last 100 norms */
    float t_alpha, t_beta3;     /* AdEMAMix schedules (0 = off) */
    float gnorm_scale;          /* gradients are multiplied by this (1 = none) */
    int skip_zeros;             /* elements with a zero gradient keep state and parameter */
    int64_t min_8bit_size;      /* tensors with fewer elements keep 32-bit states (bitsandbytes: 4096) */
} lowbit_optimizer_config_t;

/* Fills *cfg with bitsandbytes' defaults for `kind` and state_bits 32 or 8. */
LOWBIT_API lowbit_status_t lowbit_optimizer_config_default(lowbit_optimizer_t kind, int state_bits,
                                                           lowbit_optimizer_config_t *cfg);

/* The state of one parameter tensor lives in one caller-visible buffer so it can be saved and restored
 * byte for byte.  Offsets are in bytes from the start of that buffer; a component that the optimizer does
 * not use has size 0. */
typedef struct lowbit_optimizer_state_layout {
    int state_bits;              /* effective: 32 if n < min_8bit_size even when 8 was asked for */
    size_t state1_offset, state1_bytes; /* float32[n] or uint8[n] (AdEMAMix: [2, n]) */
    size_t state2_offset, state2_bytes;
    size_t absmax1_offset, absmax1_bytes; /* float32[ceil(n/256)] (AdEMAMix: two such vectors) */
    size_t absmax2_offset, absmax2_bytes;
    size_t gnorm_offset, gnorm_bytes;     /* float32[100] gradient-norm history (percentile clipping) */
    size_t total_bytes;
} lowbit_optimizer_state_layout_t;

LOWBIT_API lowbit_status_t lowbit_optimizer_state_layout(const lowbit_optimizer_config_t *cfg, int64_t n,
                                                         lowbit_optimizer_state_layout_t *layout_p);
/* Initializes (zeroes) a state buffer of at least layout.total_bytes. */
LOWBIT_API lowbit_status_t lowbit_optimizer_state_init(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                       const lowbit_optimizer_config_t *cfg, int64_t n,
                                                       lowbit_buffer_t *state);
/* One update of n parameters: param and grad have dtype (f32, f16, bf16); step is 1 for the first update.
 * Statuses: INVALID_ARGUMENT, UNSUPPORTED, BUFFER_TOO_SMALL, OVERLAP, TOO_LARGE, DEVICE. */
LOWBIT_API lowbit_status_t lowbit_optimizer_step(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                 const lowbit_optimizer_config_t *cfg, lowbit_dtype_t dtype,
                                                 int64_t n, lowbit_buffer_t *param,
                                                 const lowbit_buffer_t *grad, lowbit_buffer_t *state,
                                                 int64_t step);

/* ------------------------------------------------------------------------------------------------------ */
/* Tuning                                                                                                  */
/* ------------------------------------------------------------------------------------------------------ */
/*
 * Kernel launch parameters (threads, values per thread, tiles, split-K, ...) come from a table keyed by
 * backend and architecture ("cuda:sm_90", "opencl:<normalized device name>", "cpu:x86_64"), then by kernel
 * family.  Keys are strings such as "quantize.8bit.threads"; every key has a valid range, checked before a
 * value reaches a launch.  A context looks a key up in this order:
 *
 *   1. an override set in this process with lowbit_tune_set;
 *   2. the user cache file (written by lowbit-tune), entry for this context's architecture key;
 *   3. the built-in tables compiled into the library: device -> architecture -> vendor -> generic;
 *   4. the kernel's own default (which may depend on the device or dtype; lowbit_tune_get then says so).
 *
 * The cache file is $XDG_CACHE_HOME/lowbit/tuning.json (else $HOME/.cache/lowbit/tuning.json);
 * LOWBIT_TUNING_FILE=path names another, LOWBIT_TUNING_FILE=0 disables it.  It is read once, when the first
 * context is created (or by lowbit_tune_reload).  A file that is not valid JSON of the expected format and
 * version is logged and ignored as a whole; an entry with an unknown key, a wrong type, a value out of range
 * or a second value for the same key is logged and ignored, and the other entries load.
 */

typedef struct lowbit_tune_info {
    char arch_key[LOWBIT_NAME_MAX];   /* e.g. "cuda:sm_90" */
    char table[LOWBIT_NAME_MAX];      /* built-in tables that apply, most specific first, with where the
                                         values come from: "cuda/sm_90/H100 [measured sm_90 (H100)] <
                                         cuda/sm_90 < cuda < generic" */
    char file[LOWBIT_PATH_MAX];       /* user cache file loaded ("" if none: see file_status) */
    int entries;                      /* parameters that have a value (override, file or built-in) */
    int overrides;                    /* of which set in-process with lowbit_tune_set */
    /* Appended with the cache file (0.1): */
    char file_status[LOWBIT_REASON_MAX]; /* what happened to the cache file: "loaded: 12 entries, 1 rejected",
                                            "disabled (LOWBIT_TUNING_FILE=0)", "not found: <path>",
                                            "ignored: <path>: line 3 column 1: ..." */
    int file_entries;                 /* valid entries of the file for this arch_key (in use) */
    int file_other;                   /* valid entries for other architectures (kept, unused here) */
    int file_rejected;                /* entries of the file reported and ignored */
} lowbit_tune_info_t;

LOWBIT_API lowbit_status_t lowbit_tune_info(const lowbit_context_t *ctx, lowbit_tune_info_t *info_p);
/* The value a kernel of this context would use for `key`, following the order above.  Statuses:
 * INVALID_ARGUMENT for an unknown key; UNSUPPORTED when no table holds it (the kernel computes its
 * default from the device, e.g. work-groups from the compute units). */
LOWBIT_API lowbit_status_t lowbit_tune_get(const lowbit_context_t *ctx, const char *key, int64_t *value_p);
/* Overrides a parameter for this context (range-checked: INVALID_ARGUMENT if out of range). */
LOWBIT_API lowbit_status_t lowbit_tune_set(lowbit_context_t *ctx, const char *key, int64_t value);
/* Removes this context's override of `key` (NULL: all of them); removing one not set is not an error.
 * Statuses: INVALID_ARGUMENT (unknown key). */
LOWBIT_API lowbit_status_t lowbit_tune_reset(lowbit_context_t *ctx, const char *key);
/* Writes this context's overrides into the cache file `path` (NULL: the default path above) as entries for
 * its architecture key, with the device name, driver and lowbit version.  Entries of the file for other
 * architectures or keys are kept; the file is replaced atomically (temporary file + rename, under an
 * advisory lock), so concurrent writers never leave a torn file.  Contexts already created are unaffected
 * (see lowbit_tune_reload).  Statuses: INVALID_ARGUMENT (NULL ctx, no path: LOWBIT_TUNING_FILE=0 or no
 * HOME; directory not writable). */
LOWBIT_API lowbit_status_t lowbit_tune_save(const lowbit_context_t *ctx, const char *path);
/* Reads the cache file again (LOWBIT_TUNING_FILE is looked at again); contexts created afterwards use it. */
LOWBIT_API lowbit_status_t lowbit_tune_reload(void);

/* ------------------------------------------------------------------------------------------------------ */
/* Checkpoints                                                                                             */
/* ------------------------------------------------------------------------------------------------------ */
/*
 * Reading and writing safetensors checkpoints in the layout transformers + bitsandbytes load as
 * pre-quantized models.  A checkpoint is a safetensors file, or a directory holding either
 * model.safetensors or shards listed by model.safetensors.index.json ({"metadata": {...}, "weight_map":
 * {tensor: shard file}}).  Opening validates every header completely (JSON, known dtypes, shape x dtype
 * size == byte range, ranges inside the file and disjoint, unique non-empty UTF-8 names, every shard of the
 * index present and holding the tensors the index assigns to it, quant-state JSON blobs well formed);
 * errors are FORMAT (the message names the file and the tensor) or IO.  Files are mapped read-only.
 *
 * Quantized layouts (spec/bitsandbytes.md 3.4, 3.5), for a module prefix P (e.g. "model.layers.0.mlp.up_proj"):
 *   NF4/FP4:  P.weight          U8 [(n+1)/2, 1]   packed nibbles, element 2i in the high nibble of byte i
 *             P.weight.absmax   F32 [nb], or U8 [nb] with double quantization
 *             P.weight.quant_map  F32 [16]        the NF4 or FP4 table
 *             P.weight.nested_absmax  F32 [ceil(nb/256)]       double quantization only
 *             P.weight.nested_quant_map  F32 [256]  signed dynamic map, double quantization only
 *             P.weight.quant_state.bitsandbytes__nf4 (or __fp4)  U8 [len]: UTF-8 JSON
 *                 {"quant_type": "nf4", "blocksize": 64, "dtype": "bfloat16", "shape": [N, K],
 *                  "nested_blocksize": 256, "nested_dtype": "float32", "nested_offset": <float>}
 *                 (the last three only with double quantization)
 *   LLM.int8: P.weight I8 [N, K], P.SCB F32 [N] (row absmax), P.weight_format U8 [] = 0 (row-major)
 */

typedef struct lowbit_checkpoint lowbit_checkpoint_t;

typedef enum lowbit_ckpt_format {
    LOWBIT_CKPT_PLAIN = 0, /* an ordinary tensor */
    LOWBIT_CKPT_NF4 = 1,   /* a packed NF4 weight */
    LOWBIT_CKPT_FP4 = 2,   /* a packed FP4 weight */
    LOWBIT_CKPT_INT8 = 3,  /* an LLM.int8 weight (row-major int8 with SCB) */
    LOWBIT_CKPT_STATE = 4  /* part of another tensor's quantization state (absmax, quant_map, SCB, ...) */
} lowbit_ckpt_format_t;

#define LOWBIT_CKPT_MAX_DIMS 8

typedef struct lowbit_checkpoint_tensor {
    const char *name;      /* valid until lowbit_checkpoint_close */
    const char *file;      /* the file (shard) holding it; valid until close */
    char dtype[8];         /* safetensors dtype as stored: "F32", "F16", "BF16", "U8", "I8", ... */
    int ndim;
    int64_t shape[LOWBIT_CKPT_MAX_DIMS];
    uint64_t bytes;        /* stored bytes of this tensor */
    lowbit_ckpt_format_t format;
    /* NF4/FP4/INT8 weights only: */
    char orig_dtype[16];   /* dtype before quantization ("bfloat16", "float16", "float32"; "" for INT8) */
    int orig_ndim;         /* shape before quantization */
    int64_t orig_shape[LOWBIT_CKPT_MAX_DIMS];
    int32_t blocksize;     /* NF4/FP4 */
    int32_t nested_blocksize; /* NF4/FP4 with double quantization, else 0 */
    uint64_t footprint;    /* bytes of the weight and all its state tensors */
    /* STATE only: the weight this tensor belongs to (valid until close) */
    const char *owner;
} lowbit_checkpoint_tensor_t;

/* Opens a checkpoint file or directory (see above) and validates it.  Statuses: INVALID_ARGUMENT (NULL),
 * IO (missing or unreadable file or shard), FORMAT, OUT_OF_MEMORY.  *ckpt_p is set only on success. */
LOWBIT_API lowbit_status_t lowbit_checkpoint_open(const char *path, lowbit_checkpoint_t **ckpt_p);
/* Unmaps and frees.  Code tables handed out by lowbit_checkpoint_load_4bit become invalid.  NULL is
 * accepted and ignored. */
LOWBIT_API lowbit_status_t lowbit_checkpoint_close(lowbit_checkpoint_t *ckpt);
/* Number of tensors, over all shards: shards in file-name order, tensors in header order within each. */
LOWBIT_API lowbit_status_t lowbit_checkpoint_tensor_count(const lowbit_checkpoint_t *ckpt, int *count_p);
/* Description of tensor `index` (0 <= index < count).  Statuses: INVALID_ARGUMENT. */
LOWBIT_API lowbit_status_t lowbit_checkpoint_tensor_info(const lowbit_checkpoint_t *ckpt, int index,
                                                         lowbit_checkpoint_tensor_t *info_p);
/* Index of the tensor called `name`.  Statuses: INVALID_ARGUMENT (NULL, or no such tensor). */
LOWBIT_API lowbit_status_t lowbit_checkpoint_find(const lowbit_checkpoint_t *ckpt, const char *name,
                                                  int *index_p);
/* The stored bytes of tensor `index` (read-only mapping, valid until close; not necessarily aligned). */
LOWBIT_API lowbit_status_t lowbit_checkpoint_tensor_data(const lowbit_checkpoint_t *ckpt, int index,
                                                         const void **data_p, uint64_t *bytes_p);

/* Loads the NF4/FP4 weight `name` (e.g. "model.layers.0.mlp.up_proj.weight") into a freshly allocated
 * qtensor on ctx, ready for lowbit_gemv_4bit / lowbit_gemm_4bit / lowbit_dequantize_blockwise: format,
 * dtype (the original dtype), n, blocksize, data, absmax and, with double quantization, nested_blocksize,
 * nested_absmax, nested_offset (from the JSON) and nested_code (pointing to the stored nested_quant_map,
 * valid until lowbit_checkpoint_close).  *rows_p / *cols_p (either may be NULL) receive the original shape
 * as a matrix: rows = shape[0], cols = n / rows (a 1-D tensor gives rows = 1).  Free q with
 * lowbit_qtensor_free.  Statuses: INVALID_ARGUMENT (NULL, no such tensor, not a 4-bit weight), FORMAT
 * (state tensors missing or of the wrong dtype or size), UNSUPPORTED (a quant_map that is not the NF4/FP4
 * table, a block size lowbit does not support), OUT_OF_MEMORY, DEVICE.  On error *q is untouched. */
LOWBIT_API lowbit_status_t lowbit_checkpoint_load_4bit(lowbit_context_t *ctx, const lowbit_checkpoint_t *ckpt,
                                                       const char *name, lowbit_qtensor_t *q, int64_t *rows_p,
                                                       int64_t *cols_p);
/* Loads the LLM.int8 weight `name` ("P.weight"): *CB_p receives a new buffer with int8 [rows, cols] and
 * *SCB_p one with float32 [rows], ready for lowbit_int8_matmul.  Statuses as lowbit_checkpoint_load_4bit
 * (UNSUPPORTED also for a weight_format other than 0 = row-major). */
LOWBIT_API lowbit_status_t lowbit_checkpoint_load_int8(lowbit_context_t *ctx, const lowbit_checkpoint_t *ckpt,
                                                       const char *name, lowbit_buffer_t **CB_p,
                                                       lowbit_buffer_t **SCB_p, int64_t *rows_p,
                                                       int64_t *cols_p);

typedef struct lowbit_checkpoint_quantize_opts {
    lowbit_ckpt_format_t format; /* NF4, FP4 or INT8 */
    int32_t blocksize;           /* NF4/FP4: 32 ... 4096, power of two (0 = 64) */
    int double_quant;            /* NF4/FP4: 1 = absmax double-quantized in blocks of 256 */
    const char *const *skip;     /* nskip patterns: a tensor whose name contains one, or matches it as a */
    int nskip;                   /* glob (fnmatch), is kept unquantized */
} lowbit_checkpoint_quantize_opts_t;

/* What lowbit_checkpoint_quantize reports after each input tensor. */
typedef struct lowbit_checkpoint_progress {
    int index, count;            /* input tensor index (0-based) and total */
    const char *name;
    const char *dtype;           /* input safetensors dtype */
    int ndim;
    const int64_t *shape;
    int quantized;               /* 1 if converted */
    const char *kept_because;    /* when not quantized: the rule that kept it */
    uint64_t bytes_in;           /* stored bytes before */
    uint64_t bytes_out;          /* stored bytes after (weight plus its state tensors) */
    double rel_l2;               /* quantized only: ||x - dequant(q)||_2 / ||x||_2 in float64 (0 for x = 0) */
} lowbit_checkpoint_progress_t;

typedef void (*lowbit_checkpoint_progress_fn)(void *user, const lowbit_checkpoint_progress_t *progress);

/*
 * Quantizes the checkpoint `in` into `out`, tensor by tensor (host and device memory stay about the
 * size of the largest tensor), on ctx.  The rule: a tensor is quantized iff it is F32, F16 or BF16, 2-D,
 * its name ends in ".weight", the name contains none of "embed", "lm_head", "wte", "wpe", "norm"
 * (embeddings, the output head and norms stay as they are, as transformers keeps them) and it matches no
 * skip pattern.  Everything else is copied unchanged.  A file gives a file; a directory gives a
 * directory with the same shard names, a new model.safetensors.index.json and, when `in` has a
 * config.json, a copy with "quantization_config" set for transformers (quant_method "bitsandbytes",
 * load_in_4bit / load_in_8bit, bnb_4bit_quant_type, bnb_4bit_use_double_quant, bnb_4bit_compute_dtype =
 * the dtype of the quantized weights, llm_int8_skip_modules = the 2-D weights kept unquantized).
 * Output is written to temporaries beside `out` and renamed into place only when complete: on any error
 * nothing is left at `out`.  `out` must not exist.  progress (may be NULL) is called after each tensor.
 * Statuses: INVALID_ARGUMENT (NULL, bad options, out exists, in already quantized), IO, FORMAT,
 * UNSUPPORTED, OUT_OF_MEMORY, DEVICE.
 */
LOWBIT_API lowbit_status_t lowbit_checkpoint_quantize(lowbit_context_t *ctx, const char *in, const char *out,
                                                      const lowbit_checkpoint_quantize_opts_t *opts,
                                                      lowbit_checkpoint_progress_fn progress, void *user);

#ifdef __cplusplus
}
#endif

#endif /* LOWBIT_H */

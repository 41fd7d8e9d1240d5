/*
 * ocl_backend.c -- the OpenCL backend module: the exported table, probing of every platform and device,
 * device information, contexts, memory and streams (queues).
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ocl.h"

#define LB_OCL_MAX_DEVICES 64

const lb_host_t *lb_ocl_host;
static lb_ocl_device_t devices[LB_OCL_MAX_DEVICES];
static int device_count;

/* ---- probing -------------------------------------------------------------------------------------- */

static void trim(char *s)
{
    size_t n = strlen(s);
    while (n > 0 && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    size_t lead = strspn(s, " \t");
    memmove(s, s + lead, n - lead + 1);
}

static void device_string(cl_device_id id, cl_device_info what, char *buf, size_t len)
{
    buf[0] = '\0';
    if (clGetDeviceInfo(id, what, len, buf, NULL) != CL_SUCCESS)
        buf[0] = '\0';
    buf[len - 1] = '\0';
    trim(buf);
}

static int has_extension(cl_device_id id, const char *ext)
{
    size_t len = 0;
    if (clGetDeviceInfo(id, CL_DEVICE_EXTENSIONS, 0, NULL, &len) != CL_SUCCESS || len == 0)
        return 0;
    char *list = malloc(len + 2);
    if (!list)
        return 0;
    int found = 0;
    if (clGetDeviceInfo(id, CL_DEVICE_EXTENSIONS, len, list + 1, NULL) == CL_SUCCESS) {
        list[0] = ' ';
        list[len] = '\0';
        for (char *p = list; *p; p++) /* the list is separated by spaces; make it " a b c " */
            if (isspace((unsigned char)*p))
                *p = ' ';
        strcat(list, " ");
        char pattern[128];
        snprintf(pattern, sizeof pattern, " %s ", ext);
        found = strstr(list, pattern) != NULL;
    }
    free(list);
    return found;
}

/* Fills *d for `id`; 0 if the device cannot run our programs (no compiler, not available). */
static int device_describe(cl_platform_id platform, cl_device_id id, lb_ocl_device_t *d)
{
    memset(d, 0, sizeof *d);
    d->platform = platform;
    d->id = id;
    cl_bool yes = CL_FALSE;
    if (clGetDeviceInfo(id, CL_DEVICE_AVAILABLE, sizeof yes, &yes, NULL) != CL_SUCCESS || !yes)
        return 0;
    yes = CL_FALSE;
    if (clGetDeviceInfo(id, CL_DEVICE_COMPILER_AVAILABLE, sizeof yes, &yes, NULL) != CL_SUCCESS || !yes)
        return 0;
    clGetDeviceInfo(id, CL_DEVICE_TYPE, sizeof d->type, &d->type, NULL);
    device_string(id, CL_DEVICE_NAME, d->name, sizeof d->name);
    device_string(id, CL_DRIVER_VERSION, d->driver, sizeof d->driver);
    if (clGetPlatformInfo(platform, CL_PLATFORM_NAME, sizeof d->platform_name, d->platform_name, NULL) !=
        CL_SUCCESS)
        d->platform_name[0] = '\0';
    d->platform_name[sizeof d->platform_name - 1] = '\0';
    trim(d->platform_name);

    cl_uint cu = 0;
    cl_ulong mem = 0, alloc = 0;
    size_t wg = 0;
    cl_device_fp_config fp = 0;
    clGetDeviceInfo(id, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof cu, &cu, NULL);
    clGetDeviceInfo(id, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof mem, &mem, NULL);
    clGetDeviceInfo(id, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof alloc, &alloc, NULL);
    clGetDeviceInfo(id, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof wg, &wg, NULL);
    clGetDeviceInfo(id, CL_DEVICE_SINGLE_FP_CONFIG, sizeof fp, &fp, NULL);
    cl_ulong local = 0;
    clGetDeviceInfo(id, CL_DEVICE_LOCAL_MEM_SIZE, sizeof local, &local, NULL);
    d->local_mem = local;
    d->compute_units = (int)cu;
    d->global_mem = mem;
    d->max_alloc = alloc;
    d->max_wg = wg ? wg : 1;
    d->fp16 = has_extension(id, "cl_khr_fp16");
    d->fp64 = has_extension(id, "cl_khr_fp64");
    d->cr_divide = (fp & CL_FP_CORRECTLY_ROUNDED_DIVIDE_SQRT) != 0;
    d->denorms = (fp & CL_FP_DENORM) != 0;
    return 1;
}

static const char *type_name(cl_device_type t)
{
    if (t & CL_DEVICE_TYPE_GPU)
        return "GPU";
    if (t & CL_DEVICE_TYPE_ACCELERATOR)
        return "accelerator";
    if (t & CL_DEVICE_TYPE_CPU)
        return "CPU";
    return "other";
}

/* "PoCL" for the Portable Computing Language, otherwise the platform name. */
static const char *platform_short(const char *name)
{
    return strstr(name, "Portable Computing Language") ? "PoCL" : name;
}

/* Appends to reason without overflowing; the last characters become "..." when it does not fit. */
static void reason_append(char *reason, size_t len, const char *text)
{
    size_t used = strlen(reason);
    if (used + 1 >= len)
        return;
    snprintf(reason + used, len - used, "%s", text);
    if (used + strlen(text) + 1 > len && len >= 4)
        memcpy(reason + len - 4, "...", 4);
}

static int probe(const lb_host_t *host, char *reason, size_t reason_len)
{
    lb_ocl_host = host;
    device_count = 0;
    if (reason_len)
        reason[0] = '\0';

    cl_uint nplat = 0;
    cl_int err = clGetPlatformIDs(0, NULL, &nplat);
    if (err != CL_SUCCESS) {
        snprintf(reason, reason_len, "no OpenCL platform: clGetPlatformIDs returned %d (%s)", (int)err,
                 err == -1001 ? "no ICD" : lb_ocl_errname(err));
        return 0;
    }
    if (nplat == 0) {
        snprintf(reason, reason_len, "no OpenCL platform: clGetPlatformIDs found none");
        return 0;
    }
    cl_platform_id *plats = calloc(nplat, sizeof *plats);
    if (!plats || clGetPlatformIDs(nplat, plats, NULL) != CL_SUCCESS) {
        snprintf(reason, reason_len, "no OpenCL platform: clGetPlatformIDs failed");
        free(plats);
        return 0;
    }

    char list[LOWBIT_REASON_MAX * 2] = "";
    int skipped = 0;
    for (cl_uint p = 0; p < nplat && device_count < LB_OCL_MAX_DEVICES; p++) {
        cl_uint ndev = 0;
        const cl_device_type types = CL_DEVICE_TYPE_GPU | CL_DEVICE_TYPE_ACCELERATOR | CL_DEVICE_TYPE_CPU;
        if (clGetDeviceIDs(plats[p], types, 0, NULL, &ndev) != CL_SUCCESS || ndev == 0)
            continue;
        cl_device_id *ids = calloc(ndev, sizeof *ids);
        if (!ids || clGetDeviceIDs(plats[p], types, ndev, ids, NULL) != CL_SUCCESS) {
            free(ids);
            continue;
        }
        char pvendor[128] = "";
        clGetPlatformInfo(plats[p], CL_PLATFORM_VENDOR, sizeof pvendor - 1, pvendor, NULL);
        for (cl_uint i = 0; i < ndev && device_count < LB_OCL_MAX_DEVICES; i++) {
            lb_ocl_device_t *d = &devices[device_count];
            if (!device_describe(plats[p], ids[i], d)) {
                skipped++;
                continue;
            }
            char dvendor[128] = "", item[LOWBIT_NAME_MAX + 96];
            device_string(ids[i], CL_DEVICE_VENDOR, dvendor, sizeof dvendor);
            trim(pvendor);
            /* Name the platform when it is not the device's own vendor's (PoCL on an AMD CPU). */
            if (strcmp(pvendor, dvendor) != 0)
                snprintf(item, sizeof item, "%s%s (%s, %s)", device_count ? ", " : "", d->name,
                         type_name(d->type), platform_short(d->platform_name));
            else
                snprintf(item, sizeof item, "%s%s (%s)", device_count ? ", " : "", d->name, type_name(d->type));
            reason_append(list, sizeof list, item);
            device_count++;
        }
        free(ids);
    }
    free(plats);

    if (device_count == 0)
        snprintf(reason, reason_len, "no usable OpenCL device (%u platform%s, %d device%s without a compiler "
                 "or unavailable)", nplat, nplat == 1 ? "" : "s", skipped, skipped == 1 ? "" : "s");
    else {
        snprintf(reason, reason_len, "%d device%s: ", device_count, device_count == 1 ? "" : "s");
        reason_append(reason, reason_len, list);
    }
    return device_count;
}

/* "NVIDIA H100 80GB HBM3" -> "nvidia_h100_80gb_hbm3" */
static void normalize_name(const char *name, char *out, size_t len)
{
    size_t o = 0;
    int sep = 0;
    for (const char *p = name; *p && o + 1 < len; p++) {
        unsigned char ch = (unsigned char)*p;
        if (isalnum(ch) || ch == '-' || ch == '.') {
            if (sep && o > 0 && o + 2 < len)
                out[o++] = '_';
            sep = 0;
            out[o++] = (char)tolower(ch);
        } else {
            sep = 1;
        }
    }
    out[o] = '\0';
}

static lowbit_status_t device_info(int index, lowbit_device_info_t *info)
{
    if (index < 0 || index >= device_count)
        return lb_ocl_host->error(LOWBIT_ERR_NO_DEVICE, "opencl: no device %d (%d found)", index, device_count);
    const lb_ocl_device_t *d = &devices[index];
    char norm[sizeof info->arch - sizeof "opencl:" + 1];
    memset(info, 0, sizeof *info);
    snprintf(info->backend, sizeof info->backend, "opencl");
    snprintf(info->name, sizeof info->name, "%s", d->name);
    normalize_name(d->name, norm, sizeof norm);
    snprintf(info->arch, sizeof info->arch, "opencl:%s", norm);
    snprintf(info->driver, sizeof info->driver, "%s", d->driver);
    info->index = index;
    info->is_gpu = (d->type & CL_DEVICE_TYPE_GPU) != 0;
    info->compute_units = d->compute_units;
    info->total_memory = d->global_mem;
    info->free_memory = 0;
    info->fp16 = d->fp16;
    info->bf16 = 0;
    /* Kernels index with 64-bit integers; what bounds n is one allocation (every op has a buffer of at
     * least one byte per element). */
    info->max_elements = d->max_alloc > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)d->max_alloc;
    return LOWBIT_SUCCESS;
}

/* ---- contexts ------------------------------------------------------------------------------------- */

static lowbit_status_t context_create(int device, void **bctx_p)
{
    if (device < 0 || device >= device_count)
        return lb_ocl_host->error(LOWBIT_ERR_NO_DEVICE, "opencl: no device %d (%d found)", device, device_count);
    const lb_ocl_device_t *d = &devices[device];
    lb_ocl_ctx_t *c = calloc(1, sizeof *c);
    if (!c)
        return lb_ocl_host->error(LOWBIT_ERR_OUT_OF_MEMORY, "opencl: out of host memory");
    c->dev = d;
    lowbit_status_t st;
    cl_int err;
    cl_context_properties props[] = {CL_CONTEXT_PLATFORM, (cl_context_properties)d->platform, 0};
    c->context = clCreateContext(props, 1, &d->id, NULL, NULL, &err);
    if (!c->context) {
        st = lb_ocl_fail("clCreateContext", err);
        goto free_c;
    }
    /* profiling: timing events are queue markers (ocl_event.c) */
    c->queue = clCreateCommandQueue(c->context, d->id, CL_QUEUE_PROFILING_ENABLE, &err);
    if (!c->queue) {
        st = lb_ocl_fail("clCreateCommandQueue", err);
        goto release_context;
    }
    /* No -cl-fast-relaxed-math, no -cl-mad-enable: IEEE float32 as the CPU reference. */
    snprintf(c->base_options, sizeof c->base_options, "-cl-std=CL1.2%s -DLB_FP64=%d -DLB_CRDIV=%d",
             d->cr_divide ? " -cl-fp32-correctly-rounded-divide-sqrt" : "", d->fp64, d->cr_divide);
    if (!d->denorms)
        lb_ocl_host->log(LB_LOG_WARN, "opencl: %s flushes float32 denormals; results for subnormal inputs "
                         "or scales may differ from the CPU reference", d->name);
    pthread_mutex_init(&c->lock, NULL);
    *bctx_p = c;
    return LOWBIT_SUCCESS;

release_context:
    clReleaseContext(c->context);
free_c:
    free(c);
    return st;
}

static void context_destroy(void *bctx)
{
    lb_ocl_ctx_t *c = bctx;
    if (!c)
        return;
    clFinish(c->queue);
    lb_ocl_kernels_release(c);
    lb_ocl_tables_release(c);
    clReleaseCommandQueue(c->queue);
    clReleaseContext(c->context);
    pthread_mutex_destroy(&c->lock);
    free(c);
}

cl_command_queue lb_ocl_queue(lb_ocl_ctx_t *c, void *bstream)
{
    return bstream ? ((lb_ocl_stream_t *)bstream)->queue : c->queue;
}

/* ---- memory --------------------------------------------------------------------------------------- */

static lowbit_status_t mem_alloc(void *bctx, size_t bytes, unsigned flags, void **handle_p)
{
    lb_ocl_ctx_t *c = bctx;
    if (flags & LOWBIT_MEM_PAGED)
        lb_ocl_host->log(LB_LOG_INFO, "opencl: paged (managed) memory is not available; allocating an "
                         "ordinary buffer of %zu bytes", bytes);
    if (bytes > c->dev->max_alloc)
        return lb_ocl_host->error(LOWBIT_ERR_OUT_OF_MEMORY, "opencl: %zu bytes requested, but %s allows at most "
                                  "%llu bytes in one allocation (CL_DEVICE_MAX_MEM_ALLOC_SIZE)",
                                  bytes, c->dev->name, (unsigned long long)c->dev->max_alloc);
    cl_int err;
    cl_mem mem = clCreateBuffer(c->context, CL_MEM_READ_WRITE, bytes, NULL, &err);
    if (!mem)
        return lb_ocl_fail("clCreateBuffer", err);
    *handle_p = mem;
    return LOWBIT_SUCCESS;
}

static void mem_free(void *bctx, void *handle, unsigned flags)
{
    if (handle)
        clReleaseMemObject((cl_mem)handle);
}

static lowbit_status_t mem_upload(void *bctx, void *bstream, const lb_mem_t *dst, const void *src)
{
    if (dst->bytes == 0)
        return LOWBIT_SUCCESS;
    cl_int err = clEnqueueWriteBuffer(lb_ocl_queue(bctx, bstream), (cl_mem)dst->handle, CL_TRUE, dst->offset,
                                      dst->bytes, src, 0, NULL, NULL);
    return err == CL_SUCCESS ? LOWBIT_SUCCESS : lb_ocl_fail("clEnqueueWriteBuffer", err);
}

static lowbit_status_t mem_download(void *bctx, void *bstream, const lb_mem_t *src, void *dst)
{
    if (src->bytes == 0)
        return LOWBIT_SUCCESS;
    cl_int err = clEnqueueReadBuffer(lb_ocl_queue(bctx, bstream), (cl_mem)src->handle, CL_TRUE, src->offset,
                                     src->bytes, dst, 0, NULL, NULL);
    return err == CL_SUCCESS ? LOWBIT_SUCCESS : lb_ocl_fail("clEnqueueReadBuffer", err);
}

static lowbit_status_t mem_fill(void *bctx, void *bstream, const lb_mem_t *dst, uint8_t value)
{
    if (dst->bytes == 0)
        return LOWBIT_SUCCESS;
    cl_uchar pattern = value;
    cl_int err = clEnqueueFillBuffer(lb_ocl_queue(bctx, bstream), (cl_mem)dst->handle, &pattern, 1,
                                     dst->offset, dst->bytes, 0, NULL, NULL);
    return err == CL_SUCCESS ? LOWBIT_SUCCESS : lb_ocl_fail("clEnqueueFillBuffer", err);
}

static lowbit_status_t mem_copy(void *bctx, void *bstream, const lb_mem_t *dst, const lb_mem_t *src)
{
    if (src->bytes == 0)
        return LOWBIT_SUCCESS;
    cl_int err = clEnqueueCopyBuffer(lb_ocl_queue(bctx, bstream), (cl_mem)src->handle, (cl_mem)dst->handle,
                                     src->offset, dst->offset, src->bytes, 0, NULL, NULL);
    return err == CL_SUCCESS ? LOWBIT_SUCCESS : lb_ocl_fail("clEnqueueCopyBuffer", err);
}

/* ---- streams -------------------------------------------------------------------------------------- */

/* A caller's queue must belong to our context and device and be in order (lowbit ops are sequences of
 * kernels that rely on it). */
static lowbit_status_t check_native_queue(lb_ocl_ctx_t *c, cl_command_queue q)
{
    cl_context qctx = NULL;
    cl_device_id qdev = NULL;
    cl_command_queue_properties props = 0;
    cl_int err = clGetCommandQueueInfo(q, CL_QUEUE_CONTEXT, sizeof qctx, &qctx, NULL);
    if (err == CL_SUCCESS)
        err = clGetCommandQueueInfo(q, CL_QUEUE_DEVICE, sizeof qdev, &qdev, NULL);
    if (err == CL_SUCCESS)
        err = clGetCommandQueueInfo(q, CL_QUEUE_PROPERTIES, sizeof props, &props, NULL);
    if (err != CL_SUCCESS)
        return lb_ocl_host->error(LOWBIT_ERR_INVALID_ARGUMENT, "opencl: native: not a valid cl_command_queue "
                                  "(clGetCommandQueueInfo failed: %s (%d))", lb_ocl_errname(err), (int)err);
    if (qctx != c->context || qdev != c->dev->id)
        return lb_ocl_host->error(LOWBIT_ERR_INVALID_ARGUMENT, "opencl: native: the cl_command_queue belongs to "
                                  "another %s than this lowbit context's (%s); wrap cl_mem/queues created on "
                                  "the context's own cl_context", qctx != c->context ? "cl_context" : "device",
                                  c->dev->name);
    if (props & CL_QUEUE_OUT_OF_ORDER_EXEC_MODE_ENABLE)
        return lb_ocl_host->error(LOWBIT_ERR_INVALID_ARGUMENT, "opencl: native: the cl_command_queue is "
                                  "out-of-order; lowbit streams must be in-order queues");
    return LOWBIT_SUCCESS;
}

static lowbit_status_t stream_create(void *bctx, void *native, void **bstream_p)
{
    lb_ocl_ctx_t *c = bctx;
    lb_ocl_stream_t *s = calloc(1, sizeof *s);
    if (!s)
        return lb_ocl_host->error(LOWBIT_ERR_OUT_OF_MEMORY, "opencl: out of host memory");
    lowbit_status_t st;
    if (native) {
        cl_command_queue q = (cl_command_queue)native;
        if ((st = check_native_queue(c, q)) != LOWBIT_SUCCESS)
            goto free_s;
        cl_int err = clRetainCommandQueue(q);
        if (err != CL_SUCCESS) {
            st = lb_ocl_fail("clRetainCommandQueue", err);
            goto free_s;
        }
        s->queue = q;
        s->wrapped = 1;
    } else {
        cl_int err;
        s->queue = clCreateCommandQueue(c->context, c->dev->id, CL_QUEUE_PROFILING_ENABLE, &err);
        if (!s->queue) {
            st = lb_ocl_fail("clCreateCommandQueue", err);
            goto free_s;
        }
    }
    *bstream_p = s;
    return LOWBIT_SUCCESS;

free_s:
    free(s);
    return st;
}

static lowbit_status_t stream_sync(void *bctx, void *bstream)
{
    cl_int err = clFinish(lb_ocl_queue(bctx, bstream));
    return err == CL_SUCCESS ? LOWBIT_SUCCESS : lb_ocl_fail("clFinish", err);
}

static void stream_destroy(void *bctx, void *bstream)
{
    lb_ocl_stream_t *s = bstream;
    if (!s)
        return;
    clFinish(s->queue);
    clReleaseCommandQueue(s->queue); /* a wrapped queue: drops only the reference we took */
    free(s);
}

/* ---- the table ------------------------------------------------------------------------------------ */

static const lb_backend_t backend = {
    .api_version = LB_BACKEND_API_VERSION,
    .struct_size = sizeof(lb_backend_t),
    .name = "opencl",
    .probe = probe,
    .device_info = device_info,
    .context_create = context_create,
    .context_destroy = context_destroy,
    .addressable = 0,
    .mem_alloc = mem_alloc,
    .mem_free = mem_free,
    .mem_upload = mem_upload,
    .mem_download = mem_download,
    .mem_fill = mem_fill,
    .mem_prefetch = NULL,
    .mem_copy = mem_copy,
    .stream_create = stream_create,
    .stream_sync = stream_sync,
    .stream_destroy = stream_destroy,
    .event_create = lb_ocl_event_create,
    .event_record = lb_ocl_event_record,
    .event_elapsed = lb_ocl_event_elapsed,
    .event_destroy = lb_ocl_event_destroy,
    .quantize = lb_ocl_quantize,
    .dequantize = lb_ocl_dequantize,
    .int8_quantize_rows = lb_ocl_int8_quantize_rows,
    .int8_quantize_cols = lb_ocl_int8_quantize_cols,
    .int8_gemm = lb_ocl_int8_gemm,
    .int8_dequant = lb_ocl_int8_dequant,
    .int8_matmul = lb_ocl_int8_matmul,
    .gemm_4bit = lb_ocl_gemm_4bit,
    .optimizer_step = lb_ocl_optimizer_step,
};

__attribute__((visibility("default"))) const lb_backend_t *lowbit_backend_module(void);

__attribute__((visibility("default"))) const lb_backend_t *lowbit_backend_module(void)
{
    return &backend;
}

/*
 * ocl_program.c -- OpenCL error reporting, the per-context cache of built programs/kernels, launches,
 * and the per-context cache of code tables.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ocl.h"

const char *lb_ocl_errname(cl_int err)
{
    switch (err) {
#define E(x) \
    case x: return #x
        E(CL_SUCCESS);
        E(CL_DEVICE_NOT_FOUND);
        E(CL_DEVICE_NOT_AVAILABLE);
        E(CL_COMPILER_NOT_AVAILABLE);
        E(CL_MEM_OBJECT_ALLOCATION_FAILURE);
        E(CL_OUT_OF_RESOURCES);
        E(CL_OUT_OF_HOST_MEMORY);
        E(CL_PROFILING_INFO_NOT_AVAILABLE);
        E(CL_MEM_COPY_OVERLAP);
        E(CL_IMAGE_FORMAT_MISMATCH);
        E(CL_IMAGE_FORMAT_NOT_SUPPORTED);
        E(CL_BUILD_PROGRAM_FAILURE);
        E(CL_MAP_FAILURE);
        E(CL_MISALIGNED_SUB_BUFFER_OFFSET);
        E(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST);
        E(CL_COMPILE_PROGRAM_FAILURE);
        E(CL_LINKER_NOT_AVAILABLE);
        E(CL_LINK_PROGRAM_FAILURE);
        E(CL_DEVICE_PARTITION_FAILED);
        E(CL_KERNEL_ARG_INFO_NOT_AVAILABLE);
        E(CL_INVALID_VALUE);
        E(CL_INVALID_DEVICE_TYPE);
        E(CL_INVALID_PLATFORM);
        E(CL_INVALID_DEVICE);
        E(CL_INVALID_CONTEXT);
        E(CL_INVALID_QUEUE_PROPERTIES);
        E(CL_INVALID_COMMAND_QUEUE);
        E(CL_INVALID_HOST_PTR);
        E(CL_INVALID_MEM_OBJECT);
        E(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR);
        E(CL_INVALID_IMAGE_SIZE);
        E(CL_INVALID_SAMPLER);
        E(CL_INVALID_BINARY);
        E(CL_INVALID_BUILD_OPTIONS);
        E(CL_INVALID_PROGRAM);
        E(CL_INVALID_PROGRAM_EXECUTABLE);
        E(CL_INVALID_KERNEL_NAME);
        E(CL_INVALID_KERNEL_DEFINITION);
        E(CL_INVALID_KERNEL);
        E(CL_INVALID_ARG_INDEX);
        E(CL_INVALID_ARG_VALUE);
        E(CL_INVALID_ARG_SIZE);
        E(CL_INVALID_KERNEL_ARGS);
        E(CL_INVALID_WORK_DIMENSION);
        E(CL_INVALID_WORK_GROUP_SIZE);
        E(CL_INVALID_WORK_ITEM_SIZE);
        E(CL_INVALID_GLOBAL_OFFSET);
        E(CL_INVALID_EVENT_WAIT_LIST);
        E(CL_INVALID_EVENT);
        E(CL_INVALID_OPERATION);
        E(CL_INVALID_GL_OBJECT);
        E(CL_INVALID_BUFFER_SIZE);
        E(CL_INVALID_MIP_LEVEL);
        E(CL_INVALID_GLOBAL_WORK_SIZE);
        E(CL_INVALID_PROPERTY);
        E(CL_INVALID_IMAGE_DESCRIPTOR);
        E(CL_INVALID_COMPILER_OPTIONS);
        E(CL_INVALID_LINKER_OPTIONS);
        E(CL_INVALID_DEVICE_PARTITION_COUNT);
#undef E
    case -1001: return "CL_PLATFORM_NOT_FOUND_KHR";
    default: return "unknown OpenCL error";
    }
}

lowbit_status_t lb_ocl_fail_as(lowbit_status_t status, const char *call, cl_int err)
{
    return lb_ocl_host->error(status, "opencl: %s failed: %s (%d)", call, lb_ocl_errname(err), (int)err);
}

lowbit_status_t lb_ocl_fail(const char *call, cl_int err)
{
    int oom = err == CL_MEM_OBJECT_ALLOCATION_FAILURE || err == CL_OUT_OF_HOST_MEMORY ||
              err == CL_INVALID_BUFFER_SIZE;
    return lb_ocl_fail_as(oom ? LOWBIT_ERR_OUT_OF_MEMORY : LOWBIT_ERR_DEVICE, call, err);
}

/* ---- programs ------------------------------------------------------------------------------------- */

/* The build log, with the first lines that mention an error first (they are what one needs to read). */
static void build_failure(lb_ocl_ctx_t *c, cl_program program, cl_int err, const char *options)
{
    enum { SHOWN = 1500 };
    size_t len = 0;
    char *log = NULL;
    if (clGetProgramBuildInfo(program, c->dev->id, CL_PROGRAM_BUILD_LOG, 0, NULL, &len) == CL_SUCCESS &&
        len > 0 && (log = malloc(len + 1)) != NULL) {
        if (clGetProgramBuildInfo(program, c->dev->id, CL_PROGRAM_BUILD_LOG, len, log, NULL) != CL_SUCCESS)
            len = 0;
        log[len] = '\0';
    }
    const char *shown = log ? log : "(no build log)";
    const char *first_error = log ? strstr(log, "error") : NULL;
    if (first_error) { /* start at the beginning of that line */
        while (first_error > log && first_error[-1] != '\n')
            first_error--;
        shown = first_error;
    }
    lb_ocl_host->log(LB_LOG_DEBUG, "opencl: build log for options '%s':\n%s", options, log ? log : "");
    lb_ocl_host->error(LOWBIT_ERR_DEVICE, "opencl: clBuildProgram failed: %s (%d) on %s with '%s': %.*s%s",
                       lb_ocl_errname(err), (int)err, c->dev->name, options, (int)SHOWN, shown,
                       strlen(shown) > SHOWN ? " [...]" : "");
    free(log);
}

lowbit_status_t lb_ocl_program_build(lb_ocl_ctx_t *c, const char *source, const char *options,
                                     cl_program *program_p)
{
    cl_int err;
    const char *src[1] = {source};
    cl_program program = clCreateProgramWithSource(c->context, 1, src, NULL, &err);
    if (!program)
        return lb_ocl_fail("clCreateProgramWithSource", err);
    err = clBuildProgram(program, 1, &c->dev->id, options, NULL, NULL);
    if (err != CL_SUCCESS) {
        if (err == CL_BUILD_PROGRAM_FAILURE || err == CL_INVALID_BUILD_OPTIONS)
            build_failure(c, program, err, options);
        else
            lb_ocl_fail("clBuildProgram", err);
        clReleaseProgram(program);
        return err == CL_OUT_OF_HOST_MEMORY ? LOWBIT_ERR_OUT_OF_MEMORY : LOWBIT_ERR_DEVICE;
    }
    if (lb_ocl_host->log) { /* warnings, if the compiler left any */
        size_t len = 0;
        char *log = NULL;
        if (clGetProgramBuildInfo(program, c->dev->id, CL_PROGRAM_BUILD_LOG, 0, NULL, &len) == CL_SUCCESS &&
            len > 2 && (log = malloc(len + 1)) != NULL &&
            clGetProgramBuildInfo(program, c->dev->id, CL_PROGRAM_BUILD_LOG, len, log, NULL) == CL_SUCCESS) {
            log[len] = '\0';
            lb_ocl_host->log(LB_LOG_DEBUG, "opencl: build log for '%s':\n%s", options, log);
        }
        free(log);
    }
    *program_p = program;
    return LOWBIT_SUCCESS;
}

/* Joined sources live for the process: kernels are cached per context, sources are few and small. */
#define LB_OCL_JOINED 8
static pthread_mutex_t joined_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    const char *source;
    char *joined;
} joined[LB_OCL_JOINED];

/* common.cl followed by `source` (NULL when out of memory): every program starts with the shared helpers. */
static const char *source_with_common(const char *source)
{
    const char *r = NULL;
    pthread_mutex_lock(&joined_lock);
    for (int i = 0; i < LB_OCL_JOINED && !r; i++) {
        if (joined[i].source == source) {
            r = joined[i].joined;
        } else if (!joined[i].source) {
            const char *common = LB_OCL_SRC(common);
            size_t a = strlen(common), b = strlen(source);
            char *j = malloc(a + b + 2);
            if (j) {
                memcpy(j, common, a);
                j[a] = '\n';
                memcpy(j + a + 1, source, b + 1);
                joined[i].source = source;
                joined[i].joined = j;
            }
            r = j;
            break;
        }
    }
    pthread_mutex_unlock(&joined_lock);
    return r;
}

static lowbit_status_t kernel_create(lb_ocl_ctx_t *c, const char *source, const char *name, const char *key,
                                     const char *options, lb_ocl_kernel_t **kernel_p)
{
    lb_ocl_kernel_t *k = calloc(1, sizeof *k);
    if (!k || !(k->key = strdup(key))) {
        free(k);
        return lb_ocl_host->error(LOWBIT_ERR_OUT_OF_MEMORY, "opencl: out of host memory");
    }
    lb_ocl_host->log(LB_LOG_DEBUG, "opencl: building %s with '%s'", name, options);
    const char *full_source = source_with_common(source);
    lowbit_status_t st = full_source ? lb_ocl_program_build(c, full_source, options, &k->program)
                                     : lb_ocl_host->error(LOWBIT_ERR_OUT_OF_MEMORY, "opencl: out of host memory");
    if (st != LOWBIT_SUCCESS)
        goto free_k;
    cl_int err;
    k->kernel = clCreateKernel(k->program, name, &err);
    if (!k->kernel) {
        st = lb_ocl_fail("clCreateKernel", err);
        goto release_program;
    }
    err = clGetKernelWorkGroupInfo(k->kernel, c->dev->id, CL_KERNEL_WORK_GROUP_SIZE, sizeof k->max_wg,
                                   &k->max_wg, NULL);
    if (err != CL_SUCCESS) {
        st = lb_ocl_fail("clGetKernelWorkGroupInfo", err);
        goto release_kernel;
    }
    pthread_mutex_init(&k->lock, NULL);
    *kernel_p = k;
    return LOWBIT_SUCCESS;

release_kernel:
    clReleaseKernel(k->kernel);
release_program:
    clReleaseProgram(k->program);
free_k:
    free(k->key);
    free(k);
    return st;
}

lowbit_status_t lb_ocl_kernel_get(lb_ocl_ctx_t *c, const char *source, const char *name, const char *options,
                                  lb_ocl_kernel_t **kernel_p)
{
    char full[512], key[600];
    snprintf(full, sizeof full, "%s %s", c->base_options, options);
    snprintf(key, sizeof key, "%s\n%s", name, full);

    lowbit_status_t st = LOWBIT_SUCCESS;
    pthread_mutex_lock(&c->lock);
    lb_ocl_kernel_t *k;
    for (k = c->kernels; k; k = k->next)
        if (strcmp(k->key, key) == 0)
            break;
    /* Built under the lock: a second thread asking for the same variant waits instead of building it
     * again; builds happen once per variant and context. */
    if (!k && (st = kernel_create(c, source, name, key, full, &k)) == LOWBIT_SUCCESS) {
        k->next = c->kernels;
        c->kernels = k;
    }
    pthread_mutex_unlock(&c->lock);
    if (st == LOWBIT_SUCCESS)
        *kernel_p = k;
    return st;
}

void lb_ocl_kernels_release(lb_ocl_ctx_t *c)
{
    lb_ocl_kernel_t *k = c->kernels, *next;
    for (; k; k = next) {
        next = k->next;
        clReleaseKernel(k->kernel);
        clReleaseProgram(k->program);
        pthread_mutex_destroy(&k->lock);
        free(k->key);
        free(k);
    }
    c->kernels = NULL;
}

lowbit_status_t lb_ocl_launch(lb_ocl_kernel_t *k, cl_command_queue queue, size_t groups, size_t local,
                              const lb_ocl_arg_t *args, int nargs)
{
    if (local > k->max_wg)
        return lb_ocl_host->error(LOWBIT_ERR_DEVICE,
                                  "opencl: work-group size %zu exceeds what the kernel allows on this device "
                                  "(%zu); lower the opencl.quantize.*threads tuning values",
                                  local, k->max_wg);
    size_t global = groups * local;
    cl_int err = CL_SUCCESS;
    const char *call = "clSetKernelArg";
    pthread_mutex_lock(&k->lock);
    for (int i = 0; i < nargs && err == CL_SUCCESS; i++)
        err = clSetKernelArg(k->kernel, (cl_uint)i, args[i].size, args[i].value);
    if (err == CL_SUCCESS) {
        call = "clEnqueueNDRangeKernel";
        err = clEnqueueNDRangeKernel(queue, k->kernel, 1, NULL, &global, &local, 0, NULL, NULL);
    }
    pthread_mutex_unlock(&k->lock);
    return err == CL_SUCCESS ? LOWBIT_SUCCESS : lb_ocl_fail(call, err);
}

/* ---- code tables ---------------------------------------------------------------------------------- */

/* Buckets of the 8-bit table that fit in the local memory left to the quantize kernel. */
static size_t q8_bucket_limit(const lb_ocl_ctx_t *c)
{
    const uint64_t reserve = 8192; /* the kernel's own arrays (reduction, up to 1024 work-items) */
    if (c->dev->local_mem <= reserve)
        return 0;
    uint64_t n = (c->dev->local_mem - reserve) / 4;
    return n > 16384 ? 16384 : (size_t)n;
}

static lowbit_status_t table_create(lb_ocl_ctx_t *c, const float *values, size_t count, lb_ocl_table_t *t)
{
    cl_int err;
    /* COPY_HOST_PTR copies at creation: no queue, no later write racing with kernels. */
    cl_mem mem = clCreateBuffer(c->context, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, count * sizeof *values,
                                (void *)values, &err);
    if (!mem)
        return lb_ocl_fail("clCreateBuffer", err);
    cl_mem q8b = NULL;
    uint32_t buckets = 0;
    if (count == 256) {
        uint32_t *words = NULL;
        size_t nwords = 0;
        int r = lb_ocl_q8_buckets(values, q8_bucket_limit(c), &words, &nwords);
        if (r < 0) {
            clReleaseMemObject(mem);
            return lb_ocl_host->error(LOWBIT_ERR_OUT_OF_MEMORY, "opencl: out of host memory");
        }
        if (r > 0) {
            q8b = clCreateBuffer(c->context, CL_MEM_READ_ONLY | CL_MEM_COPY_HOST_PTR, nwords * sizeof *words,
                                 words, &err);
            buckets = (uint32_t)(nwords - 6);
            free(words);
            if (!q8b) {
                clReleaseMemObject(mem);
                return lb_ocl_fail("clCreateBuffer", err);
            }
        } else {
            lb_ocl_host->log(LB_LOG_DEBUG, "opencl: 8-bit code table without a bucket table (unsorted, NaN, or "
                             "more than %zu buckets): using the binary search", q8_bucket_limit(c));
        }
    }
    /* Kernels already enqueued with an evicted table keep its buffers alive until they finish. */
    if (t->mem)
        clReleaseMemObject(t->mem);
    if (t->q8b)
        clReleaseMemObject(t->q8b);
    t->mem = mem;
    t->q8b = q8b;
    t->q8b_buckets = buckets;
    t->count = count;
    memcpy(t->values, values, count * sizeof *values);
    return LOWBIT_SUCCESS;
}

lowbit_status_t lb_ocl_table_get(lb_ocl_ctx_t *c, const float *values, size_t count, lb_ocl_tab_t *tab)
{
    lowbit_status_t st = LOWBIT_SUCCESS;
    pthread_mutex_lock(&c->lock);
    lb_ocl_table_t *hit = NULL, *victim = &c->tables[0];
    for (int i = 0; i < LB_OCL_TABLES; i++) {
        lb_ocl_table_t *t = &c->tables[i];
        if (t->mem && t->count == count && memcmp(t->values, values, count * sizeof *values) == 0) {
            hit = t;
            break;
        }
        if (!t->mem || (victim->mem && t->last_use < victim->last_use))
            victim = t;
    }
    if (!hit && (st = table_create(c, values, count, victim)) == LOWBIT_SUCCESS)
        hit = victim;
    if (hit) {
        hit->last_use = ++c->table_clock;
        /* the caller's references survive a concurrent eviction */
        clRetainMemObject(hit->mem);
        if (hit->q8b)
            clRetainMemObject(hit->q8b);
        tab->code = hit->mem;
        tab->q8b = hit->q8b;
        tab->q8b_buckets = hit->q8b_buckets;
    }
    pthread_mutex_unlock(&c->lock);
    return st;
}

void lb_ocl_table_put(lb_ocl_tab_t *tab)
{
    if (tab->code)
        clReleaseMemObject(tab->code);
    if (tab->q8b)
        clReleaseMemObject(tab->q8b);
    memset(tab, 0, sizeof *tab);
}

void lb_ocl_tables_release(lb_ocl_ctx_t *c)
{
    for (int i = 0; i < LB_OCL_TABLES; i++) {
        if (c->tables[i].mem)
            clReleaseMemObject(c->tables[i].mem);
        if (c->tables[i].q8b)
            clReleaseMemObject(c->tables[i].q8b);
        c->tables[i].mem = c->tables[i].q8b = NULL;
    }
}

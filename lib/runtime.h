/*
 * runtime.h -- internal objects of the runtime (contexts, buffers, streams), the backend registry, errors
 * and logging.  Not installed.
 */
#ifndef LOWBIT_RUNTIME_H
#define LOWBIT_RUNTIME_H

#include <pthread.h>
#include <stdatomic.h>

#include "backend.h"

#define LB_HIDDEN __attribute__((visibility("hidden")))

/* ---- errors and logging (error.c, log.c) ---- */

/* Records `fmt` as this thread's last error and returns `status`. */
LB_HIDDEN lowbit_status_t lb_error(lowbit_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
LB_HIDDEN lowbit_status_t lb_verror(lowbit_status_t status, const char *fmt, va_list ap);
/* Clears this thread's message (every public entry point does this first). */
LB_HIDDEN void lb_error_clear(void);
LB_HIDDEN void lb_log(lb_log_level_t level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
LB_HIDDEN int lb_log_enabled(lb_log_level_t level);

/* ---- backend registry (registry.c) ---- */

typedef struct lb_entry {
    const lb_backend_t *be;           /* NULL if the module could not be loaded */
    char name[32];
    int device_count;
    char reason[LOWBIT_REASON_MAX];
    char module_path[LOWBIT_PATH_MAX];
} lb_entry_t;

/* Probes once (pthread_once); returns the status of that probe. */
LB_HIDDEN lowbit_status_t lb_registry_init(void);
LB_HIDDEN int lb_registry_count(void);
LB_HIDDEN lb_entry_t *lb_registry_entry(int index);
/* The entry named `name` (NULL = default backend), or NULL with an error recorded (NO_DEVICE). */
LB_HIDDEN lb_entry_t *lb_registry_find(const char *name, lowbit_status_t *status_p);
LB_HIDDEN const lb_host_t *lb_host_services(void);
/* The built-in CPU backend (cpu_backend.c). */
LB_HIDDEN const lb_backend_t *lb_cpu_backend(void);

/* ---- objects ---- */

struct lb_tune_state; /* tune.h */

struct lowbit_context {
    lb_entry_t *entry;
    const lb_backend_t *be;
    int device;
    void *bctx;
    lowbit_device_info_t info;
    struct lowbit_stream *default_stream;
    struct lb_tune_state *tune;
    atomic_int live_buffers;
    atomic_int live_streams;
};

/* The memory behind a buffer and all its views; freed when the last reference goes. */
typedef struct lb_alloc {
    atomic_int refs;
    lowbit_context_t *ctx;
    void *handle;
    size_t bytes;
    unsigned flags;
    int wrapped; /* caller-owned: never freed by lowbit */
} lb_alloc_t;

struct lowbit_buffer {
    lb_alloc_t *root;
    size_t offset; /* from the start of the root allocation */
    size_t bytes;
};

struct lowbit_stream {
    lowbit_context_t *ctx;
    void *bstream;
    int is_default;
};

/* Fills *mem for buf (which may be NULL: *mem is zeroed). */
LB_HIDDEN void lb_buffer_mem(const lowbit_buffer_t *buf, lb_mem_t *mem);
/* The backend stream to use for `stream` on ctx (NULL = default) or an error (INVALID_ARGUMENT). */
LB_HIDDEN lowbit_status_t lb_stream_resolve(const lowbit_context_t *ctx, const lowbit_stream_t *stream,
                                            void **bstream_p);
/* Fills the launch struct for an op. */
LB_HIDDEN lowbit_status_t lb_launch_init(lowbit_context_t *ctx, lowbit_stream_t *stream, lb_launch_t *l);
/* UNSUPPORTED error naming backend and op, for NULL op slots. */
LB_HIDDEN lowbit_status_t lb_unsupported_op(const lowbit_context_t *ctx, const char *op);

#endif /* LOWBIT_RUNTIME_H */

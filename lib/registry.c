/*
 * registry.c -- probing: which backends exist, which have devices, which one new contexts use.
 *
 * Probing runs once, lazily (pthread_once from lowbit_init or the first call that needs it), never in a
 * constructor: loading a GPU driver is slow and may fail, and a program that only links lowbit should not
 * pay for it.  GPU backends are modules found relative to liblowbit.so (dladdr) and on LOWBIT_MODULE_PATH.
 */
#include "config.h"

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codes.h"
#include "runtime.h"
#include "tune.h"

enum { LB_NBACKENDS = 4 };
static const char *const lb_order[LB_NBACKENDS] = {"cuda", "hip", "opencl", "cpu"};

static lb_entry_t lb_entries[LB_NBACKENDS];
static int lb_default = -1;      /* index of the default backend, -1 if none */
static lowbit_status_t lb_probe_status = LOWBIT_SUCCESS;
static char lb_probe_message[512];
static pthread_once_t lb_once = PTHREAD_ONCE_INIT;

/* ---- services offered to modules ---- */

static lowbit_status_t lb_host_error(lowbit_status_t status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lb_verror(status, fmt, ap);
    va_end(ap);
    return status;
}

static void lb_host_log(lb_log_level_t level, const char *fmt, ...)
{
    if (!lb_log_enabled(level))
        return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    lb_log(level, "%s", line);
}

static const lb_host_t lb_host = {
    .api_version = LB_BACKEND_API_VERSION,
    .error = lb_host_error,
    .log = lb_host_log,
    .tune_get = lb_tune_lookup,
    .code = lb_code,
    .quantize_8bit_value = lb_quantize_8bit_value,
};

const lb_host_t *lb_host_services(void)
{
    return &lb_host;
}

/* ---- module loading ---- */

static int lb_backend_built(const char *name)
{
#ifdef LOWBIT_BUILT_CUDA
    if (strcmp(name, "cuda") == 0) return 1;
#endif
#ifdef LOWBIT_BUILT_HIP
    if (strcmp(name, "hip") == 0) return 1;
#endif
#ifdef LOWBIT_BUILT_OPENCL
    if (strcmp(name, "opencl") == 0) return 1;
#endif
    return 0;
}

/* The module directory next to this library: <dir of liblowbit.so>/lowbit.  Lets a relocated or
 * DESTDIR-staged installation find its own modules rather than those of another installation. */
static int lb_module_dir_relative(char *out, size_t len)
{
#ifdef HAVE_DLADDR
    Dl_info info;
    if (dladdr((void *)lb_module_dir_relative, &info) == 0 || info.dli_fname == NULL)
        return 0;
    const char *slash = strrchr(info.dli_fname, '/');
    if (slash == NULL)
        return 0;
    int n = snprintf(out, len, "%.*s/lowbit", (int)(slash - info.dli_fname), info.dli_fname);
    return n > 0 && (size_t)n < len;
#else
    (void)out;
    (void)len;
    return 0;
#endif
}

/* Tries `dir`/lowbit-<name>.so.  Returns 1 when a file existed there (loaded or not), 0 otherwise. */
static int lb_module_try(lb_entry_t *e, const char *dir)
{
    char path[LOWBIT_PATH_MAX];
    if (snprintf(path, sizeof path, "%s/lowbit-%s.so", dir, e->name) >= (int)sizeof path)
        return 0;
    if (access(path, F_OK) != 0) {
        lb_log(LB_LOG_DEBUG, "%s: no module at %s", e->name, path);
        return 0;
    }
    snprintf(e->module_path, sizeof e->module_path, "%s", path);
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        snprintf(e->reason, sizeof e->reason, "module %s could not be loaded: %s", path, dlerror());
        return 1;
    }
    lb_module_fn fn = (lb_module_fn)dlsym(h, LB_MODULE_SYMBOL);
    const lb_backend_t *be = fn != NULL ? fn() : NULL;
    if (be == NULL) {
        snprintf(e->reason, sizeof e->reason, "module %s has no usable %s symbol", path, LB_MODULE_SYMBOL);
    } else if (be->api_version != LB_BACKEND_API_VERSION || be->struct_size != sizeof(lb_backend_t)) {
        snprintf(e->reason, sizeof e->reason,
                 "module %s was built for backend API %u (table size %u); this liblowbit %s needs API %u "
                 "(table size %zu): install the matching module",
                 path, be->api_version, be->struct_size, PACKAGE_VERSION, LB_BACKEND_API_VERSION,
                 sizeof(lb_backend_t));
    } else if (be->name == NULL || strcmp(be->name, e->name) != 0) {
        snprintf(e->reason, sizeof e->reason, "module %s registers backend '%s', expected '%s'", path,
                 be->name ? be->name : "(null)", e->name);
    } else {
        e->be = be;
        return 1;
    }
    /* A refused module is never used; keep it mapped only if it loaded cleanly. */
    dlclose(h);
    return 1;
}

static void lb_module_load(lb_entry_t *e)
{
    char searched[LOWBIT_PATH_MAX * 2] = "";
    const char *env = getenv("LOWBIT_MODULE_PATH");
    if (env != NULL && *env != '\0') {
        char *copy = strdup(env);
        for (char *save = NULL, *dir = copy ? strtok_r(copy, ":", &save) : NULL; dir != NULL;
             dir = strtok_r(NULL, ":", &save)) {
            size_t used = strlen(searched);
            snprintf(searched + used, sizeof searched - used, "%s%s", used ? ", " : "", dir);
            if (lb_module_try(e, dir)) {
                free(copy);
                return;
            }
        }
        free(copy);
    }
    char dir[LOWBIT_PATH_MAX];
    const char *dirs[2] = {NULL, LOWBIT_MODULEDIR};
    if (lb_module_dir_relative(dir, sizeof dir))
        dirs[0] = dir;
    for (int i = 0; i < 2; i++) {
        if (dirs[i] == NULL || (i == 1 && dirs[0] != NULL && strcmp(dirs[0], dirs[1]) == 0))
            continue;
        size_t used = strlen(searched);
        snprintf(searched + used, sizeof searched - used, "%s%s", used ? ", " : "", dirs[i]);
        if (lb_module_try(e, dirs[i]))
            return;
    }
    if (lb_backend_built(e->name))
        snprintf(e->reason, sizeof e->reason, "module lowbit-%s.so not found (searched %s)", e->name, searched);
    else
        snprintf(e->reason, sizeof e->reason,
                 "not built: configure did not find its toolkit (module lowbit-%s.so not found in %s)", e->name,
                 searched);
}

/* ---- probing ---- */

static int lb_has_gpu(const lb_entry_t *e)
{
    for (int d = 0; d < e->device_count; d++) {
        lowbit_device_info_t info;
        memset(&info, 0, sizeof info);
        if (e->be->device_info(d, &info) == LOWBIT_SUCCESS && info.is_gpu)
            return 1;
    }
    return 0;
}

static void lb_probe_one(lb_entry_t *e)
{
    if (strcmp(e->name, "cpu") == 0)
        e->be = lb_cpu_backend();
    else
        lb_module_load(e);
    if (e->be == NULL)
        return;
    char reason[LOWBIT_REASON_MAX] = "";
    int n = e->be->probe(&lb_host, reason, sizeof reason);
    e->device_count = n > 0 ? n : 0;
    snprintf(e->reason, sizeof e->reason, "%s", reason[0] ? reason : (n > 0 ? "available" : "no device"));
}

static void lb_probe(void)
{
    const char *forced = getenv("LOWBIT_BACKEND");
    if (forced != NULL && *forced == '\0')
        forced = NULL;
    int forced_index = -1;
    for (int i = 0; i < LB_NBACKENDS; i++)
        if (forced != NULL && strcmp(forced, lb_order[i]) == 0)
            forced_index = i;
    if (forced != NULL && forced_index < 0) {
        lb_probe_status = LOWBIT_ERR_INVALID_ARGUMENT;
        snprintf(lb_probe_message, sizeof lb_probe_message,
                 "LOWBIT_BACKEND=%s is not one of cuda, hip, opencl, cpu", forced);
    }
    for (int i = 0; i < LB_NBACKENDS; i++) {
        lb_entry_t *e = &lb_entries[i];
        snprintf(e->name, sizeof e->name, "%s", lb_order[i]);
        if (forced_index >= 0 && i != forced_index) {
            snprintf(e->reason, sizeof e->reason, "not probed: LOWBIT_BACKEND=%s", forced);
            lb_log(LB_LOG_DEBUG, "%s: %s", e->name, e->reason);
            continue;
        }
        lb_probe_one(e);
        lb_log(LB_LOG_DEBUG, "%s: %s%s%s", e->name, e->device_count > 0 ? "usable: " : "rejected: ", e->reason,
               e->module_path[0] ? "" : "");
        if (lb_default >= 0 || e->device_count == 0)
            continue;
        if (i == forced_index || strcmp(e->name, "cpu") == 0 || lb_has_gpu(e))
            lb_default = i;
        else
            lb_log(LB_LOG_DEBUG, "%s: skipped for the default: no GPU device (set LOWBIT_BACKEND=%s to use it)",
                   e->name, e->name);
    }
    if (lb_default >= 0)
        lb_log(LB_LOG_DEBUG, "default backend: %s", lb_entries[lb_default].name);
    else if (forced_index >= 0)
        lb_log(LB_LOG_WARN, "LOWBIT_BACKEND=%s is not available: %s", forced, lb_entries[forced_index].reason);
}

lowbit_status_t lb_registry_init(void)
{
    pthread_once(&lb_once, lb_probe);
    if (lb_probe_status != LOWBIT_SUCCESS)
        return lb_error(lb_probe_status, "%s", lb_probe_message);
    return LOWBIT_SUCCESS;
}

int lb_registry_count(void)
{
    return LB_NBACKENDS;
}

lb_entry_t *lb_registry_entry(int index)
{
    return index >= 0 && index < LB_NBACKENDS ? &lb_entries[index] : NULL;
}

lb_entry_t *lb_registry_find(const char *name, lowbit_status_t *status_p)
{
    lowbit_status_t st = lb_registry_init();
    if (st != LOWBIT_SUCCESS) {
        *status_p = st;
        return NULL;
    }
    if (name == NULL) {
        if (lb_default < 0) {
            const char *forced = getenv("LOWBIT_BACKEND");
            lb_entry_t *e = NULL;
            for (int i = 0; i < LB_NBACKENDS; i++)
                if (forced && strcmp(forced, lb_order[i]) == 0)
                    e = &lb_entries[i];
            *status_p = lb_error(LOWBIT_ERR_NO_DEVICE, "backend '%s' (LOWBIT_BACKEND) is not available: %s",
                                 forced ? forced : "?", e ? e->reason : "no backend has a device");
            return NULL;
        }
        *status_p = LOWBIT_SUCCESS;
        return &lb_entries[lb_default];
    }
    for (int i = 0; i < LB_NBACKENDS; i++) {
        lb_entry_t *e = &lb_entries[i];
        if (strcmp(name, e->name) != 0)
            continue;
        if (e->device_count == 0) {
            *status_p = lb_error(LOWBIT_ERR_NO_DEVICE, "backend '%s' is not available: %s", name, e->reason);
            return NULL;
        }
        *status_p = LOWBIT_SUCCESS;
        return e;
    }
    *status_p = lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "backend: '%s' is not one of cuda, hip, opencl, cpu", name);
    return NULL;
}

/* ---- public API ---- */

LOWBIT_API lowbit_status_t lowbit_init(void)
{
    lb_error_clear();
    return lb_registry_init();
}

LOWBIT_API lowbit_status_t lowbit_backend_count(int *count_p)
{
    lb_error_clear();
    if (count_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "count_p: must not be NULL");
    lb_registry_init(); /* the list is meaningful even when LOWBIT_BACKEND is wrong */
    *count_p = LB_NBACKENDS;
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_backend_info(int index, lowbit_backend_info_t *info_p)
{
    lb_error_clear();
    if (info_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "info_p: must not be NULL");
    if (index < 0 || index >= LB_NBACKENDS)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "index: %d is outside [0, %d)", index, LB_NBACKENDS);
    lb_registry_init();
    const lb_entry_t *e = &lb_entries[index];
    lowbit_backend_info_t info;
    memset(&info, 0, sizeof info);
    snprintf(info.name, sizeof info.name, "%s", e->name);
    info.available = e->device_count > 0;
    info.selected = index == lb_default;
    info.device_count = e->device_count;
    snprintf(info.reason, sizeof info.reason, "%s", e->reason);
    snprintf(info.module_path, sizeof info.module_path, "%s", e->module_path);
    *info_p = info;
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_device_count(const char *backend, int *count_p)
{
    lb_error_clear();
    if (count_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "count_p: must not be NULL");
    lowbit_status_t st;
    lb_entry_t *e = lb_registry_find(backend, &st);
    if (e == NULL)
        return st;
    *count_p = e->device_count;
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_device_info(const char *backend, int index, lowbit_device_info_t *info_p)
{
    lb_error_clear();
    if (info_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "info_p: must not be NULL");
    lowbit_status_t st;
    lb_entry_t *e = lb_registry_find(backend, &st);
    if (e == NULL)
        return st;
    if (index < 0 || index >= e->device_count)
        return lb_error(LOWBIT_ERR_NO_DEVICE, "device: %d is outside [0, %d) for backend %s", index,
                        e->device_count, e->name);
    lowbit_device_info_t info;
    memset(&info, 0, sizeof info);
    st = e->be->device_info(index, &info);
    if (st != LOWBIT_SUCCESS)
        return st;
    snprintf(info.backend, sizeof info.backend, "%s", e->name);
    info.index = index;
    *info_p = info;
    return LOWBIT_SUCCESS;
}

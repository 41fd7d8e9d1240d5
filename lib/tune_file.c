/*
 * tune_file.c -- the user tuning cache file (JSON, through jansson):
 *
 *   {"format": "lowbit-tuning", "version": 1,
 *    "entries": [{"arch": "cpu:x86_64", "key": "cpu.int8.gemm_kc", "value": 256,
 *                 "device": "AMD EPYC 7B13", "driver": "lowbit 0.1.0", "lowbit": "0.1.0",
 *                 "tuned": "2026-11-23T17:00:00Z"}, ...]}
 *
 * The file is never trusted: a file that is not valid JSON of this format and version is ignored as a
 * whole; an entry with a missing or mistyped field, an unknown key, a value outside the key's range or a
 * second value for the same (arch, key) is logged and ignored while the others load.  Writers merge under
 * an advisory lock and replace the file by rename, so concurrent lowbit-tune runs cannot leave a torn file.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tune.h"

/* A tuning file is a few KiB; anything this large is not one (and is not read into memory). */
#define LB_TUNE_FILE_MAX (16 << 20)

int lb_tune_file_path(char *out, size_t len, int *disabled_p)
{
    const char *env = getenv("LOWBIT_TUNING_FILE");
    *disabled_p = 0;
    out[0] = '\0';
    if (env != NULL && strcmp(env, "0") == 0) {
        *disabled_p = 1;
        return 0;
    }
    int w;
    const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
    if (env != NULL && *env != '\0')
        w = snprintf(out, len, "%s", env);
    else if (xdg != NULL && xdg[0] == '/') /* the XDG spec: relative values are invalid and ignored */
        w = snprintf(out, len, "%s/lowbit/tuning.json", xdg);
    else if (home != NULL && *home != '\0')
        w = snprintf(out, len, "%s/.cache/lowbit/tuning.json", home);
    else
        return -1;
    if (w < 0 || (size_t)w >= len) {
        out[0] = '\0';
        return -1;
    }
    return 0;
}

/* Copies an optional string member; returns -1 when it is present but not a string that fits. */
static int lb_opt_string(json_t *obj, const char *name, char *out, size_t len)
{
    json_t *v = json_object_get(obj, name);
    out[0] = '\0';
    if (v == NULL)
        return 0;
    if (!json_is_string(v) || strlen(json_string_value(v)) >= len)
        return -1;
    snprintf(out, len, "%s", json_string_value(v));
    return 0;
}

/* Validates entry `i`; returns 0 and fills *e, or -1 with the reason in `why`. */
static int lb_entry_parse(json_t *obj, lb_tune_entry_t *e, char *why, size_t len)
{
    memset(e, 0, sizeof *e);
    if (!json_is_object(obj))
        return snprintf(why, len, "not an object"), -1;
    json_t *arch = json_object_get(obj, "arch"), *key = json_object_get(obj, "key");
    json_t *value = json_object_get(obj, "value");
    if (!json_is_string(arch) || !json_is_string(key) || !json_is_integer(value))
        return snprintf(why, len, "needs \"arch\" and \"key\" strings and an integer \"value\""), -1;
    const char *a = json_string_value(arch), *k = json_string_value(key);
    if (strchr(a, ':') == NULL || strlen(a) >= sizeof e->arch)
        return snprintf(why, len, "arch \"%.64s\" is not \"backend:architecture\"", a), -1;
    const lb_tune_key_t *kk = lb_tune_key_find(k);
    if (kk == NULL)
        return snprintf(why, len, "\"%.64s\" is not a tuning parameter", k), -1;
    json_int_t v = json_integer_value(value);
    if (v < kk->min || v > kk->max)
        return snprintf(why, len, "%s = %lld is outside [%lld, %lld]", k, (long long)v, (long long)kk->min,
                        (long long)kk->max),
               -1;
    if (lb_opt_string(obj, "device", e->device, sizeof e->device) < 0 ||
        lb_opt_string(obj, "driver", e->driver, sizeof e->driver) < 0 ||
        lb_opt_string(obj, "lowbit", e->version, sizeof e->version) < 0 ||
        lb_opt_string(obj, "tuned", e->tuned, sizeof e->tuned) < 0)
        return snprintf(why, len, "\"device\", \"driver\", \"lowbit\" and \"tuned\" must be short strings"), -1;
    snprintf(e->arch, sizeof e->arch, "%s", a);
    snprintf(e->key, sizeof e->key, "%s", kk->key);
    e->value = (int64_t)v;
    return 0;
}

static int lb_entry_find(const lb_tune_file_t *f, const char *arch, const char *key)
{
    for (int i = 0; i < f->count; i++)
        if (strcmp(f->entries[i].arch, arch) == 0 && strcmp(f->entries[i].key, key) == 0)
            return i;
    return -1;
}

/* Opens `path` for reading if it is a regular file of sane size; NULL with the reason in f->status. */
static FILE *lb_file_open(const char *path, lb_tune_file_t *f)
{
    struct stat sb;
    if (stat(path, &sb) != 0) {
        snprintf(f->status, sizeof f->status, "%s: %s", errno == ENOENT ? "not found" : "cannot stat",
                 strerror(errno));
        return NULL;
    }
    if (!S_ISREG(sb.st_mode)) {
        snprintf(f->status, sizeof f->status, "ignored: not a regular file");
        return NULL;
    }
    if (sb.st_size > LB_TUNE_FILE_MAX) {
        snprintf(f->status, sizeof f->status, "ignored: %lld bytes is too large for a tuning file",
                 (long long)sb.st_size);
        return NULL;
    }
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        snprintf(f->status, sizeof f->status, "ignored: cannot open: %s", strerror(errno));
    return fp;
}

/* Checks the header; returns the entries array, or NULL with the reason in f->status. */
static json_t *lb_file_header(json_t *root, lb_tune_file_t *f)
{
    json_t *format = json_object_get(root, "format"), *version = json_object_get(root, "version");
    json_t *entries = json_object_get(root, "entries");
    if (!json_is_object(root) || !json_is_string(format) ||
        strcmp(json_string_value(format), LB_TUNE_FILE_FORMAT) != 0) {
        snprintf(f->status, sizeof f->status, "ignored: not a lowbit tuning file (no \"format\": \"%s\")",
                 LB_TUNE_FILE_FORMAT);
        return NULL;
    }
    if (!json_is_integer(version) || json_integer_value(version) != LB_TUNE_FILE_VERSION) {
        if (json_is_integer(version))
            snprintf(f->status, sizeof f->status, "ignored: format version %lld (this lowbit reads version %d)",
                     (long long)json_integer_value(version), LB_TUNE_FILE_VERSION);
        else
            snprintf(f->status, sizeof f->status, "ignored: no integer \"version\" (this lowbit reads %d)",
                     LB_TUNE_FILE_VERSION);
        return NULL;
    }
    if (!json_is_array(entries)) {
        snprintf(f->status, sizeof f->status, "ignored: \"entries\" is not an array");
        return NULL;
    }
    return entries;
}

static void lb_file_entries(const char *path, json_t *entries, lb_tune_file_t *f)
{
    size_t n = json_array_size(entries);
    f->entries = calloc(n ? n : 1, sizeof *f->entries);
    if (f->entries == NULL) {
        snprintf(f->status, sizeof f->status, "ignored: out of host memory");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        char why[200];
        lb_tune_entry_t *e = &f->entries[f->count];
        if (lb_entry_parse(json_array_get(entries, i), e, why, sizeof why) != 0) {
        } else if (lb_entry_find(f, e->arch, e->key) >= 0) {
            snprintf(why, sizeof why, "a second value for %s on %s", e->key, e->arch);
        } else {
            f->count++;
            continue;
        }
        lb_log(LB_LOG_WARN, "tuning file %s: entry %zu ignored: %s", path, i, why);
        f->rejected++;
    }
    f->loaded = 1;
    snprintf(f->status, sizeof f->status, "loaded: %d entries, %d rejected", f->count, f->rejected);
}

void lb_tune_file_read(const char *path, lb_tune_file_t *f)
{
    memset(f, 0, sizeof *f);
    snprintf(f->path, sizeof f->path, "%s", path);
    FILE *fp = lb_file_open(path, f);
    if (fp == NULL)
        return;
    json_error_t jerr;
    json_t *root = json_loadf(fp, JSON_REJECT_DUPLICATES, &jerr);
    fclose(fp);
    json_t *entries;
    if (root == NULL)
        snprintf(f->status, sizeof f->status, "ignored: line %d column %d: %s", jerr.line, jerr.column, jerr.text);
    else if ((entries = lb_file_header(root, f)) != NULL)
        lb_file_entries(path, entries, f);
    json_decref(root);
}

void lb_tune_file_free(lb_tune_file_t *f)
{
    free(f->entries);
    f->entries = NULL;
    f->count = 0;
}

/* ---- writing ------------------------------------------------------------------------------------------ */

static json_t *lb_entry_json(const lb_tune_entry_t *e)
{
    json_t *o = json_pack("{s:s, s:s, s:I}", "arch", e->arch, "key", e->key, "value", (json_int_t)e->value);
    const char *names[] = {"device", "driver", "lowbit", "tuned"};
    const char *vals[] = {e->device, e->driver, e->version, e->tuned};
    for (int i = 0; o != NULL && i < 4; i++)
        if (vals[i][0] != '\0')
            json_object_set_new(o, names[i], json_string(vals[i]));
    return o;
}

/* Writes f as JSON to a fresh temporary file next to `path` and renames it over `path`. */
static lowbit_status_t lb_file_write_atomic(const char *path, const lb_tune_file_t *f)
{
    json_t *arr = json_array();
    for (int i = 0; arr != NULL && i < f->count; i++)
        json_array_append_new(arr, lb_entry_json(&f->entries[i]));
    json_t *root = json_pack("{s:s, s:i, s:o}", "format", LB_TUNE_FILE_FORMAT, "version", LB_TUNE_FILE_VERSION,
                             "entries", arr);
    char tmp[LOWBIT_PATH_MAX + 16];
    snprintf(tmp, sizeof tmp, "%s.XXXXXX", path);
    int fd = root ? mkstemp(tmp) : -1;
    if (fd < 0) {
        json_decref(root);
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "tuning file %s: cannot create a temporary file: %s", path,
                        root ? strerror(errno) : "out of host memory");
    }
    fchmod(fd, 0644); /* mkstemp makes it 0600; the cache is not secret */
    int bad = json_dumpfd(root, fd, JSON_INDENT(1) | JSON_PRESERVE_ORDER) != 0 || write(fd, "\n", 1) != 1;
    bad |= fsync(fd) != 0;
    bad |= close(fd) != 0;
    json_decref(root);
    if (bad || rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "tuning file %s: cannot write: %s", path, strerror(err));
    }
    return LOWBIT_SUCCESS;
}

/* mkdir -p of the directory part of `path` (the default cache directory may not exist yet). */
static void lb_mkdirs_for(const char *path)
{
    char dir[LOWBIT_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    for (char *p = dir + 1; *p != '\0'; p++)
        if (*p == '/') {
            *p = '\0';
            mkdir(dir, 0755);
            *p = '/';
        }
}

static lowbit_status_t lb_merge_locked(const char *path, const lb_tune_entry_t *add, int n)
{
    lb_tune_file_t f;
    lb_tune_file_read(path, &f);
    if (!f.loaded && strncmp(f.status, "not found", 9) != 0)
        lb_log(LB_LOG_WARN, "tuning file %s: %s; writing a new one", path, f.status);
    lb_tune_entry_t *all = realloc(f.entries, (size_t)(f.count + n + 1) * sizeof *all);
    if (all == NULL) {
        lb_tune_file_free(&f);
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "tuning file: out of host memory");
    }
    f.entries = all;
    for (int i = 0; i < n; i++) {
        int j = lb_entry_find(&f, add[i].arch, add[i].key);
        f.entries[j >= 0 ? j : f.count++] = add[i];
    }
    lowbit_status_t st = lb_file_write_atomic(path, &f);
    lb_tune_file_free(&f);
    return st;
}

lowbit_status_t lb_tune_file_merge(const char *path, const lb_tune_entry_t *add, int n)
{
    if (strlen(path) + 16 >= LOWBIT_PATH_MAX)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "path: longer than %d bytes", LOWBIT_PATH_MAX - 16);
    lb_mkdirs_for(path);
    /* The lock file serializes read-merge-write between processes so no update is lost; the rename alone
     * already guarantees readers never see a partial file. */
    char lock[LOWBIT_PATH_MAX + 8];
    snprintf(lock, sizeof lock, "%s.lock", path);
    int lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (lfd >= 0)
        while (flock(lfd, LOCK_EX) != 0 && errno == EINTR) {
        }
    lowbit_status_t st = lb_merge_locked(path, add, n);
    if (lfd >= 0)
        close(lfd); /* releases the lock */
    return st;
}

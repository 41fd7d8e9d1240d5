/*
 * tune.h -- the tuning table (internal).
 *
 *   tune.c         the known keys with their ranges, the per-context state (overrides, the cache file's
 *                  entries for the context's architecture), the lookup order and the public lowbit_tune_*.
 *   tune_tables.c  the built-in values, organized vendor -> architecture -> device -> default.
 *   tune_file.c    the user cache file (JSON): path resolution, validated reading, atomic merged writing.
 *
 * Lookup order for a context: lowbit_tune_set override -> cache file entry for this architecture ->
 * built-in device -> architecture -> vendor -> generic table -> the kernel's own default.
 */
#ifndef LOWBIT_TUNE_H
#define LOWBIT_TUNE_H

#include "runtime.h"

/* ---- known keys (tune.c) ---- */

typedef struct lb_tune_key {
    const char *key;
    int64_t min, max;
} lb_tune_key_t;

/* The key named `key`, or NULL when no kernel reads such a parameter. */
LB_HIDDEN const lb_tune_key_t *lb_tune_key_find(const char *key);
/* Key number i (0, 1, ...), NULL past the last. */
LB_HIDDEN const lb_tune_key_t *lb_tune_key_at(int i);

/* ---- per-context state (tune.c) ---- */

/* Creates the tuning state of a context for architecture key `arch_key` ("cuda:sm_90", "cpu:x86_64"). */
LB_HIDDEN lowbit_status_t lb_tune_create(const char *arch_key, struct lb_tune_state **state_p);
LB_HIDDEN void lb_tune_destroy(struct lb_tune_state *state);
/* host->tune_get */
LB_HIDDEN int64_t lb_tune_lookup(const lowbit_context_t *ctx, const char *key, int64_t dflt);

/* ---- built-in tables (tune_tables.c) ---- */

/* Which device a built-in lookup is for. */
typedef struct lb_tune_target {
    const char *arch_key; /* "cuda:sm_90", "opencl:<normalized device name>", "cpu:x86_64" */
    const char *device;   /* the device's name as the backend reports it */
    int is_gpu;
} lb_tune_target_t;

/* Looks `key` up in the built-in tables, most specific first; returns 1 and sets *value_p (and *table_p to
 * the matching table's name, "cuda/sm_90" ...) when one holds it. */
LB_HIDDEN int lb_tune_builtin_get(const lb_tune_target_t *t, const char *key, int64_t *value_p,
                                  const char **table_p);
/* Describes the built-in tables that apply to `t`, most specific first ("cuda/sm_90 [measured sm_90 (H100)]
 * < cuda < generic"), and returns how many distinct keys they give a value. */
LB_HIDDEN int lb_tune_builtin_describe(const lb_tune_target_t *t, char *out, size_t len);
/* Checks every built-in value against the key table (the tests call this; 0 = all valid). */
LB_HIDDEN int lb_tune_builtin_check(char *msg, size_t len);

/* ---- the cache file (tune_file.c) ---- */

typedef struct lb_tune_entry {
    char arch[LOWBIT_NAME_MAX];
    char key[64];
    int64_t value;
    char device[LOWBIT_NAME_MAX];
    char driver[64];
    char version[32]; /* lowbit version that wrote it */
    char tuned[32];   /* UTC time it was written */
} lb_tune_entry_t;

typedef struct lb_tune_file {
    char path[LOWBIT_PATH_MAX]; /* "" when disabled or no path could be formed */
    char status[LOWBIT_REASON_MAX];
    int disabled;               /* LOWBIT_TUNING_FILE=0 */
    int loaded;                 /* the file was read and parsed (entries may still have been rejected) */
    int rejected;               /* entries reported and ignored */
    int count;
    lb_tune_entry_t *entries;   /* the valid ones */
} lb_tune_file_t;

#define LB_TUNE_FILE_FORMAT "lowbit-tuning"
#define LB_TUNE_FILE_VERSION 1

/* The cache file path: LOWBIT_TUNING_FILE, else $XDG_CACHE_HOME/lowbit/tuning.json, else
 * $HOME/.cache/lowbit/tuning.json.  Returns 0 with *disabled_p = 1 for LOWBIT_TUNING_FILE=0, -1 when no
 * path can be formed. */
LB_HIDDEN int lb_tune_file_path(char *out, size_t len, int *disabled_p);
/* Reads and validates `path` into *f (zeroed first).  Never fails: a missing, unreadable or malformed
 * file leaves f->loaded = 0 with the reason in f->status; a bad entry is logged and counted in
 * f->rejected, and the rest loads. */
LB_HIDDEN void lb_tune_file_read(const char *path, lb_tune_file_t *f);
LB_HIDDEN void lb_tune_file_free(lb_tune_file_t *f);
/* Merges `add` (n entries) into the file at `path` under an advisory lock: entries of the file with the
 * same (arch, key) are replaced, all others kept; written to a temporary file in the same directory and
 * renamed over `path`, so readers see the old or the new file, never a partial one. */
LB_HIDDEN lowbit_status_t lb_tune_file_merge(const char *path, const lb_tune_entry_t *add, int n);

#endif /* LOWBIT_TUNE_H */

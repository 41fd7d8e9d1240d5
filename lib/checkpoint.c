/*
 * checkpoint.c -- safetensors checkpoints in the bitsandbytes layouts: open (file, single-file directory or
 * sharded directory with an index), classify quantized weights and their state tensors, load them into
 * device qtensors / int8 buffers.  The conversion itself is in api_checkpoint.c.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "checkpoint.h"
#include "validate.h"

/* ---- small helpers ---- */

char *lb_ckpt_join(const char *dir, const char *name)
{
    size_t len = strlen(dir) + strlen(name) + 2;
    char *s = malloc(len);
    if (s != NULL)
        snprintf(s, len, "%s/%s", dir, name);
    return s;
}

int lb_ckpt_ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

const char *lb_ckpt_torch_dtype(const char *st_dtype)
{
    if (strcmp(st_dtype, "F32") == 0)
        return "float32";
    if (strcmp(st_dtype, "F16") == 0)
        return "float16";
    if (strcmp(st_dtype, "BF16") == 0)
        return "bfloat16";
    return NULL;
}

lb_ckpt_entry_t *lb_ckpt_lookup(const lowbit_checkpoint_t *c, const char *name)
{
    json_t *v = json_object_get(c->names, name);
    return v != NULL ? &c->e[json_integer_value(v)] : NULL;
}

/* ---- opening ---- */

static lowbit_status_t lb_ckpt_add_shard(lowbit_checkpoint_t *c, const char *path)
{
    lb_st_file_t *f = NULL;
    lowbit_status_t st = lb_st_open(path, &f);
    if (st != LOWBIT_SUCCESS)
        return st;
    lb_st_file_t **sh = realloc(c->shards, sizeof *sh * (size_t)(c->nshards + 1));
    if (sh == NULL) {
        lb_st_close(f);
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "%s: out of host memory", path);
    }
    c->shards = sh;
    c->shards[c->nshards++] = f;
    return LOWBIT_SUCCESS;
}

static int lb_ckpt_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static lowbit_status_t lb_ckpt_load_json(const char *path, json_t **out)
{
    json_error_t err;
    *out = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (*out == NULL)
        return lb_error(lb_ckpt_exists(path) ? LOWBIT_ERR_FORMAT : LOWBIT_ERR_IO, "%s: line %d: %s", path, err.line,
                        err.text);
    if (!json_is_object(*out))
        return lb_error(LOWBIT_ERR_FORMAT, "%s: not a JSON object", path);
    return LOWBIT_SUCCESS;
}

/* A shard name from an index must stay inside the directory. */
static int lb_ckpt_safe_name(const char *s)
{
    return s[0] != '\0' && strchr(s, '/') == NULL && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static int lb_ckpt_cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Shards are opened in name order (model-00001-of-N first), whatever order the weight_map lists. */
static lowbit_status_t lb_ckpt_open_shards(lowbit_checkpoint_t *c, const char *index_path, json_t *seen)
{
    size_t count = json_object_size(seen), k = 0;
    const char **names = malloc(sizeof *names * (count + 1));
    const char *shard;
    json_t *v;
    if (names == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "out of host memory");
    json_object_foreach(seen, shard, v) names[k++] = shard;
    qsort(names, count, sizeof *names, lb_ckpt_cmp_str);
    lowbit_status_t st = LOWBIT_SUCCESS;
    for (k = 0; k < count && st == LOWBIT_SUCCESS; k++) {
        char *p = lb_ckpt_join(c->path, names[k]);
        if (p == NULL)
            st = lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "out of host memory");
        else if (!lb_ckpt_exists(p))
            st = lb_error(LOWBIT_ERR_IO, "%s: shard \"%s\" (named for tensor \"%s\") is missing: %s", index_path,
                          names[k], json_string_value(json_object_get(seen, names[k])), strerror(errno));
        else
            st = lb_ckpt_add_shard(c, p);
        free(p);
    }
    free(names);
    return st;
}

static lowbit_status_t lb_ckpt_open_index(lowbit_checkpoint_t *c, const char *index_path)
{
    lowbit_status_t st = lb_ckpt_load_json(index_path, &c->index);
    if (st != LOWBIT_SUCCESS)
        return st;
    json_t *map = json_object_get(c->index, "weight_map"), *v;
    const char *name;
    if (!json_is_object(map))
        return lb_error(LOWBIT_ERR_FORMAT, "%s: no \"weight_map\" object", index_path);
    json_t *seen = json_object(); /* shard -> first tensor naming it */
    json_object_foreach(map, name, v) {
        const char *shard = json_string_value(v);
        if (shard == NULL || !lb_ckpt_safe_name(shard)) {
            json_decref(seen);
            return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": shard is not a plain file name", index_path, name);
        }
        if (json_object_get(seen, shard) == NULL)
            json_object_set_new(seen, shard, json_string(name));
    }
    st = lb_ckpt_open_shards(c, index_path, seen);
    json_decref(seen);
    return st;
}

/* Every tensor the index assigns to a shard must be in that shard. */
static lowbit_status_t lb_ckpt_check_index(lowbit_checkpoint_t *c, const char *index_path)
{
    json_t *map = json_object_get(c->index, "weight_map"), *v;
    const char *name;
    json_object_foreach(map, name, v) {
        lb_ckpt_entry_t *e = lb_ckpt_lookup(c, name);
        const char *shard = json_string_value(v);
        if (e == NULL || !lb_ckpt_ends_with(e->file->path, shard) ||
            e->file->path[strlen(e->file->path) - strlen(shard) - 1] != '/')
            return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\" is not in shard \"%s\"", index_path, name, shard);
    }
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_ckpt_open_dir(lowbit_checkpoint_t *c)
{
    char *index = lb_ckpt_join(c->path, LB_CKPT_INDEX), *single = lb_ckpt_join(c->path, LB_CKPT_SINGLE);
    char *config = lb_ckpt_join(c->path, "config.json");
    lowbit_status_t st;
    if (index == NULL || single == NULL || config == NULL)
        st = lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "out of host memory");
    else if (lb_ckpt_exists(index))
        st = lb_ckpt_open_index(c, index);
    else if (lb_ckpt_exists(single))
        st = lb_ckpt_add_shard(c, single);
    else
        st = lb_error(LOWBIT_ERR_IO, "%s: neither %s nor %s found", c->path, LB_CKPT_INDEX, LB_CKPT_SINGLE);
    if (st == LOWBIT_SUCCESS && lb_ckpt_exists(config))
        st = lb_ckpt_load_json(config, &c->config);
    if (st == LOWBIT_SUCCESS && c->index != NULL)
        c->index_path = index, index = NULL;
    free(index);
    free(single);
    free(config);
    return st;
}

static lowbit_status_t lb_ckpt_collect(lowbit_checkpoint_t *c)
{
    int total = 0;
    for (int s = 0; s < c->nshards; s++)
        total += c->shards[s]->ntensors;
    c->e = calloc((size_t)total + 1, sizeof *c->e);
    c->names = json_object();
    if (c->e == NULL || c->names == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "out of host memory");
    for (int s = 0; s < c->nshards; s++)
        for (int i = 0; i < c->shards[s]->ntensors; i++) {
            lb_ckpt_entry_t *e = &c->e[c->n];
            e->file = c->shards[s];
            e->t = &c->shards[s]->tensors[i];
            e->footprint = e->t->end - e->t->begin;
            lb_ckpt_entry_t *prev = lb_ckpt_lookup(c, e->t->name);
            if (prev != NULL)
                return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\" also appears in %s", e->file->path, e->t->name,
                                prev->file->path);
            json_object_set_new(c->names, e->t->name, json_integer(c->n));
            c->n++;
        }
    return LOWBIT_SUCCESS;
}

/* Marks owner.suffix (when present) as a state tensor of `owner`. */
static void lb_ckpt_mark_state(lowbit_checkpoint_t *c, lb_ckpt_entry_t *owner, const char *prefix, const char *suffix)
{
    char name[1024];
    snprintf(name, sizeof name, "%s%s", prefix, suffix);
    lb_ckpt_entry_t *e = lb_ckpt_lookup(c, name);
    if (e == NULL || e == owner)
        return;
    e->format = LOWBIT_CKPT_STATE;
    e->owner = owner->t->name;
    owner->footprint += e->t->end - e->t->begin;
}

static lowbit_status_t lb_ckpt_blob_shape(const lb_ckpt_entry_t *blob, json_t *shape, lb_ckpt_entry_t *w)
{
    if (!json_is_array(shape) || json_array_size(shape) == 0 || json_array_size(shape) > LOWBIT_CKPT_MAX_DIMS)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": \"shape\" is not a list of 1 to %d integers",
                        blob->file->path, blob->t->name, LOWBIT_CKPT_MAX_DIMS);
    w->orig_ndim = (int)json_array_size(shape);
    int64_t n = 1;
    for (int d = 0; d < w->orig_ndim; d++) {
        json_t *v = json_array_get(shape, (size_t)d);
        json_int_t dim = json_is_integer(v) ? json_integer_value(v) : 0;
        if (dim <= 0 || n > INT64_MAX / 4 / dim)
            return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": shape[%d] is not a positive integer", blob->file->path,
                            blob->t->name, d);
        w->orig_shape[d] = dim;
        n *= dim;
    }
    w->n = n;
    return LOWBIT_SUCCESS;
}

/* A host copy of the stored nested_quant_map: qtensors loaded from this checkpoint point at it (the spec
 * asks loaders to use the stored table, not to regenerate it). */
static lowbit_status_t lb_ckpt_copy_nested_code(lowbit_checkpoint_t *c, lb_ckpt_entry_t *w, const char *prefix)
{
    char name[1100];
    snprintf(name, sizeof name, "%s.nested_quant_map", prefix);
    const lb_ckpt_entry_t *m = lb_ckpt_lookup(c, name);
    if (m == NULL || strcmp(m->t->dtype, "F32") != 0 || m->t->numel != 256)
        return LOWBIT_SUCCESS; /* reported by the loader, which needs it */
    free(w->nested_code);
    if ((w->nested_code = malloc(256 * sizeof(float))) == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "out of host memory");
    memcpy(w->nested_code, m->t->data, 256 * sizeof(float));
    return LOWBIT_SUCCESS;
}

/* P.weight.quant_state.bitsandbytes__nf4: decodes the JSON blob into the weight's entry. */
static lowbit_status_t lb_ckpt_parse_blob(lowbit_checkpoint_t *c, lb_ckpt_entry_t *blob, const char *qt)
{
    const lb_st_tensor_t *t = blob->t;
    const char *path = blob->file->path;
    size_t plen = strlen(t->name) - strlen(LB_CKPT_QS_PREFIX) - strlen(qt);
    char owner_name[1024];
    if (plen >= sizeof owner_name)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%.64s...\": name too long", path, t->name);
    memcpy(owner_name, t->name, plen);
    owner_name[plen] = '\0';
    lb_ckpt_entry_t *w = lb_ckpt_lookup(c, owner_name);
    if (w == NULL)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": its weight \"%s\" is missing", path, t->name, owner_name);
    if (strcmp(t->dtype, "U8") != 0 || t->ndim != 1)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": a quant_state must be U8 [len], is %s", path, t->name,
                        t->dtype);
    json_error_t err;
    json_t *j = json_loadb((const char *)t->data, t->end - t->begin, JSON_REJECT_DUPLICATES, &err);
    if (j == NULL || !json_is_object(j)) {
        json_decref(j);
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": quant_state JSON: %s", path, t->name,
                        j == NULL ? err.text : "not an object");
    }
    json_t *jqt = json_object_get(j, "quant_type"), *bs = json_object_get(j, "blocksize"), *dt = json_object_get(j, "dtype");
    json_t *nbs = json_object_get(j, "nested_blocksize"), *off = json_object_get(j, "nested_offset");
    lowbit_status_t st = LOWBIT_SUCCESS;
    if (!json_is_string(jqt) || strcmp(json_string_value(jqt), qt) != 0 || !json_is_integer(bs) ||
        json_integer_value(bs) <= 0 || json_integer_value(bs) > INT32_MAX || !json_is_string(dt) ||
        (nbs != NULL && (!json_is_integer(nbs) || json_integer_value(nbs) <= 0 || json_integer_value(nbs) > INT32_MAX ||
                         !json_is_number(off))))
        st = lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": quant_state JSON lacks or mistypes quant_type \"%s\", "
                      "blocksize, dtype or the nested fields", path, t->name, qt);
    if (st == LOWBIT_SUCCESS)
        st = lb_ckpt_blob_shape(blob, json_object_get(j, "shape"), w);
    if (st == LOWBIT_SUCCESS) {
        w->format = strcmp(qt, "nf4") == 0 ? LOWBIT_CKPT_NF4 : LOWBIT_CKPT_FP4;
        w->blocksize = (int32_t)json_integer_value(bs);
        w->nested_blocksize = nbs != NULL ? (int32_t)json_integer_value(nbs) : 0;
        w->nested_offset = nbs != NULL ? json_number_value(off) : 0.0;
        snprintf(w->orig_dtype, sizeof w->orig_dtype, "%s", json_string_value(dt));
        blob->format = LOWBIT_CKPT_STATE;
        blob->owner = w->t->name;
        w->footprint += t->end - t->begin;
        static const char *const parts[] = {".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map"};
        for (int i = 0; i < 4; i++)
            lb_ckpt_mark_state(c, w, owner_name, parts[i]);
        st = lb_ckpt_copy_nested_code(c, w, owner_name);
    }
    json_decref(j);
    return st;
}

/* P.SCB next to an I8 P.weight marks an LLM.int8 layer. */
static void lb_ckpt_mark_int8(lowbit_checkpoint_t *c, lb_ckpt_entry_t *scb)
{
    char module[1024], name[1100];
    size_t plen = strlen(scb->t->name) - strlen(".SCB");
    if (plen >= sizeof module)
        return;
    memcpy(module, scb->t->name, plen);
    module[plen] = '\0';
    snprintf(name, sizeof name, "%s.weight", module);
    lb_ckpt_entry_t *w = lb_ckpt_lookup(c, name);
    if (w == NULL || strcmp(w->t->dtype, "I8") != 0 || w->t->ndim != 2)
        return;
    w->format = LOWBIT_CKPT_INT8;
    w->orig_ndim = 2;
    w->orig_shape[0] = w->t->shape[0];
    w->orig_shape[1] = w->t->shape[1];
    w->n = w->t->numel;
    lb_ckpt_mark_state(c, w, module, ".SCB");
    lb_ckpt_mark_state(c, w, module, ".weight_format");
}

static lowbit_status_t lb_ckpt_classify(lowbit_checkpoint_t *c)
{
    for (int i = 0; i < c->n; i++) {
        lb_ckpt_entry_t *e = &c->e[i];
        const char *qt = lb_ckpt_ends_with(e->t->name, LB_CKPT_QS_PREFIX "nf4")   ? "nf4"
                         : lb_ckpt_ends_with(e->t->name, LB_CKPT_QS_PREFIX "fp4") ? "fp4"
                                                                                   : NULL;
        lowbit_status_t st = qt != NULL ? lb_ckpt_parse_blob(c, e, qt) : LOWBIT_SUCCESS;
        if (st != LOWBIT_SUCCESS)
            return st;
        if (qt == NULL && lb_ckpt_ends_with(e->t->name, ".SCB"))
            lb_ckpt_mark_int8(c, e);
    }
    return LOWBIT_SUCCESS;
}

lowbit_status_t lb_ckpt_open(const char *path, lowbit_checkpoint_t **ckpt_p)
{
    struct stat sb;
    if (stat(path, &sb) != 0)
        return lb_error(LOWBIT_ERR_IO, "%s: %s", path, strerror(errno));
    lowbit_checkpoint_t *c = calloc(1, sizeof *c);
    if (c == NULL || (c->path = strdup(path)) == NULL) {
        free(c);
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "out of host memory");
    }
    c->is_dir = S_ISDIR(sb.st_mode);
    lowbit_status_t st = c->is_dir ? lb_ckpt_open_dir(c) : lb_ckpt_add_shard(c, path);
    if (st == LOWBIT_SUCCESS)
        st = lb_ckpt_collect(c);
    if (st == LOWBIT_SUCCESS && c->index != NULL)
        st = lb_ckpt_check_index(c, c->index_path);
    if (st == LOWBIT_SUCCESS)
        st = lb_ckpt_classify(c);
    if (st != LOWBIT_SUCCESS) {
        lb_ckpt_free(c);
        return st;
    }
    *ckpt_p = c;
    return LOWBIT_SUCCESS;
}

void lb_ckpt_free(lowbit_checkpoint_t *c)
{
    if (c == NULL)
        return;
    for (int s = 0; s < c->nshards; s++)
        lb_st_close(c->shards[s]);
    free(c->shards);
    for (int i = 0; c->e != NULL && i < c->n; i++)
        free(c->e[i].nested_code);
    free(c->e);
    json_decref(c->names);
    json_decref(c->index);
    json_decref(c->config);
    free(c->index_path);
    free(c->path);
    free(c);
}

/* ---- public: inspection ---- */

LOWBIT_API lowbit_status_t lowbit_checkpoint_open(const char *path, lowbit_checkpoint_t **ckpt_p)
{
    lb_error_clear();
    if (path == NULL || ckpt_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL", path == NULL ? "path" : "ckpt_p");
    return lb_ckpt_open(path, ckpt_p);
}

LOWBIT_API lowbit_status_t lowbit_checkpoint_close(lowbit_checkpoint_t *ckpt)
{
    lb_error_clear();
    lb_ckpt_free(ckpt);
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_checkpoint_tensor_count(const lowbit_checkpoint_t *ckpt, int *count_p)
{
    lb_error_clear();
    if (ckpt == NULL || count_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL", ckpt == NULL ? "ckpt" : "count_p");
    *count_p = ckpt->n;
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_ckpt_check_index_arg(const lowbit_checkpoint_t *ckpt, int index, const void *out)
{
    if (ckpt == NULL || out == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL", ckpt == NULL ? "ckpt" : "output pointer");
    if (index < 0 || index >= ckpt->n)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "index: %d is outside [0, %d)", index, ckpt->n);
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_checkpoint_tensor_info(const lowbit_checkpoint_t *ckpt, int index,
                                                         lowbit_checkpoint_tensor_t *info_p)
{
    lb_error_clear();
    lowbit_status_t st = lb_ckpt_check_index_arg(ckpt, index, info_p);
    if (st != LOWBIT_SUCCESS)
        return st;
    const lb_ckpt_entry_t *e = &ckpt->e[index];
    lowbit_checkpoint_tensor_t info;
    memset(&info, 0, sizeof info);
    info.name = e->t->name;
    info.file = e->file->path;
    snprintf(info.dtype, sizeof info.dtype, "%s", e->t->dtype);
    info.ndim = e->t->ndim;
    memcpy(info.shape, e->t->shape, sizeof info.shape);
    info.bytes = e->t->end - e->t->begin;
    info.format = e->format;
    snprintf(info.orig_dtype, sizeof info.orig_dtype, "%s", e->orig_dtype);
    info.orig_ndim = e->orig_ndim;
    memcpy(info.orig_shape, e->orig_shape, sizeof info.orig_shape);
    info.blocksize = e->blocksize;
    info.nested_blocksize = e->nested_blocksize;
    info.footprint = e->format == LOWBIT_CKPT_STATE ? 0 : e->footprint;
    info.owner = e->owner;
    *info_p = info;
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_checkpoint_find(const lowbit_checkpoint_t *ckpt, const char *name, int *index_p)
{
    lb_error_clear();
    if (ckpt == NULL || name == NULL || index_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL",
                        ckpt == NULL ? "ckpt" : name == NULL ? "name" : "index_p");
    const lb_ckpt_entry_t *e = lb_ckpt_lookup(ckpt, name);
    if (e == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "name: %s: no tensor \"%s\"", ckpt->path, name);
    *index_p = (int)(e - ckpt->e);
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_checkpoint_tensor_data(const lowbit_checkpoint_t *ckpt, int index,
                                                         const void **data_p, uint64_t *bytes_p)
{
    lb_error_clear();
    lowbit_status_t st = lb_ckpt_check_index_arg(ckpt, index, data_p);
    if (st != LOWBIT_SUCCESS)
        return st;
    if (bytes_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "bytes_p: must not be NULL");
    *data_p = ckpt->e[index].t->data;
    *bytes_p = ckpt->e[index].t->end - ckpt->e[index].t->begin;
    return LOWBIT_SUCCESS;
}

/* safetensors.c -- validated mmap reader and spooling writer of safetensors files (see safetensors.h). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"

static const struct {
    const char *name;
    size_t size;
} lb_st_dtypes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
    {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1},   {"BOOL", 1}, {"F8_E4M3", 1}, {"F8_E5M2", 1},
};

size_t lb_st_dtype_size(const char *dtype)
{
    for (size_t i = 0; i < sizeof lb_st_dtypes / sizeof lb_st_dtypes[0]; i++)
        if (strcmp(dtype, lb_st_dtypes[i].name) == 0)
            return lb_st_dtypes[i].size;
    return 0;
}

/* ---- reader ---- */

static lowbit_status_t lb_st_map(lb_st_file_t *f)
{
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return lb_error(LOWBIT_ERR_IO, "%s: cannot open: %s", f->path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return lb_error(LOWBIT_ERR_IO, "%s: not a regular file", f->path);
    }
    f->map_size = (size_t)sb.st_size;
    if (f->map_size < 8) {
        close(fd);
        return lb_error(LOWBIT_ERR_FORMAT, "%s: truncated: %zu bytes, shorter than the 8-byte header length",
                        f->path, f->map_size);
    }
    f->map = mmap(NULL, f->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd); /* the mapping keeps the file alive */
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        return lb_error(LOWBIT_ERR_IO, "%s: cannot map: %s", f->path, strerror(errno));
    }
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_st_parse_header(lb_st_file_t *f)
{
    const uint8_t *p = f->map;
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | p[i];
    if (n > LB_ST_MAX_HEADER)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: header length %llu exceeds the limit of %llu bytes", f->path,
                        (unsigned long long)n, (unsigned long long)LB_ST_MAX_HEADER);
    if (n > f->map_size - 8)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: truncated: header length %llu but only %zu bytes follow", f->path,
                        (unsigned long long)n, f->map_size - 8);
    json_error_t err;
    /* jansson rejects invalid UTF-8 and, with this flag, duplicate names */
    f->header = json_loadb((const char *)p + 8, (size_t)n, JSON_REJECT_DUPLICATES, &err);
    if (f->header == NULL)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: malformed header JSON at byte %d: %s", f->path, err.position,
                        err.text);
    if (!json_is_object(f->header))
        return lb_error(LOWBIT_ERR_FORMAT, "%s: header is not a JSON object", f->path);
    f->data = p + 8 + n;
    f->data_size = f->map_size - 8 - n;
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_st_check_metadata(lb_st_file_t *f, json_t *meta)
{
    const char *key;
    json_t *v;
    if (!json_is_object(meta))
        return lb_error(LOWBIT_ERR_FORMAT, "%s: __metadata__ is not an object", f->path);
    json_object_foreach(meta, key, v) {
        if (!json_is_string(v))
            return lb_error(LOWBIT_ERR_FORMAT, "%s: __metadata__ entry \"%s\" is not a string", f->path, key);
    }
    f->metadata = meta;
    return LOWBIT_SUCCESS;
}

/* A non-negative JSON integer. */
static int lb_st_uint(json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

static lowbit_status_t lb_st_parse_shape(lb_st_file_t *f, lb_st_tensor_t *t, json_t *shape)
{
    if (!json_is_array(shape) || json_array_size(shape) > LB_ST_MAX_DIMS)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": shape is not an array of at most %d integers",
                        f->path, t->name, LB_ST_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        uint64_t dim;
        if (lb_st_uint(json_array_get(shape, (size_t)d), &dim) != 0)
            return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": shape[%d] is not a non-negative integer",
                            f->path, t->name, d);
        if (dim != 0 && numel > (uint64_t)INT64_MAX / dim)
            return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": shape overflows", f->path, t->name);
        numel *= dim;
        t->shape[d] = (int64_t)dim;
    }
    t->numel = (int64_t)numel;
    return LOWBIT_SUCCESS;
}

static lowbit_status_t lb_st_parse_tensor(lb_st_file_t *f, lb_st_tensor_t *t, const char *name, json_t *v)
{
    t->name = name;
    if (name[0] == '\0')
        return lb_error(LOWBIT_ERR_FORMAT, "%s: a tensor has an empty name", f->path);
    if (!json_is_object(v))
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": entry is not an object", f->path, name);
    json_t *dt = json_object_get(v, "dtype"), *offs = json_object_get(v, "data_offsets");
    if (!json_is_string(dt))
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": missing dtype", f->path, name);
    t->elem_size = lb_st_dtype_size(json_string_value(dt));
    if (t->elem_size == 0)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": unknown dtype \"%.16s\"", f->path, name,
                        json_string_value(dt));
    snprintf(t->dtype, sizeof t->dtype, "%s", json_string_value(dt));
    lowbit_status_t st = lb_st_parse_shape(f, t, json_object_get(v, "shape"));
    if (st != LOWBIT_SUCCESS)
        return st;
    if (!json_is_array(offs) || json_array_size(offs) != 2 || lb_st_uint(json_array_get(offs, 0), &t->begin) ||
        lb_st_uint(json_array_get(offs, 1), &t->end) || t->begin > t->end)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": data_offsets is not [begin, end] with begin <= end",
                        f->path, name);
    if (t->end > f->data_size)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": data_offsets [%llu, %llu] lie outside the %llu data bytes",
                        f->path, name, (unsigned long long)t->begin, (unsigned long long)t->end,
                        (unsigned long long)f->data_size);
    if ((uint64_t)t->numel > UINT64_MAX / t->elem_size || (uint64_t)t->numel * t->elem_size != t->end - t->begin)
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\": shape and dtype imply %llu bytes but data_offsets hold %llu",
                        f->path, name, (unsigned long long)t->numel * t->elem_size,
                        (unsigned long long)(t->end - t->begin));
    t->data = f->data + t->begin;
    return LOWBIT_SUCCESS;
}

static int lb_st_cmp_begin(const void *a, const void *b)
{
    const lb_st_tensor_t *x = *(const lb_st_tensor_t *const *)a, *y = *(const lb_st_tensor_t *const *)b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

/* Two tensors sharing bytes would alias silently on load; empty tensors occupy nothing. */
static lowbit_status_t lb_st_check_overlap(lb_st_file_t *f)
{
    const lb_st_tensor_t **order = malloc(sizeof *order * (size_t)(f->ntensors + 1));
    if (order == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "%s: out of host memory", f->path);
    int m = 0;
    for (int i = 0; i < f->ntensors; i++)
        if (f->tensors[i].end > f->tensors[i].begin)
            order[m++] = &f->tensors[i];
    qsort(order, (size_t)m, sizeof *order, lb_st_cmp_begin);
    lowbit_status_t st = LOWBIT_SUCCESS;
    for (int i = 1; i < m && st == LOWBIT_SUCCESS; i++)
        if (order[i]->begin < order[i - 1]->end)
            st = lb_error(LOWBIT_ERR_FORMAT, "%s: tensors \"%s\" and \"%s\" overlap (data_offsets [%llu, %llu] and [%llu, %llu])",
                          f->path, order[i - 1]->name, order[i]->name, (unsigned long long)order[i - 1]->begin,
                          (unsigned long long)order[i - 1]->end, (unsigned long long)order[i]->begin,
                          (unsigned long long)order[i]->end);
    free(order);
    return st;
}

static lowbit_status_t lb_st_parse_tensors(lb_st_file_t *f)
{
    size_t count = json_object_size(f->header);
    f->tensors = calloc(count + 1, sizeof *f->tensors);
    if (f->tensors == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "%s: out of host memory", f->path);
    const char *key;
    json_t *v;
    lowbit_status_t st;
    json_object_foreach(f->header, key, v) {
        if (strcmp(key, "__metadata__") == 0)
            st = lb_st_check_metadata(f, v);
        else
            st = lb_st_parse_tensor(f, &f->tensors[f->ntensors++], key, v);
        if (st != LOWBIT_SUCCESS)
            return st;
    }
    return lb_st_check_overlap(f);
}

lowbit_status_t lb_st_open(const char *path, lb_st_file_t **file_p)
{
    lb_st_file_t *f = calloc(1, sizeof *f);
    if (f == NULL || (f->path = strdup(path)) == NULL) {
        free(f);
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "%s: out of host memory", path);
    }
    lowbit_status_t st = lb_st_map(f);
    if (st == LOWBIT_SUCCESS)
        st = lb_st_parse_header(f);
    if (st == LOWBIT_SUCCESS)
        st = lb_st_parse_tensors(f);
    if (st != LOWBIT_SUCCESS) {
        lb_st_close(f);
        return st;
    }
    *file_p = f;
    return LOWBIT_SUCCESS;
}

void lb_st_close(lb_st_file_t *f)
{
    if (f == NULL)
        return;
    if (f->map != NULL)
        munmap(f->map, f->map_size);
    json_decref(f->header);
    free(f->tensors);
    free(f->path);
    free(f);
}

const lb_st_tensor_t *lb_st_find(const lb_st_file_t *f, const char *name)
{
    for (int i = 0; i < f->ntensors; i++)
        if (strcmp(f->tensors[i].name, name) == 0)
            return &f->tensors[i];
    return NULL;
}

/* ---- writer ---- */

static char *lb_st_sibling(const char *path, const char *suffix)
{
    size_t len = strlen(path) + strlen(suffix) + 1;
    char *s = malloc(len);
    if (s != NULL)
        snprintf(s, len, "%s%s", path, suffix);
    return s;
}

/* A fresh, exclusively created temporary next to path (same file system, so rename is atomic). */
static lowbit_status_t lb_st_mktemp(const char *path, const char *tag, char **tmp_p, FILE **fp_p)
{
    char suffix[64];
    snprintf(suffix, sizeof suffix, ".%s-XXXXXX", tag);
    char *tmp = lb_st_sibling(path, suffix);
    if (tmp == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "%s: out of host memory", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        lowbit_status_t st = lb_error(LOWBIT_ERR_IO, "%s: cannot create a temporary file: %s", path, strerror(errno));
        free(tmp);
        return st;
    }
    fchmod(fd, 0644); /* mkstemp's 0600 would make a checkpoint unreadable to other users */
    *fp_p = fdopen(fd, "w+b");
    if (*fp_p == NULL) {
        close(fd);
        unlink(tmp);
        free(tmp);
        return lb_error(LOWBIT_ERR_IO, "%s: fdopen: %s", path, strerror(errno));
    }
    *tmp_p = tmp;
    return LOWBIT_SUCCESS;
}

lowbit_status_t lb_st_writer_open(lb_st_writer_t *w, const char *path, json_t *metadata)
{
    memset(w, 0, sizeof *w);
    if ((w->path = strdup(path)) == NULL || (w->header = json_object()) == NULL) {
        lb_st_writer_abort(w);
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "%s: out of host memory", path);
    }
    if (metadata != NULL)
        json_object_set_new(w->header, "__metadata__", json_deep_copy(metadata));
    lowbit_status_t st = lb_st_mktemp(path, "spool", &w->spool_path, &w->spool);
    if (st != LOWBIT_SUCCESS)
        lb_st_writer_abort(w);
    return st;
}

lowbit_status_t lb_st_writer_add(lb_st_writer_t *w, const char *name, const char *dtype, int ndim,
                                 const int64_t *shape, const void *data, size_t bytes)
{
    json_t *e = json_object(), *jshape = json_array(), *offs = json_array();
    if (e == NULL || jshape == NULL || offs == NULL) {
        json_decref(e), json_decref(jshape), json_decref(offs);
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "%s: out of host memory", w->path);
    }
    for (int d = 0; d < ndim; d++)
        json_array_append_new(jshape, json_integer(shape[d]));
    json_array_append_new(offs, json_integer((json_int_t)w->offset));
    json_array_append_new(offs, json_integer((json_int_t)(w->offset + bytes)));
    json_object_set_new(e, "dtype", json_string(dtype));
    json_object_set_new(e, "shape", jshape);
    json_object_set_new(e, "data_offsets", offs);
    if (json_object_get(w->header, name) != NULL) {
        json_decref(e);
        return lb_error(LOWBIT_ERR_FORMAT, "%s: tensor \"%s\" written twice", w->path, name);
    }
    json_object_set_new(w->header, name, e);
    if (bytes > 0 && fwrite(data, 1, bytes, w->spool) != bytes)
        return lb_error(LOWBIT_ERR_IO, "%s: tensor \"%s\": write failed: %s", w->spool_path, name, strerror(errno));
    w->offset += bytes;
    return LOWBIT_SUCCESS;
}

/* Header, padded with spaces so the data starts 8-byte aligned (as the reference writer does). */
static lowbit_status_t lb_st_write_header(lb_st_writer_t *w, FILE *out, const char *tmp)
{
    char *text = json_dumps(w->header, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (text == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "%s: cannot serialize the header", w->path);
    size_t len = strlen(text), padded = (len + 7) & ~(size_t)7;
    uint8_t n8[8];
    for (int i = 0; i < 8; i++)
        n8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int ok = fwrite(n8, 1, 8, out) == 8 && fwrite(text, 1, len, out) == len;
    for (size_t i = len; ok && i < padded; i++)
        ok = fputc(' ', out) != EOF;
    free(text);
    return ok ? LOWBIT_SUCCESS : lb_error(LOWBIT_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
}

static lowbit_status_t lb_st_copy_spool(lb_st_writer_t *w, FILE *out, const char *tmp)
{
    if (fflush(w->spool) != 0 || fseek(w->spool, 0, SEEK_SET) != 0)
        return lb_error(LOWBIT_ERR_IO, "%s: %s", w->spool_path, strerror(errno));
    static _Thread_local char buf[1 << 16];
    size_t got;
    while ((got = fread(buf, 1, sizeof buf, w->spool)) > 0)
        if (fwrite(buf, 1, got, out) != got)
            return lb_error(LOWBIT_ERR_IO, "%s: write failed: %s", tmp, strerror(errno));
    if (ferror(w->spool))
        return lb_error(LOWBIT_ERR_IO, "%s: read failed", w->spool_path);
    return LOWBIT_SUCCESS;
}

lowbit_status_t lb_st_writer_finish(lb_st_writer_t *w)
{
    char *tmp = NULL;
    FILE *out = NULL;
    lowbit_status_t st = lb_st_mktemp(w->path, "partial", &tmp, &out);
    if (st == LOWBIT_SUCCESS)
        st = lb_st_write_header(w, out, tmp);
    if (st == LOWBIT_SUCCESS)
        st = lb_st_copy_spool(w, out, tmp);
    if (out != NULL && fclose(out) != 0 && st == LOWBIT_SUCCESS)
        st = lb_error(LOWBIT_ERR_IO, "%s: close failed: %s", tmp, strerror(errno));
    if (st == LOWBIT_SUCCESS && rename(tmp, w->path) != 0)
        st = lb_error(LOWBIT_ERR_IO, "%s: cannot rename %s into place: %s", w->path, tmp, strerror(errno));
    if (st != LOWBIT_SUCCESS && tmp != NULL)
        unlink(tmp);
    free(tmp);
    lb_st_writer_abort(w);
    return st;
}

void lb_st_writer_abort(lb_st_writer_t *w)
{
    if (w->spool != NULL)
        fclose(w->spool);
    if (w->spool_path != NULL)
        unlink(w->spool_path);
    free(w->spool_path);
    free(w->path);
    json_decref(w->header);
    memset(w, 0, sizeof *w);
}

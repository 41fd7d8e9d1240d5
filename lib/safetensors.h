/*
 * safetensors.h -- internal reader and writer of the safetensors format (not installed).
 *
 * File layout: an 8-byte little-endian header length N, N bytes of UTF-8 JSON
 *   {"name": {"dtype": "F16", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}
 * then the data; offsets are relative to the first byte after the header.
 *
 * The reader maps the file read-only and validates everything a consumer relies on before returning it
 * (JSON through jansson, known dtypes, shape x element size == byte range, ranges inside the file and
 * pairwise disjoint, unique non-empty UTF-8 names), so later code can index the data without checks.
 * Every error names the file and, where there is one, the tensor.
 *
 * The writer streams tensor data into a spool file next to the destination (the header, which comes
 * first, is only known at the end), then writes header + data to a temporary file and renames it over the
 * destination: a reader never sees a partial file, and a failure removes both temporaries.
 */
#ifndef LOWBIT_SAFETENSORS_H
#define LOWBIT_SAFETENSORS_H

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

#include "runtime.h"

#define LB_ST_MAX_DIMS 8
/* The reference implementation refuses headers above 100 MB; so do we (a hostile length must not make us
 * allocate or parse gigabytes). */
#define LB_ST_MAX_HEADER 100000000ull

typedef struct lb_st_tensor {
    const char *name;              /* owned by the file's JSON */
    char dtype[8];                 /* "F32", "BF16", ... */
    size_t elem_size;
    int ndim;
    int64_t shape[LB_ST_MAX_DIMS];
    int64_t numel;
    uint64_t begin, end;           /* relative to data */
    const uint8_t *data;           /* mapped bytes [begin, end) */
} lb_st_tensor_t;

typedef struct lb_st_file {
    char *path;
    void *map;
    size_t map_size;
    const uint8_t *data;           /* first byte after the header */
    uint64_t data_size;
    json_t *header;                /* the parsed header (names point into it) */
    json_t *metadata;              /* borrowed from header; may be NULL */
    int ntensors;
    lb_st_tensor_t *tensors;       /* in header order */
} lb_st_file_t;

/* Element size of a safetensors dtype string, 0 if unknown. */
LB_HIDDEN size_t lb_st_dtype_size(const char *dtype);
/* Maps and validates `path`.  Statuses: IO (cannot open/map), FORMAT (any violation), OUT_OF_MEMORY. */
LB_HIDDEN lowbit_status_t lb_st_open(const char *path, lb_st_file_t **file_p);
LB_HIDDEN void lb_st_close(lb_st_file_t *f);
/* The tensor named `name`, or NULL. */
LB_HIDDEN const lb_st_tensor_t *lb_st_find(const lb_st_file_t *f, const char *name);

typedef struct lb_st_writer {
    char *path;                    /* final destination */
    char *spool_path;              /* data written so far */
    FILE *spool;
    uint64_t offset;               /* bytes of data so far */
    json_t *header;
} lb_st_writer_t;

/* Starts a file that will appear at `path` on lb_st_writer_finish.  metadata (may be NULL) is copied. */
LB_HIDDEN lowbit_status_t lb_st_writer_open(lb_st_writer_t *w, const char *path, json_t *metadata);
/* Appends one tensor (bytes must equal numel(shape) x size(dtype)). */
LB_HIDDEN lowbit_status_t lb_st_writer_add(lb_st_writer_t *w, const char *name, const char *dtype, int ndim,
                                           const int64_t *shape, const void *data, size_t bytes);
/* Writes header + data to a temporary file and renames it to the destination; always releases w. */
LB_HIDDEN lowbit_status_t lb_st_writer_finish(lb_st_writer_t *w);
/* Drops everything written (no file appears); safe on a writer that failed or was never opened. */
LB_HIDDEN void lb_st_writer_abort(lb_st_writer_t *w);

#endif /* LOWBIT_SAFETENSORS_H */

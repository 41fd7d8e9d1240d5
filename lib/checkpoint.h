/*
 * checkpoint.h -- internal state of an opened checkpoint (lowbit_checkpoint_t), shared by checkpoint.c
 * (open, inspect) and api_checkpoint.c (load, quantize).  Not installed.
 */
#ifndef LOWBIT_CHECKPOINT_H
#define LOWBIT_CHECKPOINT_H

#include "safetensors.h"

#define LB_CKPT_INDEX "model.safetensors.index.json"
#define LB_CKPT_SINGLE "model.safetensors"
#define LB_CKPT_QS_PREFIX ".quant_state.bitsandbytes__"

typedef struct lb_ckpt_entry {
    lb_st_file_t *file;
    const lb_st_tensor_t *t;
    lowbit_ckpt_format_t format;
    const char *owner;           /* STATE: name of the weight */
    /* quantized weights: */
    char orig_dtype[16];
    int orig_ndim;
    int64_t orig_shape[LOWBIT_CKPT_MAX_DIMS];
    int64_t n;
    int32_t blocksize, nested_blocksize;
    double nested_offset;
    float *nested_code;          /* copy of nested_quant_map (F32 [256]) when present */
    uint64_t footprint;
} lb_ckpt_entry_t;

struct lowbit_checkpoint {
    char *path;
    int is_dir;
    int nshards;
    lb_st_file_t **shards;       /* index order (first appearance in weight_map) */
    json_t *index;               /* model.safetensors.index.json, or NULL */
    char *index_path;
    json_t *config;              /* config.json of a directory, or NULL */
    int n;
    lb_ckpt_entry_t *e;
    json_t *names;               /* name -> index into e */
};

LB_HIDDEN lowbit_status_t lb_ckpt_open(const char *path, lowbit_checkpoint_t **ckpt_p);
LB_HIDDEN void lb_ckpt_free(lowbit_checkpoint_t *c);
LB_HIDDEN lb_ckpt_entry_t *lb_ckpt_lookup(const lowbit_checkpoint_t *c, const char *name);
LB_HIDDEN char *lb_ckpt_join(const char *dir, const char *name);
LB_HIDDEN int lb_ckpt_ends_with(const char *s, const char *suffix);
/* "float32", "float16", "bfloat16" for F32/F16/BF16, else NULL. */
LB_HIDDEN const char *lb_ckpt_torch_dtype(const char *st_dtype);

#endif /* LOWBIT_CHECKPOINT_H */

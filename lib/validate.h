/*
 * validate.h -- argument checks shared by the public entry points.  Each returns LOWBIT_SUCCESS or records
 * a message naming the argument (`what`) and returns the status.
 */
#ifndef LOWBIT_VALIDATE_H
#define LOWBIT_VALIDATE_H

#include "runtime.h"

LB_HIDDEN lowbit_status_t lb_check_ctx(const lowbit_context_t *ctx);
/* buf is non-NULL, belongs to ctx and holds at least `bytes` bytes. */
LB_HIDDEN lowbit_status_t lb_check_buffer(const lowbit_context_t *ctx, const lowbit_buffer_t *buf,
                                          size_t bytes, const char *what);
/* n > 0 and within the device's max_elements. */
LB_HIDDEN lowbit_status_t lb_check_count(const lowbit_context_t *ctx, int64_t n, const char *what);
/* dtype is one of f32/f16/bf16. */
LB_HIDDEN lowbit_status_t lb_check_float_dtype(lowbit_dtype_t dtype, const char *what);
/* a * b * c (each > 0) times elem_size, without overflow, into *bytes_p (TOO_LARGE on overflow). */
LB_HIDDEN lowbit_status_t lb_mul_size(int64_t a, int64_t b, size_t elem_size, size_t *bytes_p, const char *what);
/* One buffer argument of an op: the op touches its first `bytes` bytes. */
typedef struct lb_operand {
    const lowbit_buffer_t *buf;
    size_t bytes;
    const char *name;
    int output;   /* written by the op */
    int optional; /* may be NULL */
} lb_operand_t;

/* Checks every operand (present unless optional, of ctx, large enough), then that no output's touched range
 * overlaps the touched range of any other operand (same allocation, or same address space on backends whose
 * handles are addresses).  Statuses: INVALID_ARGUMENT, BUFFER_TOO_SMALL, OVERLAP. */
LB_HIDDEN lowbit_status_t lb_check_operands(const lowbit_context_t *ctx, const lb_operand_t *ops, int count);

/* Checks the description in *q (format, dtype, n, block sizes, code tables) and resolves it into *out
 * (default code tables substituted); appends its buffers to ops[*nops] (as outputs when `writing`).
 * ops must have room for 4 more entries. */
LB_HIDDEN lowbit_status_t lb_qtensor_resolve(const lowbit_context_t *ctx, const lowbit_qtensor_t *q, int writing,
                                             lb_qtensor_t *out, lb_operand_t *ops, int *nops);

#endif /* LOWBIT_VALIDATE_H */

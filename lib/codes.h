/*
 * codes.h -- code tables (codes.c): the dynamic 8-bit maps built with bitsandbytes' recipe (spec 2.3), the
 * linear map, and the NF4/FP4 tables and quantization thresholds (spec 1.6, 2.1, 2.2).
 */
#ifndef LOWBIT_CODES_H
#define LOWBIT_CODES_H

#include "runtime.h"

/* The table for `code` (256 or 16 floats), built on first use (thread-safe), or NULL for an unknown code. */
LB_HIDDEN const float *lb_code(lowbit_code_t code);
/* Number of entries of `code` (256 or 16), 0 for an unknown code. */
LB_HIDDEN size_t lb_code_size(lowbit_code_t code);

/* 8-bit: index of the nearest code value to y with bitsandbytes' binary search and tie rule (spec 1.5). */
LB_HIDDEN int lb_quantize_8bit_value(const float *code, float y);
/* 4-bit comparison trees (spec 1.6). */
LB_HIDDEN int lb_quantize_nf4_value(float y);
LB_HIDDEN int lb_quantize_fp4_value(float y);

#endif /* LOWBIT_CODES_H */

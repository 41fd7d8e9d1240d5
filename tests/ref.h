/*
 * ref.h -- an independent reference of bitsandbytes' blockwise formats for the tests.
 *
 * Written from spec/bitsandbytes.md (sections 1, 2, 3.1-3.2 and Appendix A) and the comments of lowbit.h,
 * never from lib/: a bug copied into both would otherwise pass unnoticed.  The decisions that must be
 * bit-exact (absmax, reciprocal, y = x * inv, code choice, dequant product) are done in float32 exactly as
 * the spec prescribes; everything else (conversions to f16/bf16, error bounds) is done in float64.
 *
 * The 8-bit code choice is a lower-bound search over the float32 midpoints, not bitsandbytes' pivot search;
 * ref_q8_scan is the plain linear scan of the same rule, used to cross-check ref_q8 itself.
 */
#ifndef LBT_REF_H
#define LBT_REF_H

#include <stddef.h>
#include <stdint.h>

#include "lowbit.h"

/* ---- element types (RNE conversions computed in float64) ---- */

uint16_t ref_f32_to_f16(float x);
float ref_f16_to_f32(uint16_t h);
uint16_t ref_f32_to_bf16(float x);
float ref_bf16_to_f32(uint16_t h);
size_t ref_dtype_size(lowbit_dtype_t dtype); /* f32/f16/bf16 only, else 0 */
/* Element i of a float array of `dtype`, as the float32 it represents exactly. */
float ref_load(lowbit_dtype_t dtype, const void *base, int64_t i);
/* Stores v rounded to nearest-even into element i. */
void ref_store(lowbit_dtype_t dtype, void *base, int64_t i, float v);
uint32_t ref_f32_bits(float x);
float ref_bits_f32(uint32_t bits);

/* ---- code tables ---- */

extern const float ref_dynamic_signed[256];   /* Appendix A, as 9-significant-digit literals */
extern const float ref_dynamic_unsigned[256]; /* Appendix A */
extern const uint32_t ref_nf4_bits[16];       /* spec 2.1 */
extern const uint32_t ref_fp4_bits[16];       /* spec 2.2, index 8 = -0.0 */
extern const float ref_nf4_thresholds[15];    /* spec 1.6, boundary k -> k+1 */
extern const float ref_fp4_thresholds[7];     /* spec 1.6, ascending */
extern const int ref_fp4_threshold_code[7];   /* magnitude code taken when |y| > threshold k */

float ref_nf4_value(int code);
float ref_fp4_value(int code);

/* An 8-bit table with its float32 midpoints fl32((c[i] + c[i+1]) * 0.5). */
typedef struct ref_code8 {
    float c[256];
    float mid[255];
} ref_code8_t;

void ref_code8_init(ref_code8_t *t, const float *code);
/* Index of the nearest code: y above mid[i] goes up, y equal to mid[i] goes to the even index of
 * (i, i+1), beyond the ends clamps, NaN gives 0. */
int ref_q8(const ref_code8_t *t, float y);
int ref_q8_scan(const ref_code8_t *t, float y); /* the same rule, linear scan */
int ref_qnf4(float y);
int ref_qfp4(float y);

/* ---- blockwise quantization ---- */

typedef struct ref_qspec {
    lowbit_qformat_t format;
    int64_t n;
    int32_t blocksize;
    const float *code;        /* 8-bit: 256 floats (NULL = signed dynamic map) */
    int32_t nested_blocksize; /* 0 = plain absmax */
    const float *nested_code; /* NULL = signed dynamic map */
} ref_qspec_t;

typedef struct ref_qresult {
    int64_t nb, nb2;
    size_t data_bytes;
    uint8_t *data;          /* exactly what the data buffer must hold */
    float *absmax;          /* [nb] true float32 absmax */
    float *inv;             /* [nb] fl32(1 / absmax) */
    uint8_t *qabsmax;       /* [nb] nested only */
    float *nested_absmax;   /* [nb2] nested only */
    float nested_offset;    /* nested only */
    float *absmax_used;     /* [nb] absmax seen by dequantization (reconstructed when nested) */
    ref_code8_t code8;      /* 8-bit table in use */
} ref_qresult_t;

/* Quantizes x[0..n-1] (float32 values of the input).  Returns 0, or -1 on a bad spec or no memory. */
int ref_quantize(const ref_qspec_t *spec, const float *x, ref_qresult_t *r);
void ref_qresult_free(ref_qresult_t *r);
/* Code index of element i (unpacked nibble for 4-bit). */
int ref_code_of(const ref_qspec_t *spec, const ref_qresult_t *r, int64_t i);
/* Table value of a code. */
float ref_code_value(const ref_qspec_t *spec, const ref_qresult_t *r, int code);
/* fl32(code[q] * absmax_used[j]), the float32 product before the rounding to the output type. */
float ref_dequant_f32(const ref_qspec_t *spec, const ref_qresult_t *r, int64_t i);
/* The two code values around y in value order (*lo_p <= y <= *hi_p); when y lies beyond the table both are
 * the end value.  Returns the sorted value list length. */
void ref_bracket(const ref_qspec_t *spec, const ref_qresult_t *r, float y, double *lo_p, double *hi_p);
/* Upper bound of |x - dequant(x)| for element i with float64 arithmetic: half the local gap of the code
 * values (or the distance to the end of the table) times absmax, the float32 roundings of inv, y and the
 * product, the absmax reconstruction error when nested, and the rounding to out_dtype. */
double ref_error_bound(const ref_qspec_t *spec, const ref_qresult_t *r, const float *x, int64_t i,
                       lowbit_dtype_t out_dtype);

#endif /* LBT_REF_H */

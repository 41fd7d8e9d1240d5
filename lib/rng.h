/*
 * rng.h -- the counter-based random stream of stochastic rounding (internal; not installed).
 *
 * Every backend must reproduce these bits exactly, so quantized results depend only on (input, seed):
 *
 *   z    = seed ^ (i * 0x9E3779B97F4A7C15)        i = flat element index (uint64, wrapping multiply)
 *   h    = splitmix64(z), i.e. one step of splitmix64 started at state z:
 *            z += 0x9E3779B97F4A7C15
 *            z  = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
 *            z  = (z ^ (z >> 27)) * 0x94D049BB133111EB
 *            h  = z ^ (z >> 31)
 *   r    = (float)(h >> 40) * 2^-24                exact: a multiple of 2^-24 in [0, 1)
 *
 * Stochastic rounding of y (the normalized value x * (1 / absmax), float32) with a sorted table of code
 * values: NaN gives code 0; y below the first value or above the last clamps to that end; otherwise take
 * the neighbours lo = the largest value <= y and hi = the next larger value, and choose hi iff
 *
 *   r < (y - lo) / (hi - lo)        (float32 subtract, subtract, divide)
 *
 * so hi is taken with probability (y - lo) / (hi - lo) and the rounding is unbiased; y equal to a code
 * value (p = 0) always keeps it.  Tables: 8-bit = the 256-entry table as given (with repeated values, lo is
 * the last of its run); NF4 = its 16 values (index order is sorted order); FP4 = the 15 distinct values
 * -1 ... -1/192, 0, 1/192 ... 1 mapped back to their codes, where 0 becomes code 0x8 ("-0") if y < 0 and 0x0
 * otherwise (the sign rule of the round-to-nearest tree).
 */
#ifndef LOWBIT_RNG_H
#define LOWBIT_RNG_H

#include <stdint.h>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define LB_RNG_FN static inline __host__ __device__
#else
#define LB_RNG_FN static inline
#endif

#define LB_RNG_GOLDEN UINT64_C(0x9E3779B97F4A7C15)

/* splitmix64 output for (seed, element index i). */
LB_RNG_FN uint64_t lb_rng_hash(uint64_t seed, uint64_t i)
{
    uint64_t z = (seed ^ (i * LB_RNG_GOLDEN)) + LB_RNG_GOLDEN;
    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

/* The uniform float r in [0, 1) for element i: the top 24 bits of the hash. */
LB_RNG_FN float lb_rng_uniform(uint64_t seed, uint64_t i)
{
    return (float)(lb_rng_hash(seed, i) >> 40) * (1.0f / 16777216.0f);
}

/* 1 if stochastic rounding of y between code values lo < hi picks hi for random number r (see above). */
LB_RNG_FN int lb_rng_pick_hi(float y, float lo, float hi, float r)
{
    return r < (y - lo) / (hi - lo);
}

#endif /* LOWBIT_RNG_H */

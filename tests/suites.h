/*
 * suites.h -- one registration function per test file; main.c runs them all.  A new family of ops adds its
 * tests/test_<family>.c, a line here and one in main.c's table (and the file in tests/local.mk).
 */
#ifndef LBT_SUITES_H
#define LBT_SUITES_H

#include "lbt.h"

void lbt_register_runtime(Suite *s);    /* test_runtime.c */
void lbt_register_codes(Suite *s);      /* test_codes.c: tables, spec examples, ties, special values */
void lbt_register_quant(Suite *s);      /* test_quant.c: format x dtype x block size x size matrix */
void lbt_register_nested(Suite *s);     /* test_nested.c: double quantization */
void lbt_register_stochastic(Suite *s); /* test_stochastic.c */
void lbt_register_badinput(Suite *s);   /* test_badinput.c */
void lbt_register_stats(Suite *s);      /* test_stats.c: spec 8.1 / 8.2 round-trip statistics */
void lbt_register_int8(Suite *s);       /* test_int8.c: LLM.int8 quantize rows/cols, gemm, dequant, forward */
void lbt_register_gemm4(Suite *s);      /* test_gemm4.c: 4-bit weight-only products */
void lbt_register_optim(Suite *s);      /* test_optim.c: every optimizer, 32-bit and 8-bit states */
void lbt_register_concurrency(Suite *s); /* test_concurrency.c: 8 threads on one context; contexts per thread */

#endif /* LBT_SUITES_H */

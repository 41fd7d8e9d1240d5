/*
 * cpu.h -- the CPU backend's ops (the reference every GPU backend is tested against).  Each receives
 * arguments already validated by the runtime; buffers are host memory (LB_PTR).
 */
#ifndef LOWBIT_CPU_H
#define LOWBIT_CPU_H

#include "runtime.h"

/* Inner kernels are inlined into each instance (baseline / AVX2) with constant format and ISA arguments. */
#if defined(__GNUC__)
#define LB_INLINE static inline __attribute__((always_inline))
#else
#define LB_INLINE static inline
#endif

/* A static-schedule parallel loop over independent chunks, run serially when `cond` is false (small work);
 * static scheduling keeps every result independent of timing. */
#ifdef _OPENMP
#define LB_PRAGMA(x) _Pragma(#x)
#define LB_OMP_FOR(cond) LB_PRAGMA(omp parallel for schedule(static) if (cond))
#else
#define LB_OMP_FOR(cond)
#endif

/* Blockwise quantization (cpu_quant.c). */
LB_HIDDEN lowbit_status_t lb_cpu_quantize(const lb_launch_t *l, const lb_mem_t *in, const lb_qtensor_t *q,
                                          const lowbit_quantize_opts_t *opts);
LB_HIDDEN lowbit_status_t lb_cpu_dequantize(const lb_launch_t *l, const lb_qtensor_t *q,
                                            lowbit_dtype_t out_dtype, const lb_mem_t *out);

/* LLM.int8 (cpu_int8.c). */
LB_HIDDEN lowbit_status_t lb_cpu_int8_quantize_rows(const lb_launch_t *l, const lb_int8_quant_args_t *a);
LB_HIDDEN lowbit_status_t lb_cpu_int8_quantize_cols(const lb_launch_t *l, const lb_int8_quant_args_t *a);
LB_HIDDEN lowbit_status_t lb_cpu_int8_gemm(const lb_launch_t *l, const lb_int8_gemm_args_t *a);
LB_HIDDEN lowbit_status_t lb_cpu_int8_dequant(const lb_launch_t *l, const lb_int8_dequant_args_t *a);
LB_HIDDEN lowbit_status_t lb_cpu_int8_matmul(const lb_launch_t *l, const lb_int8_matmul_args_t *a);

/* 4-bit weight-only products (cpu_gemm4.c). */
LB_HIDDEN lowbit_status_t lb_cpu_gemm_4bit(const lb_launch_t *l, const lb_gemm4_args_t *a);

/* Optimizers (cpu_optim.c). */
LB_HIDDEN lowbit_status_t lb_cpu_optimizer_step(const lb_launch_t *l, const lb_optim_args_t *a);

#endif /* LOWBIT_CPU_H */

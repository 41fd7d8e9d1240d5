/*
 * tune.h -- the tuning table: built-in defaults per architecture plus in-process overrides (tune.c).
 */
#ifndef LOWBIT_TUNE_H
#define LOWBIT_TUNE_H

#include "runtime.h"

/* Creates the tuning state of a context for architecture key `arch_key` ("cuda:sm_90", "cpu:x86_64"). */
LB_HIDDEN lowbit_status_t lb_tune_create(const char *arch_key, struct lb_tune_state **state_p);
LB_HIDDEN void lb_tune_destroy(struct lb_tune_state *state);
/* host->tune_get */
LB_HIDDEN int64_t lb_tune_lookup(const lowbit_context_t *ctx, const char *key, int64_t dflt);

#endif /* LOWBIT_TUNE_H */

/*
 * main.c -- the runner shared by tests/test-cpu, test-opencl, test-cuda and test-hip (LB_TEST_BACKEND).
 *
 * Prints the seed (LOWBIT_TEST_SEED=<n> reproduces a run), exits 77 (automake SKIP) with one line saying
 * why when the backend under test has no usable device, and otherwise runs every suite.
 *
 * Tests run in one process by default (CK_FORK=no): GPU runtimes do not survive fork() once initialized and a
 * context per forked test would dominate the run time.  CK_FORK=yes isolates crashes (contexts are then
 * created lazily in each child).  CK_RUN_SUITE / CK_RUN_CASE / CK_VERBOSITY work as usual;
 * LOWBIT_TEST_SCALE shrinks or grows sizes, LOWBIT_TEST_VERBOSE=1 prints each case.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lbt.h"
#include "suites.h"

static const lbt_register_fn suites[] = {
    lbt_register_runtime, lbt_register_codes,      lbt_register_quant, lbt_register_nested,
    lbt_register_stochastic, lbt_register_badinput, lbt_register_stats, lbt_register_int8, lbt_register_gemm4,
    lbt_register_optim,     lbt_register_concurrency,
};

static uint64_t pick_seed(void)
{
    const char *s = getenv("LOWBIT_TEST_SEED");
    if (s && *s) {
        char *end = NULL;
        uint64_t v = strtoull(s, &end, 0);
        if (end && *end == '\0')
            return v;
        fprintf(stderr, "LOWBIT_TEST_SEED=%s is not a number; using a fresh seed\n", s);
    }
    struct timeval tv;
    gettimeofday(&tv, NULL);
    uint64_t v = ((uint64_t)tv.tv_sec * 1000003u) ^ ((uint64_t)tv.tv_usec << 20) ^ ((uint64_t)getpid() << 40);
    return v % 1000000000000ull; /* short enough to retype */
}

/* Returns 1 if the backend is usable, 0 if not (printing why), -1 if the library failed.  Prints device 0. */
static int backend_usable(const char *name)
{
    lowbit_status_t st = lowbit_init();
    if (st != LOWBIT_SUCCESS) {
        printf("lowbit_init failed: %s (%s)\n", lowbit_status_string(st), lowbit_last_error());
        return -1;
    }
    int count = 0;
    st = lowbit_backend_count(&count);
    if (st != LOWBIT_SUCCESS) {
        printf("lowbit_backend_count failed: %s (%s)\n", lowbit_status_string(st), lowbit_last_error());
        return -1;
    }
    for (int i = 0; i < count; i++) {
        lowbit_backend_info_t info;
        if (lowbit_backend_info(i, &info) != LOWBIT_SUCCESS)
            continue;
        if (strcmp(info.name, name) != 0)
            continue;
        if (info.available && info.device_count > 0) {
            /* the device a context gets by default (device -1: LOWBIT_DEVICE, else the first GPU) */
            lowbit_context_t *ctx = NULL;
            lowbit_device_info_t di;
            st = lowbit_context_create(name, -1, &ctx);
            if (st != LOWBIT_SUCCESS) {
                printf("lowbit_context_create(\"%s\") failed: %s (%s)\n", name, lowbit_status_string(st),
                       lowbit_last_error());
                return -1;
            }
            if (lowbit_context_device_info(ctx, &di) == LOWBIT_SUCCESS)
                printf("testing on %s device %d of %d: %s (%s, %s%s)\n", name, di.index, info.device_count, di.name,
                       di.arch, di.driver, di.is_gpu ? ", GPU" : "");
            lowbit_context_destroy(ctx);
            return 1;
        }
        printf("SKIP: backend %s is not usable: %s\n", name, info.reason[0] ? info.reason : "(no reason given)");
        return 0;
    }
    printf("SKIP: backend %s is not known to this build (no module registered)\n", name);
    return 0;
}

/* The probe runs in a child process: a GPU runtime initialized in this process would not survive the
 * fork() of each test in CK_FORK=yes mode.  Exit status: 0 usable, 77 skip, 99 error. */
static int probe_in_child(const char *name)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 99;
    }
    if (pid == 0) {
        int ok = backend_usable(name);
        fflush(stdout);
        _exit(ok < 0 ? 99 : ok == 0 ? 77 : 0);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) {
        printf("the probe of backend %s crashed\n", name);
        return 99;
    }
    return WEXITSTATUS(status);
}

int main(void)
{
    uint64_t seed = pick_seed();
    lbt_set_seed(seed);
    printf("lowbit tests, backend %s: LOWBIT_TEST_SEED=%" PRIu64 "\n", lbt_backend, seed);
    fflush(stdout);

    /* The CPU backend is always there; the others are probed in a child so that this process stays
     * untouched by GPU runtimes until the tests run. */
    if (!lbt_is_cpu()) {
        int rc = probe_in_child(lbt_backend);
        if (rc != 0)
            return rc;
    }

    char name[64];
    snprintf(name, sizeof name, "lowbit-%s", lbt_backend);
    Suite *s = suite_create(name);
    for (size_t k = 0; k < sizeof suites / sizeof suites[0]; k++)
        suites[k](s);

    SRunner *sr = srunner_create(s);
    if (!getenv("CK_FORK"))
        srunner_set_fork_status(sr, CK_NOFORK);
    struct timeval t0, t1;
    gettimeofday(&t0, NULL);
    srunner_run_all(sr, CK_ENV);
    gettimeofday(&t1, NULL);
    int run = srunner_ntests_run(sr), failed = srunner_ntests_failed(sr);
    printf("%d test cases run, %d failed, %.1f s (LOWBIT_TEST_SEED=%" PRIu64 ")\n", run, failed,
           (double)(t1.tv_sec - t0.tv_sec) + 1e-6 * (double)(t1.tv_usec - t0.tv_usec), seed);
    srunner_free(sr);
    lbt_release_contexts();
    if (run == 0)
        return 99; /* nothing ran: a broken selection must not pass */
    return failed == 0 ? 0 : 1;
}

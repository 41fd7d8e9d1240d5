/*
 * test_modules.c -- the module loader: a module of another API version, with a wrong table size, without the
 * registration symbol, returning no table or claiming another backend's name is refused with a reason that
 * says so, and the library stays usable on the CPU backend.  Each test runs in its own process (Check's
 * fork mode), so each probes afresh with its own environment.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "lowbit.h"

#ifndef FAKE_DIR
#error FAKE_DIR must name the directory holding the fake lowbit-hip.so
#endif

static void probe_with(const char *dir, const char *mode, lowbit_backend_info_t *hip)
{
    setenv("LOWBIT_MODULE_PATH", dir, 1);
    unsetenv("LOWBIT_BACKEND");
    if (mode != NULL)
        setenv("LOWBIT_FAKE_MODULE", mode, 1);
    ck_assert_int_eq(lowbit_init(), LOWBIT_SUCCESS);
    int n = 0;
    ck_assert_int_eq(lowbit_backend_count(&n), LOWBIT_SUCCESS);
    int found = 0;
    for (int i = 0; i < n; i++) {
        lowbit_backend_info_t info;
        ck_assert_int_eq(lowbit_backend_info(i, &info), LOWBIT_SUCCESS);
        if (strcmp(info.name, "hip") == 0) {
            *hip = info;
            found = 1;
        }
    }
    ck_assert_msg(found, "no hip entry in the backend list");
}

/* The CPU backend still works after a module was refused. */
static void assert_cpu_usable(void)
{
    lowbit_context_t *ctx = NULL;
    ck_assert_int_eq(lowbit_context_create("cpu", -1, &ctx), LOWBIT_SUCCESS);
    lowbit_buffer_t *b = NULL;
    ck_assert_int_eq(lowbit_buffer_alloc(ctx, 64, 0, &b), LOWBIT_SUCCESS);
    lowbit_buffer_free(b);
    lowbit_context_destroy(ctx);
}

static void assert_refused(const char *mode, const char *expect)
{
    lowbit_backend_info_t hip;
    probe_with(FAKE_DIR, mode, &hip);
    ck_assert_int_eq(hip.available, 0);
    ck_assert_msg(strstr(hip.reason, expect) != NULL, "mode %s: reason '%s' lacks '%s'", mode, hip.reason, expect);
    ck_assert_msg(strstr(hip.module_path, "lowbit-hip.so") != NULL, "module path '%s'", hip.module_path);
    lowbit_context_t *ctx = NULL;
    ck_assert_int_eq(lowbit_context_create("hip", -1, &ctx), LOWBIT_ERR_NO_DEVICE);
    ck_assert_ptr_null(ctx);
    ck_assert_msg(strstr(lowbit_last_error(), "hip") != NULL, "message '%s'", lowbit_last_error());
    assert_cpu_usable();
}

START_TEST(refuses_other_api_version)
{
    assert_refused("badversion", "API");
}
END_TEST

START_TEST(refuses_other_table_size)
{
    assert_refused("badsize", "table size");
}
END_TEST

START_TEST(refuses_null_table)
{
    assert_refused("null", "no usable");
}
END_TEST

START_TEST(refuses_wrong_name)
{
    assert_refused("wrongname", "registers backend 'cuda'");
}
END_TEST

START_TEST(refuses_missing_symbol)
{
    lowbit_backend_info_t hip;
    probe_with(FAKE_NOSYM_DIR, NULL, &hip);
    ck_assert_int_eq(hip.available, 0);
    ck_assert_msg(strstr(hip.reason, "lowbit_backend_module") != NULL, "reason '%s'", hip.reason);
    assert_cpu_usable();
}
END_TEST

START_TEST(loaded_module_without_device)
{
    lowbit_backend_info_t hip;
    probe_with(FAKE_DIR, "nodevice", &hip);
    ck_assert_int_eq(hip.available, 0);
    ck_assert_msg(strstr(hip.reason, "fake module: no device") != NULL, "reason '%s'", hip.reason);
    assert_cpu_usable();
}
END_TEST

START_TEST(unknown_backend_variable)
{
    setenv("LOWBIT_BACKEND", "tpu", 1);
    ck_assert_int_eq(lowbit_init(), LOWBIT_ERR_INVALID_ARGUMENT);
    ck_assert_msg(strstr(lowbit_last_error(), "tpu") != NULL, "message '%s'", lowbit_last_error());
    lowbit_context_t *ctx = NULL;
    ck_assert_int_eq(lowbit_context_create(NULL, -1, &ctx), LOWBIT_ERR_INVALID_ARGUMENT);
    ck_assert_ptr_null(ctx);
}
END_TEST

START_TEST(forced_backend_absent)
{
    setenv("LOWBIT_MODULE_PATH", FAKE_DIR, 1);
    setenv("LOWBIT_FAKE_MODULE", "nodevice", 1);
    setenv("LOWBIT_BACKEND", "hip", 1);
    ck_assert_int_eq(lowbit_init(), LOWBIT_SUCCESS);
    lowbit_context_t *ctx = NULL;
    ck_assert_int_eq(lowbit_context_create(NULL, -1, &ctx), LOWBIT_ERR_NO_DEVICE);
    ck_assert_msg(strstr(lowbit_last_error(), "no device") != NULL, "message '%s'", lowbit_last_error());
    /* other backends were not probed, and say so */
    lowbit_backend_info_t info;
    ck_assert_int_eq(lowbit_backend_info(3, &info), LOWBIT_SUCCESS);
    ck_assert_str_eq(info.name, "cpu");
    ck_assert_msg(strstr(info.reason, "LOWBIT_BACKEND") != NULL, "reason '%s'", info.reason);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("modules");
    TCase *tc = tcase_create("loader");
    tcase_add_test(tc, refuses_other_api_version);
    tcase_add_test(tc, refuses_other_table_size);
    tcase_add_test(tc, refuses_null_table);
    tcase_add_test(tc, refuses_wrong_name);
    tcase_add_test(tc, refuses_missing_symbol);
    tcase_add_test(tc, loaded_module_without_device);
    tcase_add_test(tc, unknown_backend_variable);
    tcase_add_test(tc, forced_backend_absent);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_set_fork_status(sr, CK_FORK); /* each test probes in a fresh process */
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}

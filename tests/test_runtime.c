/*
 * test_runtime.c -- the runtime through the public API: init, backends and devices, statuses and names,
 * contexts, buffers and views (also as op arguments at byte offsets), streams, threads, code-table and
 * qtensor helpers.
 */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lbt.h"
#include "suites.h"

START_TEST(rt_init)
{
    lbt_case("lowbit_init");
    LBT_OK(lowbit_init());
    int c1 = -1, c2 = -2;
    LBT_OK(lowbit_backend_count(&c1));
    LBT_OK(lowbit_init());
    LBT_OK(lowbit_backend_count(&c2));
    LBT_ASSERT(c1 == c2 && c1 >= 1, "backend count %d then %d", c1, c2);
    const char *v = lowbit_version_string();
    int major = -1, minor = -1, patch = -1;
    LBT_ASSERT(v && sscanf(v, "%d.%d.%d", &major, &minor, &patch) == 3, "version string \"%s\"", v ? v : "(null)");
    LBT_ASSERT(major == LOWBIT_VERSION_MAJOR && minor == LOWBIT_VERSION_MINOR, "library %s, header %d.%d", v,
               LOWBIT_VERSION_MAJOR, LOWBIT_VERSION_MINOR);
}
END_TEST

START_TEST(rt_backends)
{
    lbt_case("backends");
    int count = 0;
    LBT_OK(lowbit_backend_count(&count));
    int cpu = -1, selected = 0, tested = -1;
    for (int i = 0; i < count; i++) {
        lowbit_backend_info_t b;
        memset(&b, 0xa5, sizeof b);
        LBT_OK(lowbit_backend_info(i, &b));
        LBT_ASSERT(memchr(b.name, 0, sizeof b.name) && b.name[0], "backend %d: bad name", i);
        LBT_ASSERT(memchr(b.reason, 0, sizeof b.reason) && b.reason[0], "backend %s: empty reason", b.name);
        LBT_ASSERT(memchr(b.module_path, 0, sizeof b.module_path) != NULL, "backend %s: module_path", b.name);
        LBT_ASSERT(b.available == 0 || b.available == 1, "backend %s: available = %d", b.name, b.available);
        LBT_ASSERT(b.available ? b.device_count >= 1 : b.device_count == 0, "backend %s: available %d devices %d",
                   b.name, b.available, b.device_count);
        selected += b.selected == 1;
        LBT_ASSERT(!b.selected || b.available, "backend %s selected but unavailable", b.name);
        for (int k = 0; k < i; k++) {
            lowbit_backend_info_t o;
            LBT_OK(lowbit_backend_info(k, &o));
            LBT_ASSERT(strcmp(o.name, b.name) != 0, "backend %s listed twice", b.name);
        }
        if (strcmp(b.name, "cpu") == 0) {
            cpu = i;
            LBT_ASSERT(b.available && b.device_count >= 1, "the CPU backend must always be available");
            LBT_ASSERT(b.module_path[0] == '\0', "the CPU backend is built in, module_path \"%s\"", b.module_path);
        } else {
            LBT_ASSERT(strcmp(b.name, "cuda") == 0 || strcmp(b.name, "hip") == 0 || strcmp(b.name, "opencl") == 0,
                       "unknown backend name \"%s\"", b.name);
        }
        if (strcmp(b.name, lbt_backend) == 0)
            tested = i;
    }
    LBT_ASSERT(cpu == count - 1, "the CPU backend must be last in probe order (index %d of %d)", cpu, count);
    LBT_ASSERT(selected == 1, "%d backends selected, expected exactly 1", selected);
    LBT_ASSERT(tested >= 0, "backend under test %s not listed", lbt_backend);

    lowbit_backend_info_t b;
    memset(&b, 0x5a, sizeof b);
    lowbit_backend_info_t before = b;
    lbt_prime_error();
    lbt_expect_error(lowbit_backend_info(count, &b), LOWBIT_ERR_INVALID_ARGUMENT, "lowbit_backend_info(count)");
    LBT_ASSERT(memcmp(&b, &before, sizeof b) == 0, "info written by a failing call");
    lbt_prime_error();
    lbt_expect_error(lowbit_backend_info(0, NULL), LOWBIT_ERR_INVALID_ARGUMENT, "lowbit_backend_info(NULL)");
    lbt_prime_error();
    lbt_expect_error(lowbit_backend_count(NULL), LOWBIT_ERR_INVALID_ARGUMENT, "lowbit_backend_count(NULL)");
}
END_TEST

START_TEST(rt_names)
{
    lbt_case("status strings and names");
    const char *seen[13];
    for (int s = 0; s <= LOWBIT_ERR_INTERNAL; s++) {
        const char *m = lowbit_status_string((lowbit_status_t)s);
        LBT_ASSERT(m && m[0], "status %d has no string", s);
        for (int k = 0; k < s; k++)
            LBT_ASSERT(strcmp(seen[k], m) != 0, "statuses %d and %d share the string \"%s\"", k, s, m);
        seen[s] = m;
    }
    const char *u = lowbit_status_string((lowbit_status_t)1234);
    LBT_ASSERT(u != NULL, "unknown status gives NULL");
    static const struct {
        lowbit_dtype_t d;
        size_t size;
        const char *name;
    } dt[] = {{LOWBIT_F32, 4, "f32"}, {LOWBIT_F16, 2, "f16"}, {LOWBIT_BF16, 2, "bf16"},
              {LOWBIT_U8, 1, "u8"},   {LOWBIT_I8, 1, "i8"},   {LOWBIT_I32, 4, "i32"}};
    for (size_t k = 0; k < sizeof dt / sizeof dt[0]; k++) {
        LBT_ASSERT(lowbit_dtype_size(dt[k].d) == dt[k].size, "size of %s", dt[k].name);
        LBT_ASSERT(strcmp(lowbit_dtype_name(dt[k].d), dt[k].name) == 0, "name of %s", dt[k].name);
    }
    LBT_ASSERT(lowbit_dtype_size((lowbit_dtype_t)77) == 0, "unknown dtype size");
    LBT_ASSERT(strcmp(lowbit_dtype_name((lowbit_dtype_t)77), "?") == 0, "unknown dtype name");
    LBT_ASSERT(strcmp(lowbit_qformat_name(LOWBIT_QFORMAT_8BIT), "8bit") == 0 &&
                   strcmp(lowbit_qformat_name(LOWBIT_QFORMAT_NF4), "nf4") == 0 &&
                   strcmp(lowbit_qformat_name(LOWBIT_QFORMAT_FP4), "fp4") == 0 &&
                   strcmp(lowbit_qformat_name((lowbit_qformat_t)9), "?") == 0,
               "format names");
}
END_TEST

START_TEST(rt_devices)
{
    lbt_case("devices of %s", lbt_backend);
    int count = 0;
    LBT_OK(lowbit_device_count(lbt_backend, &count));
    LBT_ASSERT(count >= 1, "%d devices", count);
    for (int i = 0; i < count; i++) {
        lowbit_device_info_t d;
        LBT_OK(lowbit_device_info(lbt_backend, i, &d));
        LBT_ASSERT(strcmp(d.backend, lbt_backend) == 0, "device %d: backend \"%s\"", i, d.backend);
        LBT_ASSERT(d.name[0] && d.arch[0], "device %d: empty name or arch", i);
        LBT_ASSERT(d.index == i, "device %d: index %d", i, d.index);
        LBT_ASSERT(d.compute_units >= 1, "device %d: compute_units %d", i, d.compute_units);
        LBT_ASSERT(d.max_elements > 0, "device %d: max_elements %lld", i, (long long)d.max_elements);
        LBT_ASSERT(d.is_gpu == 0 || d.is_gpu == 1, "device %d: is_gpu %d", i, d.is_gpu);
        if (strcmp(lbt_backend, "cpu") == 0)
            LBT_ASSERT(!d.is_gpu, "the CPU device claims to be a GPU");
    }
    lowbit_device_info_t c, d;
    LBT_OK(lowbit_context_device_info(lbt_ctx(), &c));
    LBT_OK(lowbit_device_info(lbt_backend, c.index, &d));
    LBT_ASSERT(strcmp(c.name, d.name) == 0 && strcmp(c.backend, d.backend) == 0 && c.max_elements == d.max_elements,
               "context device info differs from lowbit_device_info");
    lbt_prime_error();
    lowbit_status_t st = lowbit_device_info(lbt_backend, count, &d);
    LBT_ASSERT(st != LOWBIT_SUCCESS, "lowbit_device_info(index = count) succeeded");
    lbt_prime_error();
    lbt_expect_error(lowbit_context_device_info(lbt_ctx(), NULL), LOWBIT_ERR_INVALID_ARGUMENT,
                     "lowbit_context_device_info(NULL)");
}
END_TEST

START_TEST(rt_contexts)
{
    lbt_case("context errors");
    lowbit_context_t *sentinel = (lowbit_context_t *)(uintptr_t)0x1234, *ctx = sentinel;
    /* an unknown name is both an "unknown value" (INVALID_ARGUMENT) and an absent backend (NO_DEVICE) */
    lbt_prime_error();
    lowbit_status_t st = lowbit_context_create("nonesuch", 0, &ctx);
    lbt_expect_error(st, st == LOWBIT_ERR_NO_DEVICE ? st : LOWBIT_ERR_INVALID_ARGUMENT, "unknown backend name");
    LBT_ASSERT(ctx == sentinel, "ctx_p written by a failing call");
    /* a known backend without a device: NO_DEVICE */
    int count = 0;
    LBT_OK(lowbit_backend_count(&count));
    for (int i = 0; i < count; i++) {
        lowbit_backend_info_t b;
        LBT_OK(lowbit_backend_info(i, &b));
        if (b.available)
            continue;
        lbt_prime_error();
        lbt_expect_error(lowbit_context_create(b.name, -1, &ctx), LOWBIT_ERR_NO_DEVICE, b.name);
        LBT_ASSERT(ctx == sentinel, "ctx_p written by a failing call");
    }
    lbt_prime_error();
    lbt_expect_error(lowbit_context_create(lbt_backend, 99999, &ctx), LOWBIT_ERR_NO_DEVICE, "device out of range");
    LBT_ASSERT(ctx == sentinel, "ctx_p written by a failing call");
    lbt_prime_error();
    lbt_expect_error(lowbit_context_create(lbt_backend, 0, NULL), LOWBIT_ERR_INVALID_ARGUMENT, "NULL ctx_p");
    LBT_OK(lowbit_context_destroy(NULL));
    /* create, use, destroy a context of its own */
    LBT_OK(lowbit_context_create(lbt_backend, 0, &ctx));
    lowbit_buffer_t *b = lbt_alloc(ctx, 64);
    lbt_fill(ctx, b, 7);
    uint8_t *p = lbt_fetch(ctx, b);
    for (int i = 0; i < 64; i++)
        LBT_ASSERT(p[i] == 7, "fill");
    free(p);
    LBT_OK(lowbit_buffer_free(b));
    LBT_OK(lowbit_context_destroy(ctx));
}
END_TEST

START_TEST(rt_buffers)
{
    static const size_t sizes[] = {1, 17, 4096, (1u << 20) + 3};
    lowbit_context_t *ctx = lbt_ctx();
    lbt_rng_t rng;
    lbt_rng_init(&rng, "rt_buffers", 0);
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        size_t n = sizes[k];
        lbt_case("buffer round trip %zu bytes", n);
        uint8_t *src = malloc(n), *dst = malloc(n);
        for (size_t i = 0; i < n; i++)
            src[i] = (uint8_t)lbt_rng_u64(&rng);
        lowbit_buffer_t *b = lbt_alloc(ctx, n);
        LBT_ASSERT(lbt_size(b) == n, "size %zu", lbt_size(b));
        lbt_upload(ctx, b, 0, src, n);
        memset(dst, 0xa5, n);
        lbt_download(ctx, b, 0, dst, n);
        lbt_same_bytes(dst, src, n, 1, "download after upload");
        /* partial transfers at offsets */
        size_t off = n / 3, len = n - off;
        uint8_t *patch = malloc(len + 1);
        for (size_t i = 0; i < len; i++)
            patch[i] = (uint8_t)~src[off + i];
        lbt_upload(ctx, b, off, patch, len);
        memcpy(src + off, patch, len);
        memset(dst, 0xa5, n);
        lbt_download(ctx, b, 0, dst, n);
        lbt_same_bytes(dst, src, n, 1, "download after an upload at an offset");
        memset(dst, 0xa5, n);
        lbt_download(ctx, b, off, dst, len);
        lbt_same_bytes(dst, src + off, len, 1, "download at an offset");
        lbt_fill(ctx, b, 0x3d);
        lbt_download(ctx, b, 0, dst, n);
        for (size_t i = 0; i < n; i++)
            LBT_ASSERT(dst[i] == 0x3d, "fill: byte %zu is 0x%02x", i, dst[i]);
        LBT_OK(lowbit_buffer_free(b));
        free(src);
        free(dst);
        free(patch);
    }
    lbt_case("paged buffer");
    lowbit_buffer_t *pb = NULL;
    LBT_OK(lowbit_buffer_alloc(ctx, 1 << 16, LOWBIT_MEM_PAGED, &pb));
    LBT_OK(lowbit_buffer_prefetch(ctx, NULL, pb, 1));
    lbt_fill(ctx, pb, 0x11);
    LBT_OK(lowbit_buffer_prefetch(ctx, NULL, pb, 0));
    uint8_t *pp = lbt_fetch(ctx, pb);
    for (int i = 0; i < 1 << 16; i++)
        LBT_ASSERT(pp[i] == 0x11, "paged fill byte %d", i);
    free(pp);
    LBT_OK(lowbit_buffer_free(pb));
    LBT_OK(lowbit_buffer_free(NULL));
}
END_TEST

START_TEST(rt_buffer_errors)
{
    lowbit_context_t *ctx = lbt_ctx();
    lbt_case("buffer errors");
    lowbit_buffer_t *sentinel = (lowbit_buffer_t *)(uintptr_t)0x4321, *b = sentinel;
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_alloc(ctx, 0, 0, &b), LOWBIT_ERR_INVALID_ARGUMENT, "alloc 0 bytes");
    LBT_ASSERT(b == sentinel, "buf_p written");
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_alloc(NULL, 16, 0, &b), LOWBIT_ERR_INVALID_ARGUMENT, "alloc with NULL ctx");
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_alloc(ctx, 16, 0, NULL), LOWBIT_ERR_INVALID_ARGUMENT, "alloc with NULL buf_p");

    lowbit_buffer_t *buf = lbt_alloc(ctx, 100);
    lbt_fill(ctx, buf, 0x42);
    uint8_t host[128];
    memset(host, 0x99, sizeof host);
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_upload(ctx, NULL, buf, 97, host, 4), LOWBIT_ERR_BUFFER_TOO_SMALL,
                     "upload past the end");
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_upload(ctx, NULL, buf, SIZE_MAX - 1, host, 4), LOWBIT_ERR_BUFFER_TOO_SMALL,
                     "upload with an offset that overflows");
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_upload(ctx, NULL, buf, 0, NULL, 4), LOWBIT_ERR_INVALID_ARGUMENT, "upload from NULL");
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_download(ctx, NULL, buf, 50, host, 51), LOWBIT_ERR_BUFFER_TOO_SMALL,
                     "download past the end");
    for (int i = 0; i < 128; i++)
        LBT_ASSERT(host[i] == 0x99, "dst written by a failing download");
    uint8_t *all = lbt_fetch(ctx, buf);
    for (int i = 0; i < 100; i++)
        LBT_ASSERT(all[i] == 0x42, "buffer written by a failing upload (byte %d)", i);
    free(all);

    lowbit_buffer_t *v = sentinel;
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_view(buf, 90, 11, &v), LOWBIT_ERR_BUFFER_TOO_SMALL, "view past the end");
    LBT_ASSERT(v == sentinel, "view_p written");
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_view(buf, SIZE_MAX, 2, &v), LOWBIT_ERR_BUFFER_TOO_SMALL,
                     "view with an offset that overflows");
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_view(NULL, 0, 1, &v), LOWBIT_ERR_INVALID_ARGUMENT, "view of NULL");
    size_t sz = 777;
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_size(NULL, &sz), LOWBIT_ERR_INVALID_ARGUMENT, "size of NULL");
    LBT_ASSERT(sz == 777, "bytes_p written");
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_fill(NULL, NULL, buf, 0), LOWBIT_ERR_INVALID_ARGUMENT, "fill with NULL ctx");
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_upload(lbt_ctx2(), NULL, buf, 0, host, 4), LOWBIT_ERR_INVALID_ARGUMENT,
                     "upload to a buffer of another context");
    LBT_OK(lowbit_buffer_free(buf));
}
END_TEST

START_TEST(rt_buffer_copy)
{
    lowbit_context_t *ctx = lbt_ctx();
    lbt_case("lowbit_buffer_copy");
    lbt_rng_t rng;
    lbt_rng_init(&rng, "rt_buffer_copy", 0);
    size_t n = 70001;
    uint8_t *src = malloc(n), *want = malloc(n), *got = malloc(n);
    for (size_t i = 0; i < n; i++)
        src[i] = (uint8_t)lbt_rng_u64(&rng);
    lowbit_buffer_t *a = lbt_alloc(ctx, n), *b = lbt_alloc(ctx, n);
    lbt_upload(ctx, a, 0, src, n);
    lbt_fill(ctx, b, 0x5c);
    memset(want, 0x5c, n);
    /* between buffers, at odd offsets */
    LBT_OK(lowbit_buffer_copy(ctx, NULL, b, 3, a, 1001, 50000));
    memcpy(want + 3, src + 1001, 50000);
    /* within one buffer, disjoint ranges, through a view */
    lowbit_buffer_t *v = lbt_view(b, 60000, 10001);
    LBT_OK(lowbit_buffer_copy(ctx, NULL, v, 7, b, 100, 9000));
    memcpy(want + 60007, want + 100, 9000);
    lbt_sync(ctx);
    lbt_download(ctx, b, 0, got, n);
    lbt_same_bytes(got, want, n, 1, "buffer after copies");
    lbt_download(ctx, a, 0, got, n);
    lbt_same_bytes(got, src, n, 1, "copy source changed");

    /* errors leave the destination alone */
    lbt_snap_t snap = {0};
    lbt_snap_add(&snap, ctx, b);
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_copy(ctx, NULL, b, 0, b, 10, 100), LOWBIT_ERR_OVERLAP, "overlapping ranges");
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_copy(ctx, NULL, v, 0, b, 60010, 100), LOWBIT_ERR_OVERLAP,
                     "overlapping ranges through a view");
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_copy(ctx, NULL, b, n - 10, a, 0, 11), LOWBIT_ERR_BUFFER_TOO_SMALL,
                     "destination range past the end");
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_copy(ctx, NULL, b, 0, a, SIZE_MAX - 4, 11), LOWBIT_ERR_BUFFER_TOO_SMALL,
                     "source offset that overflows");
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_copy(ctx, NULL, b, 0, NULL, 0, 11), LOWBIT_ERR_INVALID_ARGUMENT, "NULL source");
    lowbit_buffer_t *f = lbt_alloc(lbt_ctx2(), 64);
    lbt_prime_error();
    lbt_expect_error(lowbit_buffer_copy(ctx, NULL, b, 0, f, 0, 11), LOWBIT_ERR_INVALID_ARGUMENT,
                     "source of another context");
    lbt_snap_check(&snap, "failed copies");
    lowbit_buffer_free(f);
    lowbit_buffer_free(v);
    lowbit_buffer_free(a);
    lowbit_buffer_free(b);
    free(src);
    free(want);
    free(got);
}
END_TEST

START_TEST(rt_views)
{
    lowbit_context_t *ctx = lbt_ctx();
    lbt_case("views");
    lbt_rng_t rng;
    lbt_rng_init(&rng, "rt_views", 0);
    size_t n = 10000;
    uint8_t *src = malloc(n), *dst = malloc(n);
    for (size_t i = 0; i < n; i++)
        src[i] = (uint8_t)lbt_rng_u64(&rng);
    lowbit_buffer_t *root = lbt_alloc(ctx, n);
    lbt_upload(ctx, root, 0, src, n);
    lowbit_buffer_t *v1 = lbt_view(root, 1001, 5000);
    lowbit_buffer_t *v2 = lbt_view(v1, 333, 1234); /* a view of a view: root bytes [1334, 2568) */
    LBT_ASSERT(lbt_size(v1) == 5000 && lbt_size(v2) == 1234, "view sizes");
    lbt_download(ctx, v2, 0, dst, 1234);
    lbt_same_bytes(dst, src + 1334, 1234, 1, "view of a view reads its range");
    /* writes through a view land at the right place and nowhere else */
    uint8_t patch[100];
    memset(patch, 0xee, sizeof patch);
    lbt_upload(ctx, v2, 10, patch, 100);
    memcpy(src + 1344, patch, 100);
    lbt_fill(ctx, v2, 0x00);
    memset(src + 1334, 0x00, 1234);
    lbt_download(ctx, root, 0, dst, n);
    lbt_same_bytes(dst, src, n, 1, "root after writes through views");
    /* a view keeps the memory alive after its parent is freed */
    LBT_OK(lowbit_buffer_free(root));
    LBT_OK(lowbit_buffer_free(v1));
    lbt_download(ctx, v2, 0, dst, 1234);
    lbt_same_bytes(dst, src + 1334, 1234, 1, "view after its parents were freed");
    LBT_OK(lowbit_buffer_free(v2));
    free(src);
    free(dst);
}
END_TEST

/* Quantize from and into views at byte offsets inside shared buffers: same results as plain buffers, and
 * the bytes around the views untouched. */
START_TEST(rt_view_args)
{
    static const lowbit_qformat_t fmts[3] = {LOWBIT_QFORMAT_8BIT, LOWBIT_QFORMAT_NF4, LOWBIT_QFORMAT_FP4};
    static const lowbit_dtype_t dts[3] = {LOWBIT_F32, LOWBIT_F16, LOWBIT_BF16};
    lowbit_qformat_t f = fmts[_i / 3];
    lowbit_dtype_t dt = dts[_i % 3];
    lowbit_context_t *ctx = lbt_ctx();
    lbt_case("views as op arguments %s %s", lbt_format(f), lbt_dtype(dt));
    lbt_rng_t rng;
    lbt_rng_init(&rng, "rt_view_args", (uint64_t)_i);
    int64_t n = 5001;
    int32_t B = 64;
    lbt_host_t in;
    lbt_host_random(&in, dt, n, &rng, LBT_RANDN, 3.0);
    lbt_qcfg_t cfg = {.format = f, .dtype = dt, .blocksize = B, .nested_blocksize = 64, .out_dtype = dt};
    lbt_qout_t plain;
    lbt_qrun(ctx, &cfg, &in, &plain);
    const lowbit_qtensor_sizes_t *s = &plain.sizes;
    size_t es = ref_dtype_size(dt);
    size_t in_off = es * 37, in_bytes = (size_t)n * es;
    size_t d_off = in_off + in_bytes + 13; /* odd: bytes need no alignment */
    size_t a_off = d_off + s->data_bytes + 7;
    size_t a2_off = ((a_off + s->absmax_bytes + 4 + 3) / 4) * 4 + 4;
    size_t o_off = a2_off + s->nested_absmax_bytes + 4 + es * 5;
    size_t total = o_off + in_bytes + 64;
    lowbit_buffer_t *big = lbt_alloc(ctx, total);
    lbt_fill(ctx, big, 0x77);
    lbt_upload(ctx, big, in_off, in.raw, in_bytes); /* through the parent, at an offset */
    lowbit_buffer_t *vin = lbt_view(big, in_off, in_bytes);
    lowbit_qtensor_t q = {.format = f,
                          .dtype = dt,
                          .n = n,
                          .blocksize = B,
                          .data = lbt_view(big, d_off, s->data_bytes),
                          .absmax = lbt_view(big, a_off, s->absmax_bytes),
                          .nested_blocksize = 64,
                          .nested_absmax = lbt_view(big, a2_off, s->nested_absmax_bytes),
                          .nested_offset = lbt_view(big, a2_off + s->nested_absmax_bytes, 4)};
    lowbit_buffer_t *vout = lbt_view(big, o_off, in_bytes);
    LBT_OK(lowbit_quantize_blockwise(ctx, NULL, vin, &q, NULL));
    LBT_OK(lowbit_dequantize_blockwise(ctx, NULL, &q, dt, vout));
    lbt_sync(ctx);
    uint8_t *all = lbt_fetch(ctx, big);
    lbt_same_bytes(all + in_off, in.raw, in_bytes, 1, "input view");
    lbt_same_bytes(all + d_off, plain.data, s->data_bytes, 1, "data in a view");
    lbt_same_bytes(all + a_off, plain.absmax, s->absmax_bytes, 1, "absmax in a view");
    lbt_same_bytes(all + a2_off, plain.nested_absmax, s->nested_absmax_bytes, 1, "nested_absmax in a view");
    lbt_same_bytes(all + a2_off + s->nested_absmax_bytes, &plain.nested_offset, 4, 1, "nested_offset in a view");
    lbt_same_bytes(all + o_off, plain.deq, in_bytes, 1, "dequantized into a view");
    /* everything between the views is untouched */
    size_t lo[6] = {0, in_off + in_bytes, d_off + s->data_bytes, a_off + s->absmax_bytes,
                    a2_off + s->nested_absmax_bytes + 4, o_off + in_bytes};
    size_t hi[6] = {in_off, d_off, a_off, a2_off, o_off, total};
    for (int k = 0; k < 6; k++)
        for (size_t i = lo[k]; i < hi[k]; i++)
            LBT_ASSERT(all[i] == 0x77, "byte %zu between views changed to 0x%02x", i, all[i]);
    free(all);
    lowbit_buffer_free(vin);
    lowbit_buffer_free(vout);
    lowbit_buffer_free(q.data);
    lowbit_buffer_free(q.absmax);
    lowbit_buffer_free(q.nested_absmax);
    lowbit_buffer_free(q.nested_offset);
    lowbit_buffer_free(big);
    lbt_qout_free(&plain);
    lbt_host_free(&in);
}
END_TEST

START_TEST(rt_streams)
{
    lowbit_context_t *ctx = lbt_ctx();
    lbt_case("streams");
    lbt_rng_t rng;
    lbt_rng_init(&rng, "rt_streams", 0);
    lowbit_stream_t *st[2] = {NULL, NULL};
    LBT_OK(lowbit_stream_create(ctx, &st[0]));
    LBT_OK(lowbit_stream_create(ctx, &st[1]));
    LBT_ASSERT(st[0] && st[1] && st[0] != st[1], "stream handles");
    int64_t n = 50000;
    lbt_host_t in[2];
    lbt_qout_t want[2];
    lbt_qcfg_t cfg = {.format = LOWBIT_QFORMAT_NF4, .dtype = LOWBIT_F32, .blocksize = 64, .out_dtype = LOWBIT_F32};
    lowbit_buffer_t *bin[2], *bdata[2], *babs[2], *bout[2];
    lowbit_qtensor_t q[2];
    for (int k = 0; k < 2; k++) {
        lbt_host_random(&in[k], LOWBIT_F32, n, &rng, LBT_RANDN, 1.0 + k);
        lbt_qrun(ctx, &cfg, &in[k], &want[k]);
        bin[k] = lbt_alloc(ctx, 4 * (size_t)n);
        bdata[k] = lbt_alloc(ctx, want[k].sizes.data_bytes);
        babs[k] = lbt_alloc(ctx, want[k].sizes.absmax_bytes);
        bout[k] = lbt_alloc(ctx, 4 * (size_t)n);
        q[k] = (lowbit_qtensor_t){.format = cfg.format, .dtype = LOWBIT_F32, .n = n, .blocksize = 64,
                                  .data = bdata[k], .absmax = babs[k]};
    }
    for (int k = 0; k < 2; k++) {
        LBT_OK(lowbit_buffer_upload(ctx, st[k], bin[k], 0, in[k].raw, 4 * (size_t)n));
        LBT_OK(lowbit_buffer_fill(ctx, st[k], bout[k], 0xff));
        LBT_OK(lowbit_quantize_blockwise(ctx, st[k], bin[k], &q[k], NULL));
        LBT_OK(lowbit_dequantize_blockwise(ctx, st[k], &q[k], LOWBIT_F32, bout[k]));
    }
    for (int k = 0; k < 2; k++) {
        LBT_OK(lowbit_stream_synchronize(ctx, st[k]));
        uint8_t *d = lbt_fetch(ctx, bdata[k]), *o = lbt_fetch(ctx, bout[k]);
        uint8_t *a = malloc(want[k].sizes.absmax_bytes);
        LBT_OK(lowbit_buffer_download(ctx, st[k], babs[k], 0, a, want[k].sizes.absmax_bytes));
        lbt_same_bytes(d, want[k].data, want[k].sizes.data_bytes, 1, "data computed on a stream");
        lbt_same_bytes(a, want[k].absmax, want[k].sizes.absmax_bytes, 1, "absmax computed on a stream");
        lbt_same_bytes(o, want[k].deq, 4 * (size_t)n, 1, "dequantized on a stream");
        free(d);
        free(o);
        free(a);
    }
    LBT_OK(lowbit_stream_synchronize(ctx, NULL));
    for (int k = 0; k < 2; k++) {
        LBT_OK(lowbit_stream_destroy(st[k]));
        lowbit_buffer_free(bin[k]);
        lowbit_buffer_free(bdata[k]);
        lowbit_buffer_free(babs[k]);
        lowbit_buffer_free(bout[k]);
        lbt_qout_free(&want[k]);
        lbt_host_free(&in[k]);
    }
    LBT_OK(lowbit_stream_destroy(NULL));
    lowbit_stream_t *s = NULL;
    lbt_prime_error();
    lbt_expect_error(lowbit_stream_create(NULL, &s), LOWBIT_ERR_INVALID_ARGUMENT, "stream_create(NULL ctx)");
    lbt_prime_error();
    lbt_expect_error(lowbit_stream_create(ctx, NULL), LOWBIT_ERR_INVALID_ARGUMENT, "stream_create(NULL stream_p)");
}
END_TEST

/* CPU only: wrapping host memory; native streams do not exist there. */
START_TEST(rt_cpu_wrap)
{
    lowbit_context_t *ctx = lbt_ctx();
    lbt_case("CPU wrap");
    int64_t n = 3000;
    float *host = malloc((size_t)n * sizeof(float));
    lbt_rng_t rng;
    lbt_rng_init(&rng, "rt_cpu_wrap", 0);
    for (int64_t i = 0; i < n; i++)
        host[i] = (float)lbt_rng_normal(&rng);
    uint8_t *qdata = malloc((size_t)n);
    float *absmax = malloc(64 * sizeof(float));
    memset(qdata, 0xa5, (size_t)n);
    lowbit_buffer_t *bin = NULL, *bd = NULL, *ba = NULL;
    LBT_OK(lowbit_buffer_wrap(ctx, host, (size_t)n * 4, &bin));
    LBT_OK(lowbit_buffer_wrap(ctx, qdata, (size_t)n, &bd));
    LBT_OK(lowbit_buffer_wrap(ctx, absmax, 64 * 4, &ba));
    void *native = NULL;
    size_t off = 99;
    LBT_OK(lowbit_buffer_native(bin, &native, &off));
    LBT_ASSERT(native == (void *)host && off == 0, "native handle of wrapped memory");
    lowbit_stream_t *s = NULL;
    LBT_OK(lowbit_stream_create(ctx, &s));
    lowbit_qtensor_t q = {.format = LOWBIT_QFORMAT_8BIT, .dtype = LOWBIT_F32, .n = n, .blocksize = 64, .data = bd,
                          .absmax = ba};
    LBT_OK(lowbit_quantize_blockwise(ctx, s, bin, &q, NULL));
    LBT_OK(lowbit_stream_synchronize(ctx, s));
    lbt_host_t in;
    lbt_host_from(&in, LOWBIT_F32, n, host);
    ref_qspec_t spec = {LOWBIT_QFORMAT_8BIT, n, 64, NULL, 0, NULL};
    ref_qresult_t r;
    ck_assert(ref_quantize(&spec, in.f, &r) == 0);
    lbt_same_bytes(qdata, r.data, (size_t)n, 1, "codes written straight into wrapped host memory");
    lbt_same_bytes(absmax, r.absmax, (size_t)r.nb, 4, "absmax in wrapped host memory");
    ref_qresult_free(&r);
    lbt_host_free(&in);
    /* the CPU backend has no native streams: wrapping one is UNSUPPORTED, a NULL one INVALID_ARGUMENT */
    lowbit_stream_t *s2 = (lowbit_stream_t *)(uintptr_t)0x777;
    lbt_prime_error();
    lbt_expect_error(lowbit_stream_wrap(ctx, (void *)(uintptr_t)0x1000, &s2), LOWBIT_ERR_UNSUPPORTED,
                     "CPU stream_wrap of a native stream");
    LBT_ASSERT(s2 == (lowbit_stream_t *)(uintptr_t)0x777, "stream_p written");
    lbt_prime_error();
    lbt_expect_error(lowbit_stream_wrap(ctx, NULL, &s2), LOWBIT_ERR_INVALID_ARGUMENT, "stream_wrap(NULL native)");
    LBT_ASSERT(s2 == (lowbit_stream_t *)(uintptr_t)0x777, "stream_p written");
    LBT_OK(lowbit_stream_destroy(s));
    lowbit_buffer_free(bin);
    lowbit_buffer_free(bd);
    lowbit_buffer_free(ba);
    /* the wrapped memory is still ours and intact */
    LBT_ASSERT(isfinite(host[0]), "wrapped memory");
    free(host);
    free(qdata);
    free(absmax);
}
END_TEST

/* Two threads, one stream each, on one context. */
typedef struct thread_job {
    lowbit_context_t *ctx;
    const lbt_host_t *in;
    const lbt_qout_t *want;
    lowbit_qformat_t format;
    int failures;
    char msg[256];
} thread_job_t;

static void *thread_main(void *arg)
{
    thread_job_t *j = arg;
    lowbit_stream_t *s = NULL;
    int64_t n = j->in->n;
    lowbit_buffer_t *bin = NULL, *bd = NULL, *ba = NULL, *bo = NULL;
    if (lowbit_stream_create(j->ctx, &s) || lowbit_buffer_alloc(j->ctx, 4 * (size_t)n, 0, &bin) ||
        lowbit_buffer_alloc(j->ctx, j->want->sizes.data_bytes, 0, &bd) ||
        lowbit_buffer_alloc(j->ctx, j->want->sizes.absmax_bytes, 0, &ba) ||
        lowbit_buffer_alloc(j->ctx, 4 * (size_t)n, 0, &bo)) {
        snprintf(j->msg, sizeof j->msg, "setup failed: %s", lowbit_last_error());
        j->failures++;
        return NULL;
    }
    lowbit_qtensor_t q = {.format = j->format, .dtype = LOWBIT_F32, .n = n, .blocksize = 64, .data = bd,
                          .absmax = ba};
    uint8_t *d = malloc(j->want->sizes.data_bytes), *o = malloc(4 * (size_t)n);
    for (int rep = 0; rep < 20; rep++) {
        memset(d, 0, j->want->sizes.data_bytes);
        memset(o, 0, 4 * (size_t)n);
        if (lowbit_buffer_upload(j->ctx, s, bin, 0, j->in->raw, 4 * (size_t)n) ||
            lowbit_buffer_fill(j->ctx, s, bd, (uint8_t)rep) ||
            lowbit_quantize_blockwise(j->ctx, s, bin, &q, NULL) ||
            lowbit_dequantize_blockwise(j->ctx, s, &q, LOWBIT_F32, bo) || lowbit_stream_synchronize(j->ctx, s) ||
            lowbit_buffer_download(j->ctx, s, bd, 0, d, j->want->sizes.data_bytes) ||
            lowbit_buffer_download(j->ctx, s, bo, 0, o, 4 * (size_t)n)) {
            snprintf(j->msg, sizeof j->msg, "call failed: %s", lowbit_last_error());
            j->failures++;
            break;
        }
        if (memcmp(d, j->want->data, j->want->sizes.data_bytes) || memcmp(o, j->want->deq, 4 * (size_t)n)) {
            snprintf(j->msg, sizeof j->msg, "repetition %d: results differ from the single-threaded run", rep);
            j->failures++;
            break;
        }
    }
    free(d);
    free(o);
    lowbit_buffer_free(bin);
    lowbit_buffer_free(bd);
    lowbit_buffer_free(ba);
    lowbit_buffer_free(bo);
    lowbit_stream_destroy(s);
    return NULL;
}

START_TEST(rt_threads)
{
    lowbit_context_t *ctx = lbt_ctx();
    lbt_case("two threads on one context");
    lbt_rng_t rng;
    lbt_rng_init(&rng, "rt_threads", 0);
    lbt_host_t in[2];
    lbt_qout_t want[2];
    thread_job_t jobs[2];
    pthread_t th[2];
    for (int k = 0; k < 2; k++) {
        lowbit_qformat_t f = k ? LOWBIT_QFORMAT_FP4 : LOWBIT_QFORMAT_8BIT;
        lbt_host_random(&in[k], LOWBIT_F32, 40000 + k, &rng, LBT_RANDN, 1.0);
        lbt_qcfg_t cfg = {.format = f, .dtype = LOWBIT_F32, .blocksize = 64, .out_dtype = LOWBIT_F32};
        lbt_qrun(ctx, &cfg, &in[k], &want[k]);
        jobs[k] = (thread_job_t){ctx, &in[k], &want[k], f, 0, ""};
    }
    for (int k = 0; k < 2; k++)
        ck_assert(pthread_create(&th[k], NULL, thread_main, &jobs[k]) == 0);
    for (int k = 0; k < 2; k++)
        pthread_join(th[k], NULL);
    for (int k = 0; k < 2; k++) {
        LBT_ASSERT(jobs[k].failures == 0, "thread %d: %s", k, jobs[k].msg);
        lbt_qout_free(&want[k]);
        lbt_host_free(&in[k]);
    }
}
END_TEST

static void *thread_error(void *arg)
{
    char *out = arg;
    lowbit_buffer_t *b = NULL;
    lowbit_status_t st = lowbit_buffer_alloc(NULL, 16, 0, &b);
    snprintf(out, 256, "%d:%s", (int)st, lowbit_last_error());
    return NULL;
}

START_TEST(rt_error_thread_local)
{
    lbt_case("last error is per thread");
    size_t count;
    lowbit_status_t st = lowbit_code_table((lowbit_code_t)99, NULL, 0, &count);
    LBT_ASSERT(st == LOWBIT_ERR_INVALID_ARGUMENT, "code_table(99) -> %s", lowbit_status_string(st));
    char mine[256], theirs[256] = "";
    snprintf(mine, sizeof mine, "%s", lowbit_last_error());
    LBT_ASSERT(mine[0], "no message");
    pthread_t th;
    ck_assert(pthread_create(&th, NULL, thread_error, theirs) == 0);
    pthread_join(th, NULL);
    LBT_ASSERT(theirs[0] == '1' && theirs[1] == ':' && theirs[2], "the thread's own error: \"%s\"", theirs);
    LBT_ASSERT(strcmp(theirs + 2, mine) != 0, "the thread saw this thread's message");
    LBT_ASSERT(strcmp(lowbit_last_error(), mine) == 0, "this thread's message changed to \"%s\"", lowbit_last_error());
}
END_TEST

START_TEST(rt_code_table_api)
{
    lbt_case("lowbit_code_table arguments");
    float t[256];
    size_t count = 12345;
    memset(t, 0xa5, sizeof t);
    lbt_prime_error();
    lbt_expect_error(lowbit_code_table(LOWBIT_CODE_DYNAMIC_SIGNED, t, 255, &count), LOWBIT_ERR_BUFFER_TOO_SMALL,
                     "capacity 255");
    for (int i = 0; i < 256; i++)
        LBT_ASSERT(ref_f32_bits(t[i]) == 0xa5a5a5a5u, "entry %d written by a failing call", i);
    LBT_ASSERT(count == 12345, "count_p written by a failing call");
    lbt_prime_error();
    lbt_expect_error(lowbit_code_table(LOWBIT_CODE_NF4, t, 15, &count), LOWBIT_ERR_BUFFER_TOO_SMALL, "capacity 15");
    lbt_prime_error();
    lbt_expect_error(lowbit_code_table(LOWBIT_CODE_NF4, NULL, 16, &count), LOWBIT_ERR_INVALID_ARGUMENT, "NULL out");
    lbt_prime_error();
    lbt_expect_error(lowbit_code_table(LOWBIT_CODE_NF4, t, 16, NULL), LOWBIT_ERR_INVALID_ARGUMENT, "NULL count");
    lbt_prime_error();
    lbt_expect_error(lowbit_code_table((lowbit_code_t)42, t, 256, &count), LOWBIT_ERR_INVALID_ARGUMENT,
                     "unknown code");
}
END_TEST

START_TEST(rt_qtensor_sizes)
{
    lbt_case("lowbit_qtensor_sizes");
    static const int64_t ns[] = {1, 2, 63, 64, 65, 4095, 4097, 1000003, 3000000001LL};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        for (int f = 0; f < 3; f++) {
            for (int32_t B = f ? 32 : 64; B <= 4096; B *= 4) {
                for (int32_t NB = 0; NB <= 4096; NB = NB ? NB * 8 : 64) {
                    int64_t n = ns[k];
                    lowbit_qtensor_sizes_t s;
                    LBT_OK(lowbit_qtensor_sizes((lowbit_qformat_t)f, n, B, NB, &s));
                    int64_t nb = (n + B - 1) / B, nb2 = NB ? (nb + NB - 1) / NB : 0;
                    size_t data = f ? (size_t)((n + 1) / 2) : (size_t)n;
                    size_t absmax = NB ? (size_t)nb : 4 * (size_t)nb;
                    size_t r = 255;
                    size_t total = (data + r) / 256 * 256 + (absmax + r) / 256 * 256 + (4 * (size_t)nb2 + r) / 256 * 256 +
                                   (NB ? 256 : 0);
                    LBT_ASSERT(s.blocks == nb && s.nested_blocks == nb2 && s.data_bytes == data &&
                                   s.absmax_bytes == absmax && s.nested_absmax_bytes == 4 * (size_t)nb2 &&
                                   s.nested_offset_bytes == (NB ? 4u : 0u) && s.total_bytes == total,
                               "sizes for format %d n=%lld B=%d NB=%d", f, (long long)n, (int)B, (int)NB);
                }
            }
        }
    }
}
END_TEST

START_TEST(rt_qtensor_alloc)
{
    lowbit_context_t *ctx = lbt_ctx();
    static const lowbit_qformat_t fmts[3] = {LOWBIT_QFORMAT_8BIT, LOWBIT_QFORMAT_NF4, LOWBIT_QFORMAT_FP4};
    lowbit_qformat_t f = fmts[_i % 3];
    int nested = _i / 3;
    lbt_case("lowbit_qtensor_alloc %s%s", lbt_format(f), nested ? " nested" : "");
    lbt_rng_t rng;
    lbt_rng_init(&rng, "rt_qtensor_alloc", (uint64_t)_i);
    int64_t n = 12345;
    int32_t B = 128, NB = nested ? 256 : 0;
    lbt_host_t in;
    lbt_host_random(&in, LOWBIT_BF16, n, &rng, LBT_RANDN, 1.0);
    lbt_qcfg_t cfg = {.format = f, .dtype = LOWBIT_BF16, .blocksize = B, .nested_blocksize = NB,
                      .out_dtype = LOWBIT_BF16};
    lbt_qout_t want;
    lbt_qrun(ctx, &cfg, &in, &want);
    lowbit_qtensor_t q;
    memset(&q, 0xa5, sizeof q);
    LBT_OK(lowbit_qtensor_alloc(ctx, f, LOWBIT_BF16, n, B, NB, &q));
    LBT_ASSERT(q.format == f && q.dtype == LOWBIT_BF16 && q.n == n && q.blocksize == B && q.nested_blocksize == NB,
               "qtensor fields");
    LBT_ASSERT(q.code == NULL && q.nested_code == NULL, "code tables must be left NULL");
    LBT_ASSERT(q.data && q.absmax && lbt_size(q.data) >= want.sizes.data_bytes &&
                   lbt_size(q.absmax) >= want.sizes.absmax_bytes,
               "data/absmax buffers");
    if (nested)
        LBT_ASSERT(q.nested_absmax && q.nested_offset && lbt_size(q.nested_absmax) >= want.sizes.nested_absmax_bytes &&
                       lbt_size(q.nested_offset) >= 4,
                   "nested buffers");
    lowbit_buffer_t *bin = lbt_alloc(ctx, (size_t)n * 2), *bout = lbt_alloc(ctx, (size_t)n * 2);
    lbt_upload(ctx, bin, 0, in.raw, (size_t)n * 2);
    LBT_OK(lowbit_quantize_blockwise(ctx, NULL, bin, &q, NULL));
    LBT_OK(lowbit_dequantize_blockwise(ctx, NULL, &q, LOWBIT_BF16, bout));
    lbt_sync(ctx);
    uint8_t *d = malloc(want.sizes.data_bytes), *o = lbt_fetch(ctx, bout);
    lbt_download(ctx, q.data, 0, d, want.sizes.data_bytes);
    lbt_same_bytes(d, want.data, want.sizes.data_bytes, 1, "data via lowbit_qtensor_alloc");
    lbt_same_bytes(o, want.deq, (size_t)n * 2, 1, "dequantized via lowbit_qtensor_alloc");
    free(d);
    free(o);
    LBT_OK(lowbit_qtensor_free(&q));
    LBT_ASSERT(!q.data && !q.absmax && !q.nested_absmax && !q.nested_offset, "qtensor_free must NULL the buffers");
    lowbit_buffer_free(bin);
    lowbit_buffer_free(bout);
    lbt_qout_free(&want);
    lbt_host_free(&in);
}
END_TEST

void lbt_register_runtime(Suite *s)
{
    TCase *tc = lbt_tcase(s, "runtime");
    tcase_add_test(tc, rt_init);
    tcase_add_test(tc, rt_backends);
    tcase_add_test(tc, rt_names);
    tcase_add_test(tc, rt_devices);
    tcase_add_test(tc, rt_contexts);
    tcase_add_test(tc, rt_buffers);
    tcase_add_test(tc, rt_buffer_errors);
    tcase_add_test(tc, rt_buffer_copy);
    tcase_add_test(tc, rt_views);
    tcase_add_loop_test(tc, rt_view_args, 0, 9);
    tcase_add_test(tc, rt_streams);
    if (lbt_is_cpu())
        tcase_add_test(tc, rt_cpu_wrap);
    tcase_add_test(tc, rt_threads);
    tcase_add_test(tc, rt_error_thread_local);
    tcase_add_test(tc, rt_code_table_api);
    tcase_add_test(tc, rt_qtensor_sizes);
    tcase_add_loop_test(tc, rt_qtensor_alloc, 0, 6);
}

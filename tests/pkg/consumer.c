/*
 * A program that uses an installed lowbit the way a user's program does: built with nothing but
 * `pkg-config --cflags --libs lowbit`, run against the installed library and modules (scripts/deb-test.sh).
 *
 * Usage: consumer BACKEND...   where BACKEND is "default" (the library's own choice), cpu, opencl, cuda
 * or hip; a trailing '?' (e.g. "opencl?") makes a backend optional: if it has no device, the program says
 * so and goes on.  For each backend it quantizes a random vector to NF4 (block size 64), dequantizes it,
 * checks every element against the NF4 error bound, and checks that the result has the same bits as on
 * the first backend (every backend computes the same float32 arithmetic).  Exit status 0 when every
 * required backend passed, 1 otherwise.
 */
#include <lowbit.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N ((1 << 16) + 37) /* not a whole number of blocks: the last block is partial */
#define BLOCK 64

/* Half of the widest gap between neighbouring NF4 codes (-1.0 .. -0.6961928), with a little slack for
 * the float32 rounding of the division by absmax. */
#define NF4_HALF_GAP 0.1520f

static float absf(float v)
{
    return v < 0 ? -v : v;
}

static int fail(const char *backend, const char *what, lowbit_status_t st)
{
    fprintf(stderr, "consumer: %s: %s: %s: %s\n", backend, what, lowbit_status_string(st), lowbit_last_error());
    return 1;
}

/* Quantizes x to NF4 and back on `backend` (NULL: the default) into y.  Returns 0 on success, 1 on a
 * failure, 2 when the backend has no device. */
static int roundtrip(const char *backend, const float *x, float *y, char *used, size_t used_len)
{
    const char *label = backend ? backend : "default";
    lowbit_context_t *ctx = NULL;
    lowbit_buffer_t *in = NULL, *out = NULL;
    lowbit_qtensor_t q;
    lowbit_device_info_t dev;
    int rc = 1;

    memset(&q, 0, sizeof q);
    lowbit_status_t st = lowbit_context_create(backend, -1, &ctx);
    if (st == LOWBIT_ERR_NO_DEVICE) {
        printf("consumer: %s: no device: %s\n", label, lowbit_last_error());
        return 2;
    }
    if (st != LOWBIT_SUCCESS)
        return fail(label, "lowbit_context_create", st);
    if ((st = lowbit_context_device_info(ctx, &dev)) != LOWBIT_SUCCESS) {
        fail(label, "lowbit_context_device_info", st);
        goto done;
    }
    snprintf(used, used_len, "%s (%s)", dev.backend, dev.name);
    if ((st = lowbit_buffer_alloc(ctx, N * sizeof(float), 0, &in)) != LOWBIT_SUCCESS ||
        (st = lowbit_buffer_alloc(ctx, N * sizeof(float), 0, &out)) != LOWBIT_SUCCESS) {
        fail(label, "lowbit_buffer_alloc", st);
        goto done;
    }
    if ((st = lowbit_buffer_upload(ctx, NULL, in, 0, x, N * sizeof(float))) != LOWBIT_SUCCESS) {
        fail(label, "lowbit_buffer_upload", st);
        goto done;
    }
    if ((st = lowbit_qtensor_alloc(ctx, LOWBIT_QFORMAT_NF4, LOWBIT_F32, N, BLOCK, 0, &q)) != LOWBIT_SUCCESS) {
        fail(label, "lowbit_qtensor_alloc", st);
        goto done;
    }
    if ((st = lowbit_quantize_blockwise(ctx, NULL, in, &q, NULL)) != LOWBIT_SUCCESS) {
        fail(label, "lowbit_quantize_blockwise", st);
        goto done;
    }
    if ((st = lowbit_dequantize_blockwise(ctx, NULL, &q, LOWBIT_F32, out)) != LOWBIT_SUCCESS) {
        fail(label, "lowbit_dequantize_blockwise", st);
        goto done;
    }
    if ((st = lowbit_buffer_download(ctx, NULL, out, 0, y, N * sizeof(float))) != LOWBIT_SUCCESS) {
        fail(label, "lowbit_buffer_download", st);
        goto done;
    }
    rc = 0;
done:
    lowbit_qtensor_free(&q);
    lowbit_buffer_free(in);
    lowbit_buffer_free(out);
    lowbit_context_destroy(ctx);
    return rc;
}

/* Every element within half an NF4 code gap (times its block's absmax) of the input. */
static int check_error(const char *label, const float *x, const float *y, double *rms_p)
{
    double sq = 0;
    for (int b = 0; b < N; b += BLOCK) {
        int end = b + BLOCK < N ? b + BLOCK : N;
        float amax = 0;
        for (int i = b; i < end; i++)
            if (absf(x[i]) > amax)
                amax = absf(x[i]);
        for (int i = b; i < end; i++) {
            float e = absf(x[i] - y[i]);
            if (!(e <= NF4_HALF_GAP * amax)) {
                fprintf(stderr, "consumer: %s: element %d: %.9g dequantized to %.9g (block absmax %.9g)\n",
                        label, i, (double)x[i], (double)y[i], (double)amax);
                return 1;
            }
            sq += (double)e * e;
        }
    }
    *rms_p = 0;
    if (sq > 0) {
        double r = sq / N, s = r; /* square root by Newton's method: no libm beyond what pkg-config gives */
        for (int k = 0; k < 60; k++)
            s = 0.5 * (s + r / s);
        *rms_p = s;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: consumer BACKEND[?]... (default, cpu, opencl, cuda, hip)\n");
        return 2;
    }
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y), *first = malloc(N * sizeof *first);
    if (x == NULL || y == NULL || first == NULL)
        return 1;
    uint32_t s = 12345u;
    for (int i = 0; i < N; i++) {
        s = s * 1664525u + 1013904223u;
        x[i] = (float)((int32_t)(s >> 8) - (1 << 23)) / (float)(1 << 23) * (1.0f + (float)(i % 7));
    }
    printf("consumer: liblowbit %s\n", lowbit_version_string());

    int failed = 0, have_first = 0;
    const char *first_label = NULL;
    for (int a = 1; a < argc; a++) {
        char name[32], used[256] = "";
        snprintf(name, sizeof name, "%s", argv[a]);
        size_t len = strlen(name);
        int optional = len > 0 && name[len - 1] == '?';
        if (optional)
            name[len - 1] = '\0';
        const char *backend = strcmp(name, "default") == 0 ? NULL : name;
        int rc = roundtrip(backend, x, y, used, sizeof used);
        if (rc == 2) {
            if (optional) {
                printf("consumer: %s: SKIP (optional backend without a device)\n", name);
            } else {
                printf("consumer: %s: FAIL (no device)\n", name);
                failed = 1;
            }
            continue;
        }
        double rms = 0;
        if (rc == 0)
            rc = check_error(name, x, y, &rms);
        if (rc == 0 && have_first && memcmp(first, y, N * sizeof *y) != 0) {
            fprintf(stderr, "consumer: %s: result differs from that of %s\n", name, first_label);
            rc = 1;
        }
        if (rc == 0 && !have_first) {
            memcpy(first, y, N * sizeof *y);
            have_first = 1;
            first_label = argv[a];
        }
        printf("consumer: %s: %s on %s: NF4 round trip of %d values, rms error %.4g%s\n", name,
               rc ? "FAIL" : "ok", used[0] ? used : "?", N, rms,
               rc == 0 && first_label != argv[a] ? ", same bits as the first backend" : "");
        failed |= rc != 0;
    }

    int count = 0;
    if (lowbit_backend_count(&count) == LOWBIT_SUCCESS)
        for (int i = 0; i < count; i++) {
            lowbit_backend_info_t b;
            if (lowbit_backend_info(i, &b) == LOWBIT_SUCCESS)
                printf("consumer: backend %-6s module %s: %s\n", b.name,
                       b.module_path[0] ? b.module_path : strcmp(b.name, "cpu") == 0 ? "(built in)" : "(none)",
                       b.reason);
        }
    free(x);
    free(y);
    free(first);
    return failed;
}

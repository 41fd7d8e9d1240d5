/* buffer.c -- device buffers, wrapped foreign memory and views sharing one reference-counted allocation. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "runtime.h"
#include "validate.h"

static lowbit_status_t lb_buffer_new(lowbit_context_t *ctx, void *handle, size_t bytes, unsigned flags,
                                     int wrapped, lowbit_buffer_t **buf_p)
{
    lb_alloc_t *root = calloc(1, sizeof *root);
    lowbit_buffer_t *buf = calloc(1, sizeof *buf);
    if (root == NULL || buf == NULL) {
        free(root);
        free(buf);
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "buffer: out of host memory");
    }
    atomic_init(&root->refs, 1);
    root->ctx = ctx;
    root->handle = handle;
    root->bytes = bytes;
    root->flags = flags;
    root->wrapped = wrapped;
    buf->root = root;
    buf->bytes = bytes;
    atomic_fetch_add(&ctx->live_buffers, 1);
    *buf_p = buf;
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_buffer_alloc(lowbit_context_t *ctx, size_t bytes, unsigned flags,
                                               lowbit_buffer_t **buf_p)
{
    lb_error_clear();
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS)
        return st;
    if (buf_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "buf_p: must not be NULL");
    if (bytes == 0)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "bytes: must be > 0");
    if (flags & ~(unsigned)LOWBIT_MEM_PAGED)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "flags: unknown bits 0x%x", flags & ~(unsigned)LOWBIT_MEM_PAGED);
    void *handle = NULL;
    if ((st = ctx->be->mem_alloc(ctx->bctx, bytes, flags, &handle)) != LOWBIT_SUCCESS)
        return st;
    if ((st = lb_buffer_new(ctx, handle, bytes, flags, 0, buf_p)) != LOWBIT_SUCCESS)
        ctx->be->mem_free(ctx->bctx, handle, flags);
    return st;
}

LOWBIT_API lowbit_status_t lowbit_buffer_wrap(lowbit_context_t *ctx, void *native, size_t bytes,
                                              lowbit_buffer_t **buf_p)
{
    lb_error_clear();
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS)
        return st;
    if (buf_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "buf_p: must not be NULL");
    if (native == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "native: must not be NULL");
    if (bytes == 0)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "bytes: must be > 0");
    return lb_buffer_new(ctx, native, bytes, 0, 1, buf_p);
}

LOWBIT_API lowbit_status_t lowbit_buffer_view(lowbit_buffer_t *parent, size_t offset, size_t bytes,
                                              lowbit_buffer_t **view_p)
{
    lb_error_clear();
    if (parent == NULL || parent->root == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "parent: must be a buffer");
    if (view_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "view_p: must not be NULL");
    if (bytes == 0)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "bytes: must be > 0");
    if (offset > parent->bytes || bytes > parent->bytes - offset)
        return lb_error(LOWBIT_ERR_BUFFER_TOO_SMALL,
                        "view: bytes [%zu, %zu + %zu) lie outside the parent's %zu bytes", offset, offset, bytes,
                        parent->bytes);
    lowbit_buffer_t *view = calloc(1, sizeof *view);
    if (view == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "view: out of host memory");
    atomic_fetch_add(&parent->root->refs, 1);
    atomic_fetch_add(&parent->root->ctx->live_buffers, 1);
    view->root = parent->root;
    view->offset = parent->offset + offset;
    view->bytes = bytes;
    *view_p = view;
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_buffer_free(lowbit_buffer_t *buf)
{
    lb_error_clear();
    if (buf == NULL)
        return LOWBIT_SUCCESS;
    lb_alloc_t *root = buf->root;
    lowbit_context_t *ctx = root->ctx;
    free(buf);
    atomic_fetch_sub(&ctx->live_buffers, 1);
    if (atomic_fetch_sub(&root->refs, 1) != 1)
        return LOWBIT_SUCCESS;
    if (!root->wrapped)
        ctx->be->mem_free(ctx->bctx, root->handle, root->flags);
    free(root);
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_buffer_size(const lowbit_buffer_t *buf, size_t *bytes_p)
{
    lb_error_clear();
    if (buf == NULL || bytes_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL", buf == NULL ? "buf" : "bytes_p");
    *bytes_p = buf->bytes;
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_buffer_native(const lowbit_buffer_t *buf, void **native_p, size_t *offset_p)
{
    lb_error_clear();
    if (buf == NULL || native_p == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "%s: must not be NULL", buf == NULL ? "buf" : "native_p");
    const lb_backend_t *be = buf->root->ctx->be;
    if (be->addressable) {
        *native_p = (char *)buf->root->handle + buf->offset;
        if (offset_p != NULL)
            *offset_p = 0;
    } else {
        *native_p = buf->root->handle;
        if (offset_p != NULL)
            *offset_p = buf->offset;
    }
    return LOWBIT_SUCCESS;
}

void lb_buffer_mem(const lowbit_buffer_t *buf, lb_mem_t *mem)
{
    if (buf == NULL) {
        memset(mem, 0, sizeof *mem);
        return;
    }
    mem->handle = buf->root->handle;
    mem->offset = buf->offset;
    mem->bytes = buf->bytes;
}

/* Common checks of upload/download/copy/fill: the range [offset, offset+bytes) lies inside buf. */
static lowbit_status_t lb_range_check(lowbit_context_t *ctx, lowbit_stream_t *stream, const lowbit_buffer_t *buf,
                                      size_t offset, size_t bytes, void **bstream_p, lb_mem_t *m)
{
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS || (st = lb_check_buffer(ctx, buf, 0, "buf")) != LOWBIT_SUCCESS)
        return st;
    if (bytes == 0)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "bytes: must be > 0");
    if (offset > buf->bytes || bytes > buf->bytes - offset)
        return lb_error(LOWBIT_ERR_BUFFER_TOO_SMALL, "buf: bytes [%zu, %zu + %zu) lie outside its %zu bytes",
                        offset, offset, bytes, buf->bytes);
    if ((st = lb_stream_resolve(ctx, stream, bstream_p)) != LOWBIT_SUCCESS)
        return st;
    lb_buffer_mem(buf, m);
    m->offset += offset;
    m->bytes = bytes;
    return LOWBIT_SUCCESS;
}

LOWBIT_API lowbit_status_t lowbit_buffer_upload(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                lowbit_buffer_t *buf, size_t offset, const void *src,
                                                size_t bytes)
{
    lb_error_clear();
    void *bs = NULL;
    lb_mem_t m;
    if (src == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "src: must not be NULL");
    lowbit_status_t st = lb_range_check(ctx, stream, buf, offset, bytes, &bs, &m);
    return st != LOWBIT_SUCCESS ? st : ctx->be->mem_upload(ctx->bctx, bs, &m, src);
}

LOWBIT_API lowbit_status_t lowbit_buffer_download(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                  const lowbit_buffer_t *buf, size_t offset, void *dst,
                                                  size_t bytes)
{
    lb_error_clear();
    void *bs = NULL;
    lb_mem_t m;
    if (dst == NULL)
        return lb_error(LOWBIT_ERR_INVALID_ARGUMENT, "dst: must not be NULL");
    lowbit_status_t st = lb_range_check(ctx, stream, buf, offset, bytes, &bs, &m);
    return st != LOWBIT_SUCCESS ? st : ctx->be->mem_download(ctx->bctx, bs, &m, dst);
}

/* Without a device copy, bounce through host memory in slices (only backends lacking mem_copy pay this). */
static lowbit_status_t lb_copy_bounce(lowbit_context_t *ctx, void *bs, const lb_mem_t *dst, const lb_mem_t *src)
{
    enum { SLICE = 1 << 24 };
    size_t len = src->bytes < SLICE ? src->bytes : SLICE;
    char *tmp = malloc(len);
    if (tmp == NULL)
        return lb_error(LOWBIT_ERR_OUT_OF_MEMORY, "copy: out of host memory");
    lowbit_status_t st = LOWBIT_SUCCESS;
    for (size_t done = 0; done < src->bytes && st == LOWBIT_SUCCESS; done += len) {
        size_t part = src->bytes - done < len ? src->bytes - done : len;
        lb_mem_t s = *src, d = *dst;
        s.offset += done;
        s.bytes = part;
        d.offset += done;
        d.bytes = part;
        st = ctx->be->mem_download(ctx->bctx, bs, &s, tmp);
        if (st == LOWBIT_SUCCESS)
            st = ctx->be->mem_upload(ctx->bctx, bs, &d, tmp);
    }
    free(tmp);
    return st;
}

LOWBIT_API lowbit_status_t lowbit_buffer_copy(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                              lowbit_buffer_t *dst, size_t dst_offset,
                                              const lowbit_buffer_t *src, size_t src_offset, size_t bytes)
{
    lb_error_clear();
    void *bs = NULL;
    lb_mem_t d, s;
    lowbit_status_t st = lb_range_check(ctx, stream, dst, dst_offset, bytes, &bs, &d);
    if (st != LOWBIT_SUCCESS || (st = lb_range_check(ctx, stream, src, src_offset, bytes, &bs, &s)) != LOWBIT_SUCCESS)
        return st;
    lb_operand_t ops[] = {{dst, 0, "dst", 1, 0}, {src, 0, "src", 0, 0}};
    /* Compare only the copied ranges: views starting at the offsets. */
    lowbit_buffer_t dv = *dst, sv = *src;
    dv.offset += dst_offset;
    dv.bytes = bytes;
    sv.offset += src_offset;
    sv.bytes = bytes;
    ops[0].buf = &dv;
    ops[0].bytes = bytes;
    ops[1].buf = &sv;
    ops[1].bytes = bytes;
    if ((st = lb_check_operands(ctx, ops, 2)) != LOWBIT_SUCCESS)
        return st;
    if (ctx->be->mem_copy != NULL)
        return ctx->be->mem_copy(ctx->bctx, bs, &d, &s);
    return lb_copy_bounce(ctx, bs, &d, &s);
}

LOWBIT_API lowbit_status_t lowbit_buffer_fill(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                              lowbit_buffer_t *buf, uint8_t value)
{
    lb_error_clear();
    void *bs = NULL;
    lb_mem_t m;
    lowbit_status_t st = lb_range_check(ctx, stream, buf, 0, buf != NULL ? buf->bytes : 1, &bs, &m);
    return st != LOWBIT_SUCCESS ? st : ctx->be->mem_fill(ctx->bctx, bs, &m, value);
}

LOWBIT_API lowbit_status_t lowbit_buffer_prefetch(lowbit_context_t *ctx, lowbit_stream_t *stream,
                                                  lowbit_buffer_t *buf, int to_device)
{
    lb_error_clear();
    void *bs = NULL;
    lowbit_status_t st = lb_check_ctx(ctx);
    if (st != LOWBIT_SUCCESS || (st = lb_check_buffer(ctx, buf, 0, "buf")) != LOWBIT_SUCCESS)
        return st;
    if ((st = lb_stream_resolve(ctx, stream, &bs)) != LOWBIT_SUCCESS)
        return st;
    if (!(buf->root->flags & LOWBIT_MEM_PAGED) || ctx->be->mem_prefetch == NULL)
        return LOWBIT_SUCCESS;
    lb_mem_t m;
    lb_buffer_mem(buf, &m);
    return ctx->be->mem_prefetch(ctx->bctx, bs, &m, to_device != 0);
}

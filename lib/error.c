/* error.c -- status strings and the thread-local message of the last failing call. */
#include "config.h"

#include <stdarg.h>
#include <stdio.h>

#include "runtime.h"

#define LB_MESSAGE_MAX 1024

static _Thread_local char lb_message[LB_MESSAGE_MAX];

lowbit_status_t lb_verror(lowbit_status_t status, const char *fmt, va_list ap)
{
    vsnprintf(lb_message, sizeof lb_message, fmt, ap);
    lb_log(LB_LOG_DEBUG, "error (%s): %s", lowbit_status_string(status), lb_message);
    return status;
}

lowbit_status_t lb_error(lowbit_status_t status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lb_verror(status, fmt, ap);
    va_end(ap);
    return status;
}

void lb_error_clear(void)
{
    lb_message[0] = '\0';
}

LOWBIT_API const char *lowbit_last_error(void)
{
    return lb_message;
}

LOWBIT_API const char *lowbit_status_string(lowbit_status_t status)
{
    switch (status) {
    case LOWBIT_SUCCESS: return "success";
    case LOWBIT_ERR_INVALID_ARGUMENT: return "invalid argument";
    case LOWBIT_ERR_UNSUPPORTED: return "unsupported";
    case LOWBIT_ERR_BUFFER_TOO_SMALL: return "buffer too small";
    case LOWBIT_ERR_OVERLAP: return "overlapping buffers";
    case LOWBIT_ERR_TOO_LARGE: return "size too large";
    case LOWBIT_ERR_OUT_OF_MEMORY: return "out of memory";
    case LOWBIT_ERR_NO_DEVICE: return "no such backend or device";
    case LOWBIT_ERR_DEVICE: return "device error";
    case LOWBIT_ERR_MODULE: return "backend module error";
    case LOWBIT_ERR_IO: return "i/o error";
    case LOWBIT_ERR_FORMAT: return "malformed data";
    case LOWBIT_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

LOWBIT_API const char *lowbit_version_string(void)
{
    return PACKAGE_VERSION;
}

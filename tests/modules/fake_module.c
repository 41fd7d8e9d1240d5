/*
 * fake_module.c -- a backend module that misbehaves on purpose, for the loader tests.  It is built as
 * lowbit-hip.so; LOWBIT_FAKE_MODULE selects how it misbehaves:
 *   badversion  reports another backend API version (must be refused)
 *   badsize     reports another table size (must be refused)
 *   null        returns no table
 *   wrongname   registers as "cuda" although loaded as lowbit-hip.so
 *   nodevice    loads fine and finds no device
 * Built with -DLB_FAKE_NO_SYMBOL it exports no registration symbol at all.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"

#ifndef LB_FAKE_NO_SYMBOL
static int fake_probe(const lb_host_t *host, char *reason, size_t len)
{
    (void)host;
    snprintf(reason, len, "fake module: no device");
    return 0;
}

static lowbit_status_t fake_device_info(int index, lowbit_device_info_t *info)
{
    (void)index;
    (void)info;
    return LOWBIT_ERR_NO_DEVICE;
}

static lb_backend_t fake = {
    .api_version = LB_BACKEND_API_VERSION,
    .struct_size = sizeof(lb_backend_t),
    .name = "hip",
    .probe = fake_probe,
    .device_info = fake_device_info,
};

__attribute__((visibility("default"))) const lb_backend_t *lowbit_backend_module(void);

const lb_backend_t *lowbit_backend_module(void)
{
    const char *mode = getenv("LOWBIT_FAKE_MODULE");
    if (mode == NULL)
        mode = "nodevice";
    if (strcmp(mode, "badversion") == 0)
        fake.api_version = LB_BACKEND_API_VERSION + 1000;
    else if (strcmp(mode, "badsize") == 0)
        fake.struct_size = 8;
    else if (strcmp(mode, "null") == 0)
        return NULL;
    else if (strcmp(mode, "wrongname") == 0)
        fake.name = "cuda";
    return &fake;
}
#else
__attribute__((visibility("default"))) int lowbit_fake_module_without_symbol;
int lowbit_fake_module_without_symbol = 1;
#endif

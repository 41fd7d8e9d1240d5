# tools: the `lowbit` command (info, demo).  Its helpers (tools/cli.[ch]) are shared with lowbit-bench.
bin_PROGRAMS += tools/lowbit

tools_lowbit_SOURCES = tools/lowbit.c tools/cli.c tools/cli.h
# The configured module directory is only printed by `lowbit info` (the library finds modules itself).
tools_lowbit_CPPFLAGS = $(AM_CPPFLAGS) -DLOWBIT_MODULEDIR='"$(pkglibdir)"'
tools_lowbit_CFLAGS = $(AM_CFLAGS) $(PTHREAD_CFLAGS)
tools_lowbit_LDFLAGS = $(PTHREAD_CFLAGS)
tools_lowbit_LDADD = lib/liblowbit.la $(PTHREAD_LIBS)

# checkpoints: `lowbit quantize` and `lowbit inspect`
tools_lowbit_SOURCES += tools/cmd.h tools/cmd_quantize.c tools/cmd_inspect.c

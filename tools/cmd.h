/*
 * cmd.h -- subcommands of the `lowbit` program that live in their own files.  Each takes the argument
 * vector starting at the subcommand name and returns the exit status: 0 success, 1 failure (a message on
 * stderr names the file and tensor), 2 usage error.
 */
#ifndef LOWBIT_TOOLS_CMD_H
#define LOWBIT_TOOLS_CMD_H

int cmd_quantize(int argc, char **argv);
int cmd_inspect(int argc, char **argv);

#endif /* LOWBIT_TOOLS_CMD_H */

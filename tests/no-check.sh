#!/bin/sh
# Run by 'make check' when configure did not find the Check framework: fail loudly instead of passing
# with no tests.
echo "the Check framework was not found at configure time: install it (Debian: apt-get install check) and re-run configure" >&2
exit 99

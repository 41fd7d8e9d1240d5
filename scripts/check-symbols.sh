#!/bin/sh
# Checks that a built liblowbit exports every symbol of the checked-in list for its SONAME: within one
# SONAME the exported list may only grow.  A symbol that disappeared fails the check (exit 1); new symbols
# are listed (add them to the list with the version that introduced them) and do not fail it.
#
# Usage: scripts/check-symbols.sh [LIBRARY [SYMBOLS_FILE]]
#   LIBRARY       a built liblowbit.so* (default: lib/.libs/liblowbit.so, else the installed one)
#   SYMBOLS_FILE  a dpkg symbols file (default: debian/liblowbit0.symbols next to this script)
# Exit status: 0 no symbol lost, 1 symbols lost, 2 usage or setup error (no such file, no SONAME, SONAME
# not in the list: a new SONAME needs a new symbols file and package name).
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
lib=${1:-}
symfile=${2:-$here/debian/liblowbit0.symbols}

if [ -z "$lib" ]; then
    for c in "$here/lib/.libs/liblowbit.so" "/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo .)/liblowbit.so.0"; do
        [ -e "$c" ] && { lib=$c; break; }
    done
fi
[ -n "$lib" ] && [ -e "$lib" ] || { echo "check-symbols: no library given or found (usage: $0 LIBRARY [SYMBOLS_FILE])" >&2; exit 2; }
[ -r "$symfile" ] || { echo "check-symbols: cannot read the symbols file $symfile" >&2; exit 2; }

soname=$(LC_ALL=C objdump -p "$lib" | awk '$1 == "SONAME" { print $2 }')
[ -n "$soname" ] || { echo "check-symbols: $lib has no SONAME" >&2; exit 2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The list for this SONAME: the lines after "<soname> <package> ..." up to the next library line.  Symbol
# lines start with a space: " [(tags)]name@version minver"; "* Field:" lines and "| alternatives" are
# skipped.  Symbols tagged optional may disappear.
awk -v so="$soname" -v req="$tmp/required" -v opt="$tmp/optional" '
    /^[^ *#|]/ { inlib = ($1 == so); found = found || inlib; next }
    inlib && /^ / {
        s = $1; tags = ""
        if (substr(s, 1, 1) == "(") { tags = substr(s, 2, index(s, ")") - 2); s = substr(s, index(s, ")") + 1) }
        sub(/@.*/, "", s)
        print s > (tags ~ /optional/ ? opt : req)
    }
    END { exit found ? 0 : 3 }
' "$symfile" || {
    echo "check-symbols: $symfile has no list for SONAME $soname (a new SONAME needs a new symbols file and package)" >&2
    exit 2
}
touch "$tmp/required" "$tmp/optional"
sort -u -o "$tmp/required" "$tmp/required"
sort -u "$tmp/required" "$tmp/optional" > "$tmp/listed"

# Defined dynamic symbols, without the linker-provided ones dpkg-gensymbols ignores too.
LC_ALL=C nm -D --defined-only "$lib" | awk 'NF >= 3 { s = $3; sub(/@.*/, "", s); print s }' |
    grep -v -E '^(_init|_fini|_edata|_end|__bss_start|_DYNAMIC|_GLOBAL_OFFSET_TABLE_|_PROCEDURE_LINKAGE_TABLE_)$' |
    sort -u > "$tmp/exported"

comm -23 "$tmp/required" "$tmp/exported" > "$tmp/lost"
comm -13 "$tmp/listed" "$tmp/exported" > "$tmp/new"
grep -v '^lowbit_' "$tmp/exported" > "$tmp/foreign" || true

echo "check-symbols: $lib (SONAME $soname): $(wc -l < "$tmp/exported") exported, $(wc -l < "$tmp/listed") listed in $symfile"
if [ -s "$tmp/new" ]; then
    # The version that introduces them: the package version being built (debian/changelog).
    ver=$(dpkg-parsechangelog -l "$here/debian/changelog" -S Version 2>/dev/null | sed 's/-[^-]*$//')
    echo "check-symbols: new symbols (allowed; add these lines to $symfile, sorted):"
    sed "s/.*/ &@Base ${ver:-VERSION}/" "$tmp/new"
fi
if [ -s "$tmp/foreign" ]; then
    echo "check-symbols: warning: exported symbols outside the lowbit_ namespace:"
    sed 's/^/  ? /' "$tmp/foreign"
fi
if [ -s "$tmp/lost" ]; then
    echo "check-symbols: FAIL: symbols listed for $soname are no longer exported (an ABI break needs a new SONAME):"
    sed 's/^/  - /' "$tmp/lost"
    exit 1
fi
echo "check-symbols: PASS: no symbol of $soname was lost"

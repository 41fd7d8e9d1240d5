#!/bin/bash
# Builds the Debian packages from a clean copy of this tree, checks them with lintian, installs them,
# and checks the installation the way a user meets it: a program built with `pkg-config --cflags --libs
# lowbit` only (tests/pkg/consumer.c) runs on the default backend, the CPU and OpenCL (PoCL), the
# installed `lowbit info` finds the installed modules, the exported symbols still include every one of
# debian/liblowbit0.symbols (scripts/check-symbols.sh), and the man pages are in place.
#
# Needs root (or sudo) to install packages; run scripts/deps-debian.sh first.  Debian 12.
# Environment:
#   LOWBIT_DEB_CUDA_ARCH  CUDA architectures of the package build (default here: 90; set it empty for
#                         configure's full list)
#   LOWBIT_DEB_HIP_ARCH   AMD targets (default here: gfx90a; empty: configure's list)
#   LOWBIT_DEB_PROFILES   extra build profiles (e.g. "nocuda nohip"); nocuda / nohip are added by themselves
#                         when nvcc / hipcc are not found, with a note
#   LOWBIT_DEB_KEEP=1     leave the packages installed and the work directory in place
#   LOWBIT_DEB_WORKDIR    work directory (default: a new one under ${TMPDIR:-/tmp})
#   LOWBIT_DEB_PREBUILT=1 skip the copy and the build: test the packages already in LOWBIT_DEB_WORKDIR
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
jobs=$(nproc 2>/dev/null || echo 2)
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
export PATH="$PATH:${CUDA_HOME:-/usr/local/cuda}/bin"
# The checks must see only what the packages installed.
unset LD_LIBRARY_PATH PKG_CONFIG_PATH LOWBIT_MODULE_PATH LOWBIT_BACKEND LOWBIT_DEVICE LOWBIT_TUNING_FILE

results=()
failed=0
pass() { results+=("PASS  $1"); echo "deb-test: PASS: $1"; }
fail() { results+=("FAIL  $1"); echo "deb-test: FAIL: $1" >&2; failed=1; }
skip() { results+=("SKIP  $1"); echo "deb-test: SKIP: $1"; }
summary() {
    echo
    echo "==== deb-test summary ===="
    printf '%s\n' "${results[@]}"
    if [ "$failed" -eq 0 ]; then echo "deb-test: PASS"; else echo "deb-test: FAIL"; fi
}
die() { fail "$1"; summary; exit 1; }

work=${LOWBIT_DEB_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/lowbit-deb.XXXXXX")}
mkdir -p "$work"
echo "deb-test: work directory $work"

src=$work/lowbit
if [ "${LOWBIT_DEB_PREBUILT:-0}" = 1 ]; then
    [ -n "${LOWBIT_DEB_WORKDIR:-}" ] || die "LOWBIT_DEB_PREBUILT=1 needs LOWBIT_DEB_WORKDIR"
    src=$top
    skip "build (LOWBIT_DEB_PREBUILT=1: testing the packages in $work)"
else
    # ---- a clean copy of the tree: tracked and untracked-but-not-ignored files (in CI, a fresh clone) -------
    rm -rf "$src" && mkdir -p "$src"
    if git -C "$top" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        (cd "$top" && git ls-files -z --cached --others --exclude-standard |
            while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
            tar --null -T - -cf -) | tar -xf - -C "$src" || die "copy of the source tree"
    else
        tar -C "$top" --exclude=.git --exclude=.devdeps -cf - . | tar -xf - -C "$src" || die "copy of the source tree"
    fi

    # ---- build ------------------------------------------------------------------------------------------------
    profiles=${LOWBIT_DEB_PROFILES:-}
    case " $profiles " in *" nocuda "*) ;; *)
        command -v nvcc >/dev/null || { profiles="$profiles nocuda"; echo "deb-test: note: nvcc not found: building with the nocuda profile"; } ;;
    esac
    case " $profiles " in *" nohip "*) ;; *)
        command -v hipcc >/dev/null || { profiles="$profiles nohip"; echo "deb-test: note: hipcc not found: building with the nohip profile"; } ;;
    esac
    profiles=$(echo $profiles)
    export LOWBIT_DEB_CUDA_ARCH=${LOWBIT_DEB_CUDA_ARCH-90}
    export LOWBIT_DEB_HIP_ARCH=${LOWBIT_DEB_HIP_ARCH-gfx90a}
    echo "deb-test: dpkg-buildpackage -us -uc -b (profiles: ${profiles:-none}; CUDA arch: ${LOWBIT_DEB_CUDA_ARCH:-default}; HIP arch: ${LOWBIT_DEB_HIP_ARCH:-default})"
    t0=$(date +%s)
    if (cd "$src" && DEB_BUILD_OPTIONS="nocheck parallel=$jobs" DEB_BUILD_PROFILES="$profiles" \
            dpkg-buildpackage -us -uc -b ${profiles:+-P"${profiles// /,}"}) > "$work/build.log" 2>&1; then
        pass "dpkg-buildpackage ($(( $(date +%s) - t0 )) s)"
    else
        tail -n 60 "$work/build.log"
        die "dpkg-buildpackage (log: $work/build.log)"
    fi
fi
changes=$(ls "$work"/lowbit_*.changes 2>/dev/null | head -n 1)
echo "deb-test: built:"; ls -l "$work"/*.deb
# What a user installs: the packages without their -dbgsym companions.
debs=$(ls "$work"/*.deb | grep -v -- '-dbgsym_')

# ---- lintian ----------------------------------------------------------------------------------------------
if command -v lintian >/dev/null; then
    lintian --fail-on error --display-info "$changes" > "$work/lintian.log" 2>&1
    lrc=$?
    cat "$work/lintian.log"
    ne=$(grep -c '^E: ' "$work/lintian.log"); nw=$(grep -c '^W: ' "$work/lintian.log")
    if [ "$lrc" -eq 0 ] && [ "$ne" -eq 0 ]; then pass "lintian: no errors ($nw warnings)"; else fail "lintian: $ne errors"; fi
else
    fail "lintian is not installed (scripts/deps-debian.sh installs it)"
fi

# ---- version pinning of the modules ------------------------------------------------------------------------
version=$(dpkg-parsechangelog -l "$src/debian/changelog" -S Version)
for d in "$work"/liblowbit-cuda_*.deb "$work"/liblowbit-hip_*.deb "$work"/liblowbit-opencl_*.deb; do
    [ -e "$d" ] || continue
    dep=$(dpkg-deb -f "$d" Depends)
    case ", $dep," in
        *", liblowbit0 (= $version),"*) pass "$(basename "$d"): Depends: liblowbit0 (= $version)" ;;
        *) fail "$(basename "$d"): Depends does not pin liblowbit0 (= $version): $dep" ;;
    esac
done

# ---- install ----------------------------------------------------------------------------------------------
pkgs=$(for d in $debs; do dpkg-deb -f "$d" Package; done | tr '\n' ' ')
if (cd "$work" && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades \
        $(for d in $debs; do echo "./$(basename "$d")"; done)) > "$work/install.log" 2>&1; then
    pass "apt-get install $pkgs"
else
    tail -n 30 "$work/install.log"
    die "apt-get install of the built packages (log: $work/install.log)"
fi

multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
moddir=/usr/lib/$multiarch/lowbit
libfile=/usr/lib/$multiarch/liblowbit.so.0

# ---- a consumer built with pkg-config only ----------------------------------------------------------------
pcdir=$(pkg-config --variable=pcfiledir lowbit 2>/dev/null)
if [ "$pcdir" = "/usr/lib/$multiarch/pkgconfig" ]; then
    pass "pkg-config finds the installed lowbit.pc ($pcdir, version $(pkg-config --modversion lowbit))"
else
    fail "pkg-config: lowbit.pc not found in /usr/lib/$multiarch/pkgconfig (got '${pcdir}')"
fi
flags=$(pkg-config --cflags --libs lowbit)
if cc -std=c11 -Wall -Wextra -Werror -o "$work/consumer" "$top/tests/pkg/consumer.c" $flags; then
    pass "cc tests/pkg/consumer.c \$(pkg-config --cflags --libs lowbit) [$flags]"
    linked=$(ldd "$work/consumer" | awk '$1 ~ /^liblowbit\.so/ { print $3 }')
    [ "$linked" = "$libfile" ] || [ "$(readlink -f "$linked")" = "$(readlink -f "$libfile")" ] &&
        pass "consumer resolves liblowbit.so.0 to the installed $libfile" ||
        fail "consumer resolves liblowbit.so.0 to '$linked', not $libfile"
    ocl="opencl?"
    if command -v clinfo >/dev/null && clinfo -l 2>/dev/null | grep -q 'Device #'; then
        ocl=opencl
    else
        echo "deb-test: note: no OpenCL device (clinfo -l): the OpenCL round trip is optional"
    fi
    if (cd "$work" && ./consumer default cpu "$ocl") > "$work/consumer.log" 2>&1; then
        cat "$work/consumer.log"
        pass "consumer: NF4 round trip on the default backend and cpu"
        if grep -q '^consumer: opencl: ok' "$work/consumer.log"; then
            pass "consumer: NF4 round trip on opencl, same bits as the CPU"
        else
            skip "consumer on opencl: no OpenCL device"
        fi
    else
        cat "$work/consumer.log"
        fail "consumer run"
    fi
else
    fail "compiling tests/pkg/consumer.c with pkg-config's flags"
fi

# ---- the installed tools find the installed modules --------------------------------------------------------
lowbit_bin=$(command -v lowbit || true)
if [ "$lowbit_bin" = /usr/bin/lowbit ] && dpkg -S /usr/bin/lowbit 2>/dev/null | grep -q '^lowbit-tools:'; then
    if /usr/bin/lowbit info > "$work/info.log" 2>&1; then
        cat "$work/info.log"
        # Debian 12 merges /lib into /usr/lib, so the loader may report /lib/...: compare real paths.
        info_modules=$(sed -n 's/^ *module \(\/.*\)$/\1/p' "$work/info.log" | while read -r m; do readlink -f "$m"; done)
        for p in liblowbit-cuda liblowbit-hip liblowbit-opencl; do
            case " $pkgs " in *" $p "*) ;; *) continue ;; esac
            name=${p#liblowbit-}
            f=$(dpkg -L "$p" | grep "/lowbit-$name\.so\$")
            if [ "$f" != "$moddir/lowbit-$name.so" ]; then
                fail "$p installs its module as '$f', not $moddir/lowbit-$name.so"
            elif ! printf '%s\n' "$info_modules" | grep -qxF "$(readlink -f "$f")"; then
                fail "lowbit info does not show the installed module $f"
            elif grep -A1 -E "^  $name " "$work/info.log" | grep -qE 'could not be loaded|backend API|no usable'; then
                fail "lowbit info: the installed module $f was refused: $(grep -E "^  $name " "$work/info.log")"
            else
                pass "lowbit info shows the installed module $f, loaded: $(grep -E "^  $name " "$work/info.log" | sed 's/.*— //')"
            fi
        done
        info_lib=$(sed -n '1s/.*(library [^,]*, \(\/[^)]*\)).*/\1/p' "$work/info.log")
        if [ -n "$info_lib" ] && [ "$(readlink -f "$info_lib")" = "$(readlink -f "$libfile")" ]; then
            pass "lowbit info runs on the installed library ($info_lib)"
        else
            fail "lowbit info does not name the installed library $libfile (first line: $(head -n 1 "$work/info.log"))"
        fi
    else
        cat "$work/info.log"
        fail "lowbit info exited with an error"
    fi
    for prog in lowbit lowbit-bench lowbit-tune; do
        if [ ! -x "/usr/bin/$prog" ]; then
            fail "/usr/bin/$prog is not installed"
        elif page=$(man -w "$prog" 2>/dev/null) && lexgrog "$page" >/dev/null 2>&1; then
            pass "man page of $prog ($page)"
        else
            fail "man page of $prog missing or without a NAME section"
        fi
    done
else
    fail "/usr/bin/lowbit is not the one of lowbit-tools (found '${lowbit_bin}')"
fi

# ---- symbols: within the SONAME, the exported list only grows ------------------------------------------------
if bash "$top/scripts/check-symbols.sh" "$libfile" "$top/debian/liblowbit0.symbols"; then
    pass "check-symbols: every symbol of debian/liblowbit0.symbols is exported by $libfile"
else
    fail "check-symbols"
fi

# ---- clean up ---------------------------------------------------------------------------------------------
if [ "${LOWBIT_DEB_KEEP:-0}" = 1 ]; then
    echo "deb-test: keeping the packages installed and $work"
else
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q $pkgs > "$work/purge.log" 2>&1 &&
        pass "apt-get purge $pkgs" || fail "apt-get purge (log: $work/purge.log)"
    [ -n "${LOWBIT_DEB_WORKDIR:-}" ] || rm -rf "$work"
fi

summary
exit "$failed"

#!/usr/bin/env bash
# What the programs built here ask of the system they are installed on
# (docs/platforms.md#what-the-binaries-need):
#  - symbol versions (objdump -T): none above the limits given, EL9's and Ubuntu
#    22.04's (glibc 2.34; libstdc++ of g++ 11: GLIBCXX_3.4.29, CXXABI_1.3.13); every
#    symbol above a limit is listed by name;
#  - shared libraries (DT_NEEDED, readelf -d): each soname is in the table of
#    docs/platforms.md, so a new library cannot come in without its row there.
# The packages hold these files stripped: stripping leaves .dynsym and .dynamic alone.
# Usage: test_abi.sh BUILD_DIR PLATFORMS_MD GLIBC_MAX GLIBCXX_MAX CXXABI_MAX
set -euo pipefail

build="$1"
doc="$2"
declare -A limit=([GLIBC]="$3" [GLIBCXX]="$4" [CXXABI]="$5")
programs=(smtpfenced smtpfencectl smtpfence-worker)

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
for tool in objdump readelf c++filt; do
    command -v "$tool" >/dev/null || {
        echo "FAIL: $tool not found (Debian package binutils; scripts/install-deps)" >&2
        exit 1
    }
done
for p in "${programs[@]}"; do
    [[ -x "$build/bin/$p" ]] || {
        echo "FAIL: $build/bin/$p is not built" >&2
        exit 1
    }
done
[[ -f "$doc" ]] || {
    echo "FAIL: no $doc" >&2
    exit 1
}

# above VERSION LIMIT: VERSION sorts after LIMIT (dotted numbers).
above() { [[ "$1" != "$2" && "$(printf '%s\n%s\n' "$1" "$2" | sort -V | tail -1)" == "$1" ]]; }

# The sonames of the table: every lib*.so.N in the rows of its section.
table="$(sed -n '/^## Shared libraries/,/^## /p' "$doc" | grep '^|' |
    grep -oE 'lib[A-Za-z0-9_+-]+\.so\.[0-9]+' | sort -u || true)"
[[ -n "$table" ]] || fail "$doc: no soname in its '## Shared libraries' table"

for p in "${programs[@]}"; do
    bin="$build/bin/$p"
    echo "== $p"
    # Undefined dynamic symbols with their version: "... *UND* ... (GLIBC_2.34) name"
    # (binutils 2.40 puts the version of an undefined one in parentheses).
    versioned="$(objdump -T "$bin" | awk '
        $0 ~ /\*UND\*/ {
            for (i = 1; i < NF; i++) {
                v = $i
                gsub(/[()]/, "", v)
                if (v ~ /^[A-Z][A-Z0-9]*_[0-9][0-9.]*$/) { print v, $NF; break }
            }
        }')"
    summary=""
    for prefix in GLIBC GLIBCXX CXXABI GCC LIBSYSTEMD LIBNFTNL LIBMNL; do
        highest="$(awk -v p="$prefix" '{ split($1, a, "_"); if (a[1] == p) print a[2] }' <<<"$versioned" |
            sort -Vu | tail -1)"
        [[ -z "$highest" ]] || summary+=" ${prefix}_$highest"
        [[ -n "${limit[$prefix]:-}" && -n "$highest" ]] || continue
        offending="$(awk -v p="$prefix" '{ split($1, a, "_"); if (a[1] == p) print a[2], $2 }' <<<"$versioned" |
            while read -r version name; do
                if above "$version" "${limit[$prefix]}"; then
                    printf '    %s_%s %s (%s)\n' "$prefix" "$version" "$name" "$(c++filt "$name")"
                fi
            done | sort -V)"
        if [[ -n "$offending" ]]; then
            fail "$p needs ${prefix} above ${prefix}_${limit[$prefix]}:"
            echo "$offending" >&2
        fi
    done
    echo "highest:$summary"

    needed="$(readelf -d "$bin" | sed -nE 's/.*\(NEEDED\).*\[(.*)\]/\1/p')"
    echo "NEEDED: $(tr '\n' ' ' <<<"$needed")"
    while read -r soname; do
        grep -qxF "$soname" <<<"$table" ||
            fail "$p needs $soname, which the table in $doc ('## Shared libraries') lacks"
    done <<<"$needed"
done

if ((failures)); then
    echo "$failures failure(s)" >&2
    exit 1
fi
echo "ok"

#!/usr/bin/env bash
# The native RPM spec packaging/rpm/smtpfence.spec (docs/platforms.md), as far as a
# Debian machine can check it; its binary build needs EL's packages and is not tried:
#  - `rpmspec --parse` succeeds as on this machine, on EL8 and on EL9 (rhel defined),
#    and each takes its branch: gcc-toolset on EL8 and EL9, c-ares and SQLite bundled
#    on EL8 only;
#  - its Version is CMakeLists.txt's project(VERSION);
#  - its %files are exactly what `cmake --install` of this tree lays out with the
#    prefix /usr (what its %install runs), the directories it owns are there, and the
#    configuration is %config(noreplace);
#  - a source rpm for EL9 builds (`rpmbuild -bs`, a tarball of the source tree in a
#    temporary %_topdir) and holds the spec and the tarball; the tarball holds the
#    scriptlet files the spec reads with `%post -f` and the rest.
# Usage: test_spec.sh SOURCE_DIR BUILD_DIR VERSION
set -euo pipefail

src="$1"
build="$2"
version="$3"
spec="$src/packaging/rpm/smtpfence.spec"

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
for tool in rpmspec rpmbuild rpm; do
    command -v "$tool" >/dev/null || {
        echo "FAIL: $tool not found (Debian package rpm; scripts/install-deps)" >&2
        exit 1
    }
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "== rpmspec --parse (this machine, EL8, EL9)"
declare -A defs=([host]="" [el8]="rhel 8" [el9]="rhel 9")
for os in host el8 el9; do
    args=()
    [[ -z "${defs[$os]}" ]] || args=(--define "${defs[$os]}" --define "dist .$os")
    if ! rpmspec --parse "${args[@]}" "$spec" >"$tmp/$os.spec" 2>"$tmp/$os.err"; then
        cat "$tmp/$os.err" >&2
        fail "rpmspec --parse ($os)"
        continue
    fi
    # Warnings are mistakes too (an unknown macro, a bad tag).
    if [[ -s "$tmp/$os.err" ]]; then
        fail "rpmspec --parse ($os) warns: $(head -3 "$tmp/$os.err")"
    fi
    echo "$os: $(wc -l <"$tmp/$os.spec") lines"
done
has() { grep -qE "$2" "$tmp/$1.spec"; }
for os in el8 el9; do
    has "$os" '^BuildRequires: +gcc-toolset-13-gcc-c\+\+$' || fail "$os: no gcc-toolset-13"
    has "$os" '^source /opt/rh/gcc-toolset-13/enable$' || fail "$os: gcc-toolset-13 not enabled"
done
has el8 '^Source1: .*/c-ares-[0-9.]+\.tar\.gz$' || fail "el8: c-ares is not bundled"
has el8 '^Source2: .*/sqlite-autoconf-[0-9]+\.tar\.gz$' || fail "el8: SQLite is not bundled"
has el8 'pkgconfig\((libcares|sqlite3)\)' && fail "el8: requires EL8's c-ares or SQLite (too old)"
has el9 '^Source[12]:' && fail "el9: bundles a library"
has el9 '^BuildRequires: +pkgconfig\(libcares\) >= 1\.16$' || fail "el9: not built with EL9's c-ares"
has el9 '^BuildRequires: +pkgconfig\(sqlite3\) >= 3\.31$' || fail "el9: not built with EL9's SQLite"

echo "== Version"
spec_version="$(rpmspec -q --srpm --qf '%{VERSION}' "$spec" 2>/dev/null)"
[[ "$spec_version" == "$version" ]] ||
    fail "the spec's Version is '$spec_version', CMakeLists.txt's project(VERSION) is $version"
echo "spec $spec_version, CMakeLists.txt $version"

echo "== %files against cmake --install (prefix /usr)"
if ! DESTDIR="$tmp/root" cmake --install "$build" --prefix /usr >"$tmp/install.log" 2>&1; then
    cat "$tmp/install.log" >&2
    fail "cmake --install $build"
fi
(cd "$tmp/root" && find . ! -type d | sed 's|^\.||' | sort) >"$tmp/installed"
# The %files section of the parsed spec: path patterns, less %dir/%config(...).
awk '/^%(files|changelog|package|description)/ { in_files = /^%files/; next } in_files' "$tmp/host.spec" |
    sed -E 's/^%(config|attr|verify)(\([^)]*\))? +//; s/^%(doc|license) +//' |
    grep -v '^$' >"$tmp/files"
: >"$tmp/covered"
while read -r entry; do
    if [[ "$entry" == "%dir "* ]]; then
        dir="${entry#%dir }"
        [[ -d "$tmp/root$dir" ]] || fail "%dir $dir: cmake --install makes no such directory"
        continue
    fi
    [[ "$entry" == /* ]] || {
        fail "%files: cannot read '$entry'"
        continue
    }
    shopt -s nullglob
    # shellcheck disable=SC2206 # the pattern is meant to glob
    matches=($tmp/root$entry)
    shopt -u nullglob
    ((${#matches[@]})) || fail "%files $entry: cmake --install installs no such file"
    for m in "${matches[@]}"; do
        echo "${m#"$tmp/root"}" >>"$tmp/covered"
    done
done <"$tmp/files"
cat "$tmp/files"
sort -u "$tmp/covered" -o "$tmp/covered"
if ! diff -u "$tmp/installed" "$tmp/covered" >"$tmp/diff"; then
    fail "%files and cmake --install differ (- installed only, + in %files only):"
    sed -n '3,$p' "$tmp/diff" >&2
fi

# The configuration is the one conffile, as in the CPack rpm.
[[ "$(grep -E '^%config' "$tmp/host.spec")" == "%config(noreplace) /etc/smtpfence/smtpfence.conf" ]] ||
    fail "%config: $(grep -E '^%config' "$tmp/host.spec" | tr '\n' ' '), expected %config(noreplace) /etc/smtpfence/smtpfence.conf"

echo "== rpmbuild -bs (EL9)"
name="smtpfence-$version"
mkdir -p "$tmp/sources" "$tmp/top"
# The tracked and untracked-but-not-ignored files (uncommitted work included), as
# `git archive --prefix=$name/` would give for a commit.
if git -C "$src" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$src" ls-files -z --cached --others --exclude-standard |
        (cd "$src" && while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done) |
        tar -C "$src" --null -T - --transform "s|^|$name/|" -czf "$tmp/sources/$name.tar.gz"
else
    tar -C "$src" --exclude='./build*' --transform "s|^\.|$name|" -czf "$tmp/sources/$name.tar.gz" .
fi
tar -tzf "$tmp/sources/$name.tar.gz" >"$tmp/tarball"
for f in CMakeLists.txt packaging/rpm/smtpfence.spec packaging/systemd/smtpfenced.service; do
    grep -qxF "$name/$f" "$tmp/tarball" || fail "the tarball lacks $name/$f"
done
# The scriptlets are read from the unpacked tarball when the binary rpm is made.
while read -r script; do
    grep -qxF "$name/$script" "$tmp/tarball" || fail "the tarball lacks $script (%post/%preun/%postun -f)"
    echo "scriptlet file $script"
done < <(sed -nE 's/^%(pre|post|preun|postun) +-f +([^ ]+)$/\2/p' "$tmp/host.spec")
if ! rpmbuild -bs --define "_topdir $tmp/top" --define "_sourcedir $tmp/sources" \
    --define "rhel 9" --define "dist .el9" "$spec" >"$tmp/rpmbuild.log" 2>&1; then
    cat "$tmp/rpmbuild.log" >&2
    fail "rpmbuild -bs"
fi
srpm="$tmp/top/SRPMS/$name-1.el9.src.rpm"
if [[ -f "$srpm" ]]; then
    echo "$(basename "$srpm"): $(du -h "$srpm" | cut -f1)"
    rpm -qpl "$srpm" 2>/dev/null | sort >"$tmp/srpm-files"
    printf '%s\n' "$name.tar.gz" smtpfence.spec | sort >"$tmp/want-srpm-files"
    diff -u "$tmp/want-srpm-files" "$tmp/srpm-files" || fail "the source rpm's files"
    # Its BuildRequires are EL9's.
    rpm -qp --requires "$srpm" 2>/dev/null >"$tmp/buildrequires"
    for req in 'gcc-toolset-13-gcc-c++' 'pkgconfig(libcares) >= 1.16' 'pkgconfig(libnftnl)'; do
        grep -qxF "$req" "$tmp/buildrequires" || fail "the source rpm lacks BuildRequires: $req"
    done
else
    ls -R "$tmp/top" >&2
    fail "no $srpm"
fi

if ((failures)); then
    echo "$failures failure(s)" >&2
    exit 1
fi
echo "ok"

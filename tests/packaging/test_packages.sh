#!/usr/bin/env bash
# Builds the .deb or the .rpm with cpack from an already built tree (into a scratch
# directory; nothing is compiled: see below) and inspects it:
#  - exactly the expected files, no more (no test binaries, no benchmarks), with their
#    modes; the programs stripped;
#  - the unit and the default configuration as they are in packaging/;
#  - the configuration a conffile (%config(noreplace) for rpm);
#  - the maintainer scripts as they are in packaging/deb/ or packaging/rpm/, valid sh;
#  - name, version, architecture, and a dependency on the package (deb) or the soname
#    (rpm) of every shared library the programs link.
# Usage: test_packages.sh deb|rpm BUILD_DIR SOURCE_DIR VERSION
set -euo pipefail

format="$1"
build="$2"
src="$3"
version="$4"

failures=0
fail() {
    echo "FAIL: $*" >&2
    failures=$((failures + 1))
}
need() {
    command -v "$1" >/dev/null || {
        echo "FAIL: $1 not found (Debian package $2; scripts/install-deps)" >&2
        exit 1
    }
}

need cpack cmake
case "$format" in
    deb) need dpkg-deb dpkg && need dpkg-shlibdeps dpkg-dev ;;
    rpm) need rpmbuild rpm ;;
    *)
        echo "usage: $0 deb|rpm BUILD_DIR SOURCE_DIR VERSION" >&2
        exit 2
        ;;
esac
programs=(smtpfenced smtpfencectl smtpfence-worker)
for p in "${programs[@]}"; do
    [[ -x "$build/bin/$p" ]] || {
        echo "FAIL: $build/bin/$p is not built" >&2
        exit 1
    }
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# CPACK_CMAKE_GENERATOR=Ninja: with the tree's own Makefile generator cpack first runs
# `make preinstall`, which builds everything that is out of date; the Ninja generator
# has no preinstall step, so cpack only installs what is built (the install script is
# the same).
generator="$(tr '[:lower:]' '[:upper:]' <<<"$format")"
echo "== cpack -G $generator ($build)"
t0=$SECONDS
if ! cpack --config "$build/CPackConfig.cmake" -G "$generator" -B "$tmp/out" \
    -D CPACK_CMAKE_GENERATOR=Ninja >"$tmp/cpack.log" 2>&1; then
    cat "$tmp/cpack.log" >&2
    echo "FAIL: cpack -G $generator" >&2
    exit 1
fi
shopt -s nullglob
pkgs=("$tmp"/out/*."$format")
((${#pkgs[@]} == 1)) || {
    cat "$tmp/cpack.log" >&2
    echo "FAIL: expected one .$format in $tmp/out, found ${#pkgs[@]}" >&2
    exit 1
}
pkg="${pkgs[0]}"
echo "$(basename "$pkg"): $(du -h "$pkg" | cut -f1), $((SECONDS - t0)) s"

# The shared libraries the programs need (NEEDED), resolved as the loader would.
needed_sonames() {
    local p
    for p in "${programs[@]}"; do
        objdump -p "$build/bin/$p" | awk '$1 == "NEEDED" { print $2 }'
    done | sort -u
}

# compare WHAT EXPECTED_FILE GOT_FILE: equal sorted lists, or a diff.
compare() {
    if ! diff -u "$2" "$3" >"$tmp/diff"; then
        fail "$1 differ (- expected, + found):"
        sed -n '3,$p' "$tmp/diff" >&2
    fi
}

# same WHAT SOURCE_FILE CONTENT_FILE
same() {
    cmp -s "$2" "$3" || fail "$1 is not $2: $(diff "$2" "$3" | head -5)"
}

if [[ "$format" == deb ]]; then
    arch="$(dpkg --print-architecture)"
    echo "== dpkg-deb -I"
    dpkg-deb -I "$pkg"
    field() { dpkg-deb -f "$pkg" "$1"; }
    [[ "$(field Package)" == smtpfence ]] || fail "Package: $(field Package)"
    [[ "$(field Version)" == "$version" ]] || fail "Version: $(field Version), expected $version"
    [[ "$(field Architecture)" == "$arch" ]] || fail "Architecture: $(field Architecture)"
    [[ "$(basename "$pkg")" == "smtpfence_${version}_${arch}.deb" ]] || fail "file name $(basename "$pkg")"
    [[ "$(field Recommends)" == *nftables* ]] || fail "Recommends: nftables missing"
    depends="$(field Depends)"
    # shlibdeps: the package of every library linked (libnftnl11, libmnl0, ...). The
    # paths ldconfig gives, under each name dpkg may know them by on a merged /usr
    # (/lib/x86_64-linux-gnu/libc.so.6 rather than /usr/lib/...), in one dpkg -S call
    # (each call reads dpkg's whole file database).
    declare -A lib_of=()
    candidates=()
    # Read once: `ldconfig -p | awk '... exit'` would have ldconfig killed by SIGPIPE now
    # and then, which pipefail turns into a silent exit of this script.
    ld_cache="$(ldconfig -p)"
    while read -r soname; do
        lib="$(awk -v s="$soname" '$1 == s { print $NF; exit }' <<<"$ld_cache")"
        if [[ -z "$lib" ]]; then
            fail "ldconfig does not know $soname"
            continue
        fi
        lib_of[$soname]="$lib"
        candidates+=("$lib" "$(readlink -f "$lib")" "${lib#/usr}" "/usr$lib")
    done < <(needed_sonames)
    owners="$(dpkg -S "${candidates[@]}" 2>/dev/null || true)"
    for soname in "${!lib_of[@]}"; do
        lib="${lib_of[$soname]}"
        owner="$(awk -F': ' -v a="$lib" -v b="$(readlink -f "$lib")" -v c="${lib#/usr}" -v d="/usr$lib" \
            '$2 == a || $2 == b || $2 == c || $2 == d { sub(/:.*/, "", $1); print $1; exit }' <<<"$owners")"
        if [[ -z "$owner" ]]; then
            fail "no package owns $soname ($lib)"
        elif [[ ", $depends," != *", $owner "* && ", $depends," != *", $owner,"* ]]; then
            fail "Depends: lacks $owner (for $soname): $depends"
        else
            echo "Depends: $owner for $soname"
        fi
    done

    echo "== dpkg-deb -c"
    dpkg-deb -c "$pkg" | awk '$1 !~ /^d/ { print $1, $2, $6 }' | sed 's| \./| /|' | sort -k3 >"$tmp/got"
    sort -k3 >"$tmp/want" <<EOF
-rw-r--r-- root/root /etc/smtpfence/smtpfence.conf
-rw-r--r-- root/root /lib/systemd/system/smtpfenced.service
-rwxr-xr-x root/root /usr/sbin/smtpfence-worker
-rwxr-xr-x root/root /usr/sbin/smtpfencectl
-rwxr-xr-x root/root /usr/sbin/smtpfenced
-rw-r--r-- root/root /usr/share/bash-completion/completions/smtpfencectl
-rw-r--r-- root/root /usr/share/man/man5/smtpfence.conf.5
-rw-r--r-- root/root /usr/share/man/man8/smtpfencectl.8
-rw-r--r-- root/root /usr/share/man/man8/smtpfenced.8
-rw-r--r-- root/root /usr/share/smtpfence/grafana/smtpfence-dashboard.json
-rw-r--r-- root/root /usr/share/smtpfence/prometheus/smtpfence-alerts.test.yml
-rw-r--r-- root/root /usr/share/smtpfence/prometheus/smtpfence-alerts.yml
EOF
    cat "$tmp/got"
    compare "files (mode owner path)" "$tmp/want" "$tmp/got"

    mkdir "$tmp/root" "$tmp/control"
    dpkg-deb -x "$pkg" "$tmp/root"
    dpkg-deb -e "$pkg" "$tmp/control"
    unit="$tmp/root/lib/systemd/system/smtpfenced.service"
    conf="$tmp/root/etc/smtpfence/smtpfence.conf"
    root="$tmp/root"

    echo "== control files"
    find "$tmp/control" -type f -printf '%m %f\n' | sort
    printf '/etc/smtpfence/smtpfence.conf\n' >"$tmp/want-conffiles"
    compare conffiles "$tmp/want-conffiles" "$tmp/control/conffiles"
    for s in postinst prerm postrm; do
        if [[ ! -f "$tmp/control/$s" ]]; then
            fail "control: no $s"
            continue
        fi
        same "control: $s" "$src/packaging/deb/$s" "$tmp/control/$s"
        [[ "$(stat -c %a "$tmp/control/$s")" == 755 ]] || fail "control: $s mode $(stat -c %a "$tmp/control/$s")"
        sh -n "$tmp/control/$s" || fail "control: $s is not valid sh"
    done
    for s in preinst config templates triggers; do
        [[ ! -e "$tmp/control/$s" ]] || fail "control: unexpected $s"
    done
else
    # rpm prints "warning: ... NOKEY"-style lines for unsigned packages on stderr.
    q() { rpm -qp "$@" "$pkg" 2>/dev/null; }
    echo "== rpm -qpi"
    q -i
    [[ "$(q --qf '%{NAME} %{VERSION} %{RELEASE}')" == "smtpfence $version 1" ]] ||
        fail "name version release: $(q --qf '%{NAME} %{VERSION} %{RELEASE}')"
    arch="$(q --qf '%{ARCH}')"
    [[ "$(basename "$pkg")" == "smtpfence-$version-1.$arch.rpm" ]] || fail "file name $(basename "$pkg")"
    [[ "$arch" == "$(uname -m)" ]] || fail "ARCH $arch, expected $(uname -m)"

    echo "== rpm -qp --requires"
    q --requires | tee "$tmp/requires"
    while read -r soname; do
        grep -qxF "$soname()(64bit)" "$tmp/requires" || grep -qxF "$soname" "$tmp/requires" ||
            fail "Requires: lacks $soname"
    done < <(needed_sonames)

    echo "== rpm -qlp (mode owner path; directories the package owns included)"
    q --qf '[%{FILEMODES:perms} %{FILEUSERNAME}/%{FILEGROUPNAME} %{FILENAMES}\n]' | sort -k3 >"$tmp/got"
    sort -k3 >"$tmp/want" <<EOF
drwxr-xr-x root/root /etc/smtpfence
-rw-r--r-- root/root /etc/smtpfence/smtpfence.conf
-rw-r--r-- root/root /usr/lib/systemd/system/smtpfenced.service
-rwxr-xr-x root/root /usr/sbin/smtpfence-worker
-rwxr-xr-x root/root /usr/sbin/smtpfencectl
-rwxr-xr-x root/root /usr/sbin/smtpfenced
-rw-r--r-- root/root /usr/share/bash-completion/completions/smtpfencectl
-rw-r--r-- root/root /usr/share/man/man5/smtpfence.conf.5
-rw-r--r-- root/root /usr/share/man/man8/smtpfencectl.8
-rw-r--r-- root/root /usr/share/man/man8/smtpfenced.8
drwxr-xr-x root/root /usr/share/smtpfence
drwxr-xr-x root/root /usr/share/smtpfence/grafana
drwxr-xr-x root/root /usr/share/smtpfence/prometheus
-rw-r--r-- root/root /usr/share/smtpfence/grafana/smtpfence-dashboard.json
-rw-r--r-- root/root /usr/share/smtpfence/prometheus/smtpfence-alerts.test.yml
-rw-r--r-- root/root /usr/share/smtpfence/prometheus/smtpfence-alerts.yml
EOF
    cat "$tmp/got"
    compare "files (mode owner path)" "$tmp/want" "$tmp/got"
    [[ "$(q -l | sort | tr '\n' ' ')" == "$(awk '{ print $3 }' "$tmp/want" | sort | tr '\n' ' ')" ]] ||
        fail "rpm -qlp differs from the list above"

    echo "== rpm -qp --configfiles"
    q --configfiles | tee "$tmp/configfiles"
    printf '/etc/smtpfence/smtpfence.conf\n' >"$tmp/want-config"
    compare "config files" "$tmp/want-config" "$tmp/configfiles"
    # FILEFLAGS: c = %config, n = noreplace.
    flags="$(q --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' | awk '$2 == "/etc/smtpfence/smtpfence.conf" { print $1 }')"
    [[ "$flags" == *c* && "$flags" == *n* ]] || fail "smtpfence.conf flags '$flags', expected %config(noreplace) (cn)"

    echo "== rpm -qp --scripts"
    q --scripts | grep -E '^[a-z]+ scriptlet' || true
    for pair in POSTIN:post PREUN:preun POSTUN:postun; do
        tag="${pair%%:*}"
        file="${pair#*:}"
        q --qf "%{$tag}" >"$tmp/$file"
        echo >>"$tmp/$file" # rpm drops the final newline
        if ! diff -q <(sed '/^$/d' "$src/packaging/rpm/$file") <(sed '/^$/d' "$tmp/$file") >/dev/null; then
            fail "$file scriptlet is not packaging/rpm/$file: $(diff <(sed '/^$/d' "$src/packaging/rpm/$file") <(sed '/^$/d' "$tmp/$file") | head -5)"
        fi
        [[ "$(q --qf "%{${tag}PROG}")" == /bin/sh ]] || fail "$file scriptlet runs with $(q --qf "%{${tag}PROG}")"
        sh -n "$tmp/$file" || fail "$file scriptlet is not valid sh"
    done
    for tag in PREIN PRETRANS POSTTRANS; do
        [[ "$(q --qf "%{$tag}")" == "(none)" ]] || fail "unexpected $tag scriptlet"
    done

    mkdir "$tmp/root"
    rpm2cpio "$pkg" >"$tmp/payload.cpio"
    (cd "$tmp/root" && cmake -E tar xf "$tmp/payload.cpio")
    unit="$tmp/root/usr/lib/systemd/system/smtpfenced.service"
    conf="$tmp/root/etc/smtpfence/smtpfence.conf"
    root="$tmp/root"
fi

echo "== contents"
same "the packaged unit" "$src/packaging/systemd/smtpfenced.service" "$unit"
same "the packaged configuration" "$src/packaging/smtpfence.conf" "$conf"
same "the packaged completion" "$src/completions/smtpfencectl" "$root/usr/share/bash-completion/completions/smtpfencectl"
for page in man5/smtpfence.conf.5 man8/smtpfenced.8 man8/smtpfencectl.8; do
    same "the packaged $page" "$src/man/$(basename "$page")" "$root/usr/share/man/$page"
done
for f in prometheus/smtpfence-alerts.yml prometheus/smtpfence-alerts.test.yml grafana/smtpfence-dashboard.json; do
    same "the packaged $f" "$src/packaging/$f" "$root/usr/share/smtpfence/$f"
done
for p in "${programs[@]}"; do
    # Stripped (CPACK_STRIP_FILES), and still the program that was built.
    # grep reads all (no -q): an early exit would SIGPIPE readelf and, with pipefail,
    # turn a match into "no match".
    if readelf -S "$root/usr/sbin/$p" | grep '\.debug_info' >/dev/null; then
        fail "/usr/sbin/$p is not stripped"
    fi
    if [[ "$p" != smtpfence-worker ]]; then
        "$root/usr/sbin/$p" --version >/dev/null 2>&1 || fail "/usr/sbin/$p --version fails"
    else
        "$root/usr/sbin/$p" --help >/dev/null 2>&1 || fail "/usr/sbin/$p --help fails"
    fi
done

if ((failures)); then
    echo "$failures failure(s)" >&2
    exit 1
fi
echo "ok ($((SECONDS - t0)) s)"

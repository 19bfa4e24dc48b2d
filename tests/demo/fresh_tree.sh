#!/usr/bin/env bash
# The README's first command as a new user meets it (issue 16): scripts/demo in a copy
# of the source tree that has no build/ at all. The demo must install what it needs,
# build, and pass; a demo that expects an existing build (or tools it does not install)
# fails here. The copy holds the tracked and untracked-but-not-ignored files of the tree
# this script is in (so uncommitted work is tested too), and is removed at the end.
# Usage: sudo tests/demo/fresh_tree.sh      (exit status: the demo's)
set -euo pipefail
sf_prog="demo-fresh-tree"
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

sf_require_root
copy="$(mktemp -d /tmp/smtpfence-fresh.XXXXXX)"
trap 'rm -rf "$copy"' EXIT

cd "$SF_ROOT"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [[ -e "$f" ]] && printf '%s\0' "$f"; done |
        xargs -0 cp --parents -a -t "$copy"
else
    tar --exclude='./build*' -cf - . | tar -xf - -C "$copy"
fi
[[ ! -e "$copy/build" ]] || sf_die "the copy in $copy has a build/ already"
sf_info "a fresh tree in $copy (no build/); running its scripts/demo"

log="$copy.log"
rc=0
"$copy/scripts/demo" 2>&1 | tee "$log" || rc=$?
[[ -x "$copy/build/bin/smtpfenced" ]] || {
    sf_warn "the demo did not build $copy/build/bin/smtpfenced"
    rc=1
}
grep -q 'PASSED: user' "$log" || {
    sf_warn "the demo did not report PASSED"
    rc=1
}
rm -f "$log"
exit "$rc"

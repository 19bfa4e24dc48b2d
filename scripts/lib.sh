# shellcheck shell=bash
# Shared helpers for the scripts in scripts/ and .ci/. Source it, don't run it:
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# It sets SF_ROOT (the repository root, found from this file's location, so the
# scripts work from any working directory and under sudo).

SF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
export SF_ROOT

# Colours only on a terminal.
if [[ -t 1 ]]; then
    SF_BOLD=$'\e[1m' SF_RED=$'\e[31m' SF_GREEN=$'\e[32m' SF_OFF=$'\e[0m'
else
    SF_BOLD='' SF_RED='' SF_GREEN='' SF_OFF=''
fi

sf_prog="${sf_prog:-$(basename "$0")}"

# "==> message" on stdout: a stage or step of a script.
sf_stage() { printf '%s==> %s: %s%s\n' "$SF_BOLD" "$sf_prog" "$*" "$SF_OFF"; }
sf_info() { printf '%s: %s\n' "$sf_prog" "$*"; }
sf_ok() { printf '%s%s: %s%s\n' "$SF_GREEN" "$sf_prog" "$*" "$SF_OFF"; }
sf_warn() { printf '%s%s: warning: %s%s\n' "$SF_RED" "$sf_prog" "$*" "$SF_OFF" >&2; }
sf_die() {
    printf '%s%s: error: %s%s\n' "$SF_RED" "$sf_prog" "$*" "$SF_OFF" >&2
    exit 1
}

sf_require_root() {
    [[ $(id -u) -eq 0 ]] || sf_die "must run as root (try: sudo $0)"
}

sf_nproc() { nproc 2>/dev/null || echo 2; }

# sf_elapsed START_SECONDS -> "1m05s"
sf_elapsed() {
    local s=$((SECONDS - $1))
    printf '%dm%02ds' $((s / 60)) $((s % 60))
}

# The C++ sources clang-format checks (existing folders only; new files count
# automatically, whether or not git knows them yet).
SF_SOURCE_DIRS=(common nft nfq ctl csf-compat policy tests bench fuzz)
sf_cxx_sources() {
    local d dirs=()
    for d in "${SF_SOURCE_DIRS[@]}"; do
        [[ -d "$SF_ROOT/$d" ]] && dirs+=("$SF_ROOT/$d")
    done
    ((${#dirs[@]})) || return 0
    find "${dirs[@]}" -type f \( -name '*.cpp' -o -name '*.cc' -o -name '*.h' -o -name '*.hpp' \) \
        -print0 | sort -z
}

#!/bin/bash
# Checks completions/smtpfencectl: sources it in this shell and calls _smtpfencectl
# with COMP_WORDS/COMP_CWORD set as bash would, then compares COMPREPLY.
#
#   test_completion.sh [PATH_TO_COMPLETION_FILE]
#
# Exits 1 when any case fails, naming it. Needs no root and no daemon.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
completion=${1:-$here/../../completions/smtpfencectl}
if [[ ! -r $completion ]]; then
    echo "cannot read $completion" >&2
    exit 1
fi
# shellcheck source-path=SCRIPTDIR source=../../completions/smtpfencectl
source "$completion"
if [[ $(complete -p smtpfencectl 2>/dev/null) != "complete -F _smtpfencectl smtpfencectl" ]]; then
    echo "FAIL: sourcing did not register 'complete -F _smtpfencectl smtpfencectl'" >&2
    exit 1
fi

# A user and a group that exist here (uid 0 and gid 0 always do).
user=$(getent passwd 0 | cut -d: -f1)
group=$(getent group 0 | cut -d: -f1)
[[ -n $user && -n $group ]] || { echo "no user or group 0 here" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
touch "$tmp/smtpfence.conf" "$tmp/passwd" "$tmp/group" "$tmp/allow.list"

failures=0
passes=0

# complete WORD... : the last word is the one under the cursor ("" for a new one).
complete_words() {
    COMP_WORDS=("$@")
    COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
    COMP_LINE="${COMP_WORDS[*]}"
    COMP_POINT=${#COMP_LINE}
    COMPREPLY=()
    _smtpfencectl smtpfencectl "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]:-}"
    reply=$(printf '%s\n' "${COMPREPLY[@]}" | sort | tr '\n' ' ')
    reply=${reply% }
}

report() {
    local ok=$1 what=$2
    if [[ $ok == yes ]]; then
        passes=$((passes + 1))
    else
        failures=$((failures + 1))
        echo "FAIL: $what" >&2
        echo "      got: [$reply]" >&2
    fi
}

# expect_exact "SORTED WORDS" WORD... : COMPREPLY is exactly these words.
expect_exact() {
    local want=$1
    shift
    complete_words "$@"
    if [[ $reply == "$want" ]]; then
        report yes ""
    else
        report no "'$*' should complete to exactly [$want]"
    fi
}

# expect_has WORD_WANTED WORD... : COMPREPLY contains this word.
expect_has() {
    local want=$1 w found=no
    shift
    complete_words "$@"
    for w in "${COMPREPLY[@]}"; do
        [[ $w == "$want" ]] && found=yes
    done
    report "$found" "'$*' should offer '$want'"
}

# expect_none WORD... : nothing is offered.
expect_none() {
    complete_words "$@"
    if [[ ${#COMPREPLY[@]} -eq 0 ]]; then
        report yes ""
    else
        report no "'$*' should offer nothing"
    fi
}

# Subcommands and smtpfencectl's own options.
expect_exact "allow apply attempts check deny import-csf list reload remove status test top" smtpfencectl ""
expect_exact "status" smtpfencectl st
expect_exact "reload remove" smtpfencectl re
expect_exact "--help --socket" smtpfencectl --
expect_has "$tmp/smtpfence.conf" smtpfencectl --socket "$tmp/sm"
expect_exact "status" smtpfencectl --socket /run/x.sock sta
expect_exact "status" smtpfencectl --socket = /run/x.sock sta

# Options of each subcommand.
expect_exact "--dry-run --force --help --to" smtpfencectl import-csf --
expect_has "$tmp/smtpfence.conf" smtpfencectl import-csf "$tmp/sm"
expect_has "--csf-conf" smtpfencectl apply --c
expect_exact "--group --help --json" smtpfencectl allow --
expect_exact "--group --help --json" smtpfencectl deny --
expect_exact "--help --json" smtpfencectl status --
expect_exact "--help --json" smtpfencectl list --
expect_exact "--help --json" smtpfencectl check --
expect_exact "--help --json" smtpfencectl test --
expect_exact "--account --dst --exe --help --json --limit --since --until --user" smtpfencectl attempts --
expect_exact "--help --json --since --until" smtpfencectl top --
expect_exact "--help" smtpfencectl reload --
expect_exact "--help" smtpfencectl remove --
expect_exact "--allow-list --config --csf-conf --dry-run --group --help --passwd --table" smtpfencectl apply --
expect_exact "--dry-run" smtpfencectl apply --d
expect_exact "--user" smtpfencectl --socket /run/x.sock attempts --us

# User names.
expect_has "$user" smtpfencectl allow "${user:0:2}"
expect_has "$user" smtpfencectl deny ""
expect_has "$user" smtpfencectl check "${user:0:2}"
expect_has "$user" smtpfencectl check --json "${user:0:2}"
expect_has "$user" smtpfencectl test "${user:0:2}"
expect_has "$user" smtpfencectl attempts --user "${user:0:2}"
expect_has "$user" smtpfencectl attempts --since 1h --user ""
expect_has "$user" smtpfencectl attempts --user = "${user:0:2}"
expect_none smtpfencectl check "$user" ""
expect_none smtpfencectl allow "$user" ""

# Group names after --group of allow and deny, and no user after it.
expect_has "$group" smtpfencectl allow --group "${group:0:2}"
expect_has "$group" smtpfencectl deny --group ""
expect_none smtpfencectl allow --group "$group" ""

# test USER ADDRESS [PORT]
expect_none smtpfencectl test "$user" ""
expect_exact "25 465 587" smtpfencectl test "$user" 192.0.2.25 ""
expect_exact "465" smtpfencectl test "$user" 2001:db8::25 4
expect_none smtpfencectl test "$user" 192.0.2.25 25 ""

# --since values; nothing invented for --limit and --table.
expect_exact "today" smtpfencectl attempts --since t
expect_has "1h" smtpfencectl top --since ""
expect_none smtpfencectl attempts --limit ""
expect_none smtpfencectl attempts --dst ""
expect_has "1h" smtpfencectl top --until ""
expect_has "$user" smtpfencectl attempts --account "${user:0:2}"
expect_none smtpfencectl apply --table ""

# Files after apply's --config, --passwd, --group (a file here, not a group name)
# and --allow-list, also as --opt=value.
expect_exact "$tmp/smtpfence.conf" smtpfencectl apply --config "$tmp/sm"
expect_exact "$tmp/passwd" smtpfencectl apply --passwd "$tmp/pa"
expect_exact "$tmp/group" smtpfencectl apply --dry-run --group "$tmp/gr"
expect_exact "$tmp/allow.list" smtpfencectl apply --allow-list "$tmp/al"
expect_exact "$tmp/smtpfence.conf" smtpfencectl apply --config = "$tmp/sm"
expect_exact "--dry-run" smtpfencectl apply --config "$tmp/smtpfence.conf" --dr

# Nothing after commands without arguments.
expect_none smtpfencectl status ""
expect_none smtpfencectl reload ""

echo "completion: $passes passed, $failures failed"
((failures == 0))

#!/usr/bin/env bash
# Installs what the MTA end-to-end tests (tests/tests/postfix.rs) need, when
# missing: Debian's `postfix` (the tests run private instances of it, never the
# system one) and `swaks` (the SMTP client the tests submit mail with).
# Non-interactive; one line per step. Installing postfix does not configure a
# mail server for the machine: debconf is preseeded with "Local only" (the
# system instance, if something starts it, listens on loopback only).
#
# Environment:
#   IMIP_SKIP_MTA_SETUP=1   do nothing (the tests then skip when postfix is absent)
#
# Exit status: 0 when both are present afterwards, 1 otherwise (reason on stderr).
set -euo pipefail

say() { printf 'mta-setup: %s\n' "$*"; }
err() { printf 'mta-setup: %s\n' "$*" >&2; }

if [[ ${IMIP_SKIP_MTA_SETUP:-0} == 1 ]]; then
    say "skipped (IMIP_SKIP_MTA_SETUP=1)"
    exit 0
fi

missing=()
[[ -x /usr/sbin/postfix ]] || missing+=(postfix)
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
if ((${#missing[@]} == 0)); then
    say "postfix $(postconf -h mail_version 2>/dev/null || echo '?') and swaks present"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    err "apt-get not found; install ${missing[*]} yourself (the Postfix tests skip without them)"
    exit 1
fi
root=()
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        root=(sudo -n)
    else
        err "need root to install ${missing[*]} (run as root or install sudo)"
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
log=/tmp/imip-mta-setup.log
printf 'postfix postfix/main_mailer_type select Local only\npostfix postfix/mailname string localhost\n' |
    "${root[@]}" debconf-set-selections 2>/dev/null || true
say "installing ${missing[*]} with apt-get (log: $log)"
if ! "${root[@]}" apt-get install -y -q "${missing[@]}" >"$log" 2>&1; then
    "${root[@]}" apt-get update -q >>"$log" 2>&1 || true
    if ! "${root[@]}" apt-get install -y -q "${missing[@]}" >>"$log" 2>&1; then
        err "apt-get install ${missing[*]} failed; last lines of $log:"
        tail -n 15 "$log" >&2 || true
        exit 1
    fi
fi
say "installed: postfix $(postconf -h mail_version 2>/dev/null || echo '?'), $(command -v swaks)"

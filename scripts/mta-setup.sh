#!/usr/bin/env bash
# Installs what the MTA end-to-end tests (tests/tests/postfix.rs, exim.rs)
# need, when missing: Debian's `postfix` (the tests run private instances of
# it, never the system one), `swaks` (the SMTP client the tests submit mail
# with) and `sasl2-bin` (saslpasswd2: the test instance's submission service
# logs users and the calendar manager in with Cyrus SASL from a sasldb of its
# own; no saslauthd is started). Non-interactive; one line per step. Installing postfix does not
# configure a mail server for the machine: debconf is preseeded with "Local
# only" (the system instance, if something starts it, listens on loopback only).
#
# Exim: Debian's exim4 packages conflict with postfix, so they are not
# installed. Their files are unpacked (apt-get download + dpkg-deb -x) into
# $IMIP_EXIM_ROOT; what that binary needs from the system is added: the
# library libidn12 and the system user Debian-exim (Exim looks up its
# compiled-in user at start). A failure here only makes the Exim test skip.
#
# Environment:
#   IMIP_SKIP_MTA_SETUP=1   do nothing (the tests then skip when postfix is absent)
#   IMIP_EXIM_ROOT          where Exim is unpacked (/var/cache/imipflow/exim)
#
# Exit status: 0 when postfix, swaks and saslpasswd2 are present afterwards, 1 otherwise
# (reason on stderr).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

say() { printf 'mta-setup: %s\n' "$*"; }
err() { printf 'mta-setup: %s\n' "$*" >&2; }

if [[ ${IMIP_SKIP_MTA_SETUP:-0} == 1 ]]; then
    say "skipped (IMIP_SKIP_MTA_SETUP=1)"
    exit 0
fi

EXIM_ROOT=${IMIP_EXIM_ROOT:-/var/cache/imipflow/exim}

# Unpacks Debian's Exim into $EXIM_ROOT (see the header); 0 when it runs.
setup_exim() {
    local exim=$EXIM_ROOT/usr/sbin/exim4
    # -bV needs a configuration; an empty one that keeps no environment is quiet.
    local conf=/tmp/imip-mta-setup-exim.conf
    echo 'keep_environment =' >"$conf"
    if [[ -x $exim ]] && "$exim" -C "$conf" -bV >/dev/null 2>&1; then
        say "exim $("$exim" -C "$conf" -bV 2>/dev/null | sed -n '1s/Exim version \([^ ]*\).*/\1/p') unpacked in $EXIM_ROOT"
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || { err "no apt-get: Exim not prepared (the Exim test skips)"; return 1; }
    "${root[@]}" apt-get install -y -q libidn12 >>"$log" 2>&1 || { err "apt-get install libidn12 failed"; return 1; }
    if ! getent passwd Debian-exim >/dev/null; then
        "${root[@]}" useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin Debian-exim >>"$log" 2>&1 || { err "cannot create user Debian-exim"; return 1; }
    fi
    local tmp
    tmp=$(mktemp -d)
    chmod 755 "$tmp"
    if ! (cd "$tmp" && "${root[@]}" apt-get download exim4-base exim4-daemon-light >>"$log" 2>&1); then
        err "apt-get download exim4-base exim4-daemon-light failed (log: $log)"
        rm -rf "$tmp"
        return 1
    fi
    "${root[@]}" mkdir -p "$EXIM_ROOT"
    for deb in "$tmp"/*.deb; do "${root[@]}" dpkg-deb -x "$deb" "$EXIM_ROOT"; done
    rm -rf "$tmp"
    if "$exim" -C "$conf" -bV >/dev/null 2>&1; then
        say "exim unpacked in $EXIM_ROOT"
    else
        err "unpacked exim does not run: $("$exim" -C "$conf" -bV 2>&1 | head -n 1)"
        return 1
    fi
}

root=()
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
    root=(sudo -n)
fi
log=/tmp/imip-mta-setup.log

missing=()
[[ -x /usr/sbin/postfix ]] || missing+=(postfix)
command -v swaks >/dev/null 2>&1 || missing+=(swaks)
command -v saslpasswd2 >/dev/null 2>&1 || [[ -x /usr/sbin/saslpasswd2 ]] || missing+=(sasl2-bin)
if ((${#missing[@]} == 0)); then
    say "postfix $(postconf -h mail_version 2>/dev/null || echo '?'), swaks and saslpasswd2 present"
    setup_exim || true
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    err "apt-get not found; install ${missing[*]} yourself (the Postfix tests skip without them)"
    exit 1
fi
if [[ $(id -u) -ne 0 ]] && ((${#root[@]} == 0)); then
    err "need root to install ${missing[*]} (run as root or install sudo)"
    exit 1
fi

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
say "installed: postfix $(postconf -h mail_version 2>/dev/null || echo '?'), $(command -v swaks), /usr/sbin/saslpasswd2"
setup_exim || true

#!/usr/bin/env bash
# Installs what the manager's browser test (tests/tests/manager_browser.rs)
# needs, when missing: Debian's `chromium` (/usr/bin/chromium, run headless)
# and `chromium-driver` (/usr/bin/chromedriver, the WebDriver server the test
# drives it through). Non-interactive; quiet (one line) when both are present.
#
# Environment:
#   IMIP_SKIP_BROWSER_SETUP=1   do nothing (the browser test then skips when
#                               Chromium is absent)
#
# Exit status: 0 when chromium and chromedriver are present afterwards, 1
# otherwise (reason on stderr).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

say() { printf 'browser-setup: %s\n' "$*"; }
err() { printf 'browser-setup: %s\n' "$*" >&2; }

if [[ ${IMIP_SKIP_BROWSER_SETUP:-0} == 1 ]]; then
    say "skipped (IMIP_SKIP_BROWSER_SETUP=1)"
    exit 0
fi

CHROMIUM=/usr/bin/chromium
DRIVER=/usr/bin/chromedriver

missing=()
[[ -x $CHROMIUM ]] || missing+=(chromium)
[[ -x $DRIVER ]] || missing+=(chromium-driver)
if ((${#missing[@]} == 0)); then
    say "$("$DRIVER" --version 2>/dev/null | cut -d' ' -f1-2 || echo chromedriver) and chromium present"
    exit 0
fi

root=()
if [[ $(id -u) -ne 0 ]] && command -v sudo >/dev/null 2>&1; then
    root=(sudo -n)
fi
log=/tmp/imip-browser-setup.log

if ! command -v apt-get >/dev/null 2>&1; then
    err "apt-get not found; install ${missing[*]} yourself (the browser test skips without them)"
    exit 1
fi
if [[ $(id -u) -ne 0 ]] && ((${#root[@]} == 0)); then
    err "need root to install ${missing[*]} (run as root or install sudo)"
    exit 1
fi

say "installing ${missing[*]} with apt-get (log: $log)"
# A stale package index is the usual reason for a failed install: update once
# and retry.
if ! "${root[@]}" apt-get install -y -q "${missing[@]}" >"$log" 2>&1; then
    "${root[@]}" apt-get update -q >>"$log" 2>&1 || true
    if ! "${root[@]}" apt-get install -y -q "${missing[@]}" >>"$log" 2>&1; then
        err "apt-get install ${missing[*]} failed; last lines of $log:"
        tail -n 15 "$log" >&2 || true
        exit 1
    fi
fi
if [[ -x $CHROMIUM && -x $DRIVER ]]; then
    say "installed: $("$DRIVER" --version 2>/dev/null | cut -d' ' -f1-2 || echo chromedriver), $CHROMIUM"
else
    err "apt-get finished but $CHROMIUM or $DRIVER is still missing (log: $log)"
    exit 1
fi

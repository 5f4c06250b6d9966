#!/usr/bin/env bash
# Makes sure the two local services imipflow needs are up:
#   PostgreSQL on 127.0.0.1:5432 (trust auth for user postgres)
#   NATS with JetStream on 127.0.0.1:4222
# For each: checks it answers, starts it if installed but down, installs it
# with apt-get if missing, and waits until it is ready. One line per step.
#
# Execute it (scripts/services.sh) or source it and call `services_check`.
#
# Environment:
#   IMIP_SKIP_SERVICE_CHECK=1   skip everything (remote or self-managed services)
#   SERVICES_TIMEOUT=60         seconds to wait for a service to become ready
#   SERVICES_PG_PORT=5432       port checked for PostgreSQL (the local cluster)
#   SERVICES_NATS_PORT=4222     port checked for NATS
#
# Exit status: 0 when both are ready, 1 otherwise (with the reason on stderr).
#
# SC2016: the single-quoted `bash -c` bodies expand their own $0/$1 on purpose.
# shellcheck disable=SC2016,SC2012

SERVICES_HOST=127.0.0.1
SERVICES_TIMEOUT=${SERVICES_TIMEOUT:-60}
SERVICES_PG_PORT=${SERVICES_PG_PORT:-5432}
SERVICES_NATS_PORT=${SERVICES_NATS_PORT:-4222}
NATS_SERVER_BIN=${NATS_SERVER_BIN:-/usr/sbin/nats-server}
NATS_STORE_DIR=${NATS_STORE_DIR:-/var/lib/nats-server}
NATS_LOG_FILE=${NATS_LOG_FILE:-/var/log/nats-server.log}
NATS_PID_FILE=${NATS_PID_FILE:-/run/imip-nats-server-$SERVICES_NATS_PORT.pid}

_svc_say() { printf '%s\n' "$*"; }
_svc_err() { printf '%s\n' "$*" >&2; }

# Runs a command as root (directly, or through sudo when available).
_svc_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        _svc_err "services: need root for: $* (run as root or install sudo)"
        return 1
    fi
}

# apt-get install, with one `apt-get update` and retry if the package lists are stale.
_svc_apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        _svc_err "services: apt-get not found; install $* yourself (or set IMIP_SKIP_SERVICE_CHECK=1)"
        return 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! _svc_root apt-get install -y -q "$@" >/tmp/imip-services-apt.log 2>&1; then
        _svc_root apt-get update -q >>/tmp/imip-services-apt.log 2>&1 || true
        if ! _svc_root apt-get install -y -q "$@" >>/tmp/imip-services-apt.log 2>&1; then
            _svc_err "services: apt-get install $* failed; last lines of /tmp/imip-services-apt.log:"
            tail -n 15 /tmp/imip-services-apt.log >&2 || true
            return 1
        fi
    fi
}

# True when something accepts TCP connections on host:port (bounded to 3 s).
_svc_tcp_open() {
    timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" >/dev/null 2>&1
}

# ---------------------------------------------------------------- PostgreSQL

# 0 accepting connections; 1 not (yet).
_pg_ready() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$SERVICES_HOST" -p "$SERVICES_PG_PORT" -t 3 >/dev/null 2>&1
    else
        _svc_tcp_open "$SERVICES_HOST" "$SERVICES_PG_PORT"
    fi
}

_pg_installed() {
    command -v pg_ctlcluster >/dev/null 2>&1 && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

# Version of the cluster to start (the one in /etc/postgresql, else the newest installed).
_pg_version() {
    local v
    v=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
    if [[ -z $v ]]; then
        v=$(ls /usr/lib/postgresql 2>/dev/null | sort -V | tail -n 1)
    fi
    printf '%s' "$v"
}

_pg_start() {
    local v
    v=$(_pg_version)
    if [[ -z $v ]]; then
        _svc_err "postgres: no PostgreSQL version found under /usr/lib/postgresql"
        return 1
    fi
    if [[ ! -d /etc/postgresql/$v/main ]]; then
        _svc_say "postgres: no cluster $v/main, creating it"
        _svc_root pg_createcluster "$v" main >/dev/null || return 1
    fi
    _svc_root pg_ctlcluster --skip-systemctl-redirect "$v" main start 2>&1 | sed 's/^/postgres:   /' || true
}

_pg_wait() {
    local deadline=$((SECONDS + SERVICES_TIMEOUT))
    while ! _pg_ready; do
        if ((SECONDS >= deadline)); then
            _svc_err "postgres: not ready on $SERVICES_HOST:$SERVICES_PG_PORT after ${SERVICES_TIMEOUT}s"
            local log
            log=$(ls -t /var/log/postgresql/postgresql-*-main.log 2>/dev/null | head -n 1)
            if [[ -n $log ]]; then
                _svc_err "postgres: last lines of $log:"
                tail -n 10 "$log" >&2 || true
            fi
            return 1
        fi
        sleep 1
    done
}

# Makes 127.0.0.1 and local-socket connections use trust auth (fresh installs only).
_pg_trust_local() {
    local v hba
    v=$(_pg_version)
    hba=/etc/postgresql/$v/main/pg_hba.conf
    [[ -f $hba ]] || return 0
    _svc_say "postgres: setting trust auth for local and 127.0.0.1/32 in $hba"
    _svc_root sed -i -E \
        -e 's/^(local[[:space:]]+all[[:space:]]+(all|postgres)[[:space:]]+).*$/\1trust/' \
        -e 's#^(host[[:space:]]+all[[:space:]]+all[[:space:]]+(127\.0\.0\.1/32|::1/128)[[:space:]]+).*$#\1trust#' \
        "$hba"
    _svc_root pg_ctlcluster --skip-systemctl-redirect "$v" main reload >/dev/null 2>&1 || true
    sleep 1
}

# Can user postgres log in over TCP without a password? (Only checked when psql exists.)
_pg_auth_ok() {
    command -v psql >/dev/null 2>&1 || return 0
    psql -X -w -q -h "$SERVICES_HOST" -p "$SERVICES_PG_PORT" -U postgres -d postgres -Atc 'SELECT 1' >/dev/null 2>&1
}

services_check_postgres() {
    local fresh=0
    if _pg_ready; then
        _svc_say "postgres: already running on $SERVICES_HOST:$SERVICES_PG_PORT"
    elif _pg_installed; then
        _svc_say "postgres: was down, starting it (pg_ctlcluster $(_pg_version) main start)"
        _pg_start || return 1
        _pg_wait || return 1
        _svc_say "postgres: started, ready on $SERVICES_HOST:$SERVICES_PG_PORT"
    else
        _svc_say "postgres: not installed, installing with apt-get (package postgresql)"
        _svc_apt_install postgresql || return 1
        fresh=1
        if ! _pg_ready; then
            _pg_start || return 1
        fi
        _pg_wait || return 1
        _svc_say "postgres: installed and started on $SERVICES_HOST:$SERVICES_PG_PORT"
    fi
    if ! _pg_auth_ok; then
        if ((fresh)); then
            _pg_trust_local
        fi
        if ! _pg_auth_ok; then
            _svc_err "postgres: running, but user postgres cannot log in on $SERVICES_HOST:$SERVICES_PG_PORT without a password;"
            _svc_err "postgres: set 'trust' for 'host all all 127.0.0.1/32' (and 'local all all') in pg_hba.conf, then reload"
            return 1
        fi
    fi
}

# ---------------------------------------------------------------------- NATS

# Prints the server's INFO line (JSON after "INFO "), or fails.
_nats_info() {
    timeout 4 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        IFS= read -r -t 3 line <&3 || exit 1
        cr=$(printf "\r")
        printf "%s\n" "${line%"$cr"}"
    ' "$SERVICES_HOST" "$SERVICES_NATS_PORT" 2>/dev/null
}

# Asks the JetStream API itself ($JS.API.INFO); prints the reply or fails.
_nats_js_api_info() {
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        cr=$(printf "\r")
        IFS= read -r -t 3 line <&3 || exit 1
        printf "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"imip-services-check\"}\r\nSUB _INBOX.imipsvc 1\r\nPUB \$JS.API.INFO _INBOX.imipsvc 0\r\n\r\n" >&3
        while IFS= read -r -t 3 line <&3; do
            line=${line%"$cr"}
            case $line in
                PING*) printf "PONG\r\n" >&3 ;;
                -ERR*) printf "%s\n" "$line"; exit 1 ;;
                MSG*) IFS= read -r -t 3 body <&3 || exit 1; printf "%s\n" "${body%"$cr"}"; exit 0 ;;
            esac
        done
        exit 1
    ' "$SERVICES_HOST" "$SERVICES_NATS_PORT" 2>/dev/null
}

_nats_installed() {
    [[ -x $NATS_SERVER_BIN ]] || command -v nats-server >/dev/null 2>&1
}

_nats_start() {
    local bin=$NATS_SERVER_BIN
    [[ -x $bin ]] || bin=$(command -v nats-server)
    _svc_root mkdir -p "$NATS_STORE_DIR"
    if command -v start-stop-daemon >/dev/null 2>&1; then
        # The pid file keeps start-stop-daemon from mistaking another
        # nats-server (a test's, on another port) for this one.
        _svc_root start-stop-daemon --start --oknodo --background \
            --pidfile "$NATS_PID_FILE" --make-pidfile --exec "$bin" -- \
            -a "$SERVICES_HOST" -p "$SERVICES_NATS_PORT" -js -sd "$NATS_STORE_DIR" -l "$NATS_LOG_FILE" >/dev/null
    else
        _svc_root nohup "$bin" -a "$SERVICES_HOST" -p "$SERVICES_NATS_PORT" -js -sd "$NATS_STORE_DIR" \
            -l "$NATS_LOG_FILE" >/dev/null 2>&1 &
    fi
}

_nats_wait() {
    local deadline=$((SECONDS + SERVICES_TIMEOUT))
    while ! _nats_info >/dev/null; do
        if ((deadline <= SECONDS)); then
            _svc_err "nats: not answering on $SERVICES_HOST:$SERVICES_NATS_PORT after ${SERVICES_TIMEOUT}s"
            if [[ -f $NATS_LOG_FILE ]]; then
                _svc_err "nats: last lines of $NATS_LOG_FILE:"
                tail -n 10 "$NATS_LOG_FILE" >&2 || true
            fi
            return 1
        fi
        sleep 1
    done
}

# Fails loudly unless the server on the port has JetStream enabled and answering.
_nats_verify_jetstream() {
    local info reply
    info=$(_nats_info) || {
        _svc_err "nats: something listens on $SERVICES_HOST:$SERVICES_NATS_PORT but sent no NATS INFO line"
        return 1
    }
    if [[ $info != INFO* ]]; then
        _svc_err "nats: $SERVICES_HOST:$SERVICES_NATS_PORT is not a NATS server (first line: ${info:0:80})"
        return 1
    fi
    if [[ $info != *'"jetstream":true'* ]]; then
        _svc_err "nats: the server on $SERVICES_HOST:$SERVICES_NATS_PORT runs WITHOUT JetStream; imipflow needs it."
        _svc_err "nats: restart it with -js, e.g.: $NATS_SERVER_BIN -a $SERVICES_HOST -p $SERVICES_NATS_PORT -js -sd $NATS_STORE_DIR -l $NATS_LOG_FILE"
        return 1
    fi
    # The flag is set; make sure the JetStream API answers for our account too.
    local deadline=$((SECONDS + SERVICES_TIMEOUT))
    while :; do
        reply=$(_nats_js_api_info) && [[ $reply == *account_info_response* && $reply != *'"error"'* ]] && break
        if ((deadline <= SECONDS)); then
            _svc_err "nats: JetStream is enabled but its API did not answer \$JS.API.INFO: ${reply:-no reply}"
            return 1
        fi
        sleep 1
    done
}

services_check_nats() {
    local version
    if _nats_info >/dev/null; then
        _nats_verify_jetstream || return 1
        version=$(_nats_info | sed -n 's/.*"version":"\([^"]*\)".*/\1/p')
        _svc_say "nats: already running on $SERVICES_HOST:$SERVICES_NATS_PORT (nats-server ${version:-?}, JetStream enabled)"
        return 0
    fi
    if _svc_tcp_open "$SERVICES_HOST" "$SERVICES_NATS_PORT"; then
        _svc_err "nats: port $SERVICES_NATS_PORT on $SERVICES_HOST is taken by something that does not speak NATS"
        return 1
    fi
    if _nats_installed; then
        _svc_say "nats: was down, starting it (nats-server -js -sd $NATS_STORE_DIR)"
    else
        _svc_say "nats: not installed, installing with apt-get (package nats-server)"
        _svc_apt_install nats-server || return 1
        # The package may have started its own daemon without JetStream: replace it.
        if _nats_info >/dev/null && [[ $(_nats_info) != *'"jetstream":true'* ]]; then
            _svc_say "nats: the packaged daemon runs without JetStream, restarting it with -js"
            _svc_root start-stop-daemon --stop --oknodo --retry 10 --exec "$NATS_SERVER_BIN" >/dev/null 2>&1 || true
        fi
    fi
    if ! _nats_info >/dev/null; then
        _nats_start || return 1
    fi
    _nats_wait || return 1
    _nats_verify_jetstream || return 1
    _svc_say "nats: started on $SERVICES_HOST:$SERVICES_NATS_PORT with JetStream"
}

# ---------------------------------------------------------------------- main

services_check() {
    if [[ ${IMIP_SKIP_SERVICE_CHECK:-0} == 1 ]]; then
        _svc_say "services: check skipped (IMIP_SKIP_SERVICE_CHECK=1); using IMIP_NATS_URL / IMIP_DATABASE_URL as given"
        return 0
    fi
    services_check_postgres || return 1
    services_check_nats || return 1
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    services_check
fi

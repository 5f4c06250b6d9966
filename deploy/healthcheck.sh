#!/bin/bash
# imip-healthcheck PORT [PATH]: exit 0 when http://127.0.0.1:PORT/PATH (default
# /healthz) answers 200. For container health checks: the runtime image has
# bash but neither curl nor wget, and bash's /dev/tcp is enough for one GET.
port="${1:?usage: imip-healthcheck PORT [PATH]}"
# (stderr goes too: a refused connection is just "unhealthy", exit 1)
exec 2>/dev/null 3<>"/dev/tcp/127.0.0.1/$port" || exit 1
printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "${2:-/healthz}" >&3
read -r -t 5 _ status _ <&3 || exit 1
[ "$status" = 200 ]

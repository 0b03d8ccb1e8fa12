#!/bin/sh
# HEALTHCHECK of the Switchboard image: GET /healthz on the admin port of the
# Switchboard process in this container; exit 0 on a 2xx answer.
#
# The process is PID 1 (the entrypoint execs it), or the first terminator,
# aggregator or backend-svc found (`docker run --init`); tests name it with
# SWITCHBOARD_HEALTHCHECK_PID. Its admin address is found the way the
# process found it: the --admin flag on its command line, else
# SWITCHBOARD_ADMIN in its environment, else the binary's convention port.
# A wildcard bind (0.0.0.0, [::]) is checked on loopback. An admin address
# set only in a terminator --config file is not seen: set SWITCHBOARD_ADMIN.
#
# loadtest and baseline have no admin port: reported healthy while running.
set -eu

pid="${SWITCHBOARD_HEALTHCHECK_PID:-}"
if [ -z "$pid" ]; then
	for d in /proc/1 /proc/[0-9]*; do
		case "$(cat "$d/comm" 2>/dev/null || true)" in
		terminator | aggregator | backend-svc | loadtest | baseline)
			pid="${d#/proc/}"
			break
			;;
		esac
	done
fi
if [ -z "$pid" ] || [ ! -r "/proc/$pid/cmdline" ]; then
	echo "healthcheck: no Switchboard process in this container" >&2
	exit 1
fi

args() { tr '\0' '\n' <"/proc/$pid/cmdline" 2>/dev/null || true; }
environ() { tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null || true; }

# --admin ADDR or --admin=ADDR (the last one wins).
addr="$(args | sed -n -e 's/^--admin=//p' -e '/^--admin$/{n;p;}' | tail -n 1)"
if [ -z "$addr" ]; then
	addr="$(environ | sed -n 's/^SWITCHBOARD_ADMIN=//p' | tail -n 1)"
fi
if [ -z "$addr" ]; then
	case "$(cat "/proc/$pid/comm" 2>/dev/null || true)" in
	terminator) addr=127.0.0.1:8001 ;;
	aggregator) addr=127.0.0.1:8101 ;;
	backend-svc) addr=127.0.0.1:8201 ;;
	loadtest | baseline) exit 0 ;;
	*)
		echo "healthcheck: no admin address for pid $pid" >&2
		exit 1
		;;
	esac
fi

case "$addr" in
0.0.0.0:*) addr="127.0.0.1:${addr#0.0.0.0:}" ;;
"[::]:"*) addr="[::1]:${addr#\[::\]:}" ;;
esac

# -g: no URL globbing, so [::1] stays an address.
exec curl -fsS -g --max-time 2 -o /dev/null "http://$addr/healthz"

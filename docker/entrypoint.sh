#!/bin/sh
# Entrypoint of the Switchboard image: `docker run IMAGE <binary> [flags]`.
#
# The binaries bind 127.0.0.1 by default: right on one machine, unreachable
# from outside a container. For terminator, aggregator and backend-svc this
# binds their convention ports on every interface instead. Variables given
# to the container win over these defaults, and flags win over both. Bound
# to 0.0.0.0, a service registers the container's hostname in etcd unless
# SWITCHBOARD_ADVERTISE (--advertise) says otherwise.
#
# Anything else (loadtest, baseline, sh...) runs unchanged. The command is
# exec'd, so the binary is PID 1 and receives `docker stop`'s SIGTERM.
set -eu

case "${1:-}" in
terminator)
	export SWITCHBOARD_HTTP="${SWITCHBOARD_HTTP:-0.0.0.0:8000}"
	export SWITCHBOARD_ADMIN="${SWITCHBOARD_ADMIN:-0.0.0.0:8001}"
	;;
aggregator)
	export SWITCHBOARD_BUS="${SWITCHBOARD_BUS:-tcp://0.0.0.0:8100}"
	export SWITCHBOARD_ADMIN="${SWITCHBOARD_ADMIN:-0.0.0.0:8101}"
	;;
backend-svc)
	export SWITCHBOARD_BUS="${SWITCHBOARD_BUS:-tcp://0.0.0.0:8200}"
	export SWITCHBOARD_EVENTS="${SWITCHBOARD_EVENTS:-tcp://0.0.0.0:8202}"
	export SWITCHBOARD_ADMIN="${SWITCHBOARD_ADMIN:-0.0.0.0:8201}"
	;;
esac

exec "$@"

#!/usr/bin/env python3
"""A Switchboard bus service that registers itself in etcd, written from
docs/protocol.md (§4 what a service does, §9 socket options, §10 the `http`
method, §10e registering from another language).

It answers every `http` request with a small JSON document that shows it
handled it, and keeps a leased registration under
/switchboard/services/<service>/<instance> for as long as it runs, so that a
terminator started with --etcd routes its prefixes to it with no --route.

Needs pyzmq (Debian: python3-zmq); etcd is reached through its v3 JSON
gateway with urllib, no etcd package.

Usage:
  etcd_service.py [--bus tcp://127.0.0.1:0] [--etcd http://127.0.0.1:2379]
                  [--service pyhello] [--route /py ...] [--ttl 10] [--advertise HOST]
  etcd_service.py --selftest

Prints one line once bound and, with --etcd, registered (if etcd does not
answer, it says so on stderr, prints the line anyway and keeps trying):
  etcd_service listening bus=tcp://127.0.0.1:41234 key=/switchboard/services/pyhello/host-4242-1a2b3c4d
SIGTERM or SIGINT marks the registration draining and revokes the lease
(the key disappears at once), keeps serving for 0.5 s while callers notice,
then exits 0.
"""
import argparse
import base64
import json
import os
import random
import signal
import socket
import struct
import sys
import threading
import time
import urllib.error
import urllib.request

# ---------------------------------------------------------------- the bus --
# The wire codec (docs/protocol.md §2-§3) is echo_service.py's, beside this
# file: this example adds only what registering in etcd takes.
from echo_service import (  # noqa: E402
    PREFIX, REQUEST, VERSION, Malformed, decode_prefix, decode_request, encode_error,
    encode_reply)


def handle_http(service, req):
    """The application: (status, headers, body) for one proxied HTTP request."""
    body = json.dumps({"service": service, "method": req["http_method"],
                       "path": req["path"], "request_id": req["request_id"]})
    return 200, [("content-type", b"application/json")], body.encode()


def handle(service, frames, arrival):
    """The frames after the identity -> [header, body] to send, or None to
    drop; protocol.md §4, row by row."""
    if len(frames) < 2:
        return None  # 1: no (header, body) pair, nothing to answer
    header = frames[0]
    try:
        kind, cid, budget = decode_prefix(header)
    except Malformed as e:  # 2: answer only if there is a correlation id
        if len(header) < 12:
            return None
        return [encode_error(struct.unpack_from("<Q", header, 4)[0], 400, str(e)), b""]
    if kind != REQUEST:
        return None  # 3: replies, events and errors are never answered
    if len(frames) != 2:
        return [encode_error(cid, 400, "expected 2 frames"), b""]  # 4
    if budget == 0:
        return None  # 5: the caller has already given up: no answer, no work
    deadline = arrival + budget / 1e6
    try:
        req = decode_request(header)
    except Malformed as e:
        return [encode_error(cid, 400, str(e)), b""]  # 7
    if req["method"] != "http":
        return [encode_error(cid, 404, "unknown method " + req["method"]), b""]
    try:
        status, headers, body = handle_http(service, req)  # 8
        reply = [encode_reply(cid, status, headers), body]
    except Exception:
        return [encode_error(cid, 500, "handler failed"), b""]  # 9
    if time.monotonic() > deadline:
        return None  # 10: too late, the caller has stopped waiting
    return reply  # 11


def bind_router(endpoint):
    """A ROUTER with the options of §9, bound; returns (socket, bound endpoint)."""
    import zmq
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    for opt, val in ((zmq.SNDHWM, 10000), (zmq.RCVHWM, 10000), (zmq.LINGER, 0),
                     (zmq.MAXMSGSIZE, 16 << 20), (zmq.HEARTBEAT_IVL, 1000),
                     (zmq.HEARTBEAT_TIMEOUT, 3000), (zmq.HEARTBEAT_TTL, 3000),
                     (zmq.TCP_KEEPALIVE, 1), (zmq.ROUTER_MANDATORY, 1)):
        sock.setsockopt(opt, val)
    sock.bind(endpoint)  # port 0 (or *) picks a free port...
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)  # ...read it back here


# ----------------------------------------------------------- registration --
PREFIX_KEY = "/switchboard/services/"


def instance_id():
    """`<hostname>-<pid>-<8 hex digits>`, as the Rust services make theirs."""
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.") or "host"
    return "%s-%d-%08x" % (host, os.getpid(), random.getrandbits(32))


def advertised(bound, host=None):
    """The bound endpoint as others should dial it: `--advertise` host, or
    the host name instead of a wildcard address."""
    rest = bound[len("tcp://"):] if bound.startswith("tcp://") else None
    if rest is None or ":" not in rest:
        return bound
    bound_host, port = rest.rsplit(":", 1)
    if host is None and bound_host in ("0.0.0.0", "*", "::", "[::]"):
        host = socket.gethostname()
    return "tcp://%s:%s" % (host or bound_host, port)


def registration(service, instance, bus, routes):
    """The JSON value, field for field `discovery::Registration`."""
    return {
        "service": service,
        "instance": instance,
        "bus": bus,
        # "events": omitted, this instance publishes none.
        "admin": "",  # required, may be empty: we serve no admin port
        "routes": routes,
        "version": "0.1.0",
        "started_at": int(time.time()),
    }


def b64(s):
    return base64.b64encode(s.encode()).decode()


class Registrar:
    """Keeps one key in etcd under a lease, like discovery::Registrar:

    grant lease(TTL) -> put key with the lease -> keepalive every TTL/3
      keepalive answers TTL 0 (lease gone) or fails -> grant and put again,
      after a back-off of 100 ms doubling to 2 s
    stop(): put the value again with "draining": true (callers drop the
      instance at once instead of keeping it for their removal grace), then
      revoke the lease, which deletes the key at once
    """

    def __init__(self, endpoints, key, value, ttl):
        self.endpoints = endpoints  # tried in turn when one does not answer
        self.key, self.value = key, value
        self.ttl = max(2, int(ttl))  # etcd counts whole seconds
        self.lease = None
        self.stopping = threading.Event()
        self.thread = None

    def call(self, path, body):
        """POST JSON to the v3 gateway; the decoded answer, or OSError."""
        err = None
        for _ in range(len(self.endpoints)):
            url = self.endpoints[0].rstrip("/") + path
            req = urllib.request.Request(url, json.dumps(body).encode(),
                                         {"content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=2) as r:
                    # keepalive is a stream: one JSON object per line
                    return json.loads(r.read().decode().splitlines()[0])
            except urllib.error.HTTPError as e:  # etcd answered: an error
                raise OSError("%s: HTTP %d %s" % (path, e.code, e.read()[:200])) from None
            except (OSError, ValueError, IndexError) as e:  # no answer: next member
                err = e
                self.endpoints.append(self.endpoints.pop(0))
        raise OSError("%s: %s" % (path, err))

    def register(self):
        lease = self.call("/v3/lease/grant", {"TTL": self.ttl})["ID"]
        self.call("/v3/kv/put", {"key": b64(self.key), "value": b64(self.value),
                                 "lease": lease})
        self.lease = lease
        log("registered %s (lease %x, ttl %ds)" % (self.key, int(lease), self.ttl))

    def keep_alive(self):
        """True while the lease lives; False when etcd has forgotten it."""
        answer = self.call("/v3/lease/keepalive", {"ID": self.lease})
        return int(answer.get("result", {}).get("TTL", 0)) > 0  # 0 is left out

    def start(self):
        """Registers once (so the caller can say so), then keeps it alive on
        a thread. etcd being down is not fatal: the thread keeps trying."""
        try:
            self.register()
        except OSError as e:
            log("etcd registration unavailable; retrying: %s" % e)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        backoff = 0.0
        while not self.stopping.is_set():
            if self.lease is None:
                backoff = min(max(backoff * 2, 0.1), 2.0)
                if self.stopping.wait(backoff):
                    break
                try:
                    self.register()
                    backoff = 0.0
                except OSError:
                    pass  # said once already; keep trying quietly
                continue
            if self.stopping.wait(self.ttl / 3):
                break
            try:
                if not self.keep_alive():
                    log("lease expired (etcd forgot it); registering again")
                    self.lease = None
            except OSError as e:
                log("keepalive failed; registering again: %s" % e)
                self.lease = None

    def stop(self):
        """Marks the key draining and revokes the lease: the key is deleted
        now, not after the TTL."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)
        if self.lease is not None:
            try:
                draining = dict(json.loads(self.value), draining=True)
                self.call("/v3/kv/put", {"key": b64(self.key), "lease": self.lease,
                                         "value": b64(json.dumps(draining,
                                                                 separators=(",", ":")))})
                self.call("/v3/lease/revoke", {"ID": self.lease})
                log("deregistered %s" % self.key)
            except OSError as e:
                log("deregister failed; the key expires with its lease: %s" % e)


def log(msg):
    print("etcd_service: " + msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------- main --
def main(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bus", default="tcp://127.0.0.1:0", help="ROUTER endpoint to bind")
    p.add_argument("--etcd", default=os.environ.get("SWITCHBOARD_ETCD", ""),
                   help="etcd endpoints, comma-separated http://HOST:PORT "
                        "(env SWITCHBOARD_ETCD); no registration without it")
    p.add_argument("--service", default="pyhello", help="service name to register")
    p.add_argument("--route", action="append", help="HTTP prefix to register, repeatable "
                                                    "(default /py)")
    p.add_argument("--ttl", type=int, default=10, help="lease TTL in seconds (default 10)")
    p.add_argument("--advertise", help="host written into the registered endpoint")
    args = p.parse_args(argv)
    routes = args.route or ["/py"]
    import zmq

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    sock, bound = bind_router(args.bus)
    registrar, key = None, ""
    etcd = [e if "://" in e else "http://" + e for e in args.etcd.split(",") if e]
    if etcd:
        instance = instance_id()
        reg = registration(args.service, instance, advertised(bound, args.advertise), routes)
        key = PREFIX_KEY + args.service + "/" + instance
        registrar = Registrar(etcd, key, json.dumps(reg, separators=(",", ":")), args.ttl)
        registrar.start()
    # One line, the same shape as every Switchboard binary's, for scripts.
    print("etcd_service listening bus=%s" % bound + (" key=%s" % key if key else ""),
          flush=True)

    settle_until = None  # after deregistering: serve 0.5 s more, then exit
    while settle_until is None or time.monotonic() < settle_until:
        if stop.is_set() and settle_until is None:
            if registrar is not None:
                registrar.stop()
            settle_until = time.monotonic() + 0.5
        if not sock.poll(100):  # wake up now and then to notice `stop`
            continue
        frames = sock.recv_multipart()  # [identity, header, body]
        out = handle(args.service, frames[1:], time.monotonic())
        if out is not None:
            try:
                sock.send_multipart([frames[0]] + out, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # EHOSTUNREACH: caller gone; EAGAIN: its queue is full
    sock.close()


def selftest():
    def request(method="http", budget=1_500_000, path="/py/x"):
        out = PREFIX.pack(VERSION, REQUEST, 0, 7, budget)
        for s, fmt in (("pyhello", "<B"), (method, "<B"), ("GET", "<B"), (path, "<H"),
                       ("rid-1", "<B")):
            out += struct.pack(fmt, len(s.encode())) + s.encode()
        return out + struct.pack("<H", 0)

    now = time.monotonic()
    header, body = handle("pyhello", [request(), b""], now)
    assert header == encode_reply(7, 200, [("content-type", b"application/json")])
    assert json.loads(body) == {"service": "pyhello", "method": "GET", "path": "/py/x",
                                "request_id": "rid-1"}
    assert handle("pyhello", [request(budget=0), b""], now) is None
    assert handle("pyhello", [request()[:-1], b""], now) == [
        encode_error(7, 400, "truncated in header count"), b""]
    assert handle("pyhello", [request("kv.get"), b""], now) == [
        encode_error(7, 404, "unknown method kv.get"), b""]
    reg = registration("pyhello", "h-1-0000abcd", "tcp://127.0.0.1:5", ["/py"])
    assert sorted(reg) == ["admin", "bus", "instance", "routes", "service", "started_at",
                           "version"]
    assert advertised("tcp://127.0.0.1:5") == "tcp://127.0.0.1:5"
    assert advertised("tcp://0.0.0.0:5", "h") == "tcp://h:5"
    print("selftest ok")


if __name__ == "__main__":
    if "--selftest" in sys.argv:
        selftest()
    else:
        main(sys.argv[1:])

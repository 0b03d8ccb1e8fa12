#!/usr/bin/env python3
"""Echo service for the Switchboard bus, written from docs/protocol.md alone.

Replies 200 with the request's body and content-type. Needs pyzmq (pip install pyzmq).
Usage: echo_service.py [ENDPOINT (default tcp://127.0.0.1:8100)]
                       [--curve-secret Z85 --curve-public Z85]
       echo_service.py --selftest
With the CURVE keys (40-character Z85, as curve_keygen prints them) the
socket is a CURVE server (docs/protocol.md §1): callers need its public key;
any caller key is let in (no ZAP handler).
"""
import struct
import sys
import time

VERSION = 1
REQUEST, REPLY, EVENT, ERROR = 1, 2, 3, 4
PREFIX = struct.Struct("<BBHQI")  # version, kind, flags, correlation id, budget µs


class Malformed(ValueError):
    """The header frame is not a valid v1 request."""


def decode_prefix(header):
    """(kind, correlation id, budget µs) from the 16-byte prefix."""
    if len(header) < PREFIX.size:
        raise Malformed("header shorter than the 16-byte prefix")
    version, kind, _flags, cid, budget = PREFIX.unpack_from(header)
    if version != VERSION or kind not in (REQUEST, REPLY, EVENT, ERROR):
        raise Malformed("unknown version %d or kind %d" % (version, kind))
    return kind, cid, budget


def decode_request(header):
    """Decodes a request header frame into a dict; raises Malformed."""
    kind, cid, budget = decode_prefix(header)
    if kind != REQUEST:
        raise Malformed("not a request")
    pos = PREFIX.size

    def take(n, name):
        nonlocal pos
        if len(header) - pos < n:
            raise Malformed("truncated in " + name)
        pos += n
        return bytes(header[pos - n:pos])

    def field(fmt, name, text=True):  # fmt "<B": str8, "<H": str16
        (n,) = struct.unpack(fmt, take(struct.calcsize(fmt), name))
        b = take(n, name)
        try:
            return b.decode("utf-8") if text else b
        except UnicodeDecodeError:
            raise Malformed(name + " is not UTF-8") from None

    req = {"correlation_id": cid, "budget_us": budget}
    for name, fmt in (("service", "<B"), ("method", "<B"), ("http_method", "<B"),
                      ("path", "<H"), ("request_id", "<B")):
        req[name] = field(fmt, name)
    (count,) = struct.unpack("<H", take(2, "header count"))
    req["headers"] = [(field("<B", "header name"), field("<H", "header value", False))
                      for _ in range(count)]
    if pos != len(header):
        raise Malformed("%d trailing bytes" % (len(header) - pos))
    return req


def encode_reply(cid, status, headers):
    out = PREFIX.pack(VERSION, REPLY, 0, cid, 0) + struct.pack("<HH", status, len(headers))
    for name, value in headers:
        name = name.encode()
        out += struct.pack("<B", len(name)) + name + struct.pack("<H", len(value)) + value
    return out


def encode_error(cid, status, message):
    msg = message.encode()[:65535].decode("utf-8", "ignore").encode()  # cut, still UTF-8
    return PREFIX.pack(VERSION, ERROR, 0, cid, 0) + struct.pack("<HH", status, len(msg)) + msg


def handle(frames, arrival):
    """The frames after the identity -> reply [header, body], or None to drop."""
    if len(frames) < 2:
        return None  # no (header, body) pair: nothing to answer
    header = frames[0]
    try:
        kind, cid, budget = decode_prefix(header)
    except Malformed as e:
        if len(header) < 12:
            return None  # not even a correlation id to answer to
        return [encode_error(struct.unpack_from("<Q", header, 4)[0], 400, str(e)), b""]
    if kind != REQUEST:
        return None  # replies, events and errors are never answered
    if len(frames) != 2:
        return [encode_error(cid, 400, "expected 2 frames"), b""]
    if budget == 0:
        return None  # the caller has already given up
    deadline = arrival + budget / 1e6
    try:
        req = decode_request(header)
    except Malformed as e:
        return [encode_error(cid, 400, str(e)), b""]
    try:  # the handler proper
        ct = next((v for n, v in req["headers"] if n.lower() == "content-type"), None)
        reply = [encode_reply(cid, 200, [] if ct is None else [("content-type", ct)]),
                 frames[1]]
    except Exception:
        return [encode_error(cid, 500, "handler failed"), b""]
    if time.monotonic() > deadline:
        return None  # too late: the caller has stopped waiting
    return reply


def serve(endpoint, curve=None):
    import zmq
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    if curve is not None:  # (secret, public), Z85
        sock.curve_server = True
        sock.curve_secretkey, sock.curve_publickey = (k.encode() for k in curve)
    for opt, val in ((zmq.SNDHWM, 10000), (zmq.RCVHWM, 10000), (zmq.LINGER, 0),
                     (zmq.MAXMSGSIZE, 16 << 20), (zmq.HEARTBEAT_IVL, 1000),
                     (zmq.HEARTBEAT_TIMEOUT, 3000), (zmq.HEARTBEAT_TTL, 3000),
                     (zmq.TCP_KEEPALIVE, 1), (zmq.ROUTER_MANDATORY, 1)):
        sock.setsockopt(opt, val)
    sock.bind(endpoint)  # tcp://HOST:* picks a free port
    # One line, the same shape as every Switchboard binary's, for scripts.
    print("echo_service listening bus=%s" % sock.getsockopt_string(zmq.LAST_ENDPOINT), flush=True)
    while True:
        frames = sock.recv_multipart()  # [identity, header, body]
        out = handle(frames[1:], time.monotonic())
        if out is not None:
            try:
                sock.send_multipart([frames[0]] + out, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # EHOSTUNREACH: caller gone; EAGAIN: its queue is full


if __name__ == "__main__" and "--selftest" in sys.argv:
    DOC_REQUEST = bytes.fromhex(  # docs/protocol.md, worked example 1
        "01010000" "0700000000000000" "60e31600" "0a61676772656761746f72" "0468747470"
        "03474554" "05002f6563686f" "03616263" "0100" "06616363657074" "03002a2f2a")
    DOC_REPLY = bytes.fromhex(  # worked example 2
        "01020000" "0700000000000000" "00000000" "c800" "0100"
        "0c636f6e74656e742d74797065" "0a00746578742f706c61696e")
    assert decode_request(DOC_REQUEST) == {
        "correlation_id": 7, "budget_us": 1_500_000, "service": "aggregator",
        "method": "http", "http_method": "GET", "path": "/echo", "request_id": "abc",
        "headers": [("accept", b"*/*")]}
    assert encode_reply(7, 200, [("content-type", b"text/plain")]) == DOC_REPLY
    for bad in [DOC_REQUEST[:n] for n in range(len(DOC_REQUEST))] + [DOC_REQUEST + b"\0"]:
        try:
            decode_request(bad)
        except Malformed:
            continue
        raise AssertionError("decoded %r" % bad)
    now = time.monotonic()  # handle(): echo, budget 0 dropped, malformed -> 400
    assert handle([DOC_REQUEST, b"hi"], now) == [encode_reply(7, 200, []), b"hi"]
    assert handle([DOC_REQUEST[:12] + bytes(4) + DOC_REQUEST[16:], b""], now) is None
    assert handle([DOC_REQUEST[:-1], b""], now) == [
        encode_error(7, 400, "truncated in header value"), b""]
    print("selftest ok")
elif __name__ == "__main__":
    args, keys = sys.argv[1:], {}
    for flag in ("--curve-secret", "--curve-public"):
        if flag in args:
            i = args.index(flag)
            keys[flag] = args[i + 1]
            del args[i:i + 2]
    if len(keys) == 1:
        sys.exit("--curve-secret and --curve-public go together")
    curve = (keys["--curve-secret"], keys["--curve-public"]) if keys else None
    try:
        serve(args[0] if args else "tcp://127.0.0.1:8100", curve)
    except KeyboardInterrupt:
        pass

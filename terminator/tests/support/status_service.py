#!/usr/bin/env python3
"""A bus service that answers as the request's path says, for the error
table test (terminator/tests/errors.rs). Built on docs/examples/echo_service.py.

  .../error/N   an error frame (kind 4) with status N and message "service says N"
  .../reply/N   a reply with status N
  .../hold      no answer at all (the caller's deadline passes)
  .../exit      the process exits without answering (the connection drops)
  anything else 200 with the request's body
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "../../../docs/examples"))
import echo_service as es  # noqa: E402

echo = es.handle


def handle(frames, arrival):
    try:
        req = es.decode_request(frames[0]) if len(frames) == 2 else None
    except es.Malformed:
        req = None
    if req is None:
        return echo(frames, arrival)
    cid, parts = req["correlation_id"], req["path"].split("?")[0].split("/")
    if len(parts) >= 2 and parts[-2] == "error":
        n = int(parts[-1])
        return [es.encode_error(cid, n, "service says %d" % n), b""]
    if len(parts) >= 2 and parts[-2] == "reply":
        return [es.encode_reply(cid, int(parts[-1]), []), b"as you wish"]
    if parts[-1] == "hold":
        return None
    if parts[-1] == "exit":
        os._exit(3)
    return echo(frames, arrival)


es.handle = handle
es.serve(sys.argv[1])

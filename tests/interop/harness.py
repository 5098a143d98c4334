"""Interop harness: the real Jumpstarter Python peers (jumpstarter 0.9.0 from PyPI).

Uses only the released package's own pieces: `RouterStream` (jumpstarter.streams.router),
`forward_stream` (jumpstarter.streams.common) and the stubs of `jumpstarter_protocol`.
Driven by tests/interop.rs; every line on stdout is one JSON object with an "event" key.

Subcommands:
  peer        a client-side RouterStream doing a half-close exchange of pattern bytes
  router      a router assembled from RouterStream + forward_stream (pairs callers by token subject)
  raw-client  writes a given list of frames on a Stream call and prints what comes back
"""

import argparse
import asyncio
import base64
import hashlib
import json
import sys

import grpc
from anyio import EndOfStream
from jumpstarter.streams.common import forward_stream
from jumpstarter.streams.router import RouterStream
from jumpstarter_protocol import router_pb2, router_pb2_grpc


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


# ===== the pattern (the same formula as tests/support/mod.rs) =====
# byte i = (i*31 + seed*7 + (i >> 12)) & 0xFF. Within block b of 4096 bytes at offset j this is
# (31*j + 7*seed + b) & 0xFF, so every block is a byte-shifted copy of one base block.

_BASE = bytes((31 * j) & 0xFF for j in range(4096))
_SHIFT = [bytes((x + k) & 0xFF for x in range(256)) for k in range(256)]


def pattern(at, n, seed):
    out = bytearray()
    end = at + n
    while at < end:
        block, off = divmod(at, 4096)
        take = min(4096 - off, end - at)
        out += _BASE[off : off + take].translate(_SHIFT[(7 * seed + block) & 0xFF])
        at += take
    return bytes(out)


def endpoint_target(endpoint):
    for scheme in ("http://", "grpc://"):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :]
    return endpoint


# ===== peer =====


async def peer(args):
    channel = grpc.aio.insecure_channel(endpoint_target(args.endpoint))
    stub = router_pb2_grpc.RouterServiceStub(channel)
    call = stub.Stream(metadata=(("authorization", f"Bearer {args.token}"),))
    stream = RouterStream(context=call)
    emit("ready")

    sent_hash = hashlib.sha256()
    recv_hash = hashlib.sha256()
    sent = received = 0

    async def send_all():
        nonlocal sent
        while sent < args.send:
            chunk = pattern(sent, min(args.chunk, args.send - sent), args.seed)
            await stream.send(chunk)
            sent_hash.update(chunk)
            sent += len(chunk)
        emit("sent", sent=sent)
        if args.hold_after_send:
            await asyncio.Event().wait()  # until killed
        await stream.send_eof()

    async def receive_all():
        nonlocal received
        while True:
            try:
                chunk = await stream.receive()
            except EndOfStream:
                return
            recv_hash.update(chunk)
            received += len(chunk)

    if args.order == "send-first":
        await send_all()
        await receive_all()
    else:
        await receive_all()
        await send_all()
    await stream.aclose()
    try:
        status = await asyncio.wait_for(final_status(call), 30)
    except asyncio.TimeoutError:
        status = "no status within 30 s"
    await channel.close()
    emit(
        "done",
        sent=sent,
        sent_sha256=sent_hash.hexdigest(),
        received=received,
        received_sha256=recv_hash.hexdigest(),
        status=status,
    )


async def final_status(call):
    """The call's status name. grpc-core hands out the status only once every message was read,
    so this reads (and drops) what follows the GOAWAY, e.g. a Python router's second GOAWAY."""
    try:
        while await call.read() != grpc.aio.EOF:
            pass
    except grpc.aio.AioRpcError as e:
        return e.code().name
    return (await call.code()).name


# ===== router =====


def token_subject(context):
    """The `sub` claim of the bearer token (not verified: this router only pairs)."""
    for key, value in context.invocation_metadata():
        if key == "authorization" and value.startswith("Bearer "):
            try:
                body = value[len("Bearer ") :].split(".")[1]
                claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
                return str(claims["sub"])
            except (IndexError, ValueError, KeyError):
                break
    return None


class PythonRouter(router_pb2_grpc.RouterServiceServicer):
    """Pairs the first and second caller of a stream id and runs `forward_stream` between them."""

    def __init__(self):
        self.pending = {}

    async def Stream(self, request_iterator, context):
        sub = token_subject(context)
        if sub is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no bearer token")
        stream = RouterStream(context=context)
        waiting = self.pending.pop(sub, None)
        if waiting is None:
            done = asyncio.get_running_loop().create_future()
            self.pending[sub] = (stream, done)
            try:
                await done
            finally:
                if self.pending.get(sub, (None,))[0] is stream:
                    del self.pending[sub]
            return
        other, done = waiting
        try:
            async with forward_stream(other, stream):
                pass
        finally:
            if not done.done():
                done.set_result(None)


async def router(args):
    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServiceServicer_to_server(PythonRouter(), server)
    port = server.add_insecure_port(args.listen)
    await server.start()
    emit("listening", port=port)
    await server.wait_for_termination()


# ===== raw-client =====

_TYPES = {
    "data": router_pb2.FRAME_TYPE_DATA,
    "ping": router_pb2.FRAME_TYPE_PING,
    "goaway": router_pb2.FRAME_TYPE_GOAWAY,
    "rst": router_pb2.FRAME_TYPE_RST_STREAM,
}


def parse_frames(spec):
    """`ping,data:hello,unknown9:xyz,goaway` -> [(type, payload)]."""
    frames = []
    for item in spec.split(","):
        name, _, payload = item.partition(":")
        if name.startswith("unknown"):
            frame_type = int(name[len("unknown") :])
        else:
            frame_type = _TYPES[name]
        frames.append((frame_type, payload.encode()))
    return frames


async def raw_client(args):
    channel = grpc.aio.insecure_channel(endpoint_target(args.endpoint))
    stub = router_pb2_grpc.RouterServiceStub(channel)
    call = stub.Stream(metadata=(("authorization", f"Bearer {args.token}"),))
    for frame_type, payload in parse_frames(args.frames):
        await call.write(router_pb2.StreamRequest(frame_type=frame_type, payload=payload))
    await call.done_writing()
    try:
        async for frame in call:
            emit("frame", frame_type=int(frame.frame_type), payload=frame.payload.decode("latin-1"))
        status = "OK"
    except grpc.aio.AioRpcError as e:
        status = e.code().name
    emit("end", status=status)
    await channel.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("peer")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--send", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--order", choices=["send-first", "recv-first"], required=True)
    p.add_argument("--chunk", type=int, default=64 * 1024)
    p.add_argument("--hold-after-send", action="store_true")

    r = sub.add_parser("router")
    r.add_argument("--listen", default="127.0.0.1:0")

    c = sub.add_parser("raw-client")
    c.add_argument("--endpoint", required=True)
    c.add_argument("--token", required=True)
    c.add_argument("--frames", required=True)

    args = parser.parse_args()
    run = {"peer": peer, "router": router, "raw-client": raw_client}[args.cmd]
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    except Exception as e:  # reported to the Rust test, which fails with it
        emit("error", message=f"{type(e).__name__}: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()

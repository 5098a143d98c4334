"""Interop harness: the real Jumpstarter Python peers (jumpstarter 0.9.0 from PyPI).

Uses only the released package's own pieces: `RouterStream` (jumpstarter.streams.router),
`forward_stream` (jumpstarter.streams.common) and the stubs of `jumpstarter_protocol`.
Driven by tests/interop.rs; every line on stdout is one JSON object with an "event" key.

Tokens are minted here with PyJWT in the form Jumpstarter's controller issues (golang-jwt v5:
`aud` as an array, a `jti`), never by the crate under test.

Subcommands:
  peer        a client-side RouterStream doing a half-close exchange of pattern bytes
  idle-peer   the same exchange with idle waits at given points (before connecting, after
              pairing, after the other side's EOF), for proxies' idle timers
  bench-peer  one side of a measurement (benches/relay.rs, RELAY_ONLY=session): send, receive,
              ping or echo, timed from the moment both calls are through the router
  router      a router assembled from RouterStream + forward_stream (pairs callers by token subject)
  raw-client  writes a given list of frames on a Stream call and prints what comes back
  bad-tokens  calls with each kind of bad token, N times each, and counts the status codes
  compressed  a call with gzip compression: the status it gets
  token       prints a controller-form token
  certs       writes a CA and a server certificate for localhost (RSA or ECDSA) to a folder
  self-signed writes a self-signed certificate and its key, in one PEM file, for a name
"""

import argparse
import asyncio
import base64
import hashlib
import json
import sys
import threading
import time
import uuid
import warnings

import grpc
import jwt

# The suite's router keys are short test strings: PyJWT's advice on key length is noise here.
warnings.filterwarnings("ignore", category=jwt.warnings.InsecureKeyLengthWarning)
from anyio import BrokenResourceError, EndOfStream
from jumpstarter.streams.common import forward_stream
from jumpstarter.streams.router import RouterStream
from jumpstarter_protocol import router_pb2, router_pb2_grpc


_EMIT_LOCK = threading.Lock()


def emit(event, **fields):
    """One JSON line, written whole: `print` writes the object and the newline apart, so two
    threads (or an `os._exit` between the two writes) could glue two events into one line that
    is not JSON, and the test would miss an event."""
    line = json.dumps({"event": event, **fields}) + "\n"
    with _EMIT_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


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


# ===== tokens (PyJWT, the controller's claim set) =====

ISSUER = "https://jumpstarter.dev/stream"
AUDIENCE = "https://jumpstarter.dev/router"


def controller_claims(sub, **over):
    """The claims Jumpstarter's controller puts in a router token (golang-jwt v5 writes a single
    audience as an array)."""
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "aud": [AUDIENCE],
        "sub": sub,
        "iat": now,
        "nbf": now,
        "exp": now + 1800,
        "jti": str(uuid.uuid4()),
    }
    claims.update(over)
    return claims


def mint(key, sub, algorithm="HS256", **over):
    return jwt.encode(controller_claims(sub, **over), key, algorithm=algorithm)


def token_arg(args):
    """`--token`, or a token minted here from `--key` and `--stream`."""
    if args.token:
        return args.token
    if args.key and args.stream:
        return mint(args.key, args.stream)
    raise SystemExit("give --token, or --key and --stream")


async def channel_for(args):
    """A plaintext channel, or TLS set up by Jumpstarter's own client code
    (`jumpstarter.common.grpc`): `--tls-ca FILE` as its `tls.ca`, `--tls-insecure` as its
    `tls.insecure` (it fetches the router's certificate and trusts it)."""
    target = endpoint_target(args.endpoint)
    ca = getattr(args, "tls_ca", None)
    insecure = getattr(args, "tls_insecure", False)
    if not ca and not insecure:
        return grpc.aio.insecure_channel(target)
    from types import SimpleNamespace

    from jumpstarter.common.grpc import aio_secure_channel, ssl_channel_credentials

    tls = SimpleNamespace(insecure=insecure, ca="")
    if ca:
        with open(ca, "rb") as f:
            tls.ca = base64.b64encode(f.read()).decode()
    creds = await ssl_channel_credentials(target, tls)
    return aio_secure_channel(target, creds, None)


def endpoint_target(endpoint):
    for scheme in ("http://", "grpc://"):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme) :]
    return endpoint


# ===== peer =====


async def peer(args):
    channel = await channel_for(args)
    stub = router_pb2_grpc.RouterServiceStub(channel)
    call = stub.Stream(metadata=(("authorization", f"Bearer {token_arg(args)}"),))
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


# ===== bench-peer =====


async def bench_peer(args):
    """One side of a measurement, as a real peer sends: `RouterStream.send` per write.

    After a `hello` both ways ("paired"): `send` writes `--send` bytes in `--chunk` writes, then
    EOF; `recv` reads to EOF ("eof", with `secs` since "paired"); `ping` sends `--count`
    messages of `--chunk` bytes, each once the previous one came back, and says the round
    trips' percentiles in microseconds; `echo` sends back what it reads, until EOF. Little
    work of its own per message (the same bytes every write, no hashing), so that the router's
    cost shows."""
    channel = await channel_for(args)
    stub = router_pb2_grpc.RouterServiceStub(channel)
    call = stub.Stream(metadata=(("authorization", f"Bearer {token_arg(args)}"),))
    stream = RouterStream(context=call)

    async def receive():
        """The next bytes (PING frames and the like skipped), or None at EOF."""
        while True:
            try:
                chunk = await stream.receive()
            except EndOfStream:
                return None
            if chunk:
                return chunk

    await stream.send(b"hello")
    got = b""
    while len(got) < 5:
        chunk = await receive()
        if chunk is None:
            raise RuntimeError("EOF before the hello")
        got += chunk
    t0 = time.monotonic()
    emit("paired")
    fields = {}
    if args.role == "send":
        chunk = bytes(args.chunk)
        left = args.send
        while left > 0:
            n = min(args.chunk, left)
            await stream.send(chunk if n == args.chunk else chunk[:n])
            left -= n
        await stream.send_eof()
        await receive()
    elif args.role == "recv":
        received = 0
        while (chunk := await receive()) is not None:
            received += len(chunk)
        fields = {"received": received, "secs": time.monotonic() - t0}
        await stream.send_eof()
    elif args.role == "ping":
        msg = bytes(args.chunk)
        rtts = []
        for _ in range(args.count):
            start = time.perf_counter()
            await stream.send(msg)
            got = 0
            while got < len(msg):
                chunk = await receive()
                if chunk is None:
                    raise RuntimeError("EOF during ping-pong")
                got += len(chunk)
            rtts.append(time.perf_counter() - start)
        rtts.sort()
        pct = lambda p: round(rtts[min(len(rtts) - 1, int(p * len(rtts)))] * 1e6, 1)
        fields = {"p50_us": pct(0.50), "p99_us": pct(0.99), "secs": time.monotonic() - t0}
        await stream.send_eof()
        await receive()
    else:  # echo
        while (chunk := await receive()) is not None:
            await stream.send(chunk)
        await stream.send_eof()
    await stream.aclose()
    await channel.close()
    emit("done", **fields)


# ===== idle-peer =====


async def idle_peer(args):
    """A `peer` that stays idle where told, and says when and how each step ended.

    Steps: sleep `--sleep-before-connect`; open the call ("ready"); with `--handshake`, send
    `hello` and read the other side's `hello` ("paired": both calls are through the router);
    stay idle `--sleep-after-pairing`; the half-close exchange as `peer` (`--order`), where a
    `recv-first` side stays idle `--sleep-after-eof` between the other side's EOF ("eof") and
    its own sending (with `--hold-after-send` it then sends no EOF and waits to be killed);
    then `aclose` and the final status ("done", with `peer`'s fields and `empty`, the frames
    `RouterStream.receive` returned as b"": PING and the like).

    One task reads the call from the start, as Jumpstarter's `forward_stream` does, so a call
    that fails while this side is idle is seen when it fails: the failure is one "error" event
    with the step, the gRPC code and details when there are some, and `idle_for`, the seconds
    since this side last received or sent a byte. Every event has `t`, seconds since start."""
    t0 = time.monotonic()
    last = [t0]
    stage = ["sleep-before-connect"]

    def at(event, **fields):
        emit(event, t=round(time.monotonic() - t0, 3), **fields)

    sent_hash = hashlib.sha256()
    recv_hash = hashlib.sha256()
    sent = received = empty = 0
    chunks = asyncio.Queue()
    failed = asyncio.Event()
    ended = asyncio.Event()
    failure = []
    channel = call = reading = None

    async def reader(stream):
        """Reads the call to its end: the bytes, the EOF (a GOAWAY, or the call's end), then
        on to the call's status (what follows a GOAWAY is dropped, as `final_status` does)."""
        nonlocal empty
        while True:
            try:
                chunk = await stream.receive()
            except EndOfStream:
                if not ended.is_set():
                    chunks.put_nowait(None)
                    ended.set()
                if call.done():
                    return  # the call ended with OK
                continue  # a GOAWAY: the call's status comes later
            except BrokenResourceError as e:
                failure.append(e)
                failed.set()
                return
            if ended.is_set():
                continue
            if chunk:
                last[0] = time.monotonic()
                chunks.put_nowait(chunk)
            else:
                empty += 1

    async def next_chunk():
        """The next bytes, or None at EOF; raises the call's failure."""
        get = asyncio.ensure_future(chunks.get())
        fail = asyncio.ensure_future(failed.wait())
        await asyncio.wait([get, fail], return_when=asyncio.FIRST_COMPLETED)
        fail.cancel()
        if get.done():
            return get.result()
        get.cancel()
        raise failure[0]

    async def idle(secs):
        """Nothing sent for `secs`. A failure of the call meanwhile is raised at once; an EOF
        that arrives meanwhile ends the wait (the steps after it show it)."""
        waits = [asyncio.ensure_future(failed.wait())]
        if not ended.is_set():
            waits.append(asyncio.ensure_future(ended.wait()))
        done, pending = await asyncio.wait(waits, timeout=secs, return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()
        if failed.is_set():
            raise failure[0]
        if done:
            at("eof-while-idle", step=stage[0])

    try:
        if args.sleep_before_connect:
            await asyncio.sleep(args.sleep_before_connect)
        stage[0] = "connect"
        channel = await channel_for(args)
        stub = router_pb2_grpc.RouterServiceStub(channel)
        call = stub.Stream(metadata=(("authorization", f"Bearer {token_arg(args)}"),))
        stream = RouterStream(context=call)
        reading = asyncio.ensure_future(reader(stream))
        at("ready")
        last[0] = time.monotonic()

        if args.handshake:
            stage[0] = "handshake"
            await stream.send(b"hello")
            got = b""
            while len(got) < 5:
                chunk = await next_chunk()
                if chunk is None:
                    break
                got += chunk
            if got != b"hello":
                raise RuntimeError(f"handshake: got {got!r}")
            at("paired")
        if args.sleep_after_pairing:
            stage[0] = "sleep-after-pairing"
            await idle(args.sleep_after_pairing)

        async def send_all():
            nonlocal sent
            stage[0] = "send"
            while sent < args.send:
                if failed.is_set():
                    raise failure[0]
                chunk = pattern(sent, min(args.chunk, args.send - sent), args.seed)
                await stream.send(chunk)
                last[0] = time.monotonic()
                sent_hash.update(chunk)
                sent += len(chunk)
            at("sent", sent=sent)
            if args.hold_after_send:
                stage[0] = "hold"
                await asyncio.Event().wait()  # until killed
            await stream.send_eof()

        async def receive_all():
            nonlocal received
            stage[0] = "receive"
            while (chunk := await next_chunk()) is not None:
                recv_hash.update(chunk)
                received += len(chunk)
            at("eof", received=received)

        if args.order == "send-first":
            await send_all()
            await receive_all()
        else:
            await receive_all()
            if args.sleep_after_eof:
                stage[0] = "sleep-after-eof"
                await idle(args.sleep_after_eof)
            await send_all()
        stage[0] = "close"
        await stream.aclose()
        # The reader reads on to the call's status (never cancelled: that cancels the call).
        done, _ = await asyncio.wait([reading], timeout=30)
        if not done:
            status = "no status within 30 s"
        elif failure:
            cause = failure[0].__cause__
            status = cause.code().name if isinstance(cause, grpc.aio.AioRpcError) else repr(failure[0])
        else:
            status = (await call.code()).name
    except (BrokenResourceError, grpc.aio.AioRpcError, asyncio.InvalidStateError, RuntimeError) as e:
        cause = e if isinstance(e, grpc.aio.AioRpcError) else e.__cause__
        code = details = None
        if isinstance(cause, grpc.aio.AioRpcError):
            code, details = cause.code().name, cause.details()
        elif call is not None and call.done():
            code, details = (await call.code()).name, await call.details()
        at(
            "error",
            stage=stage[0],
            code=code,
            details=details,
            message=f"{type(e).__name__}: {e}",
            idle_for=round(time.monotonic() - last[0], 3),
            sent=sent,
            received=received,
        )
        if channel is not None:
            await channel.close()
        raise SystemExit(1)
    await channel.close()
    at(
        "done",
        sent=sent,
        sent_sha256=sent_hash.hexdigest(),
        received=received,
        received_sha256=recv_hash.hexdigest(),
        empty=empty,
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
    channel = await channel_for(args)
    stub = router_pb2_grpc.RouterServiceStub(channel)
    call = stub.Stream(metadata=(("authorization", f"Bearer {token_arg(args)}"),))
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


# ===== bad-tokens =====


def bad_token_cases(key):
    """(name, metadata) for every kind of refused call: bad tokens and bad headers."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    sub = "bad-token-stream"

    def bearer(token):
        return (("authorization", f"Bearer {token}"),)

    return [
        ("wrong key", bearer(mint("not-the-router-key", sub))),
        ("alg none", bearer(jwt.encode(controller_claims(sub), None, algorithm="none"))),
        ("RS256", bearer(mint(rsa_key, sub, algorithm="RS256"))),
        ("ES256", bearer(mint(ec_key, sub, algorithm="ES256"))),
        ("wrong iss", bearer(mint(key, sub, iss="https://evil.example/stream"))),
        ("aud array without ours", bearer(mint(key, sub, aud=["https://jumpstarter.dev/controller"]))),
        ("wrong aud string", bearer(mint(key, sub, aud="https://jumpstarter.dev/controller"))),
        ("expired", bearer(mint(key, sub, exp=now - 5))),
        ("nbf in the future", bearer(mint(key, sub, nbf=now + 300))),
        ("iat in the future", bearer(mint(key, sub, iat=now + 300))),
        ("empty subject", bearer(mint(key, ""))),
        ("malformed", bearer("not.a.jwt")),
        ("missing header", ()),
        ("duplicated header", bearer(mint(key, sub)) + bearer(mint(key, sub))),
        ("not bearer", (("authorization", f"Basic {mint(key, sub)}"),)),
    ]


async def refused_status(stub, metadata):
    """Opens a call, writes its first message, then reads: returns (code, details)."""
    call = stub.Stream(metadata=metadata)
    try:
        await call.write(router_pb2.StreamRequest(frame_type=router_pb2.FRAME_TYPE_DATA, payload=b"hello"))
        while await call.read() != grpc.aio.EOF:
            pass
        return (await call.code()).name, await call.details()
    except grpc.aio.AioRpcError as e:
        return e.code().name, e.details()


async def bad_tokens(args):
    channel = await channel_for(args)
    stub = router_pb2_grpc.RouterServiceStub(channel)
    for name, metadata in bad_token_cases(args.key):
        counts = {}
        for _ in range(args.rounds):
            code, details = await asyncio.wait_for(refused_status(stub, metadata), 30)
            k = f"{code}: {details}"
            counts[k] = counts.get(k, 0) + 1
        emit("case", name=name, counts=counts)
    emit("end")
    await channel.close()


async def compressed(args):
    """A call with gzip compression on (grpc-encoding: gzip), a valid token: the status."""
    channel = grpc.aio.insecure_channel(endpoint_target(args.endpoint), compression=grpc.Compression.Gzip)
    stub = router_pb2_grpc.RouterServiceStub(channel)
    metadata = (("authorization", f"Bearer {mint(args.key, args.stream)}"),)
    code, details = await asyncio.wait_for(refused_status(stub, metadata), 30)
    emit("status", code=code, details=details)
    await channel.close()


# ===== token, certs =====


async def token(args):
    emit("token", token=mint(args.key, args.stream))


async def certs(args):
    """A CA, and a server certificate for localhost / 127.0.0.1 / ::1 that it signs. RSA keys
    are written as PKCS#1 and ECDSA keys as SEC1 ("traditional OpenSSL" PEM, what openssl and
    cert-manager write), the CA as a plain certificate."""
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    def new_key():
        if args.key_type == "rsa":
            return rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return ec.generate_private_key(ec.SECP256R1())

    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1)
    ca_key = new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "interop test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = new_key()
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    os.makedirs(args.dir, exist_ok=True)
    files = {
        "ca.pem": ca.public_bytes(pem),
        "cert.pem": cert.public_bytes(pem),
        "key.pem": key.private_bytes(
            pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ),
    }
    for name, data in files.items():
        with open(os.path.join(args.dir, name), "wb") as f:
            f.write(data)
    emit("certs", dir=args.dir, key_type=args.key_type, key_pem_header=files["key.pem"].splitlines()[0].decode())


async def self_signed(args):
    """A self-signed ECDSA certificate for `--name` and its key, in one PEM file (the form
    HAProxy's `crt` takes): e.g. a router's default certificate (`*.apps.example.invalid`),
    which must not name the host the tests dial."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, args.name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(args.name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    with open(args.out, "wb") as f:
        f.write(cert.public_bytes(pem))
        f.write(key.private_bytes(pem, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
    emit("self-signed", out=args.out, name=args.name)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def tls_args(p):
        p.add_argument("--tls-ca", help="TLS, trusting this CA (Jumpstarter's tls.ca)")
        p.add_argument("--tls-insecure", action="store_true", help="TLS, Jumpstarter's tls.insecure")

    def call_args(p):
        p.add_argument("--endpoint", required=True)
        p.add_argument("--token")
        p.add_argument("--key", help="mint the token here (PyJWT), with --stream as its subject")
        p.add_argument("--stream")
        tls_args(p)

    p = sub.add_parser("peer")
    call_args(p)
    p.add_argument("--send", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--order", choices=["send-first", "recv-first"], required=True)
    p.add_argument("--chunk", type=int, default=64 * 1024)
    p.add_argument("--hold-after-send", action="store_true")

    i = sub.add_parser("idle-peer")
    call_args(i)
    i.add_argument("--send", type=int, required=True)
    i.add_argument("--seed", type=int, required=True)
    i.add_argument("--order", choices=["send-first", "recv-first"], required=True)
    i.add_argument("--chunk", type=int, default=64 * 1024)
    i.add_argument("--handshake", action="store_true", help="hello both ways first (paired)")
    i.add_argument("--sleep-before-connect", type=float, default=0)
    i.add_argument("--sleep-after-pairing", type=float, default=0)
    i.add_argument("--sleep-after-eof", type=float, default=0, help="recv-first: before sending")
    i.add_argument("--hold-after-send", action="store_true", help="no EOF: wait to be killed")

    q = sub.add_parser("bench-peer")
    call_args(q)
    q.add_argument("--role", choices=["send", "recv", "ping", "echo"], required=True)
    q.add_argument("--send", type=int, default=0)
    q.add_argument("--chunk", type=int, default=1024)
    q.add_argument("--count", type=int, default=1000)

    r = sub.add_parser("router")
    r.add_argument("--listen", default="127.0.0.1:0")

    c = sub.add_parser("raw-client")
    call_args(c)
    c.add_argument("--frames", required=True)

    b = sub.add_parser("bad-tokens")
    b.add_argument("--endpoint", required=True)
    b.add_argument("--key", required=True, help="the router's key (bad tokens are made from it)")
    tls_args(b)
    b.add_argument("--rounds", type=int, default=20)

    z = sub.add_parser("compressed")
    z.add_argument("--endpoint", required=True)
    z.add_argument("--key", required=True)
    z.add_argument("--stream", required=True)

    t = sub.add_parser("token")
    t.add_argument("--key", required=True)
    t.add_argument("--stream", required=True)

    k = sub.add_parser("certs")
    k.add_argument("--dir", required=True)
    k.add_argument("--key-type", choices=["rsa", "ecdsa"], required=True)

    o = sub.add_parser("self-signed")
    o.add_argument("--name", required=True)
    o.add_argument("--out", required=True)

    args = parser.parse_args()
    run = {
        "peer": peer,
        "idle-peer": idle_peer,
        "bench-peer": bench_peer,
        "router": router,
        "raw-client": raw_client,
        "bad-tokens": bad_tokens,
        "compressed": compressed,
        "token": token,
        "certs": certs,
        "self-signed": self_signed,
    }[args.cmd]
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    except Exception as e:  # reported to the Rust test, which fails with it
        # RouterStream raises anyio's errors with the gRPC error as their cause.
        cause = e.__cause__ or e.__context__
        emit("error", message=f"{type(e).__name__}: {e}", cause=repr(cause) if cause else None)
        sys.exit(1)


if __name__ == "__main__":
    main()

"""A real Jumpstarter 0.9.0 session through a router: exporter, drivers, lease client.

Uses only unmodified code from PyPI: jumpstarter 0.9.0 (`ExporterConfigV1Alpha1` /
`Exporter`, `ClientConfigV1Alpha1` / `Lease` / `lease.connect()`), its drivers `MockPower`
(jumpstarter-driver-power) and `TcpNetwork` (jumpstarter-driver-network) under the composite
root (jumpstarter-driver-composite), and the stubs of jumpstarter-protocol. What Jumpstarter's
Kubernetes controller does is played by a small stand-in here (`controller`). Driven by
tests/interop_session.rs; every line on stdout is one JSON object with an "event" key.

TLS: Jumpstarter 0.9.0 always speaks TLS to the controller and to the router
(`jumpstarter.common.streams.connect_router_stream`). Both configs get the test CA as
`tls.ca` (base64 of the PEM), which `jumpstarter.common.grpc.ssl_channel_credentials` hands to
`grpc.ssl_channel_credentials`; the stand-in controller serves the same certificate as the router
(`harness.py certs`: localhost, 127.0.0.1, ::1).

Router tokens are minted here with PyJWT in the controller's form (harness.py `mint`): by
default one token string for both sides, as upstream; `--tokens distinct` gives each side its
own token with the same `sub`.

Subcommands:
  controller  the stand-in controller (TLS, ControllerService + ClientService) and a TCP echo
              server, both on 127.0.0.1; prints
              {"event":"listening","endpoint":"127.0.0.1:P","echo_port":E}, then one event per
              RPC it serves: register, status, listen, lease_created, lease_ready,
              dial_served (one per Dial: the exporter was told the stream), lease_deleted,
              lease_ended_offline, release, unregister.
  exporter    a real exporter (MockPower as "power", TcpNetwork to the echo server as "net"),
              as `jmp run` runs it: SIGTERM/SIGINT -> exporter.stop(should_unregister=True).
              Prints {"event":"exporter_started","pid":N}, every log record at INFO or above
              (and DEBUG of jumpstarter.streams / jumpstarter.exporter.exporter) as
              {"event":"log","level":..,"logger":..,"message":..}, and {"event":"exporter_exit"}.
  client      a real lease client; --case calls|transfer|reconnect|busy-calls|busy-stream|hold
              (see `client_*` below).
  pyrouter    harness.py's Python reference router (RouterStream + forward_stream) over TLS.
  lab         controller + exporter in one process, a lease and one Dial, for a client that
              speaks to the exporter by itself. Interface (stable):

    session.py lab --router HOST:PORT --router-key KEY --certs DIR [--tokens same|distinct]

      DIR holds ca.pem, cert.pem, key.pem (`harness.py certs --dir DIR`); the router at
      HOST:PORT serves cert.pem/key.pem (EXTERNAL_CERT_PEM / EXTERNAL_KEY_PEM) with ROUTER_KEY=KEY.
      Prints (besides other events and log lines, which a reader skips by "event") exactly one
        {"event":"dial","router_endpoint":"HOST:PORT","router_token":"<jwt>","ca":"DIR/ca.pem",
         "lease":"<name>","stream":"<sub>"}
      once the exporter is LEASE_READY and listening. The exporter has been told the same stream
      (its own token with --tokens distinct) and bridges it to its session: open
      jumpstarter.v1.RouterService/Stream on HOST:PORT with `authorization: Bearer <router_token>`
      over TLS trusting "ca", and speak plaintext HTTP/2 gRPC inside it
      (jumpstarter.v1.ExporterService/GetReport, DriverCall, ...). Each line "dial" written to
      its stdin makes one more Dial and prints one more "dial" event (one stream each). It runs
      until stdin closes (then the exporter stops and unregisters, and it exits 0) or until it
      is killed.
"""

import argparse
import asyncio
import base64
import hashlib
import json
import logging
import os
import signal
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import grpc  # noqa: E402
from google.protobuf import empty_pb2  # noqa: E402
from harness import emit, mint  # noqa: E402  (the controller's token form, one JSON line per event)
from jumpstarter.common import ExporterStatus  # noqa: E402
from jumpstarter_protocol import (  # noqa: E402
    client_pb2,
    client_pb2_grpc,
    jumpstarter_pb2,
    jumpstarter_pb2_grpc,
    kubernetes_pb2,
)

NS = "default"
EXPORTER = "exporter"
CLIENT = "client"
MIB = 1024 * 1024


def now():
    """CLOCK_MONOTONIC in seconds (the same clock as Rust's Instant on Linux)."""
    return time.monotonic()


def meta(context, key):
    for k, v in context.invocation_metadata():
        if k == key:
            return v
    return None


def read_ca(path):
    with open(path, "rb") as f:
        return base64.b64encode(f.read()).decode()


# ===== the stand-in controller =====


@dataclass
class LeaseState:
    name: str
    exporter: str
    client: str
    selector: str
    duration: timedelta
    begin: datetime
    end: datetime | None = None
    listeners: list = field(default_factory=list)
    exporter_ready: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    dials: int = 0
    last_stream: str = ""

    def ready(self):
        return self.end is None and self.exporter_ready and bool(self.listeners)

    def touch(self):
        self.changed.set()
        self.changed = asyncio.Event()

    async def wait_ready(self, secs):
        deadline = now() + secs
        while not self.ready() and self.end is None:
            left = deadline - now()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                return False
        return self.ready()


@dataclass
class ExporterState:
    name: str
    labels: dict = field(default_factory=dict)
    status: str = "OFFLINE"
    online: bool = False
    lease: str | None = None
    watchers: list = field(default_factory=list)

    def status_response(self, lease: "LeaseState | None"):
        if lease is None or lease.end is not None:
            return jumpstarter_pb2.StatusResponse(leased=False)
        return jumpstarter_pb2.StatusResponse(leased=True, lease_name=lease.name, client_name=lease.client)


class Controller:
    """What Jumpstarter's controller does for one exporter: leases, Listen/Dial, tokens."""

    def __init__(self, router_endpoint, router_key, tokens):
        self.router_endpoint = router_endpoint
        self.router_key = router_key
        self.tokens = tokens
        self.exporters: dict[str, ExporterState] = {}
        self.leases: dict[str, LeaseState] = {}
        self.exporter_changed = asyncio.Event()

    def exporter(self, name):
        if name not in self.exporters:
            self.exporters[name] = ExporterState(name=name)
        return self.exporters[name]

    def push_status(self, exp):
        lease = self.leases.get(exp.lease) if exp.lease else None
        msg = exp.status_response(lease)
        for q in exp.watchers:
            q.put_nowait(msg)

    def lease_pb(self, lease: LeaseState):
        pb = client_pb2.Lease(
            name=f"namespaces/{NS}/leases/{lease.name}",
            selector=lease.selector,
            client=f"namespaces/{NS}/clients/{lease.client}",
            exporter=f"namespaces/{NS}/exporters/{lease.exporter}",
        )
        pb.duration.FromTimedelta(lease.duration)
        pb.effective_begin_time.FromDatetime(lease.begin)
        if lease.end is not None:
            pb.effective_end_time.FromDatetime(lease.end)
            pb.conditions.append(kubernetes_pb2.Condition(type="Ready", status="False", reason="Released"))
        elif lease.ready():
            pb.conditions.append(kubernetes_pb2.Condition(type="Ready", status="True", reason="Ready"))
        else:
            pb.conditions.append(kubernetes_pb2.Condition(type="Pending", status="True", reason="Pending"))
        return pb

    def create_lease(self, client, selector, duration, lease_id=""):
        exp = next((e for e in self.exporters.values() if e.online and e.lease is None), None)
        if exp is None:
            return None
        name = lease_id or str(uuid.uuid4())
        lease = LeaseState(
            name=name,
            exporter=exp.name,
            client=client,
            selector=selector,
            duration=duration,
            begin=datetime.now(timezone.utc),
        )
        self.leases[name] = lease
        exp.lease = name
        self.push_status(exp)
        emit("lease_created", lease=name, exporter=exp.name, client=client)
        return lease

    def end_lease(self, lease: LeaseState, why):
        if lease.end is not None:
            return
        lease.end = datetime.now(timezone.utc)
        lease.touch()
        exp = self.exporters.get(lease.exporter)
        if exp is not None and exp.lease == lease.name:
            exp.lease = None
            self.push_status(exp)
        emit(why, lease=lease.name)

    async def dial(self, lease_name):
        """Mints the stream's token(s), tells the exporter (Listen), returns the client's answer."""
        lease = self.leases.get(lease_name)
        if lease is None or lease.end is not None:
            return None
        if not await lease.wait_ready(20):
            return None
        stream = str(uuid.uuid4())
        client_token = mint(self.router_key, stream)
        exporter_token = client_token if self.tokens == "same" else mint(self.router_key, stream)
        lease.listeners[-1].put_nowait(
            jumpstarter_pb2.ListenResponse(router_endpoint=self.router_endpoint, router_token=exporter_token)
        )
        lease.dials += 1
        lease.last_stream = stream
        emit("dial_served", lease=lease_name, stream=stream, n=lease.dials)
        return stream, client_token


class ControllerService(jumpstarter_pb2_grpc.ControllerServiceServicer):
    def __init__(self, c: Controller):
        self.c = c

    async def Register(self, request, context):
        exp = self.c.exporter(meta(context, "jumpstarter-name") or EXPORTER)
        exp.labels = dict(request.labels)
        exp.online = True
        # A new exporter process under the same name (the last one was killed): its old
        # lease ends, as the real controller ends a lease whose exporter went offline.
        if exp.lease is not None and exp.lease in self.c.leases:
            self.c.end_lease(self.c.leases[exp.lease], "lease_ended_offline")
        self.c.exporter_changed.set()
        emit("register", exporter=exp.name, drivers=len(request.reports))
        return jumpstarter_pb2.RegisterResponse(uuid=str(uuid.uuid4()))

    async def Unregister(self, request, context):
        exp = self.c.exporter(meta(context, "jumpstarter-name") or EXPORTER)
        exp.online = False
        emit("unregister", exporter=exp.name, reason=request.reason)
        return jumpstarter_pb2.UnregisterResponse()

    async def ReportStatus(self, request, context):
        exp = self.c.exporter(meta(context, "jumpstarter-name") or EXPORTER)
        exp.status = ExporterStatus.from_proto(request.status).name
        emit("status", exporter=exp.name, status=exp.status, message=request.message)
        lease = self.c.leases.get(exp.lease) if exp.lease else None
        if lease is not None:
            lease.exporter_ready = exp.status == "LEASE_READY"
            lease.touch()
        if request.release_lease and lease is not None:
            self.c.end_lease(lease, "release")
        return jumpstarter_pb2.ReportStatusResponse()

    async def Status(self, request, context):
        exp = self.c.exporter(meta(context, "jumpstarter-name") or EXPORTER)
        q = asyncio.Queue()
        exp.watchers.append(q)
        try:
            lease = self.c.leases.get(exp.lease) if exp.lease else None
            yield exp.status_response(lease)
            while True:
                yield await q.get()
        finally:
            exp.watchers.remove(q)

    async def Listen(self, request, context):
        lease = self.c.leases.get(request.lease_name)
        if lease is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such lease")
        q = asyncio.Queue()
        lease.listeners.append(q)
        lease.touch()
        emit("listen", lease=lease.name)
        try:
            while True:
                yield await q.get()
        finally:
            lease.listeners.remove(q)
            lease.touch()

    async def Dial(self, request, context):
        got = await self.c.dial(request.lease_name)
        if got is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "exporter not ready")
        stream, token = got
        return jumpstarter_pb2.DialResponse(router_endpoint=self.c.router_endpoint, router_token=token)

    async def ReleaseLease(self, request, context):
        lease = self.c.leases.get(request.name)
        if lease is not None:
            self.c.end_lease(lease, "release")
        return jumpstarter_pb2.ReleaseLeaseResponse()

    async def AuditStream(self, request_iterator, context):
        async for _ in request_iterator:
            pass
        return empty_pb2.Empty()


def lease_name_of(name):
    return name.rsplit("/", 1)[-1]


class ClientService(client_pb2_grpc.ClientServiceServicer):
    def __init__(self, c: Controller):
        self.c = c

    def exporter_pb(self, exp: ExporterState):
        return client_pb2.Exporter(
            name=f"namespaces/{NS}/exporters/{exp.name}",
            labels=exp.labels,
            online=exp.online,
            status=ExporterStatus[exp.status].to_proto(),
        )

    async def GetExporter(self, request, context):
        exp = self.c.exporters.get(lease_name_of(request.name))
        if exp is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such exporter")
        return self.exporter_pb(exp)

    async def ListExporters(self, request, context):
        return client_pb2.ListExportersResponse(exporters=[self.exporter_pb(e) for e in self.c.exporters.values()])

    async def CreateLease(self, request, context):
        client = meta(context, "jumpstarter-name") or CLIENT
        # The exporter may still be registering: wait for it, as a lease would stay Pending.
        deadline = now() + 20
        while True:
            lease = self.c.create_lease(
                client, request.lease.selector, request.lease.duration.ToTimedelta(), request.lease_id
            )
            if lease is not None or now() > deadline:
                break
            self.c.exporter_changed.clear()
            try:
                await asyncio.wait_for(self.c.exporter_changed.wait(), max(0.0, deadline - now()))
            except asyncio.TimeoutError:
                pass
        if lease is None:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "no exporter available")
        return self.c.lease_pb(lease)

    async def GetLease(self, request, context):
        lease = self.c.leases.get(lease_name_of(request.name))
        if lease is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such lease")
        # The real controller answers at once and the client polls every 5 s; answering once the
        # exporter is ready keeps the suite fast without changing what the client sees.
        if await lease.wait_ready(20) and not getattr(lease, "announced", False):
            lease.announced = True
            emit("lease_ready", lease=lease.name)
        return self.c.lease_pb(lease)

    async def ListLeases(self, request, context):
        return client_pb2.ListLeasesResponse(leases=[self.c.lease_pb(x) for x in self.c.leases.values()])

    async def DeleteLease(self, request, context):
        lease = self.c.leases.get(lease_name_of(request.name))
        if lease is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such lease")
        self.c.end_lease(lease, "lease_deleted")
        return empty_pb2.Empty()


async def echo_handler(reader, writer):
    try:
        while True:
            data = await reader.read(256 * 1024)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def start_controller(args):
    """The controller (TLS, cert.pem/key.pem of --certs) and the echo server; returns
    (controller, server, controller endpoint, echo port)."""
    c = Controller(args.router, args.router_key, args.tokens)
    server = grpc.aio.server()
    jumpstarter_pb2_grpc.add_ControllerServiceServicer_to_server(ControllerService(c), server)
    client_pb2_grpc.add_ClientServiceServicer_to_server(ClientService(c), server)
    with open(os.path.join(args.certs, "key.pem"), "rb") as k, open(os.path.join(args.certs, "cert.pem"), "rb") as f:
        creds = grpc.ssl_server_credentials([(k.read(), f.read())])
    port = server.add_secure_port(getattr(args, "listen", "127.0.0.1:0"), creds)
    await server.start()
    echo = await asyncio.start_server(echo_handler, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    return c, server, echo, f"127.0.0.1:{port}", echo_port


async def controller_main(args):
    c, server, echo, endpoint, echo_port = await start_controller(args)
    emit("listening", endpoint=endpoint, echo_port=echo_port)
    await server.wait_for_termination()


# ===== the exporter =====


class JsonLogHandler(logging.Handler):
    """Every log record as one JSON line (the suite counts the exporter's WARNING lines)."""

    def emit(self, record):
        if record.name.startswith("driver.") and record.levelno < logging.WARNING:
            return  # one "power on" per driver call: noise
        try:
            message = record.getMessage()
        except Exception as e:  # noqa: BLE001
            message = f"<unformattable: {e}>"
        emit("log", level=record.levelname, logger=record.name, message=message, t=now())


def setup_logging():
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.addHandler(JsonLogHandler())
    for name in ("jumpstarter.streams", "jumpstarter.exporter.exporter", "jumpstarter.client.lease"):
        logging.getLogger(name).setLevel(logging.DEBUG)


def exporter_config(controller, ca, echo_port):
    from jumpstarter.config.common import ObjectMeta
    from jumpstarter.config.exporter import ExporterConfigV1Alpha1
    from jumpstarter.config.tls import TLSConfigV1Alpha1

    return ExporterConfigV1Alpha1.model_validate(
        {
            "metadata": ObjectMeta(namespace=NS, name=EXPORTER),
            "endpoint": controller,
            "token": "exporter-token",
            "tls": TLSConfigV1Alpha1(ca=read_ca(ca)),
            "export": {
                "power": {"type": "jumpstarter_driver_power.driver.MockPower"},
                "net": {
                    "type": "jumpstarter_driver_network.driver.TcpNetwork",
                    "config": {"host": "127.0.0.1", "port": echo_port},
                },
            },
        }
    )


async def run_exporter(config, stop_on=None):
    """As `jmp run` does: serve until SIGTERM/SIGINT (or `stop_on` is set), then
    stop(should_unregister=True)."""
    from anyio import create_task_group, open_signal_receiver

    async with config.create_exporter() as exporter:
        async with create_task_group() as tg:

            async def on_signal():
                with open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for sig in signals:
                        emit("exporter_signal", signal=signal.Signals(sig).name)
                        exporter.stop(should_unregister=True)
                        return

            async def on_event():
                await stop_on.wait()
                exporter.stop(should_unregister=True)

            tg.start_soon(on_signal)
            if stop_on is not None:
                tg.start_soon(on_event)
            await exporter.serve()
            tg.cancel_scope.cancel()


async def exporter_main(args):
    setup_logging()
    emit("exporter_started", pid=os.getpid())
    await run_exporter(exporter_config(args.controller, args.ca, args.echo_port))
    emit("exporter_exit", code=0)


# ===== the client (a user's script) =====


def client_config(controller, ca):
    from jumpstarter.config.client import ClientConfigV1Alpha1, ClientConfigV1Alpha1Drivers
    from jumpstarter.config.common import ObjectMeta
    from jumpstarter.config.tls import TLSConfigV1Alpha1

    return ClientConfigV1Alpha1(
        metadata=ObjectMeta(namespace=NS, name=CLIENT),
        endpoint=controller,
        token="client-token",
        tls=TLSConfigV1Alpha1(ca=read_ca(ca)),
        # A user's config allows the driver clients it trusts (`drivers.allow`).
        drivers=ClientConfigV1Alpha1Drivers(allow=["jumpstarter_driver_*"]),
    )


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))]


def ms(x):
    return round(x * 1000, 3)


def driver_calls(client, n):
    """n rounds of MockPower on, off and read (a streaming call): per-call latency."""
    lat = {"on": [], "off": [], "read": []}
    for _ in range(n):
        t = now()
        client.power.on()
        lat["on"].append(now() - t)
        t = now()
        client.power.off()
        lat["off"].append(now() - t)
        t = now()
        readings = list(client.power.read())
        lat["read"].append(now() - t)
        assert len(readings) == 2, readings
    return {
        op: {"n": len(v), "p50_ms": ms(percentile(v, 50)), "p99_ms": ms(percentile(v, 99)), "max_ms": ms(max(v))}
        for op, v in lat.items()
    }


def echo_transfer(client, size, chunk=64 * 1024, on_progress=None, fail_fast=False):
    """`size` bytes through TcpNetwork to the echo server and back; SHA-256 of both ways. With
    `fail_fast`, a failed send is reported and ends the process at once (as raise_reported)."""
    sent_hash, recv_hash = hashlib.sha256(), hashlib.sha256()
    received = 0
    failure = []
    with client.net.stream() as conn:

        def send():
            try:
                at = 0
                while at < size:
                    n = min(chunk, size - at)
                    block = os.urandom(n)
                    sent_hash.update(block)
                    conn.send(block)
                    at += n
            except BaseException as e:  # noqa: BLE001
                if fail_fast:
                    report_error(e)
                    sys.stdout.flush()
                    os._exit(3)
                failure.append(e)

        sender = threading.Thread(target=send, daemon=True)
        t = now()
        sender.start()
        while received < size:
            data = conn.receive()
            recv_hash.update(data)
            received += len(data)
            if on_progress is not None:
                on_progress(received)
        took = now() - t
        sender.join()
        if failure:
            raise failure[0]
    return {
        "bytes": received,
        "sent_sha256": sent_hash.hexdigest(),
        "received_sha256": recv_hash.hexdigest(),
        "secs": round(took, 3),
        "mib_per_s": round(size / MIB / took, 2),
    }


def report_error(e):
    """One "error" event for exception `e` (the first leaf of an exception group), at once."""
    leaf = e
    while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
        leaf = leaf.exceptions[0]
    emit(
        "error",
        type=type(leaf).__name__,
        message=str(leaf),
        cause=repr(leaf.__cause__) if leaf.__cause__ else None,
        outer=type(e).__name__,
        t=now(),
    )


def raise_reported(body):
    """Runs `body`; its exception is reported the moment it is raised and the process exits at
    once (leaving `lease.connect()` after a failure can itself hang: that is not what is timed)."""
    try:
        body()
    except BaseException as e:
        report_error(e)
        sys.stdout.flush()
        os._exit(3)


def client_main(args):
    setup_logging()
    config = client_config(args.controller, args.ca)
    emit("client_started", pid=os.getpid())
    try:
        with config.lease(selector=None if args.lease else "", lease_name=args.lease) as lease:
            emit("leased", lease=lease.name)
            CASES[args.case](lease, args)
        emit("released", lease=lease.name)
    except BaseException as e:
        report_error(e)
        sys.stdout.flush()
        os._exit(3)


def client_calls(lease, args):
    """a. driver calls: on/off/read, --calls rounds; p50/p99 per call. With --pause, the
    session then stays quiet that many seconds, and a last round of calls must still work."""
    with lease.connect() as client:
        emit("connected", n=1)
        emit("latency", **driver_calls(client, args.calls))
        if args.pause > 0:
            time.sleep(args.pause)
            client.power.on()
            assert len(list(client.power.read())) == 2
            emit("after_pause", seconds=args.pause)


def client_transfer(lease, args):
    """b. --size bytes echoed through TcpNetwork, SHA-256 both ways."""
    with lease.connect() as client:
        emit("connected", n=1)
        emit("transfer", **echo_transfer(client, args.size))


def client_reconnect(lease, args):
    """c. --connects times lease.connect() in one lease, a call each. With --paced, waits for a
    line on stdin before each connect (so the test can look at the exporter in between)."""
    for i in range(1, args.connects + 1):
        if args.paced:
            emit("ready_to_connect", n=i)
            if not sys.stdin.readline():
                return
        with lease.connect() as client:
            client.power.on()
            assert len(list(client.power.read())) == 2
            emit("connected", n=i)
        emit("disconnected", n=i)


def client_busy_calls(lease, args):
    """e. driver calls back to back until one fails; "busy" after the first 20 rounds."""
    with lease.connect() as client:
        emit("connected", n=1)

        def calls():
            i = 0
            while True:
                client.power.on()
                list(client.power.read())
                i += 1
                if i == 20:
                    emit("busy", calls=i)

        raise_reported(calls)


def client_busy_stream(lease, args):
    """e. echo through TcpNetwork until it fails; "busy" once 4 MiB came back."""
    with lease.connect() as client:
        emit("connected", n=1)
        said = False

        def progress(n):
            nonlocal said
            if not said and n >= 4 * MIB:
                said = True
                emit("busy", bytes=n)

        raise_reported(lambda: echo_transfer(client, 1 << 40, on_progress=progress, fail_fast=True))


def client_hold(lease, args):
    """f. one call, then hold the session open until killed."""
    with lease.connect() as client:
        client.power.on()
        emit("connected", n=1)
        threading.Event().wait()


CASES = {
    "calls": client_calls,
    "transfer": client_transfer,
    "reconnect": client_reconnect,
    "busy-calls": client_busy_calls,
    "busy-stream": client_busy_stream,
    "hold": client_hold,
}


# ===== lab =====


async def lab_main(args):
    from jumpstarter.config.grpc import call_credentials  # noqa: F401  (what the client config uses)

    setup_logging()
    c, server, echo, endpoint, echo_port = await start_controller(args)
    emit("listening", endpoint=endpoint, echo_port=echo_port)
    ca = os.path.abspath(os.path.join(args.certs, "ca.pem"))
    stop = asyncio.Event()
    exporter = asyncio.create_task(run_exporter(exporter_config(endpoint, ca, echo_port), stop_on=stop))

    # The user's side of a lease, through the controller's API with the client config's channel.
    from jumpstarter.client.grpc import ClientService as Svc

    config = client_config(endpoint, ca)
    channel = await config.channel()
    svc = Svc(channel=channel, namespace=NS)
    lease = await svc.CreateLease(selector="", duration=timedelta(minutes=30))
    got = await svc.GetLease(name=lease.name)
    controller = jumpstarter_pb2_grpc.ControllerServiceStub(channel)

    async def dial():
        response = await controller.Dial(jumpstarter_pb2.DialRequest(lease_name=lease.name))
        emit(
            "dial",
            router_endpoint=response.router_endpoint,
            router_token=response.router_token,
            ca=ca,
            lease=lease.name,
            stream=c.leases[lease.name].last_stream,
        )

    await dial()
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        if line.strip() == "dial":
            await dial()
    await svc.DeleteLease(name=lease.name)
    await channel.close()
    stop.set()
    await exporter
    await server.stop(None)
    echo.close()
    emit("lab_exit", code=0)


# ===== the Python reference router, over TLS =====


async def pyrouter_main(args):
    """harness.py's `PythonRouter` (RouterStream + forward_stream, pairing by token subject;
    tokens not verified) served over TLS with cert.pem/key.pem of --certs, since Jumpstarter
    0.9.0 only speaks TLS to a router. Prints {"event":"listening","port":P}."""
    from harness import PythonRouter
    from jumpstarter_protocol import router_pb2_grpc

    server = grpc.aio.server()
    router_pb2_grpc.add_RouterServiceServicer_to_server(PythonRouter(), server)
    with open(os.path.join(args.certs, "key.pem"), "rb") as k, open(os.path.join(args.certs, "cert.pem"), "rb") as f:
        creds = grpc.ssl_server_credentials([(k.read(), f.read())])
    port = server.add_secure_port(args.listen, creds)
    await server.start()
    emit("listening", port=port)
    await server.wait_for_termination()


# ===== main =====


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)

    def controller_args(p):
        p.add_argument("--router", required=True, help="the router endpoint handed out, HOST:PORT")
        p.add_argument("--router-key", required=True)
        p.add_argument("--certs", required=True, help="folder with ca.pem, cert.pem, key.pem")
        p.add_argument("--tokens", choices=["same", "distinct"], default="same")

    p = sub.add_parser("controller")
    controller_args(p)
    p.add_argument("--listen", default="127.0.0.1:0")

    e = sub.add_parser("exporter")
    e.add_argument("--controller", required=True)
    e.add_argument("--ca", required=True)
    e.add_argument("--echo-port", type=int, required=True)

    c = sub.add_parser("client")
    c.add_argument("--controller", required=True)
    c.add_argument("--ca", required=True)
    c.add_argument("--case", choices=sorted(CASES), required=True)
    c.add_argument("--lease", help="use this existing lease (not released at exit)")
    c.add_argument("--calls", type=int, default=100)
    c.add_argument("--size", type=int, default=16 * MIB)
    c.add_argument("--connects", type=int, default=5)
    c.add_argument("--paced", action="store_true")
    c.add_argument("--pause", type=float, default=0.0)

    lab = sub.add_parser("lab")
    controller_args(lab)

    r = sub.add_parser("pyrouter")
    r.add_argument("--certs", required=True)
    r.add_argument("--listen", default="127.0.0.1:0")

    args = parser.parse_args()
    if args.cmd == "client":
        client_main(args)
        return
    run = {"controller": controller_main, "exporter": exporter_main, "lab": lab_main, "pyrouter": pyrouter_main}[
        args.cmd
    ]
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass
    except Exception as e:  # reported to the Rust test, which fails with it
        emit("error", type=type(e).__name__, message=f"{type(e).__name__}: {e}")
        sys.exit(1)


if __name__ == "__main__":
    main()

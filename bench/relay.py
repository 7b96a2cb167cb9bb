"""Relay benchmark: one relay process, pre-sealed envelopes with a 1 KiB body, many senders to
many receivers on loopback, measured against the goals of the relay issue in one run.

Usage: python bench/relay.py [--quick] [--backend sqlite|nats|both] [--seconds S]
                             [--connections N] [--pairs P] [--procs G] [--inflight W]
                             [--rates 1000,5000] [--profile | --profile-gil]
                             [--phases throughput,latency,memory,echo] [--relay-env K=V]

Figures, per backend (``nats``: two relay nodes sharing the local NATS JetStream, senders on
node A, receivers on node B; ``sqlite``: one node):

1. throughput: envelopes per second that were accepted (the sender's ``send`` returned, i.e.
   the envelope is durable) AND delivered to a receiver that acknowledges them, counted at the
   receivers over ``--seconds`` after a warm-up. Senders run closed-loop with ``--inflight``
   sends in flight per connection. Goal: >= 15,000/s on one relay process.
2. latency: open-loop pacing at each of ``--rates`` (a send is started at its scheduled time
   whatever the answers); end-to-end latency = delivery at the receiver minus the send call,
   senders and receivers in the same generator process (one clock). Also printed: latency from
   the *scheduled* time (exposes generator lag) and the achieved rate. Goal: p99 <= 10 ms at
   1,000/s.
3. memory: relay VmRSS before and after opening ``--connections`` authenticated idle device
   connections (opened in concurrent batches by a separate process), divided by their number.
   Goal: <= 50 KiB per connection.
4. ceiling: a minimal ``websockets`` echo server in its own process, the same generator
   processes, connections, window and message size; relay throughput / echo rate is printed.

Envelopes are sealed before any timing (one per sender and receiver pair) and reused: the relay
neither looks inside nor dedupes them, and receivers do not open them. The relay's per-source
limits would throttle a benchmark that comes from 127.0.0.1 only, so the relay processes run
with them raised through the environment (printed at the start). The relay's CPU time during
the throughput window is read from /proc (relay nodes, generators, nats-server, and the rest
of the machine, which other users may be loading), so the output says which side was saturated;
``--profile`` runs py-spy on every relay node during the throughput window (``--profile-gil``:
only samples of the thread holding the GIL, i.e. Python CPU time; py-spy must be installed in
the venv).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.relay.harness import LiveDevice, LiveOrg, RelayProcess, live_org  # noqa: E402

from sealwire.transport import RelayConnection, RequestRefused  # noqa: E402

GOAL_RATE = 15_000.0
GOAL_P99_MS = 10.0
GOAL_KIB_PER_CONN = 50.0
BODY = 1024
BENCH_ENV = {
    "SEALWIRE_RELAY_SOURCE_CONNECT_RATE": "100000",
    "SEALWIRE_RELAY_SOURCE_CONNECT_BURST": "100000",
    "SEALWIRE_RELAY_MAX_CONNECTIONS_PER_SOURCE": "100000",
    "SEALWIRE_RELAY_FRAME_RATE": "1000000",
    "SEALWIRE_RELAY_FRAME_BURST": "1000000",
    "SEALWIRE_RELAY_LOG_LEVEL": "warning",
}
TICK = os.sysconf("SC_CLK_TCK")


# --- processes we start ------------------------------------------------------------------


def proc_status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy() -> float:
    """CPU seconds every CPU of the machine spent busy (not idle, not waiting for I/O)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / TICK


def nats_server_pid() -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == "nats-server":
                    return int(entry.name)
    return None


def start_relay(data: Path, backend: str, nats_url: str, prefix: str) -> RelayProcess:
    args: list[str] = []
    if backend == "nats":
        args = ["--backend", "nats", "--nats-url", nats_url, "--nats-prefix", prefix]
    return RelayProcess(data, *args, env=BENCH_ENV).start(timeout=60)


class EchoProcess:
    """``python bench/relay.py --echo-server``: a minimal websockets echo server."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--echo-server"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("echo "):
            self.stop()
            raise RuntimeError(f"echo server did not start: {line!r}")
        self.url = line.split()[1]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


async def echo_server() -> None:
    from websockets.asyncio.server import serve

    async def echo(ws: Any) -> None:
        with contextlib.suppress(Exception):
            async for message in ws:
                await ws.send(message)

    async with serve(
        echo, "127.0.0.1", 0, compression=None, max_size=None, ping_interval=None
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"echo ws://127.0.0.1:{port}", flush=True)
        await server.serve_forever()


# --- generator processes: a tiny ready/go/done protocol over two queues ------------------


def _worker_main(name: str, spec: dict[str, Any], inbox: Any, outbox: Any) -> None:
    try:
        result = asyncio.run(WORKERS[name](spec, inbox, outbox))
        outbox.put(("done", result))
    except BaseException as exc:  # report, do not hang the parent
        import traceback

        outbox.put(("error", "".join(traceback.format_exception(exc))))


class Workers:
    """``count`` generator processes running ``name``; :meth:`step` waits for each to report
    a stage and returns their payloads; :meth:`tell` sends each a value."""

    def __init__(self, name: str, specs: list[dict[str, Any]]) -> None:
        ctx = mp.get_context("spawn")
        self.inboxes = [ctx.Queue() for _ in specs]
        self.outboxes = [ctx.Queue() for _ in specs]
        self.procs = [
            ctx.Process(target=_worker_main, args=(name, spec, i, o), daemon=True)
            for spec, i, o in zip(specs, self.inboxes, self.outboxes, strict=True)
        ]
        for p in self.procs:
            p.start()

    def step(self, stage: str, timeout: float = 300.0) -> list[Any]:
        out = []
        for box in self.outboxes:
            got, payload = box.get(timeout=timeout)
            if got == "error":
                self.kill()
                raise RuntimeError(f"generator failed:\n{payload}")
            assert got == stage, (got, stage)
            out.append(payload)
        return out

    def tell(self, value: Any) -> None:
        for box in self.inboxes:
            box.put(value)

    def join(self) -> None:
        for p in self.procs:
            p.join(timeout=30)
        self.kill()

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()


async def _ask(inbox: Any) -> Any:
    return await asyncio.to_thread(inbox.get)


class Load:
    """Senders and receivers of one generator process (one organisation)."""

    def __init__(self, org: LiveOrg, pairs: int) -> None:
        self.org = org
        self.senders = [org.device(i) for i in range(pairs)]
        self.receivers = [org.device(pairs + i) for i in range(pairs)]
        body = os.urandom(BODY)
        # pool[s][r]: an envelope from sender s to receiver r, sealed once, reused.
        self.pool = [[s.seal_to(r, body) for r in self.receivers] for s in self.senders]
        self.envelope_size = len(self.pool[0][0])
        self.send_conns: list[RelayConnection] = []
        self.recv_conns: list[RelayConnection] = []

    async def connect(self, send_url: str, recv_url: str) -> list[RelayConnection]:
        servers = [await self.org.connect_server(send_url)]
        if recv_url != send_url:
            servers.append(await self.org.connect_server(recv_url))
        self.recv_conns = list(await asyncio.gather(*(d.connect(recv_url) for d in self.receivers)))
        self.send_conns = list(await asyncio.gather(*(d.connect(send_url) for d in self.senders)))
        return servers

    async def close(self, extra: list[RelayConnection]) -> None:
        await asyncio.gather(*(c.close() for c in [*self.send_conns, *self.recv_conns, *extra]))


def _take(conn: RelayConnection, first: Any) -> list[Any]:
    got = [first]
    while not conn.deliveries.empty():
        got.append(conn.deliveries.get_nowait())
    conn.ack([d.delivery_id for d in got])
    return got


async def throughput_worker(spec: dict[str, Any], inbox: Any, outbox: Any) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    load = Load(live_org(), spec["pairs"])
    servers = await load.connect(spec["send_url"], spec["recv_url"])
    pairs, inflight = spec["pairs"], spec["inflight"]
    accepted = refused = delivered = 0
    window_start, window_end = 0.0, 0.0
    in_window = 0
    stop = False

    async def sender(s: int, k: int) -> None:
        nonlocal accepted, refused
        conn, row = load.send_conns[s], load.pool[s]
        i = s + k  # spread each sender's tasks over the receivers
        while not stop:
            i += 1
            try:
                await conn.send(row[i % pairs])
                accepted += 1
            except RequestRefused:
                refused += 1
                await asyncio.sleep(0.01)

    async def receiver(r: int) -> None:
        nonlocal delivered, in_window
        conn = load.recv_conns[r]
        while True:
            n = len(_take(conn, await conn.deliveries.get()))
            delivered += n
            now = loop.time()
            if window_start <= now < window_end:
                in_window += n

    receivers = [asyncio.create_task(receiver(r)) for r in range(pairs)]
    outbox.put(("ready", load.envelope_size))
    go = await _ask(inbox)  # monotonic start time shared by every generator process
    await asyncio.sleep(max(0.0, go - time.monotonic()))
    # loop.time() is time.monotonic() on Linux: the same clock in every process.
    window_start = go + spec["warmup"]
    window_end = window_start + spec["seconds"]
    senders = [asyncio.create_task(sender(s, k)) for s in range(pairs) for k in range(inflight)]
    await asyncio.sleep(max(0.0, window_start - loop.time()))
    cpu0 = os.times()
    await asyncio.sleep(max(0.0, window_end - loop.time()))
    cpu1 = os.times()
    stop = True
    await asyncio.gather(*senders)
    deadline = loop.time() + 30
    while delivered < accepted and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for t in receivers:
        t.cancel()
    await load.close(servers)
    return {
        "in_window": in_window,
        "accepted": accepted,
        "delivered": delivered,
        "refused": refused,
        "cpu": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
    }


async def echo_worker(spec: dict[str, Any], inbox: Any, outbox: Any) -> dict[str, Any]:
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    conns = [
        await connect(spec["url"], compression=None, max_size=None, ping_interval=None)
        for _ in range(spec["pairs"])
    ]
    message = os.urandom(spec["size"])
    echoed = in_window = 0
    window_start = window_end = 0.0
    stop = False

    async def pump(ws: Any) -> None:
        nonlocal echoed, in_window
        slots = asyncio.Semaphore(spec["inflight"])

        async def read() -> None:
            nonlocal echoed, in_window
            async for _ in ws:
                slots.release()
                echoed += 1
                now = loop.time()
                if window_start <= now < window_end:
                    in_window += 1

        reader = asyncio.create_task(read())
        sent = 0
        while not stop:
            await slots.acquire()
            await ws.send(message)
            sent += 1
        while echoed < sent and not reader.done():
            await asyncio.sleep(0.01)
        reader.cancel()

    outbox.put(("ready", None))
    go = await _ask(inbox)
    await asyncio.sleep(max(0.0, go - time.monotonic()))
    window_start = go + spec["warmup"]
    window_end = window_start + spec["seconds"]
    pumps = [asyncio.create_task(pump(ws)) for ws in conns]
    await asyncio.sleep(max(0.0, window_start - loop.time()))
    cpu0 = os.times()
    await asyncio.sleep(max(0.0, window_end - loop.time()))
    cpu1 = os.times()
    stop = True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*pumps), 10)
    for ws in conns:
        await ws.close()
    return {"in_window": in_window, "cpu": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)}


async def latency_worker(spec: dict[str, Any], inbox: Any, outbox: Any) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    load = Load(live_org(), spec["pairs"])
    servers = await load.connect(spec["send_url"], spec["recv_url"])
    pairs = spec["pairs"]
    # Envelope key (its last 32 bytes: part of the signature) -> (call time, scheduled time)
    # of its sends in flight, oldest first (an envelope may be in flight more than once).
    flight: dict[bytes, collections.deque[tuple[float, float]]] = collections.defaultdict(
        collections.deque
    )
    from_call: list[float] = []
    from_schedule: list[float] = []
    accepted = refused = 0
    last_delivery = 0.0

    async def receiver(r: int) -> None:
        nonlocal last_delivery
        conn = load.recv_conns[r]
        while True:
            got = _take(conn, await conn.deliveries.get())
            now = loop.time()
            last_delivery = now
            for d in got:
                times = flight.get(d.envelope[-32:])
                if times:
                    called, scheduled = times.popleft()
                    from_call.append(now - called)
                    from_schedule.append(now - scheduled)

    async def send(n: int, scheduled: float) -> None:
        nonlocal accepted, refused
        s = n % pairs
        envelope = load.pool[s][(n // pairs + s) % pairs]
        flight[envelope[-32:]].append((loop.time(), scheduled))
        try:
            await load.send_conns[s].send(envelope)
            accepted += 1
        except RequestRefused:
            refused += 1

    receivers = [asyncio.create_task(receiver(r)) for r in range(pairs)]
    results = []
    for rate in spec["rates"]:
        outbox.put(("ready", rate))
        await _ask(inbox)
        from_call.clear()
        from_schedule.clear()
        accepted = refused = 0
        total = int(rate * spec["seconds"])
        tasks: list[asyncio.Task[None]] = []
        start = loop.time() + 0.05
        n = 0
        while n < total:
            due = min(total, int((loop.time() - start) * rate) + 1)
            while n < due:
                tasks.append(asyncio.create_task(send(n, start + n / rate)))
                n += 1
            await asyncio.sleep(max(0.0, start + n / rate - loop.time()))
        await asyncio.gather(*tasks)
        sent_end = loop.time()
        deadline = loop.time() + 30
        while len(from_call) < accepted and loop.time() < deadline:
            await asyncio.sleep(0.01)
        results.append(
            {
                "rate": rate,
                "offered": total,
                "send_seconds": sent_end - start,
                "delivery_seconds": last_delivery - start,
                "accepted": accepted,
                "refused": refused,
                "delivered": len(from_call),
                "from_call": sorted(from_call),
                "from_schedule": sorted(from_schedule),
            }
        )
        flight.clear()
    for t in receivers:
        t.cancel()
    await load.close(servers)
    return {"results": results}


async def idle_worker(spec: dict[str, Any], inbox: Any, outbox: Any) -> dict[str, Any]:
    org = live_org()
    url = spec["url"]
    server = await org.connect_server(url)
    warm = [await org.device(i).connect(url) for i in range(10)]
    devices: list[LiveDevice] = [org.device(100 + i) for i in range(spec["connections"])]
    outbox.put(("base", None))
    await _ask(inbox)
    start = time.perf_counter()
    conns: list[RelayConnection] = []
    batch = spec["batch"]
    for i in range(0, len(devices), batch):
        conns += await asyncio.gather(*(d.connect(url) for d in devices[i : i + batch]))
    took = time.perf_counter() - start
    outbox.put(("open", {"seconds": took, "open": sum(not c.closed for c in conns)}))
    await _ask(inbox)
    for i in range(0, len(conns), 500):
        await asyncio.gather(*(c.close() for c in conns[i : i + 500]))
    await asyncio.gather(server.close(), *(c.close() for c in warm))
    return {}


WORKERS: dict[str, Callable[..., Any]] = {
    "throughput": throughput_worker,
    "echo": echo_worker,
    "latency": latency_worker,
    "idle": idle_worker,
}


# --- the measurements, run from the parent --------------------------------------------------


def run_throughput(
    args: argparse.Namespace, send_url: str, recv_url: str, relays: list[RelayProcess]
) -> dict[str, Any]:
    relay_pids = [r.proc.pid for r in relays if r.proc is not None]
    spec = {
        "send_url": send_url,
        "recv_url": recv_url,
        "pairs": args.pairs,
        "inflight": args.inflight,
        "seconds": args.seconds,
        "warmup": args.warmup,
    }
    workers = Workers("throughput", [spec] * args.procs)
    sizes = workers.step("ready")
    go = time.monotonic() + 0.5
    workers.tell(go)
    time.sleep(max(0.0, go + args.warmup - time.monotonic()))
    nats = nats_server_pid() if len(relays) > 1 else None
    cpu0 = [cpu_seconds(p) for p in relay_pids]
    nats0 = cpu_seconds(nats) if nats else 0.0
    busy0, wall0 = machine_busy(), time.monotonic()
    m0 = relay_means(relays)
    profiles = []
    if args.profile or args.profile_gil:
        profiles = [start_profile(p, args.seconds, gil=args.profile_gil) for p in relay_pids]
    time.sleep(args.seconds)
    cpu = [cpu_seconds(p) - c for p, c in zip(relay_pids, cpu0, strict=True)]
    nats_cpu = cpu_seconds(nats) - nats0 if nats else 0.0
    busy, wall = machine_busy() - busy0, time.monotonic() - wall0
    m1 = relay_means(relays)
    results = workers.step("done")
    workers.join()
    hot = [finish_profile(p) if p else None for p in profiles]
    gen_cpu = sum(r["cpu"] for r in results)
    others = busy - sum(cpu) - nats_cpu - gen_cpu
    in_window = sum(r["in_window"] for r in results)
    return {
        "rate": in_window / args.seconds,
        "accepted": sum(r["accepted"] for r in results),
        "delivered": sum(r["delivered"] for r in results),
        "refused": sum(r["refused"] for r in results),
        "relay_cpu": [c / wall for c in cpu],
        "per_envelope_us": 1e6 * sum(cpu) / wall / max(1.0, in_window / args.seconds),
        "gen_cpu": [r["cpu"] / args.seconds for r in results],
        "nats_cpu": nats_cpu / wall if nats else None,
        "machine": busy / wall,
        "others": max(0.0, others) / wall,
        "envelope_size": sizes[0],
        "hot": hot,
        "accept_ms": _mean(m0, m1, "sealwire_relay_accept_latency_seconds"),
        "wait_ms": _mean(m0, m1, "sealwire_relay_queue_wait_seconds"),
    }


def relay_means(relays: list[RelayProcess]) -> dict[str, float]:
    """Histogram sums and counts, added over the relay nodes."""
    out: dict[str, float] = collections.defaultdict(float)
    for relay in relays:
        for name in ("accept_latency", "queue_wait"):
            for part in ("sum", "count"):
                key = f"sealwire_relay_{name}_seconds_{part}"
                out[key] += relay.metric(key)
    return out


def _mean(m0: dict[str, float], m1: dict[str, float], name: str) -> float:
    count = m1[name + "_count"] - m0[name + "_count"]
    return 1000 * (m1[name + "_sum"] - m0[name + "_sum"]) / count if count else float("nan")


def run_echo(args: argparse.Namespace, size: int) -> dict[str, Any]:
    echo = EchoProcess()
    try:
        spec = {
            "url": echo.url,
            "pairs": args.pairs,
            "inflight": args.inflight,
            "size": size,
            "seconds": args.seconds,
            "warmup": args.warmup,
        }
        workers = Workers("echo", [spec] * args.procs)
        workers.step("ready")
        go = time.monotonic() + 0.5
        workers.tell(go)
        time.sleep(max(0.0, go + args.warmup - time.monotonic()))
        cpu0, busy0 = cpu_seconds(echo.proc.pid), machine_busy()
        time.sleep(args.seconds)
        cpu = cpu_seconds(echo.proc.pid) - cpu0
        busy = machine_busy() - busy0
        results = workers.step("done")
        workers.join()
    finally:
        echo.stop()
    rate = sum(r["in_window"] for r in results) / args.seconds
    return {
        "rate": rate,
        "per_message_us": 1e6 * cpu / args.seconds / max(1.0, rate),
        "server_cpu": cpu / args.seconds,
        "others": max(0.0, busy - cpu - sum(r["cpu"] for r in results)) / args.seconds,
        "gen_cpu": [r["cpu"] / args.seconds for r in results],
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))] * 1000


def run_latency(
    args: argparse.Namespace, send_url: str, recv_url: str, relays: list[RelayProcess]
) -> list[dict[str, Any]]:
    pids = [r.proc.pid for r in relays if r.proc is not None]
    spec = {
        "send_url": send_url,
        "recv_url": recv_url,
        "pairs": args.pairs,
        "rates": args.rates,
        "seconds": args.latency_seconds,
    }
    workers = Workers("latency", [spec])
    workers.step("ready")
    load = []  # per rate: (relay CPU share, machine busy share), while sending and draining
    for n in range(len(args.rates)):
        cpu0, busy0, wall0 = sum(cpu_seconds(p) for p in pids), machine_busy(), time.monotonic()
        workers.tell(None)
        (result,) = workers.step("ready" if n + 1 < len(args.rates) else "done", timeout=600)
        wall = time.monotonic() - wall0
        relay = sum(cpu_seconds(p) for p in pids) - cpu0
        load.append((relay / wall, (machine_busy() - busy0) / wall))
    workers.join()
    out = []
    for r, (relay_cpu, busy) in zip(result["results"], load, strict=True):
        out.append(
            {
                "relay_cpu": relay_cpu,
                "machine": busy,
                "rate": r["rate"],
                "achieved_send": r["accepted"] / r["send_seconds"],
                "achieved_delivery": r["delivered"] / max(1e-9, r["delivery_seconds"]),
                "offered": r["offered"],
                "accepted": r["accepted"],
                "refused": r["refused"],
                "delivered": r["delivered"],
                "p50": pct(r["from_call"], 0.50),
                "p99": pct(r["from_call"], 0.99),
                "max": pct(r["from_call"], 1.0),
                "s_p50": pct(r["from_schedule"], 0.50),
                "s_p99": pct(r["from_schedule"], 0.99),
            }
        )
    return out


def run_memory(args: argparse.Namespace, relay: RelayProcess) -> dict[str, Any]:
    assert relay.proc is not None
    pid = relay.proc.pid
    spec = {"url": relay.url, "connections": args.connections, "batch": args.batch}
    workers = Workers("idle", [spec])
    workers.step("base", timeout=600)
    time.sleep(0.5)
    before = proc_status(pid, "VmRSS")
    workers.tell(None)
    (opened,) = workers.step("open", timeout=900)
    time.sleep(1.0)
    after = proc_status(pid, "VmRSS")
    devices = relay.metric("sealwire_relay_connections", 'role="device"')
    hwm = proc_status(pid, "VmHWM")
    workers.tell(None)
    workers.step("done", timeout=300)
    workers.join()
    return {
        "before": before,
        "after": after,
        "hwm": hwm,
        "per_conn": (after - before) / args.connections,
        "open_seconds": opened["seconds"],
        "open": opened["open"],
        "relay_devices": devices,
    }


# --- py-spy ----------------------------------------------------------------------------


def start_profile(
    pid: int, seconds: float, *, gil: bool = False
) -> tuple[subprocess.Popen[bytes], Path] | None:
    spy = Path(sys.executable).with_name("py-spy")
    if not spy.exists():
        print("  (py-spy not installed: no profile)")
        return None
    out = Path(tempfile.mkdtemp(prefix="relay-prof-")) / "relay.txt"
    proc = subprocess.Popen(
        [
            *(str(spy), "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "200"),
            *("-f", "raw", "-o", str(out), "--nonblocking", "--threads"),
            *(["--gil"] if gil else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, out


def finish_profile(profile: tuple[subprocess.Popen[bytes], Path]) -> dict[str, Any] | None:
    """Samples by thread, own time by function and by line, inclusive time by function."""
    proc, out = profile
    proc.wait(timeout=60)
    if not out.exists():
        return None
    threads: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    own_lines: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        thread, *frames = stack.split(";")
        name = thread.partition(": ")[2] or thread
        threads["event loop" if name == "MainThread" else name] += n
        if not frames:
            continue
        own_lines[_short_frame(frames[-1])] += n
        functions = [_short_frame(f, line=False) for f in frames]
        own[functions[-1]] += n
        for f in set(functions):
            inclusive[f] += n
    return {
        "total": total,
        "threads": threads.most_common(),
        "own": own.most_common(15),
        "own_lines": own_lines.most_common(10),
        "inclusive": inclusive.most_common(60),
        "file": str(out),
    }


def _short_frame(frame: str, *, line: bool = True) -> str:
    """``function (path/to/file.py:123)`` -> ``function (file.py:123)`` (or ``(file.py)``)."""
    name, _, where = frame.partition(" (")
    for marker in ("site-packages/", "src/", "lib/python3.11/"):
        if marker in where:
            where = where.split(marker, 1)[1]
    if not line:
        where = where.rsplit(":", 1)[0] + ")"
    return f"{name} ({where}" if where else name


# --- NATS clean-up -------------------------------------------------------------------------


def destroy_nats(nats_url: str, prefix: str) -> str:
    import importlib

    from sealwire.relay.backends.base import QueueLimits

    try:
        NatsBackend = importlib.import_module("sealwire.relay.backends.nats").NatsBackend
    except ImportError as exc:
        return f"not cleaned up ({exc})"
    backend = NatsBackend([nats_url], QueueLimits(), prefix=prefix)
    if not hasattr(backend, "destroy"):
        return "left in place (the backend has no destroy())"

    async def go() -> None:
        await backend.destroy()  # type: ignore[attr-defined]

    try:
        asyncio.run(go())
    except Exception as exc:
        return f"destroy() failed: {exc!r}"
    return "destroyed"


# --- one backend ---------------------------------------------------------------------------


def bench_backend(args: argparse.Namespace, backend: str, root: Path) -> dict[str, Any]:
    prefix = f"swbench{uuid.uuid4().hex[:8]}"
    relays: list[RelayProcess] = []
    out: dict[str, Any] = {"backend": backend, "prefix": prefix}

    def fresh(tag: str) -> tuple[str, str, list[int]]:
        for r in relays:
            r.stop()
        relays.clear()
        nodes = 2 if backend == "nats" else 1
        for n in range(nodes):
            data = root / f"{backend}-{tag}-{n}"
            relays.append(start_relay(data, backend, args.nats_url, prefix))
        pids = [r.proc.pid for r in relays if r.proc is not None]
        return relays[0].url, relays[-1].url, pids

    try:
        where = "node A -> node B" if backend == "nats" else "one node"
        print(f"\n== backend {backend} ({where}) ==", flush=True)
        phases = args.phases.split(",")
        if "throughput" in phases:
            send_url, recv_url, _ = fresh("tput")
            out["throughput"] = bench_throughput(args, send_url, recv_url, relays)
        if "latency" in phases:
            send_url, recv_url, _ = fresh("lat")
            out["latency"] = bench_latency(args, send_url, recv_url, relays)
        if "memory" in phases:
            fresh("mem")
            out["memory"] = bench_memory(args, relays[0])
    finally:
        for r in relays:
            r.stop()
        if backend == "nats":
            out["cleanup"] = destroy_nats(args.nats_url, prefix)
            print(f"NATS streams with prefix {prefix}: {out['cleanup']}")
    return out


def bench_throughput(
    args: argparse.Namespace, send_url: str, recv_url: str, relays: list[RelayProcess]
) -> dict[str, Any]:
    t = run_throughput(args, send_url, recv_url, relays)
    cpu = ", ".join(f"{c:.0%}" for c in t["relay_cpu"])
    gen = ", ".join(f"{c:.0%}" for c in t["gen_cpu"])
    print(
        f"throughput: {t['rate']:,.0f} envelopes/s accepted+delivered+acked "
        f"({t['envelope_size']} B sealed envelope; {t['accepted']:,} accepted, "
        f"{t['delivered']:,} delivered, {t['refused']} refused in all)",
        flush=True,
    )
    nats = f"; nats-server {t['nats_cpu']:.0%}" if t["nats_cpu"] is not None else ""
    print(
        f"  CPU during the window (100% = one core): relay {cpu}; generators {gen}{nats}; "
        f"machine busy {t['machine']:.0%} of {100 * (os.cpu_count() or 1)}%, of which "
        f"{t['others']:.0%} other processes (not this bench)",
        flush=True,
    )
    per = t["per_envelope_us"]
    print(
        f"  relay CPU per routed envelope: {per:.0f} us (all nodes) -> at most "
        f"{1e6 / per if per else float('nan'):,.0f}/s per fully busy relay core",
        flush=True,
    )
    print(
        f"  relay-side means in the window: Send -> Accepted {t['accept_ms']:.1f} ms,"
        f" accepted -> first delivery {t['wait_ms']:.1f} ms",
        flush=True,
    )
    for n, hot in enumerate(t["hot"]):
        if hot:
            print_profile(hot, "node " + "AB"[n] if len(t["hot"]) > 1 else "relay")
    return t


def bench_latency(
    args: argparse.Namespace, send_url: str, recv_url: str, relays: list[RelayProcess]
) -> list[dict[str, Any]]:
    rows = run_latency(args, send_url, recv_url, relays)
    for r in rows:
        print(
            f"latency @ {r['rate']:,}/s offered: p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms,"
            f" max {r['max']:.1f} ms (from the scheduled time: p50 {r['s_p50']:.2f},"
            f" p99 {r['s_p99']:.2f} ms); achieved {r['achieved_send']:,.0f}/s accepted,"
            f" {r['achieved_delivery']:,.0f}/s delivered; {r['delivered']:,}/{r['offered']:,}"
            f" delivered, {r['refused']} refused; relay CPU {r['relay_cpu']:.0%}, machine busy"
            f" {r['machine']:.0%}",
            flush=True,
        )
    return rows


def bench_memory(args: argparse.Namespace, relay: RelayProcess) -> dict[str, Any]:
    m = run_memory(args, relay)
    print(
        f"memory: relay VmRSS {m['before']:,} KiB -> {m['after']:,} KiB with "
        f"{m['open']:,} idle device connections (relay counts {m['relay_devices']:,.0f}; "
        f"opened in {m['open_seconds']:.1f} s, batches of {args.batch}): "
        f"{m['per_conn']:.1f} KiB per connection",
        flush=True,
    )
    return m


def print_profile(hot: dict[str, Any], who: str) -> None:
    total = hot["total"] or 1
    print(f"  {who} profile (py-spy, {total} samples of active threads, {hot['file']}):")
    print("    by thread: " + ", ".join(f"{t} {n / total:.0%}" for t, n in hot["threads"]))
    print("    own time by function (uvloop's C internals show as Runner.run):")
    for frame, n in hot["own"][:12]:
        print(f"      {n / total:6.1%}  {frame}")
    print("    own time by line:")
    for frame, n in hot["own_lines"][:8]:
        print(f"      {n / total:6.1%}  {frame}")
    print("    inclusive (sealwire and websockets functions):")
    shown = 0
    for frame, n in hot["inclusive"]:
        skip = ("main (", "run (", "<module>", "_cmd_relay", "_serve (")
        if ("sealwire" in frame or "websockets" in frame) and not frame.startswith(skip):
            print(f"      {n / total:6.1%}  {frame}")
            shown += 1
            if shown == 14:
                break


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke check in under a minute")
    parser.add_argument("--backend", choices=["sqlite", "nats", "both"], default="sqlite")
    parser.add_argument("--seconds", type=float, help="throughput window (default 10; quick 2)")
    parser.add_argument("--warmup", type=float, help="before the window (default 2; quick 1)")
    parser.add_argument("--latency-seconds", type=float, help="per rate (default 5; quick 1.5)")
    parser.add_argument("--connections", type=int, help="idle connections (5000; quick 500)")
    parser.add_argument("--batch", type=int, default=250, help="idle connections opened at once")
    parser.add_argument("--pairs", type=int, default=16, help="senders = receivers per process")
    parser.add_argument("--procs", type=int, default=1, help="generator processes (throughput)")
    parser.add_argument("--inflight", type=int, default=32, help="sends in flight per sender")
    parser.add_argument("--rates", default="1000,5000", help="offered loads for latency")
    parser.add_argument("--profile", action="store_true", help="py-spy the relay (throughput)")
    parser.add_argument(
        "--profile-gil", action="store_true", help="profile only the thread holding the GIL"
    )
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    parser.add_argument(
        "--phases", default="throughput,latency,memory,echo", help="which figures to measure"
    )
    parser.add_argument(
        "--relay-env", action="append", default=[], metavar="K=V", help="more relay env"
    )
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        asyncio.run(echo_server())
        return 0
    quick = args.quick
    args.seconds = args.seconds or (2.0 if quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    args.latency_seconds = args.latency_seconds or (1.5 if quick else 5.0)
    args.connections = args.connections or (500 if quick else 5000)
    args.rates = [int(r) for r in args.rates.split(",")]
    BENCH_ENV.update(kv.split("=", 1) for kv in args.relay_env)
    command = " ".join([os.path.basename(sys.executable), *sys.argv])
    print("command:", command)
    print(
        f"machine: {os.cpu_count()} CPUs; 1 relay process per node; {args.procs} generator "
        f"process(es) for throughput/echo ({args.pairs} senders + {args.pairs} receivers each, "
        f"{args.inflight} sends in flight per sender); 1 generator process for latency; "
        "1 separate process holding the idle connections"
    )
    print("relay environment (per-source limits raised for a loopback benchmark):")
    print("  " + " ".join(f"{k}={v}" for k, v in BENCH_ENV.items()))
    backends = ["sqlite", "nats"] if args.backend == "both" else [args.backend]
    figures = []
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        for backend in backends:
            try:
                figures.append(bench_backend(args, backend, Path(tmp)))
            except Exception as exc:
                print(f"backend {backend} FAILED: {exc!r}", flush=True)
                figures.append({"backend": backend, "error": repr(exc)})
        size = next((f["throughput"]["envelope_size"] for f in figures if "throughput" in f), 0)
        echo = {"rate": float("nan")}
        if "echo" in args.phases.split(","):
            print(f"\n== websockets echo ceiling ({size} B messages) ==", flush=True)
            echo = run_echo(args, size or BODY)
            print(
                f"echo: {echo['rate']:,.0f} messages/s round trip (server CPU "
                f"{echo['server_cpu']:.0%}, {echo['per_message_us']:.0f} us per message; "
                "generators "
                + ", ".join(f"{c:.0%}" for c in echo["gen_cpu"])
                + f"; other processes {echo['others']:.0%})",
                flush=True,
            )
    summary(command, figures, echo)
    return 0


def summary(command: str, figures: list[dict[str, Any]], echo: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str, str]] = []

    def met(ok: bool) -> str:
        return "MET" if ok else "NOT MET"

    for f in figures:
        b = f["backend"]
        if "error" in f:
            rows.append((f"[{b}] run", "failed", "-", "NOT MET"))
            continue
        t = f.get("throughput")
        if t:
            rows.append(
                (
                    f"[{b}] envelopes/s routed (durable, delivered, acked)",
                    f"{t['rate']:,.0f}",
                    f">= {GOAL_RATE:,.0f}",
                    met(t["rate"] >= GOAL_RATE),
                )
            )
            rows.append(
                (f"[{b}] relay / websockets echo", f"{t['rate'] / echo['rate']:.2f}", "-", "-")
            )
        for r in f.get("latency", []):
            goal = r["rate"] == 1000
            rows.append(
                (
                    f"[{b}] latency p50/p99 @ {r['rate']:,}/s (achieved {r['achieved_send']:,.0f})",
                    f"{r['p50']:.2f} / {r['p99']:.2f} ms",
                    f"p99 <= {GOAL_P99_MS:.0f} ms" if goal else "-",
                    met(r["p99"] <= GOAL_P99_MS) if goal else "-",
                )
            )
        m = f.get("memory")
        if m:
            rows.append(
                (
                    f"[{b}] relay RSS per idle connection ({m['open']:,} conns)",
                    f"{m['per_conn']:.1f} KiB",
                    f"<= {GOAL_KIB_PER_CONN:.0f} KiB",
                    met(m["per_conn"] <= GOAL_KIB_PER_CONN),
                )
            )
    rows.append(("websockets echo ceiling (same clients)", f"{echo['rate']:,.0f}/s", "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    head = ("figure", "measured", "goal", "result")
    widths = [max(w, len(h)) for w, h in zip(widths, head, strict=True)]
    print("\n== summary ==")
    for row in [head, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print("command:", command)
    failed = [r for r in rows if r[3] == "NOT MET"]
    print("result:", "all goals met" if not failed else f"{len(failed)} goal(s) NOT MET")
    contended = [
        f"[{f['backend']}] throughput {f['throughput']['others']:.0%}"
        for f in figures
        if f.get("throughput") and f["throughput"]["others"] > 0.2
    ]
    if echo.get("others", 0) > 0.2:
        contended.append(f"echo {echo['others']:.0%}")
    if contended:
        print(
            "WARNING: other processes used the CPUs during the measurements ("
            + ", ".join(contended)
            + " of one core): the figures are lower and latencies higher than on a quiet machine"
        )
    for f in figures:
        t = f.get("throughput")
        if t and t["rate"] < GOAL_RATE:
            need = 1e6 / GOAL_RATE
            print(
                f"[{f['backend']}] where the time goes: the relay spends "
                f"{t['per_envelope_us']:.0f} us of CPU per envelope (the goal needs <= {need:.0f}"
                f" us on one core); relay CPU {', '.join(f'{c:.0%}' for c in t['relay_cpu'])}, "
                f"other processes on the machine {t['others']:.0%}; Send -> Accepted "
                f"{t['accept_ms']:.1f} ms, accepted -> delivered {t['wait_ms']:.1f} ms (relay "
                "means); --profile / --profile-gil show the hot spots"
            )


if __name__ == "__main__":
    raise SystemExit(main())

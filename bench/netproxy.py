#!/usr/bin/env python3
"""A small TCP proxy on loopback that makes a fast local link look like a WAN link.

Every byte is forwarded after a fixed one-way delay, each direction is paced to a
bandwidth cap, and optionally connections stall for a while or are reset part-way.

    netproxy.py --listen 127.0.0.1:18080 --target 127.0.0.1:8080 \
        --delay-ms 20 --rate-mbit 400 [--stall-prob 0.01 --stall-ms 500] \
        [--reset-prob 0.02 --seed 1]

--delay-ms is one way: 20 ms gives a 40 ms round trip. Only loopback addresses are
accepted on both sides. Prints "ready <port>" on stdout once listening; with
--listen 127.0.0.1:0 the port is chosen by the system.
"""

import argparse
import asyncio
import ipaddress
import random
import signal
import sys
import time

CHUNK = 64 * 1024


def loopback(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"{addr}: only loopback addresses are allowed")
    return host, int(port)


class Link:
    """One direction of the emulated link: a delay line followed by a pacer."""

    def __init__(self, args, rng: random.Random):
        self.delay = args.delay_ms / 1000.0
        self.rate = args.rate_mbit * 1e6 / 8 if args.rate_mbit > 0 else 0.0
        self.stall_prob = args.stall_prob
        self.stall = args.stall_ms / 1000.0
        self.rng = rng
        # The pacer is shared by all connections in this direction, as on one real link.
        self.next_free = 0.0

    def departure(self, arrival: float, nbytes: int) -> float:
        """When a chunk that arrived at `arrival` has fully left the link."""
        start = max(arrival + self.delay, self.next_free)
        if self.rate:
            start += nbytes / self.rate
        if self.stall_prob and self.rng.random() < self.stall_prob:
            start += self.stall
        self.next_free = start
        return start


async def pump(reader, writer, link: Link, budget: list, stats: dict, key: str):
    """Copies reader -> writer through `link`. `budget[0]` bytes may pass before the
    connection is reset (None: unlimited)."""
    # Bounded, so that TCP flow control still reaches the sender (about 4 MiB in flight).
    queue: asyncio.Queue = asyncio.Queue(maxsize=64)

    async def read_side():
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                await queue.put((link.departure(time.monotonic(), len(data)), data))
        except (ConnectionError, OSError):
            pass
        await queue.put((None, b""))

    async def write_side():
        try:
            while True:
                when, data = await queue.get()
                if when is None:
                    break
                delay = when - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if budget[0] is not None:
                    if budget[0] <= len(data):
                        raise ConnectionResetError("injected reset")
                    budget[0] -= len(data)
                writer.write(data)
                await writer.drain()
                stats[key] += len(data)
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            stats["resets"] += 1
            transport = writer.transport
            if transport is not None:
                transport.abort()

    await asyncio.gather(read_side(), write_side())


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--target", required=True)
    ap.add_argument("--delay-ms", type=float, default=20.0, help="one-way delay")
    ap.add_argument("--rate-mbit", type=float, default=400.0, help="per direction; 0 = unlimited")
    ap.add_argument("--stall-prob", type=float, default=0.0, help="per 64 KiB chunk")
    ap.add_argument("--stall-ms", type=float, default=500.0)
    ap.add_argument("--reset-prob", type=float, default=0.0, help="per connection")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    lhost, lport = loopback(args.listen)
    thost, tport = loopback(args.target)
    rng = random.Random(args.seed)
    up, down = Link(args, rng), Link(args, rng)
    stats = {"conns": 0, "up": 0, "down": 0, "resets": 0}

    async def handle(creader, cwriter):
        stats["conns"] += 1
        try:
            sreader, swriter = await asyncio.open_connection(thost, tport)
        except OSError:
            cwriter.transport.abort()
            return
        # A reset connection dies after a random amount of response data.
        budget = [rng.randint(0, 4 * CHUNK) if rng.random() < args.reset_prob else None]
        await asyncio.gather(
            pump(creader, swriter, up, [None], stats, "up"),
            pump(sreader, cwriter, down, budget, stats, "down"),
        )
        for w in (cwriter, swriter):
            w.close()

    server = await asyncio.start_server(handle, lhost, lport, limit=CHUNK)
    port = server.sockets[0].getsockname()[1]
    print(f"ready {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()
    print(f"stats {stats}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    asyncio.run(main())

#!/usr/bin/env python3
"""permessage-deflate figures for docs/benchmarks.md ("Compression").

Starts the given `herald` binary once per run, connects raw-socket WebSocket subscribers (with
or without a permessage-deflate offer), publishes through the HTTP API, and reports per run:
bytes on the wire per delivery (frame headers included), the server's CPU per delivery (from
/proc/<pid>/stat, publish requests included) and its resident memory per connection (VmRSS
growth from half the subscribers connected to all of them, which leaves out one-time costs
such as each worker thread's compressor).

Scenarios: fan-out (every subscriber on one topic, so one compressed copy serves them all) and
point to point (each subscriber on its own topic, so each message is compressed for one
delivery); payloads of about 100 bytes and about 4 KiB of JSON.

Standard library only. Run from the repository root after
`cargo build --release -p herald-service`:

    python3 crates/bench/scripts/compression.py --herald target/release/herald
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import socket
import subprocess
import time
import zlib

SECRET = "compression-bench-secret-0123456789abcdef"
API_KEY = "bench-key"
OFFER = "permessage-deflate; client_max_window_bits"
TAIL = b"\x00\x00\xff\xff"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def token(sub):
    def b64(data):
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"sub": sub, "exp": int(time.time()) + 3600, "topics": ["*"]}
    payload = b64(json.dumps(claims).encode())
    signature = hmac.new(SECRET.encode(), f"{header}.{payload}".encode(), hashlib.sha256)
    return f"{header}.{payload}.{b64(signature.digest())}"


def payload(size, seq, rng):
    """JSON of about `size` bytes, agent-progress-like, varied enough not to compress absurdly."""
    words = ["running", "tool", "search", "result", "file", "step", "done", "queued", "token"]
    if size <= 150:
        return {"seq": seq, "status": rng.choice(words), "progress": rng.randint(0, 100),
                "note": " ".join(rng.choice(words) for _ in range(6))}
    items = []
    while len(json.dumps(items)) < size - 100:
        items.append({"id": rng.randint(1, 10**9), "kind": rng.choice(words),
                      "text": " ".join(rng.choice(words) for _ in range(8)),
                      "score": round(rng.random(), 4)})
    return {"seq": seq, "items": items}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def client_frame(first, data):
    mask = os.urandom(4)
    n = len(data)
    head = bytes([first])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class Subscriber:
    def __init__(self):
        self.wire_bytes = 0
        self.compressed = 0
        self.received = 0

    async def open(self, port, index, topic, offer):
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        extra = f"Sec-WebSocket-Extensions: {OFFER}\r\n" if offer else ""
        self.writer.write(
            (f"GET /ws?token={token(f'u{index}')} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
             f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n").encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.negotiated = b"permessage-deflate" in head
        assert self.negotiated == offer, head
        await self.frame()  # connected
        request = json.dumps({"type": "subscribe", "messageId": "s", "data": {"topic": topic}})
        self.writer.write(client_frame(0x81, request.encode()))
        while True:
            frame = await self.frame()
            if frame.get("type") == "ack":
                return

    async def frame(self):
        head = await self.reader.readexactly(2)
        n = head[1] & 0x7F
        extra = 0
        if n == 126:
            n = int.from_bytes(await self.reader.readexactly(2), "big")
            extra = 2
        elif n == 127:
            n = int.from_bytes(await self.reader.readexactly(8), "big")
            extra = 8
        data = await self.reader.readexactly(n)
        compressed = bool(head[0] & 0x40)
        if compressed:
            data = zlib.decompressobj(-15).decompress(data + TAIL)
        frame = json.loads(data)
        if frame.get("type") in ("message", "batch"):
            self.wire_bytes += 2 + extra + n
            self.compressed += compressed
        return frame

    async def receive(self, count):
        while self.received < count:
            frame = await self.frame()
            if frame.get("type") == "message":
                self.received += 1
            elif frame.get("type") == "batch":
                self.received += sum(1 for f in frame["data"] if f.get("type") == "message")


def publish_all(port, messages):
    """POSTs `messages` ([(topic, data)]) in batches of 50, waiting for each answer."""
    connection = http.client.HTTPConnection("127.0.0.1", port)
    for i in range(0, len(messages), 50):
        body = json.dumps({"messages": [{"topic": t, "data": d} for t, d in messages[i:i + 50]]})
        connection.request("POST", "/api/publish/batch", body,
                           {"Authorization": f"Bearer {API_KEY}",
                            "Content-Type": "application/json"})
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200, answer.status


async def run(args, scenario, size, offer):
    port = free_port()
    env = dict(os.environ, HERALD_LISTEN=f"127.0.0.1:{port}", HERALD_JWT_SECRET=SECRET,
               HERALD_API_KEYS=API_KEY, HERALD_LOG="warn", HERALD_MAX_CONNECTIONS="100000",
               HERALD_TIERS="free:10000:1000000", HERALD_MAX_CONNECTIONS_PER_USER="10000",
               HERALD_MAX_CONNECTIONS_PER_IP="0", HERALD_CONNECTION_RATE_PER_IP="0",
               HERALD_API_PUBLISH_RATE_PER_KEY="0", HERALD_MAX_QUEUE_SIZE="100000",
               HERALD_MAX_QUEUE_BYTES="1073741824",
               HERALD_COMPRESSION_THRESHOLD_BYTES=str(args.threshold))
    server = subprocess.Popen([args.herald], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        subscribers = [Subscriber() for _ in range(args.subscribers)]
        topics = ["bench" if scenario == "fanout" else f"p{i}" for i in range(args.subscribers)]
        half = args.subscribers // 2
        rss_before = 0
        for start in range(0, args.subscribers, 100):
            if start == half:
                await asyncio.sleep(1.0)
                rss_before = rss_bytes(server.pid)
            await asyncio.gather(*(s.open(port, i, topics[i], offer) for i, s in
                                   enumerate(subscribers[start:start + 100], start)))
        await asyncio.sleep(1.0)
        rss_after = rss_bytes(server.pid)
        rng = random.Random(7)
        if scenario == "fanout":
            rounds = [[("bench", payload(size, r, rng))] for r in range(args.rounds)]
            per_subscriber = args.rounds
        else:
            p2p_rounds = max(1, args.rounds // 10)
            rounds = [[(t, payload(size, r, rng)) for t in topics] for r in range(p2p_rounds)]
            per_subscriber = p2p_rounds
        plain_bytes = sum(len(json.dumps(d)) for batch in rounds for _, d in batch)
        cpu_before = cpu_seconds(server.pid)
        loop = asyncio.get_running_loop()
        receiving = asyncio.gather(*(s.receive(per_subscriber) for s in subscribers))
        for batch in rounds:
            await loop.run_in_executor(None, publish_all, port, batch)
            await asyncio.sleep(0)
        await receiving
        cpu = cpu_seconds(server.pid) - cpu_before
        deliveries = sum(s.received for s in subscribers)
        return {
            "scenario": scenario, "payload": size, "compression": offer,
            "deliveries": deliveries,
            "compressed_share": sum(s.compressed for s in subscribers) / deliveries,
            "wire_bytes_per_delivery": sum(s.wire_bytes for s in subscribers) / deliveries,
            "payload_bytes_per_message": plain_bytes / sum(len(b) for b in rounds),
            "cpu_us_per_delivery": cpu / deliveries * 1e6,
            "rss_bytes_per_connection": (rss_after - rss_before) / (args.subscribers - half),
        }
    finally:
        server.terminate()
        server.wait()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--herald", default="target/release/herald")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=200,
                        help="publications per fan-out run; point to point sends a tenth")
    parser.add_argument("--threshold", type=int, default=0,
                        help="HERALD_COMPRESSION_THRESHOLD_BYTES for the runs")
    parser.add_argument("--sizes", default="100,4096",
                        help="payload sizes in bytes, comma-separated")
    parser.add_argument("--scenarios", default="fanout,p2p")
    args = parser.parse_args()
    print("| scenario | payload (B) | compression | wire bytes / delivery | compressed | "
          "server CPU / delivery (us) | RSS / connection (B) |")
    print("|---|---|---|---|---|---|---|")
    for scenario in args.scenarios.split(","):
        for size in (int(size) for size in args.sizes.split(",")):
            for offer in (False, True):
                r = await run(args, scenario, size, offer)
                print(f"| {scenario} | {r['payload_bytes_per_message']:.0f} | "
                      f"{'on' if offer else 'off'} | {r['wire_bytes_per_delivery']:.0f} | "
                      f"{r['compressed_share']:.0%} | {r['cpu_us_per_delivery']:.2f} | "
                      f"{r['rss_bytes_per_connection']:.0f} |", flush=True)


if __name__ == "__main__":
    asyncio.run(main())

#!/usr/bin/env python3
"""Connects to Herald, subscribes to a topic and prints what arrives (pip install websockets).

usage: subscribe.py TOKEN TOPIC [ws://127.0.0.1:8080/ws]
"""
import asyncio, json, sys

import websockets


async def main(token: str, topic: str, url: str) -> None:
    async with websockets.connect(f"{url}?token={token}", subprotocols=["herald.v1"]) as ws:
        print(await ws.recv())  # connected
        await ws.send(json.dumps({"type": "subscribe", "messageId": "1", "data": {"topic": topic}}))
        async for frame in ws:
            message = json.loads(frame)
            if message["type"] == "ping":
                await ws.send(json.dumps({"type": "pong"}))
                continue
            print(frame, flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "ws://127.0.0.1:8080/ws"))

#!/usr/bin/env python3
"""Connects to Herald, subscribes to a topic and prints what arrives (pip install websockets).

usage: subscribe.py TOKEN TOPIC [ws://127.0.0.1:8080/ws]

It does what every client must:
- unpacks `batch` frames (several frames in one, sent when many wait),
- answers the server's `ping` with a `pong` (or the server closes the connection 4000),
- acknowledges each critical `event` once it has handled it (or the server sends it again
  after `HERALD_EVENT_ACK_TIMEOUT_MS` and on every reconnect, until it expires),
- resumes the topic from the last offset it saw when it reconnects.
"""
import asyncio, json, sys

import websockets


def frames(raw: str) -> list:
    """The frames in one WebSocket message: a `batch` holds several, in order."""
    frame = json.loads(raw)
    return frame["data"] if frame["type"] == "batch" else [frame]


async def session(url: str, token: str, topic: str, position: dict) -> None:
    async with websockets.connect(f"{url}?token={token}", subprotocols=["herald.v1"]) as ws:
        subscribe = {"topic": topic}
        if position:
            # Resume: the server replays what was published since, or says it cannot.
            subscribe["since"] = position
        await ws.send(json.dumps({"type": "subscribe", "messageId": "sub", "data": subscribe}))
        async for raw in ws:
            for frame in frames(raw):
                kind = frame["type"]
                if kind == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                    continue
                print(json.dumps(frame), flush=True)
                if kind == "message":
                    position.update(offset=frame["offset"], epoch=frame["epoch"])
                elif kind == "event":
                    # Handle the event first (here: print it), then acknowledge it.
                    await ws.send(json.dumps({"type": "ack", "data": {"ids": [frame["id"]]}}))


async def main(token: str, topic: str, url: str) -> None:
    position: dict = {}
    while True:
        try:
            await session(url, token, topic, position)
        except (OSError, websockets.ConnectionClosed) as error:
            print(f"disconnected ({error}); reconnecting in 1 s", file=sys.stderr, flush=True)
        await asyncio.sleep(1)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    url = sys.argv[3] if len(sys.argv) > 3 else "ws://127.0.0.1:8080/ws"
    asyncio.run(main(sys.argv[1], sys.argv[2], url))

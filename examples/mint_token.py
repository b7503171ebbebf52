#!/usr/bin/env python3
"""Mints an HS256 JWT for Herald with only the standard library.

usage: mint_token.py SECRET SUB [TOPIC_PATTERN ...]
The token is valid for an hour; without patterns it may subscribe to `*` and publish to nothing.
"""
import base64, hashlib, hmac, json, sys, time


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(secret: str, sub: str, topics: list) -> str:
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"sub": sub, "exp": int(time.time()) + 3600, "topics": topics or ["*"]}
    signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    print(mint(sys.argv[1], sys.argv[2], sys.argv[3:]))

"""Helpers for the session tests: a real single-user environment, built once.

:func:`session_env` builds (once per cache key) a virtualenv *at*
``/srv/env`` with the real builder (see tests/envs.py) -- what a build of
a repository without requirements gives -- cached across runs.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

from envs import built_env
from tornado.httpclient import AsyncHTTPClient
from tornado.websocket import websocket_connect

CACHE = Path("/tmp/binderbox-test-cache")


def session_env() -> Path:
    """The host path of a built session environment (see the module docstring)."""
    return built_env(session=True)


KERNEL_SUBPROTOCOL = "v1.kernel.websocket.jupyter.org"


def ws_pack(channel: str, msg: dict[str, Any]) -> bytes:
    """A kernel message in the ``v1.kernel.websocket.jupyter.org`` framing."""
    parts = [
        json.dumps(msg[k]).encode() for k in ("header", "parent_header", "metadata", "content")
    ]
    chan = channel.encode()
    offsets = [8 * (1 + 1 + len(parts) + 1)]
    offsets.append(offsets[-1] + len(chan))
    for part in parts:
        offsets.append(offsets[-1] + len(part))
    head = len(offsets).to_bytes(8, "little") + b"".join(o.to_bytes(8, "little") for o in offsets)
    return head + chan + b"".join(parts)


def ws_unpack(data: bytes) -> tuple[str, dict[str, Any]]:
    """(channel, message) from a v1 frame (buffers are dropped)."""
    count = int.from_bytes(data[:8], "little")
    offsets = [int.from_bytes(data[8 * (i + 1) : 8 * (i + 2)], "little") for i in range(count)]
    offsets.append(len(data))
    channel = data[offsets[0] : offsets[1]].decode()
    parts = [data[offsets[i] : offsets[i + 1]] for i in range(1, 5)]
    names = ("header", "parent_header", "metadata", "content")
    return channel, {name: json.loads(part) for name, part in zip(names, parts, strict=True)}


async def run_code(base_url: str, token: str, code: str) -> str:
    """Start a kernel through ``base_url`` (a server URL), run ``code``, return its stdout.

    Speaks to the server the way JupyterLab does: REST to create the kernel,
    then the channels websocket with the v1 kernel subprotocol.
    """
    client = AsyncHTTPClient()
    auth = {"Authorization": f"token {token}"}
    response = await client.fetch(
        f"{base_url}api/kernels", method="POST", body="{}", headers=auth, request_timeout=60
    )
    kernel_id = json.loads(response.body)["id"]
    ws_url = base_url.replace("http", "ws", 1) + f"api/kernels/{kernel_id}/channels?token={token}"
    conn = await websocket_connect(ws_url, subprotocols=[KERNEL_SUBPROTOCOL])
    assert conn.selected_subprotocol == KERNEL_SUBPROTOCOL
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "msg_type": "execute_request",
        "username": "test",
        "session": uuid.uuid4().hex,
        "date": "",
        "version": "5.3",
    }
    content = {"code": code, "silent": False, "store_history": False, "allow_stdin": False}
    msg = {"header": header, "parent_header": {}, "metadata": {}, "content": content}
    await conn.write_message(ws_pack("shell", msg), binary=True)
    out: list[str] = []
    try:
        async with asyncio.timeout(120):
            while True:
                frame = await conn.read_message()
                if frame is None:
                    raise AssertionError("kernel websocket closed")
                if isinstance(frame, str):
                    continue
                _channel, reply = ws_unpack(frame)
                if reply["parent_header"].get("msg_id") != msg_id:
                    continue
                kind = reply["header"]["msg_type"]
                if kind == "stream":
                    out.append(reply["content"]["text"])
                elif kind == "error":
                    raise AssertionError("\n".join(reply["content"]["traceback"]))
                elif kind == "status" and reply["content"]["execution_state"] == "idle":
                    return "".join(out)
    finally:
        conn.close()
        await client.fetch(
            f"{base_url}api/kernels/{kernel_id}", method="DELETE", headers=auth, raise_error=False
        )


if __name__ == "__main__":
    print(session_env())

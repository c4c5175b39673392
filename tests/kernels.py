"""A kernel client for tests: what JupyterLab does to run a cell.

Starts a kernel through a server's REST API, then talks to it over the
channels websocket with the ``v1.kernel.websocket.jupyter.org`` subprotocol
(binary frames), waiting for the iopub channel before executing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import uuid
from collections.abc import AsyncIterator
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

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


async def start_kernel(
    base_url: str, token: str, name: str = "", tls: ssl.SSLContext | None = None
) -> str:
    """Start a kernel (of the kernel spec ``name``, else the default) on the server at
    ``base_url`` (``tls``: how an https one is verified); its id."""
    response = await AsyncHTTPClient().fetch(
        f"{base_url}api/kernels",
        method="POST",
        body=json.dumps({"name": name} if name else {}),
        headers={"Authorization": f"token {token}"},
        request_timeout=60,
        ssl_options=tls,
    )
    return str(json.loads(response.body)["id"])


def _request(kind: str, session: str, content: dict[str, Any]) -> tuple[str, bytes]:
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id,
        "msg_type": kind,
        "username": "test",
        "session": session,
        "date": "",
        "version": "5.3",
    }
    msg = {"header": header, "parent_header": {}, "metadata": {}, "content": content}
    return msg_id, ws_pack("shell", msg)


async def _replies(conn: WebSocketClientConnection) -> AsyncIterator[dict[str, Any]]:
    while True:
        frame = await conn.read_message()
        if frame is None:
            raise AssertionError("kernel websocket closed")
        if isinstance(frame, bytes):
            yield ws_unpack(frame)[1]


async def _iopub_answers(conn: WebSocketClientConnection, session: str, seen: list[str]) -> bool:
    """Ask kernel_info on ``conn`` until its iopub status arrives (True), for at most
    about 20 s (False): output is then not lost.

    IOPub is a ZMQ PUB socket: messages published before the subscription
    is in place are dropped.  JupyterLab waits the same way before a notebook
    counts as connected.
    """
    sent: set[str] = set()  # a reply to any of them will do: on a loaded machine a
    for _ in range(20):  # round trip can outlast one wait, and asking again must not lose it
        msg_id, frame = _request("kernel_info_request", session, {})
        sent.add(msg_id)
        await conn.write_message(frame, binary=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                async for reply in _replies(conn):
                    seen.append(reply["header"]["msg_type"])
                    if (
                        reply["parent_header"].get("msg_id") in sent
                        and reply["header"]["msg_type"] == "status"
                    ):
                        return True
    return False


async def connect(
    base_url: str, token: str, kernel_id: str, session: str, tls: ssl.SSLContext | None = None
) -> WebSocketClientConnection:
    """A channels websocket to kernel ``kernel_id`` whose iopub channel answers
    (``session``: the client session of the requests).

    A connection whose requests go unanswered for ~20 s is replaced by a new one (up to
    three).  CI once saw a fresh session's kernel leave every request of one connection
    unanswered for a minute under load (ipykernel 7.4.0), nudge traffic arriving all the
    while; the cause is not established, and ipython/ipykernel#1554 describes such a
    wedge of ipykernel 7's shell socket, which the next connection clears.
    A kernel that answers on none of them fails the test.
    """
    ws_url = base_url.replace("http", "ws", 1) + f"api/kernels/{kernel_id}/channels?token={token}"
    seen: list[str] = []
    for _ in range(3):
        request = HTTPRequest(ws_url, ssl_options=tls)
        conn = await websocket_connect(request, subprotocols=[KERNEL_SUBPROTOCOL])
        assert conn.selected_subprotocol == KERNEL_SUBPROTOCOL
        if await _iopub_answers(conn, session, seen):
            return conn
        conn.close()
    got = ", ".join(sorted(set(seen))) or "nothing"
    raise AssertionError(f"the kernel's iopub channel never answered (received: {got})")


async def execute(
    base_url: str, token: str, kernel_id: str, code: str, tls: ssl.SSLContext | None = None
) -> str:
    """Run ``code`` in kernel ``kernel_id`` over the channels websocket (the
    ``v1.kernel.websocket.jupyter.org`` subprotocol JupyterLab uses); its stdout.
    An error in the code raises AssertionError with the traceback."""
    session = uuid.uuid4().hex
    conn = await connect(base_url, token, kernel_id, session, tls)
    out: list[str] = []
    try:
        content = {"code": code, "silent": False, "store_history": False, "allow_stdin": False}
        msg_id, frame = _request("execute_request", session, content)
        await conn.write_message(frame, binary=True)
        async with asyncio.timeout(120):
            async for reply in _replies(conn):
                if reply["parent_header"].get("msg_id") != msg_id:
                    continue
                kind = reply["header"]["msg_type"]
                if kind == "stream":
                    out.append(reply["content"]["text"])
                elif kind == "error":
                    raise AssertionError("\n".join(reply["content"]["traceback"]))
                elif kind == "status" and reply["content"]["execution_state"] == "idle":
                    return "".join(out)
        raise AssertionError("unreachable")
    finally:
        conn.close()


async def run_code(
    base_url: str, token: str, code: str, kernel_name: str = "", tls: ssl.SSLContext | None = None
) -> str:
    """Start a kernel (``kernel_name``: its spec) on the server at ``base_url``, run
    ``code``, delete the kernel; the code's stdout.  ``tls``: how an https server is
    verified (default: the system's trust)."""
    kernel = await start_kernel(base_url, token, kernel_name, tls)
    try:
        return await execute(base_url, token, kernel, code, tls)
    finally:
        await AsyncHTTPClient().fetch(
            f"{base_url}api/kernels/{kernel}",
            method="DELETE",
            headers={"Authorization": f"token {token}"},
            raise_error=False,
            ssl_options=tls,
        )

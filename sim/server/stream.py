"""The simulator's trade_updates WebSocket (`/stream`): authentication, listening, one
connection per key, and dropping connections on request."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from sim.server.common import (
    STREAM_AUTH_TIMEOUT_SECONDS,
    _dumps,
    _error,
)

log = logging.getLogger(__name__)


@dataclass(eq=False)
class StreamSession:
    ws: web.WebSocketResponse
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    key: str | None = None
    listening: bool = False


class StreamRoutes:
    """The trade_updates stream (a `SimServer` part)."""

    # -- trade_updates stream ------------------------------------------------------------------------
    def _stream_busy(self, key: str | None = None) -> bool:
        return any(
            s.key is not None and (key is None or s.key == key) and not s.ws.closed for s in self.sessions
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        if time.monotonic() < self._refuse_streams_until:
            return _error(503, None, "trade stream unavailable (simulated outage)")
        if self._stream_busy():
            # Alpaca allows one trade_updates connection per account; a second gets 429 on upgrade.
            return _error(429, 42910000, "connection limit exceeded")
        ws = web.WebSocketResponse(heartbeat=None, autoping=True)
        await ws.prepare(request)
        session = StreamSession(ws)
        sender: asyncio.Task | None = None
        try:
            authorized = await self._authenticate(session)
            if not authorized:
                return ws
            self.sessions.add(session)
            sender = asyncio.create_task(self._send_updates(session))
            async for message in ws:
                if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                request_body = _parse_ws_json(message.data)
                if request_body.get("action") == "listen":
                    streams = (request_body.get("data") or {}).get("streams") or []
                    session.listening = "trade_updates" in streams
                    await ws.send_bytes(
                        _dumps(
                            {
                                "stream": "listening",
                                "data": {"streams": ["trade_updates"] if session.listening else []},
                            }
                        ).encode()
                    )
                elif request_body.get("action") == "authenticate":
                    await ws.send_bytes(
                        _dumps(
                            {
                                "stream": "authorization",
                                "data": {
                                    "action": "authenticate",
                                    "status": "unauthorized",
                                    "message": "already authenticated",
                                },
                            }
                        ).encode()
                    )
                else:
                    await ws.send_bytes(
                        _dumps({"stream": "listening", "data": {"error": "invalid action"}}).encode()
                    )
        finally:
            self.sessions.discard(session)
            session.listening = False
            if sender is not None:
                sender.cancel()
        return ws

    async def _authenticate(self, session: StreamSession) -> bool:
        ws = session.ws
        try:
            message = await ws.receive(timeout=STREAM_AUTH_TIMEOUT_SECONDS)
        except TimeoutError:
            await ws.close(code=1008, message=b"auth timeout")
            return False
        if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
            return False
        body = _parse_ws_json(message.data)
        data = body.get("data") or {}
        key, secret = data.get("key_id"), data.get("secret_key")
        ok = body.get("action") == "authenticate" and key == self.api_key and secret == self.secret_key
        reason = None if ok else "invalid credentials"
        if ok and self._stream_busy(key):
            ok, reason = False, "connection limit exceeded"
        reply: dict[str, Any] = {"action": "authenticate", "status": "authorized" if ok else "unauthorized"}
        if reason:
            reply["message"] = reason
        await ws.send_bytes(_dumps({"stream": "authorization", "data": reply}).encode())
        if not ok:
            await ws.close(code=1008, message=reason.encode())
            return False
        session.key = key
        return True

    async def _send_updates(self, session: StreamSession) -> None:
        while True:
            frame = await session.queue.get()
            if session.ws.closed:
                return
            try:
                await session.ws.send_bytes(frame)
            except ConnectionError:
                return

    async def drop_streams(self, refuse_seconds: float = 0.0) -> int:
        self._refuse_streams_until = time.monotonic() + refuse_seconds
        dropped = 0
        for session in list(self.sessions):
            self.sessions.discard(session)
            session.listening = False
            await session.ws.close(code=1011, message=b"simulated stream drop")
            dropped += 1
        return dropped


def _parse_ws_json(data: str | bytes) -> dict:
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    return body if isinstance(body, dict) else {}

"""Apprise, one URL at a time: what each URL's secrets are, how it is shown, and one send.

Each URL gets its own `Apprise` object so every URL's result is known (a grouped `notify` answers one
bool for all). The secret parts are the ones Apprise itself marks private (a Telegram bot token, a
password, an API key...), the URL's password, and query or header values named like a secret; they
are registered with `shared.logs` by fragments, the whole URL as a whole."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from shared import logs

log = logging.getLogger(__name__)

_SECRET_NAME = re.compile(r"(?i)pass|token|secret|key|auth|sig|webhook|apikey")


def register_url_secrets(url: str) -> None:
    """Mask `url` and each of its secret parts in every log line from now on."""
    logs.register_secret(url, fragments=False)
    for part in secret_parts(url):
        logs.register_secret(part)


def secret_parts(url: str) -> list[str]:
    parts: list[str] = []
    try:
        split = urlsplit(url)
        if split.password:
            parts += [split.password, unquote(split.password)]
        parts += [v for k, v in parse_qsl(split.query) if _SECRET_NAME.search(k.lstrip("+-:"))]
    except ValueError:
        pass
    plugin = _instantiate(url)
    if plugin is not None:
        cls = type(plugin)
        for name, spec in {**cls.template_tokens, **cls.template_args}.items():
            if not spec.get("private"):
                continue
            value = getattr(plugin, spec.get("map_to", name), None)
            values = value if isinstance(value, list | tuple | set) else [value]
            parts += [str(v) for v in values if isinstance(v, str | int) and len(str(v)) >= 4]
        for header, value in (getattr(plugin, "headers", None) or {}).items():
            if _SECRET_NAME.search(header) and value:
                parts.append(str(value))
    return [p for p in dict.fromkeys(parts) if len(p) >= 4]


def _instantiate(url: str):
    import apprise

    try:
        return apprise.Apprise.instantiate(url, suppress_exceptions=True) or None
    except Exception:  # noqa: BLE001 - an unreadable URL has no plugin; said by `check_url`
        return None


def shown(url: str) -> str:
    """`url` as it may be printed: Apprise's private form (`tgram://1...n/987654321/`), without the
    query, then masked (logs.redact)."""
    plugin = _instantiate(url)
    if plugin is None:
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        return f"{logs.redact(scheme)}://(unreadable URL)"
    return logs.redact(plugin.url(privacy=True).split("?", 1)[0])


def check_url(url: str) -> None:
    """ValueError (masked) for a URL Apprise cannot read."""
    if _instantiate(url) is None:
        raise ValueError(f"{shown(url)} is not an Apprise URL this installation can send to "
                         f"(see https://github.com/caronc/apprise/wiki)")


@dataclass
class Result:
    url: str
    ok: bool
    error: str = ""


class Sender:
    """Sends one message to one URL; `send` never raises."""

    def __init__(self, url: str):
        import apprise

        register_url_secrets(url)
        self.url = url
        self.shown = shown(url)
        self._apprise = apprise.Apprise()
        self._valid = self._apprise.add(url)

    def send(self, title: str, body: str) -> Result:
        import apprise

        if not self._valid:
            return Result(self.shown, False, "not an Apprise URL this installation can send to")
        try:
            with apprise.LogCapture(level=logging.WARNING) as captured:
                ok = bool(self._apprise.notify(title=title, body=body))
            said = captured.getvalue().strip().splitlines()
        except Exception as exc:  # noqa: BLE001 - a plugin bug is a failed send, never a crash
            ok, said = False, [f"{type(exc).__name__}: {exc}"]
        error = "" if ok else logs.redact(said[-1] if said else "the service did not accept the message")
        return Result(self.shown, ok, error)

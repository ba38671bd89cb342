"""Sessions and sign-in throttling for the rater app, without any UI.

A signed-in rater gets a session token: their name, an expiry time and a
random nonce, signed with HMAC-SHA256 under a key only the server holds. The
app keeps it in the page's URL, so a reload (F5) or a database outage does
not sign the rater out. It is not the rater's token: it names no secret,
cannot be turned into one, stops working when it expires or the rater signs
out, and the app checks on every run that the rater was not revoked.

`Throttle` slows down guessing: after `free` failed sign-ins from one client
within `window` seconds, that client waits (doubling each further failure, up
to `max_wait`) before the next try is even checked.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, field

#: How long a session lasts without signing in again.
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class Session:
    rater_id: str
    is_admin: bool
    expires: int  # unix seconds
    nonce: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(key: bytes, body: str) -> str:
    return _b64(hmac.new(key, body.encode(), hashlib.sha256).digest())


def issue(
    key: bytes, rater_id: str, is_admin: bool, now: float, seconds: int = SESSION_SECONDS
) -> str:
    """A signed session token for `rater_id`, valid for `seconds` from `now`."""
    nonce = secrets.token_hex(8)
    body = ".".join(
        (_b64(rater_id.encode()), "1" if is_admin else "0", str(int(now) + seconds), nonce)
    )
    return f"{body}.{_sign(key, body)}"


def verify(
    key: bytes, token: str, now: float, ended: frozenset[str] = frozenset()
) -> Session | None:
    """The session a token carries, or None if it is forged, malformed, expired
    or ended (its nonce in `ended`, as after a sign-out)."""
    parts = (token or "").split(".")
    if len(parts) != 5:
        return None
    body, signature = ".".join(parts[:4]), parts[4]
    if not hmac.compare_digest(_sign(key, body), signature):
        return None
    name, admin, expires, nonce = parts[:4]
    try:
        rater_id, until = _unb64(name).decode(), int(expires)
    except (ValueError, UnicodeDecodeError):
        return None
    if until <= now or nonce in ended:
        return None
    return Session(rater_id, admin == "1", until, nonce)


@dataclass
class Throttle:
    """Failed sign-ins per client; thread-safe (one instance per app server)."""

    free: int = 5  # failures allowed within `window` before waiting starts
    window: float = 300.0
    first_wait: float = 2.0
    max_wait: float = 300.0
    _failures: dict[str, list[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, client: str, now: float) -> float:
        """Seconds `client` must wait before its next sign-in is checked (0: go)."""
        with self._lock:
            times = [t for t in self._failures.pop(client, []) if now - t < self.window]
            if times:
                self._failures[client] = times
            extra = len(times) - self.free
            if extra < 0:
                return 0.0
            pause = min(self.max_wait, self.first_wait * 2**extra)
            return max(0.0, times[-1] + pause - now)

    def failed(self, client: str, now: float) -> None:
        with self._lock:
            self._failures.setdefault(client, []).append(now)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._failures.pop(client, None)

"""Rater sessions and sign-in throttling (quality.rater_session): known answers."""

from __future__ import annotations

from openmind_curate.quality import rater_session as rs

KEY = b"k" * 32


def test_a_session_token_carries_the_rater_until_it_expires():
    token = rs.issue(KEY, "alice ünïcode", True, now=1000.0, seconds=60)
    found = rs.verify(KEY, token, now=1059.0)
    assert found is not None and (found.rater_id, found.is_admin) == ("alice ünïcode", True)
    assert found.expires == 1060
    assert rs.verify(KEY, token, now=1060.0) is None  # expired
    assert rs.verify(b"x" * 32, token, now=1000.0) is None  # another server's key
    assert rs.verify(KEY, token, now=1000.0, ended=frozenset({found.nonce})) is None


def test_a_changed_or_malformed_token_is_refused():
    token = rs.issue(KEY, "bob", False, now=0.0)
    name, admin, expires, nonce, sig = token.split(".")
    forged_admin = ".".join((name, "1", expires, nonce, sig))
    longer = ".".join((name, admin, str(int(expires) + 10**6), nonce, sig))
    for bad in (forged_admin, longer, token + "x", "", "a.b.c", token.replace(".", "", 1)):
        assert rs.verify(KEY, bad, now=1.0) is None, bad
    assert rs.issue(KEY, "bob", False, now=0.0) != token  # a fresh nonce each time


def test_throttle_waits_after_the_free_failures_and_doubles():
    t = rs.Throttle(free=3, window=100.0, first_wait=2.0, max_wait=10.0)
    for _ in range(3):
        assert t.wait("a", 10.0) == 0.0
        t.failed("a", 10.0)
    assert t.wait("a", 10.0) == 2.0 and t.wait("a", 11.5) == 0.5 and t.wait("a", 12.0) == 0.0
    t.failed("a", 12.0)
    assert t.wait("a", 12.0) == 4.0  # doubled
    for _ in range(5):
        t.failed("a", 12.0)
    assert t.wait("a", 12.0) == 10.0  # capped
    assert t.wait("b", 12.0) == 0.0  # per client
    assert t.wait("a", 12.0 + 100.0) == 0.0  # failures older than the window are forgotten
    t.failed("a", 200.0)
    t.succeeded("a")
    assert t.wait("a", 200.0) == 0.0

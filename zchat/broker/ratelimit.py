"""Token buckets: how fast one identity may post, sans-IO.

:class:`TokenBucket` allows a burst, then a steady rate; :class:`RateLimiter` keeps one bucket per
identity (a CURVE key, a session, an address, a connection's routing id) and forgets buckets that have refilled, so its
memory follows the active senders, not every sender ever seen. Times are monotonic seconds
passed in; nothing here reads a clock or touches a socket.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_BURST", "DEFAULT_RATE", "RateLimiter", "TokenBucket"]

#: Messages per second one identity may sustain.
DEFAULT_RATE = 10.0
#: Messages one identity may send at once: an honest paste of a few dozen lines passes.
DEFAULT_BURST = 60


@dataclass(slots=True)
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    stamp: float

    def allow(self, now: float) -> bool:
        """Take one token if there is one."""
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateLimiter:
    """One :class:`TokenBucket` per identity; ``rate <= 0`` turns limiting off."""

    def __init__(self, rate: float = DEFAULT_RATE, burst: int = DEFAULT_BURST) -> None:
        self.rate = rate
        self.burst = float(max(1, burst))
        self._buckets: dict[str | bytes, TokenBucket] = {}
        self._next_prune = 0.0

    def allow(self, identity: str | bytes, now: float) -> bool:
        if self.rate <= 0:
            return True
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = self._buckets[identity] = TokenBucket(self.rate, self.burst, self.burst, now)
        allowed = bucket.allow(now)
        if now >= self._next_prune:
            self._prune(now)
        return allowed

    def _prune(self, now: float) -> None:
        # A bucket that would be full again is the same as no bucket.
        full = self.burst / self.rate
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.stamp < full}
        self._next_prune = now + full

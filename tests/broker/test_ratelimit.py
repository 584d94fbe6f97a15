"""Token buckets, without a clock: a burst, then a steady rate, per identity."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zchat.broker.ratelimit import DEFAULT_BURST, DEFAULT_RATE, RateLimiter, TokenBucket

T0 = 1000.0


def allowed(limiter: RateLimiter, identity: str, count: int, now: float) -> int:
    return sum(limiter.allow(identity, now) for _ in range(count))


def test_defaults_let_an_honest_paste_through() -> None:
    assert (DEFAULT_RATE, DEFAULT_BURST) == (10.0, 60)
    limiter = RateLimiter()
    assert allowed(limiter, "paster", 60, T0) == 60
    assert not limiter.allow("paster", T0)


def test_burst_then_the_steady_rate() -> None:
    # Rate 8: a token every 1/8 s, a time exactly representable in binary (no rounding here).
    limiter = RateLimiter(rate=8, burst=5)
    assert allowed(limiter, "k", 10, T0) == 5
    assert allowed(limiter, "k", 10, T0 + 1 / 16) == 0  # half a token
    assert allowed(limiter, "k", 10, T0 + 1 / 8) == 1
    assert allowed(limiter, "k", 10, T0 + 4 / 8) == 3
    # Refusals cost nothing: a sender that keeps trying still gets the rate.
    for n in range(1, 21):
        assert allowed(limiter, "k", 100, T0 + (4 + n) / 8) == 1


def test_an_idle_sender_refills_to_the_burst_and_no_further() -> None:
    limiter = RateLimiter(rate=10, burst=5)
    allowed(limiter, "k", 5, T0)
    assert allowed(limiter, "k", 100, T0 + 3600) == 5


def test_identities_are_independent() -> None:
    limiter = RateLimiter(rate=1, burst=2)
    assert allowed(limiter, "flooder", 1000, T0) == 2
    assert allowed(limiter, "alice", 3, T0) == 2
    assert allowed(limiter, "bob", 1, T0) == 1


def test_rate_zero_turns_limiting_off() -> None:
    limiter = RateLimiter(rate=0, burst=1)
    assert allowed(limiter, "k", 10_000, T0) == 10_000
    assert allowed(RateLimiter(rate=-1), "k", 100, T0) == 100


def test_a_burst_below_one_still_lets_one_through() -> None:
    limiter = RateLimiter(rate=1, burst=0)
    assert limiter.burst == 1.0
    assert allowed(limiter, "k", 5, T0) == 1
    assert allowed(limiter, "k", 5, T0 + 1) == 1


def test_memory_follows_the_active_senders() -> None:
    limiter = RateLimiter(rate=10, burst=5)  # a bucket is full again 0.5 s after its last use
    for n in range(1000):
        limiter.allow(f"one-off-{n}", T0)
    assert len(limiter._buckets) == 1000
    limiter.allow("regular", T0 + 0.6)  # pruning is due: every one-off bucket has refilled
    assert set(limiter._buckets) == {"regular"}
    # A forgotten sender starts with a full bucket, as it would have had anyway.
    assert allowed(limiter, "one-off-1", 10, T0 + 0.6) == 5


def test_token_bucket() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0, tokens=3.0, stamp=T0)
    assert [bucket.allow(T0) for _ in range(4)] == [True, True, True, False]
    assert bucket.allow(T0 + 0.5)  # one token back
    assert not bucket.allow(T0 + 0.5)
    assert bucket.tokens < 1.0


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=100),
    burst=st.integers(min_value=1, max_value=100),
    gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=300),
)
def test_never_more_than_the_burst_plus_the_rate_over_any_window(rate: float, burst: int, gaps: list[float]) -> None:
    limiter = RateLimiter(rate=rate, burst=burst)
    times, now = [], T0
    for gap in gaps:
        now += gap
        if limiter.allow("k", now):
            times.append(now)
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            # Messages allowed within [start, times[j]]: at most a burst plus what refilled.
            assert j - i + 1 <= burst + rate * (times[j] - start) + 1e-6

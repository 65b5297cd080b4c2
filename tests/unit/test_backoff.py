"""Wait strategies and the final delay (jitter, retry_after, floor and ceiling)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from celery_reliable import retry_on
from celery_reliable.backoff import (
    DEFAULT_JITTER,
    MAX_DELAY,
    MIN_DELAY,
    Wait,
    compute_delay,
    exponential,
    fixed,
    normalize_jitter,
    normalize_wait,
    polynomial,
)

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

NAN = float("nan")
INF = float("inf")


class Plain(Exception):
    pass


class RateLimited(Exception):
    def __init__(self, retry_after: object) -> None:
        super().__init__(f"retry after {retry_after!r}")
        self.retry_after = retry_after


def _usable(value: object) -> bool:
    """A number of seconds a wait may return and have used as is (before the ceiling)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, int):
        return value > 0  # exact: math.isnan() overflows on ints beyond a float
    return not math.isnan(value) and value > 0


def _numeric_retry_after(exc: BaseException) -> float | None:
    value = getattr(exc, "retry_after", None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def expected_base(raw: object, exc: BaseException) -> float:
    """The delay before jitter, as the contract states it.

    The wait's value (MIN_DELAY when unusable), cut to MAX_DELAY, raised to the
    exception's retry_after.
    """
    if _usable(raw):
        try:
            base = float(raw)  # type: ignore[arg-type]
        except OverflowError:  # an int beyond a float: infinite, so the ceiling
            base = math.inf
    else:
        base = MIN_DELAY
    base = min(base, MAX_DELAY)
    retry_after = _numeric_retry_after(exc)
    if retry_after is not None:
        base = max(base, retry_after)
    return base


def assert_in_jitter_window(delay: float, base: float, jitter: float) -> None:
    assert delay > 0
    assert math.isfinite(delay)
    assert delay >= base, (delay, base)
    # One part in 10**12 of slack for the float rounding of base + base * jitter * r.
    assert delay <= base * (1 + jitter) * (1 + 1e-12), (delay, base, jitter)


# -- hypothesis strategies --------------------------------------------------------------

attempts = st.integers(min_value=1, max_value=10_000)
jitters = st.floats(min_value=0.0, max_value=1.0)
rand_values = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)

# Positive finite retry_after values (past the 30-day ceiling too: a server's word is
# honoured), and values that are not a usable number of seconds (ignored).
retry_afters = st.one_of(
    st.none(),
    st.floats(min_value=1e-3, max_value=10 * MAX_DELAY),
    st.integers(min_value=1, max_value=int(10 * MAX_DELAY)),
    st.sampled_from([0, -5, -0.5, NAN, INF, "30", b"30", [30]]),
)


@st.composite
def exceptions(draw: st.DrawFn) -> BaseException:
    retry_after = draw(retry_afters)
    if retry_after is None:
        return Plain("boom")
    return RateLimited(retry_after)


capped_exponentials = st.builds(
    exponential,
    base=st.one_of(st.integers(1, 10), st.floats(1.0, 10.0)),
    factor=st.one_of(st.integers(1, 100), st.floats(1e-3, 1e3)),
    cap=st.one_of(st.integers(1, 100_000), st.floats(1e-3, 1e7)),
)
uncapped_exponentials = st.builds(
    exponential,
    base=st.one_of(st.integers(1, 10), st.floats(1.0, 10.0)),
    factor=st.one_of(st.integers(1, 100), st.floats(1e-3, 1e3)),
    cap=st.none(),
)
polynomials = st.builds(
    polynomial,
    exponent=st.floats(0.1, 10.0),
    constant=st.floats(0.0, 1000.0),
    cap=st.one_of(st.none(), st.floats(1e-3, 1e7)),
)
fixeds = st.builds(fixed, st.one_of(st.integers(1, 10**6), st.floats(1e-3, 1e6)))
strategies = st.one_of(capped_exponentials, uncapped_exponentials, polynomials, fixeds)

plain_numbers = st.one_of(st.integers(1, 10**7), st.floats(1e-6, 1e9))

# What a user's callable may return: good numbers, and things it must not crash on.
callable_returns = st.one_of(
    st.floats(min_value=1e-300, max_value=1e12),
    st.integers(min_value=1, max_value=10**400),
    st.sampled_from([0, 0.0, -1, -1e9, None, NAN, INF, -INF, "5", True, False, object()]),
)


class _Sentinel(Exception):
    pass


def _raising(attempt: int, exc: BaseException) -> float:
    raise _Sentinel("the user's wait is broken")


# -- properties ------------------------------------------------------------------------


@PROPERTY
@given(
    strategy=strategies,
    attempt=attempts,
    exc=exceptions(),
    jitter=jitters,
    r=rand_values,
)
def test_strategy_delay_is_positive_and_within_the_jitter_window(
    strategy: Any, attempt: int, exc: BaseException, jitter: float, r: float
) -> None:
    delay = compute_delay(normalize_wait(strategy), attempt, exc, jitter, rand=lambda: r)
    base = expected_base(strategy(attempt), exc)
    assert_in_jitter_window(delay, base, jitter)
    retry_after = _numeric_retry_after(exc)
    if retry_after is not None:
        assert delay >= retry_after


@PROPERTY
@given(strategy=strategies, attempt=attempts, exc=exceptions(), jitter=jitters)
def test_strategy_delay_with_real_randomness_stays_in_window(
    strategy: Any, attempt: int, exc: BaseException, jitter: float
) -> None:
    delay = compute_delay(normalize_wait(strategy), attempt, exc, jitter)
    assert_in_jitter_window(delay, expected_base(strategy(attempt), exc), jitter)


@PROPERTY
@given(seconds=plain_numbers, attempt=attempts, exc=exceptions(), jitter=jitters, r=rand_values)
def test_plain_number_delay(
    seconds: float, attempt: int, exc: BaseException, jitter: float, r: float
) -> None:
    delay = compute_delay(normalize_wait(seconds), attempt, exc, jitter, rand=lambda: r)
    assert_in_jitter_window(delay, expected_base(seconds, exc), jitter)
    retry_after = _numeric_retry_after(exc)
    if retry_after is not None:
        assert delay >= retry_after


@PROPERTY
@given(
    returned=callable_returns,
    attempt=attempts,
    exc=exceptions(),
    jitter=jitters,
    r=rand_values,
)
def test_callable_wait_delay(
    returned: object, attempt: int, exc: BaseException, jitter: float, r: float
) -> None:
    seen: list[tuple[int, BaseException]] = []

    def wait(n: int, error: BaseException) -> Any:
        seen.append((n, error))
        return returned

    delay = compute_delay(normalize_wait(wait), attempt, exc, jitter, rand=lambda: r)
    assert seen == [(attempt, exc)]
    assert_in_jitter_window(delay, expected_base(returned, exc), jitter)
    retry_after = _numeric_retry_after(exc)
    if retry_after is not None:
        assert delay >= retry_after


@PROPERTY
@given(attempt=attempts, exc=exceptions(), jitter=jitters, r=rand_values)
def test_raising_callable_wait_gives_min_delay(
    attempt: int, exc: BaseException, jitter: float, r: float
) -> None:
    delay = compute_delay(normalize_wait(_raising), attempt, exc, jitter, rand=lambda: r)
    assert_in_jitter_window(delay, expected_base(MIN_DELAY, exc), jitter)


@PROPERTY
@given(strategy=capped_exponentials, attempt=attempts)
def test_capped_exponential_never_exceeds_its_cap(strategy: Any, attempt: int) -> None:
    value = strategy(attempt)
    assert 0 < value <= strategy.cap


@PROPERTY
@given(strategy=st.one_of(capped_exponentials, uncapped_exponentials), attempt=attempts)
def test_exponential_is_non_decreasing(strategy: Any, attempt: int) -> None:
    assert strategy(attempt) <= strategy(attempt + 1)


@PROPERTY
@given(strategy=polynomials, attempt=attempts)
def test_polynomial_is_non_decreasing_and_capped(strategy: Any, attempt: int) -> None:
    assert strategy(attempt) <= strategy(attempt + 1)
    if strategy.cap is not None:
        assert strategy(attempt) <= strategy.cap


@PROPERTY
@given(strategy=capped_exponentials, attempt=attempts, jitter=jitters, r=rand_values)
def test_capped_exponential_delay_is_at_most_cap_plus_jitter(
    strategy: Any, attempt: int, jitter: float, r: float
) -> None:
    delay = compute_delay(normalize_wait(strategy), attempt, Plain(), jitter, rand=lambda: r)
    assert delay <= strategy.cap * (1 + jitter) * (1 + 1e-12)


# -- exact values ------------------------------------------------------------------------


def test_exponential_defaults_double_from_one_second_capped_at_600() -> None:
    strategy = exponential()
    assert [strategy(n) for n in range(1, 13)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        512,
        600,
        600,
    ]


def test_exponential_with_base_factor_and_cap() -> None:
    strategy = exponential(base=3, factor=2, cap=100)
    assert [strategy(n) for n in range(1, 6)] == [2, 6, 18, 54, 100]


def test_polynomial_defaults_are_active_jobs_polynomially_longer() -> None:
    strategy = polynomial()
    assert [strategy(n) for n in range(1, 6)] == [3, 18, 83, 258, 627]


def test_polynomial_cap() -> None:
    assert [polynomial(cap=50)(n) for n in (1, 2, 3)] == [3, 18, 50]


def test_fixed_is_constant() -> None:
    strategy = fixed(5)
    assert [strategy(n) for n in (1, 2, 10, 10_000)] == [5, 5, 5, 5]


@pytest.mark.parametrize(
    ("wait", "expected"),
    [
        (exponential(), [1, 2, 4, 8, 16]),
        (polynomial(), [3, 18, 83, 258, 627]),
        (fixed(5), [5, 5, 5, 5, 5]),
        (7, [7, 7, 7, 7, 7]),
        (2.5, [2.5, 2.5, 2.5, 2.5, 2.5]),
        (lambda attempt, exc: attempt * 10, [10, 20, 30, 40, 50]),
    ],
    ids=["exponential", "polynomial", "fixed", "int", "float", "callable"],
)
def test_compute_delay_without_jitter_is_the_base(wait: object, expected: list[float]) -> None:
    normalized = normalize_wait(wait)
    assert [compute_delay(normalized, n, Plain(), 0.0) for n in range(1, 6)] == expected


@pytest.mark.parametrize("base", [1.0, 5.0, 600.0])
def test_rand_injection_bounds_the_jitter(base: float) -> None:
    wait = normalize_wait(fixed(base))
    low = compute_delay(wait, 1, Plain(), DEFAULT_JITTER, rand=lambda: 0.0)
    high = compute_delay(wait, 1, Plain(), DEFAULT_JITTER, rand=lambda: 0.999999)
    assert low == base
    assert high == pytest.approx(base * (1 + DEFAULT_JITTER * 0.999999), rel=1e-12)
    assert base < high < base * (1 + DEFAULT_JITTER)


def test_jitter_is_added_on_top_of_the_cap() -> None:
    wait = normalize_wait(exponential(cap=600))
    delay = compute_delay(wait, 50, Plain(), 0.15, rand=lambda: 0.5)
    assert delay == pytest.approx(600 * 1.075)


def test_default_jitter_spreads_delays() -> None:
    wait = normalize_wait(fixed(10))
    delays = {compute_delay(wait, 1, Plain(), DEFAULT_JITTER) for _ in range(50)}
    assert len(delays) > 1
    assert all(10 <= d <= 11.5 for d in delays)


def test_retry_on_turns_jitter_on_by_default() -> None:
    @retry_on(Plain)
    def body() -> None: ...

    (rule,) = body.__reliable_rules__  # type: ignore[attr-defined]
    assert rule.jitter == DEFAULT_JITTER > 0


def test_retry_after_raises_the_base_and_keeps_the_jitter() -> None:
    wait = normalize_wait(fixed(1))
    exc = RateLimited(30)
    assert compute_delay(wait, 1, exc, 0.15, rand=lambda: 0.0) == 30
    assert compute_delay(wait, 1, exc, 0.15, rand=lambda: 0.5) == pytest.approx(30 * 1.075)


def test_retry_after_below_the_base_changes_nothing() -> None:
    wait = normalize_wait(fixed(100))
    assert compute_delay(wait, 1, RateLimited(30), 0.0) == 100


@pytest.mark.parametrize("retry_after", [None, 0, -10, NAN, INF, "30", True])
def test_unusable_retry_after_is_ignored(retry_after: object) -> None:
    wait = normalize_wait(fixed(2))
    assert compute_delay(wait, 1, RateLimited(retry_after), 0.0) == 2


def test_retry_after_beyond_max_delay_is_still_honoured() -> None:
    retry_after = MAX_DELAY + 24 * 3600
    delay = compute_delay(
        normalize_wait(fixed(5)), 1, RateLimited(retry_after), 0.15, rand=lambda: 0.0
    )
    assert delay >= retry_after


# -- unusable callables --------------------------------------------------------------------


@pytest.mark.parametrize("returned", [0, 0.0, -3, None, NAN, "soon", True])
def test_callable_returning_unusable_value_gives_min_delay(returned: object) -> None:
    wait = normalize_wait(lambda attempt, exc: returned)
    assert compute_delay(wait, 1, Plain(), 0.0) == MIN_DELAY
    assert compute_delay(wait, 1, Plain(), 0.15, rand=lambda: 0.999999) == pytest.approx(
        MIN_DELAY * (1 + 0.15 * 0.999999)
    )


def test_callable_that_raises_gives_min_delay() -> None:
    wait = normalize_wait(_raising)
    assert compute_delay(wait, 3, Plain(), 0.0) == MIN_DELAY


def test_callable_returning_infinity_is_cut_to_max_delay() -> None:
    wait = normalize_wait(lambda attempt, exc: INF)
    assert compute_delay(wait, 1, Plain(), 0.0) == MAX_DELAY


def test_callable_returning_huge_int_does_not_raise() -> None:
    wait = normalize_wait(lambda attempt, exc: 10**400)
    delay = compute_delay(wait, 1, Plain(), 0.0)
    assert delay == MAX_DELAY


# -- huge attempts ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strategy", "expected_base"),
    [
        (exponential(), 600.0),
        (exponential(base=2.0, cap=None), MAX_DELAY),
        (exponential(base=10.0, factor=0.5, cap=None), MAX_DELAY),
        (polynomial(), min(10_000.0**4 + 2, MAX_DELAY)),
        (polynomial(exponent=400), MAX_DELAY),
        (fixed(5), 5.0),
    ],
    ids=["exp-capped", "exp-uncapped-float", "exp-factor", "poly", "poly-huge", "fixed"],
)
def test_huge_attempts_do_not_overflow(strategy: Any, expected_base: float) -> None:
    delay = compute_delay(normalize_wait(strategy), 10_000, Plain(), 0.15, rand=lambda: 0.0)
    assert math.isfinite(delay)
    assert delay == expected_base


@pytest.mark.parametrize("strategy", [exponential(cap=None), exponential(base=10, cap=None)])
def test_huge_attempts_with_uncapped_int_base_do_not_overflow(strategy: Any) -> None:
    delay = compute_delay(normalize_wait(strategy), 10_000, Plain(), 0.15, rand=lambda: 0.0)
    assert delay == MAX_DELAY


# -- invalid arguments -------------------------------------------------------------------

BAD_STRATEGIES: list[tuple[Callable[[], object], type[Exception]]] = [
    (lambda: fixed(0), ValueError),
    (lambda: fixed(-1), ValueError),
    (lambda: fixed(NAN), ValueError),
    (lambda: fixed(INF), ValueError),
    (lambda: fixed("5"), TypeError),  # type: ignore[arg-type]
    (lambda: fixed(True), TypeError),
    (lambda: exponential(base=0.5), ValueError),
    (lambda: exponential(base=0), ValueError),
    (lambda: exponential(base=-2), ValueError),
    (lambda: exponential(factor=0), ValueError),
    (lambda: exponential(cap=0), ValueError),
    (lambda: exponential(cap=-1), ValueError),
    (lambda: exponential(base="2"), TypeError),  # type: ignore[arg-type]
    (lambda: polynomial(exponent=0), ValueError),
    (lambda: polynomial(constant=-1), ValueError),
    (lambda: polynomial(cap=0), ValueError),
    (lambda: normalize_wait("soon"), TypeError),
    (lambda: normalize_wait(None), TypeError),
    (lambda: normalize_wait(True), TypeError),
    (lambda: normalize_wait(0), ValueError),
    (lambda: normalize_wait(-5), ValueError),
    (lambda: normalize_jitter(1.5), ValueError),
    (lambda: normalize_jitter(-0.1), ValueError),
    (lambda: normalize_jitter(NAN), ValueError),
    (lambda: normalize_jitter("0.1"), ValueError),
]


@pytest.mark.parametrize(
    ("make", "error"),
    BAD_STRATEGIES,
    ids=[
        "fixed(0)",
        "fixed(-1)",
        "fixed(nan)",
        "fixed(inf)",
        "fixed('5')",
        "fixed(True)",
        "exponential(base=0.5)",
        "exponential(base=0)",
        "exponential(base=-2)",
        "exponential(factor=0)",
        "exponential(cap=0)",
        "exponential(cap=-1)",
        "exponential(base='2')",
        "polynomial(exponent=0)",
        "polynomial(constant=-1)",
        "polynomial(cap=0)",
        "wait='soon'",
        "wait=None",
        "wait=True",
        "wait=0",
        "wait=-5",
        "jitter=1.5",
        "jitter=-0.1",
        "jitter=nan",
        "jitter='0.1'",
    ],
)
def test_invalid_arguments_raise(make: Callable[[], object], error: type[Exception]) -> None:
    with pytest.raises(error):
        make()


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"jitter": 1.5}, ValueError),
        ({"wait": "soon"}, TypeError),
        ({"wait": 0}, ValueError),
        ({"wait": -1}, ValueError),
    ],
    ids=["jitter=1.5", "wait='soon'", "wait=0", "wait=-1"],
)
def test_retry_on_validates_wait_and_jitter(
    kwargs: dict[str, object], error: type[Exception]
) -> None:
    with pytest.raises(error):
        retry_on(Plain, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("jitter", "expected"),
    [(True, DEFAULT_JITTER), (False, 0.0), (None, 0.0), (0, 0.0), (1, 1.0), (0.3, 0.3)],
)
def test_normalize_jitter(jitter: object, expected: float) -> None:
    assert normalize_jitter(jitter) == expected


def test_normalize_wait_describes_what_it_was_given() -> None:
    assert normalize_wait(exponential()).description == exponential().describe()
    assert normalize_wait(5).description == "fixed(5)"
    assert normalize_wait(_raising).description.startswith("callable ")
    assert isinstance(normalize_wait(fixed(1)), Wait)

"""How our terminal states look to a caller holding an ``AsyncResult``.

Celery knows only its own ready states (SUCCESS, FAILURE, REVOKED): a CANCELLED or
DISCARDED job is finished, yet ``get()``, ``ready()``, ``join()`` and a chord waiting
on it would wait forever. There is no extension point for this: Celery reads its
state sets from ``celery.states`` and from copies taken at import (class attributes
of the result backends, default arguments of a few functions). So, once per process,
:func:`make_our_states_terminal` swaps every such reference to the extended sets, in
whichever supported Celery minor is installed. Importing ``celery_reliable`` (any
module of it that defines or runs tasks) does it, in workers and in callers.

Afterwards:

* ``CANCELLED`` is ready and not a failure: ``get()`` returns the outcome dict
  (``{"outcome": "cancelled", "reason": ..., ...}``) at once.
* ``DISCARDED`` is ready and propagates like ``FAILURE``: ``get()`` raises the
  recorded exception (``WrongArguments``, the ``discard_on`` match, or
  ``Discard(reason)``), ``info`` is that exception, and a chord with a discarded part
  fails with ``ChordError``, as it does for a failed part.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

from celery import states
from celery.exceptions import TimeoutError as CeleryTimeoutError

from celery_reliable.outcomes import CANCELLED_STATE, DISCARDED_STATE

#: States after which nothing more happens to a task id.
TERMINAL_STATES = frozenset(states.READY_STATES | {CANCELLED_STATE, DISCARDED_STATE})

#: Meta key of a result stored by a ``DUPLICATE``: the task id that did the work.
DUPLICATE_OF = "reliable_duplicate_of"

_EXTENDED = {
    "READY_STATES": TERMINAL_STATES,
    "PROPAGATE_STATES": frozenset(states.PROPAGATE_STATES | {DISCARDED_STATE}),
    "EXCEPTION_STATES": frozenset(states.EXCEPTION_STATES | {DISCARDED_STATE}),
}


def make_our_states_terminal() -> None:
    """Swap Celery's state sets (and every copy of them in loaded Celery modules) for
    ones that include our terminal states. Idempotent; called on import."""
    swaps = {
        id(getattr(states, name)): (getattr(states, name), extended)
        for name, extended in _EXTENDED.items()
        if getattr(states, name) is not extended
    }
    if not swaps:
        return
    for name, extended in _EXTENDED.items():
        setattr(states, name, extended)
    # Modules imported later read the new sets from celery.states; those already
    # loaded hold the old objects: found by identity, not by a list of Celery's
    # internals that would differ between minors.
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "celery" or module_name.startswith("celery.")):
            continue
        _swap_in(vars(module), swaps, module_name)


def _swap_in(namespace: dict[str, Any], swaps: dict[int, tuple[Any, Any]], owner: str) -> None:
    for name, value in list(namespace.items()):
        swap = swaps.get(id(value))
        if swap is not None and swap[0] is value:
            namespace[name] = swap[1]
        elif isinstance(value, type) and value.__module__ == owner:
            for attr, member in list(vars(value).items()):
                swap = swaps.get(id(member))
                if swap is not None and swap[0] is member:
                    setattr(value, attr, swap[1])
                else:
                    _swap_defaults(member, swaps)
        else:
            _swap_defaults(value, swaps)


def _swap_defaults(member: Any, swaps: dict[int, tuple[Any, Any]]) -> None:
    """Default arguments bound to a state set (``READY_STATES=states.READY_STATES``)."""
    function = getattr(member, "__func__", member)
    if not hasattr(function, "__code__"):
        return
    defaults = function.__defaults__
    if defaults and any(id(d) in swaps and swaps[id(d)][0] is d for d in defaults):
        function.__defaults__ = tuple(_swapped(d, swaps) for d in defaults)
    kwdefaults = function.__kwdefaults__
    if kwdefaults and any(id(d) in swaps and swaps[id(d)][0] is d for d in kwdefaults.values()):
        function.__kwdefaults__ = {k: _swapped(d, swaps) for k, d in kwdefaults.items()}


def _swapped(value: Any, swaps: dict[int, tuple[Any, Any]]) -> Any:
    swap = swaps.get(id(value))
    return swap[1] if swap is not None and swap[0] is value else value


def stale_references() -> Iterator[str]:
    """Where a loaded Celery module still holds one of Celery's original state sets
    (for the test that proves the swap reached every copy)."""
    originals = {
        "READY_STATES": frozenset({states.SUCCESS, states.FAILURE, states.REVOKED}),
        "PROPAGATE_STATES": frozenset({states.FAILURE, states.REVOKED}),
        "EXCEPTION_STATES": frozenset({states.RETRY, states.FAILURE, states.REVOKED}),
    }
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "celery" or module_name.startswith("celery.")):
            continue
        for name, value in list(vars(module).items()):
            values: list[tuple[str, Any]] = [(name, value)]
            if isinstance(value, type) and value.__module__ == module_name:
                values += [(f"{name}.{a}", m) for a, m in vars(value).items()]
            for where, item in values:
                function = getattr(item, "__func__", item)
                candidates = [item]
                if hasattr(function, "__code__"):
                    candidates += list(function.__defaults__ or ())
                    candidates += list((function.__kwdefaults__ or {}).values())
                for candidate in candidates:
                    if isinstance(candidate, frozenset) and candidate in originals.values():
                        yield f"{module_name}.{where}"


def duplicate_of(result: Any) -> str | None:
    """The task id whose execution did the work, when ``result``'s job ended
    ``DUPLICATE`` (its idempotency key had already succeeded); else None.

    Read from the result backend's meta for the task (key ``reliable_duplicate_of``),
    which key-value backends (Redis, memcached, ...) keep; Celery's database and rpc
    backends store only Celery's own fields, and there this is always None.
    """
    meta = result.backend.get_task_meta(result.id)
    value = meta.get(DUPLICATE_OF) if isinstance(meta, dict) else None
    return value if isinstance(value, str) else None


def wait_for_outcome(result: Any, timeout: float = 10.0, interval: float = 0.05) -> str:
    """Poll ``result`` until its state is terminal; return the state.

    Raises ``celery.exceptions.TimeoutError`` after ``timeout`` seconds. Unlike
    ``get()`` it raises nothing for a failed job: it says how the job ended.
    """
    deadline = time.monotonic() + timeout
    delay = interval
    while True:
        state: str = result.state
        if state in TERMINAL_STATES:
            return state
        if time.monotonic() >= deadline:
            raise CeleryTimeoutError(f"task {result.id} still {state} after {timeout:g}s")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


make_our_states_terminal()

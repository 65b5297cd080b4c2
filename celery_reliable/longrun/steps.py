"""Resumable steps: ``with self.step(name) as step:`` in a task body.

A job (its ``idempotency_key`` when the task has one, else its task id, which retries
and redeliveries keep) records each step in the store (``store/steps.py``): its cursor,
the last ``step.advance(value)``, and whether its block ended without an exception.
Another execution of the same job (a retry, a snooze, a redelivery after a crash, a
heartbeat timeout) skips the steps that finished and finds the cursor of the one it
stopped in.

**Exactly once per item.** ``step.advance(value)`` inside ``self.atomic()`` is written in
that transaction: the item's writes and the cursor that says they are done commit
together or not at all, whatever kills the process. Outside ``atomic()`` it is written
at once, in a transaction of its own. Once a job has entered a step, ``atomic()``
no longer marks a keyed task's receipt succeeded (that would make a redelivery after a
crash between two items a ``DUPLICATE``, and the rest of the job would never run): it
checks that the claim is still this execution's (``LeaseLost`` otherwise) and, with a
heartbeat, renews its lease; the receipt is marked succeeded when the body returns.

**Skipping a block.** Python runs a ``with`` block's body once ``__enter__`` returns:
nothing it returns can skip it. ``__enter__`` of a finished step has the interpreter
raise a private exception in the calling frame at the first instruction after the
``as`` target is stored (so the target is bound, with the step's last cursor), inside
the ``with`` statement, where ``__exit__`` swallows it. How it gets there:

* Python 3.12+: an ``INSTRUCTION`` event of ``sys.monitoring`` (PEP 669) on the frame's
  code, from a tool id taken for that moment only, whose callback raises. It is
  independent of ``sys.settrace``, and it is delivered even when another tool
  (coverage's ``sysmon`` core, a debugger) instruments the same code, where a trace
  function set mid-frame on 3.13 misses a body on the ``with`` line.
* Python 3.10 and 3.11: the known trace-function technique (``withhacks``), made
  exact: a trace function on the calling frame with ``f_trace_opcodes`` (a body on
  the ``with`` line has no line event of its own) and a ``sys.settrace`` that traces
  no call; ``__exit__`` puts back the trace functions it found (a debugger's,
  coverage's), which the interpreter unsets when a trace function raises.

The alternatives are worse: an ``if step.done:`` that every user must write, a
decorator per step, or rewriting the body's bytecode. Tested on CPython 3.10 to 3.13
(``tests/unit/test_steps.py``): one-line bodies, a trace function already set, and
under coverage (its C tracer, and its ``sysmon`` core on 3.12 and 3.13). The call
must be the ``with`` statement's own: ``__enter__`` reads the instruction that called
it, and ``ExitStack.enter_context`` (or ``__enter__`` called by hand) raises
``StepError``, on every run, not only on the resume that would have skipped it. Were
an interpreter ever to run a finished step's block anyway, ``__exit__`` raises
``StepError`` saying so.

**Rules.** A step's name is unique per task and job: using it twice in one execution
raises ``StepError``. Steps may nest (a skipped outer step skips all it holds; an inner
step that finished is skipped when its outer step runs again), but a step cannot be
entered inside ``self.atomic()`` or Django's ``transaction.atomic()`` (its read and its
finish are transactions of their own, which that transaction would block on SQLite).
A block that ends without an exception (a ``return`` or ``break`` in it included)
finishes the step.
"""

from __future__ import annotations

import dis
import functools
import json
import logging
import sys
import threading
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, ClassVar

from celery_reliable.errors import StepError

if TYPE_CHECKING:
    from celery_reliable.execution import Execution
    from celery_reliable.store import Store
    from celery_reliable.task import ReliableTask

__all__ = ["JobSteps", "Step", "open_step"]

logger = logging.getLogger("celery_reliable.steps")

#: Longest step name the store holds.
MAX_NAME = 255


class JobSteps:
    """The steps of one execution's job, from the first ``self.step()`` on."""

    __slots__ = ("execution", "job", "store", "task_name", "used")

    def __init__(self, execution: Execution, store: Store, job: str) -> None:
        self.execution = execution
        self.store = store
        self.job = job
        self.task_name: str = execution.task.name
        #: The step names this execution entered (skipped ones too).
        self.used: set[str] = set()


def open_step(task: ReliableTask, execution: Execution | None, name: str) -> Step:
    """``ReliableTask.step(name)``: the step of the running execution's job."""
    if not isinstance(name, str) or not name:
        raise TypeError(f"self.step(name): name must be a non-empty str, got {name!r}")
    if len(name) > MAX_NAME:
        raise ValueError(f"self.step(name): name is {len(name)} characters, {MAX_NAME} at most")
    if execution is None or execution.task is not task:
        raise StepError(
            f"task {task.name}: self.step({name!r}) was called outside an execution of the "
            "task's body (a direct call of the function, or another task's body): a step "
            "belongs to a job, which only a running execution has"
        )
    steps = execution.steps
    if steps is None:
        steps = execution.steps = _job_steps(task, execution)
    return Step(steps, name)


def _job_steps(task: ReliableTask, execution: Execution) -> JobSteps:
    from celery_reliable.store import require_store

    store = require_store(task.app, f"task {task.name}: self.step()")
    receipt = execution.receipt
    if receipt is None:
        return JobSteps(execution, store, str(execution.request.id))
    if receipt.claim.completed:
        logger.warning(
            "task %s[%s]: an atomic() block before the first step already marked "
            "idempotency key %r succeeded: if this execution dies in a step, the next one "
            "ends DUPLICATE and the rest of the job never runs; open atomic() inside steps",
            task.name,
            execution.request.id,
            receipt.claim.key,
        )
    return JobSteps(execution, store, receipt.claim.key)


class _SkipBody(BaseException):
    """Raised in the caller's frame by the trace function: the block of a finished step."""


class Step:
    """One step of a job: ``with self.step(name) as step:``."""

    __slots__ = ("_armed", "_ended", "_steps", "cursor", "name", "skipped")

    def __init__(self, steps: JobSteps, name: str) -> None:
        self._steps = steps
        self.name = name
        #: The last value given to :meth:`advance` that committed (in this execution or
        #: an earlier one of the job), as JSON gives it back; None before the first.
        self.cursor: Any = None
        #: The step finished in an earlier execution: its block did not run.
        self.skipped = False
        self._ended = False
        self._armed: _Tracing | _Monitoring | None = None

    def __repr__(self) -> str:
        state = "skipped" if self.skipped else "ended" if self._ended else "open"
        return f"<Step {self.name!r} {state} cursor={self.cursor!r}>"

    def __enter__(self) -> Step:
        frame = sys._getframe(1)
        steps, name = self._steps, self.name
        task_name = steps.task_name
        body_after = _with_statement_at(frame.f_code, frame.f_lasti)
        if body_after is None:
            raise StepError(
                f"task {task_name}: self.step({name!r}) must be entered by a with statement "
                "of its own (`with self.step(name) as step:`), not ExitStack.enter_context() "
                "or __enter__() by hand: a finished step skips its with block"
            )
        if steps.execution.transaction is not None or steps.store.in_django_transaction():
            raise StepError(
                f"task {task_name}: self.step({name!r}) inside self.atomic() (or Django's "
                "transaction.atomic()): enter the step first, and open the transaction for "
                "each item inside it"
            )
        if name in steps.used:
            raise StepError(
                f"task {task_name}: step {name!r} was already entered in this execution: step "
                "names are unique per task and job (in a loop, put the item in the name)"
            )
        steps.used.add(name)
        row = steps.store.steps.get(task_name, steps.job, name)
        if row is not None and row.cursor is not None:
            self.cursor = json.loads(row.cursor)
        if row is not None and row.finished:
            self.skipped = True
            logger.info(
                "task %s[%s]: step %r finished in an earlier execution of job %r: skipped",
                task_name,
                steps.execution.request.id,
                name,
                steps.job,
            )
            self._armed = _arm(frame, body_after)
        elif row is not None:
            logger.info(
                "task %s[%s]: step %r resumes at cursor %s (job %r)",
                task_name,
                steps.execution.request.id,
                name,
                row.cursor,
                steps.job,
            )
        return self

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> bool:
        self._ended = True
        armed, self._armed = self._armed, None
        if armed is not None:
            armed.disarm()
            if exc_type is _SkipBody:
                return True
            if exc_type is None:
                raise StepError(
                    f"step {self.name!r} finished in an earlier execution, yet its block "
                    "ran: this Python did not deliver the trace event that skips it "
                    "(please report it, with the Python version)"
                )
            return False  # raised before the skip (a signal): it goes on
        if exc_type is None:
            steps = self._steps
            steps.store.steps.finish(steps.task_name, steps.job, self.name)
        # An exception leaves the step unfinished, at its cursor: the job's next
        # execution (a retry, a redelivery) resumes it from there.
        return False

    def advance(self, value: Any) -> None:
        """Record ``value`` (any JSON value) as how far the step got.

        Inside ``self.atomic()`` it is written in that transaction and commits with it
        (``cursor`` changes once it has); outside, it is written at once. A beat for a
        task with ``heartbeat_timeout``.
        """
        if self._ended or self.skipped:
            raise StepError(
                f"step {self.name!r} has ended: advance() belongs inside its with block"
            )
        text = _as_json(self.name, value)
        back = json.loads(text)
        steps = self._steps
        execution = steps.execution
        store = steps.store
        transaction = execution.transaction
        if transaction is None and store.in_django_transaction():
            transaction = store.django_alias  # Django's own transaction.atomic() block
        if transaction is not None:
            store.advance_step_in(
                transaction,
                steps.task_name,
                steps.job,
                self.name,
                text,
                functools.partial(setattr, self, "cursor", back),
            )
            if execution.heartbeat is not None:
                execution.heartbeat.alive()
            return
        store.steps.advance(steps.task_name, steps.job, self.name, text)
        self.cursor = back
        if execution.heartbeat is not None:
            execution.heartbeat.beat(None, {})


def _as_json(name: str, value: Any) -> str:
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"step {name!r}: advance() takes a JSON value (str, int, float, bool, None, "
            f"and lists and dicts of them), got {type(value).__name__} {value!r}: {exc}; "
            "store an id or a position, not an object"
        ) from None


def _arm(frame: FrameType, body_after: int) -> _Tracing | _Monitoring:
    """Skip the block that starts after offset ``body_after`` of ``frame``."""
    if _MONITORING is not None:
        armed = _Monitoring.arm(frame, body_after)
        if armed is not None:
            return armed
    return _Tracing(frame, body_after)


class _Tracing:
    """Python 3.10 and 3.11 (and 3.12+ when every ``sys.monitoring`` tool id is
    taken): a trace function on the frame, and the ones it replaced."""

    __slots__ = ("frame", "previous_global", "previous_local", "previous_opcodes")

    def __init__(self, frame: FrameType, body_after: int) -> None:
        self.frame = frame
        self.previous_global = sys.gettrace()
        self.previous_local = frame.f_trace
        self.previous_opcodes = frame.f_trace_opcodes

        def skip_the_body(traced: FrameType, event: str, arg: Any) -> Any:
            if traced.f_lasti > body_after:
                raise _SkipBody
            return skip_the_body

        frame.f_trace = skip_the_body
        # Before sys.settrace: on 3.12 the other order misses the next instruction.
        frame.f_trace_opcodes = True
        sys.settrace(_no_calls)

    def disarm(self) -> None:
        # A trace function that raised was unset by the interpreter (sys.settrace(None)
        # and the frame's f_trace): put back what was there before.
        frame = self.frame
        frame.f_trace_opcodes = self.previous_opcodes
        frame.f_trace = self.previous_local
        sys.settrace(self.previous_global)


def _no_calls(frame: FrameType, event: str, arg: Any) -> None:
    """The global trace function while a block is skipped: no call is traced."""


#: ``sys.monitoring`` (PEP 669, Python 3.12+), else None.
_MONITORING: Any = getattr(sys, "monitoring", None)


class _Monitoring:
    """Python 3.12+: an ``INSTRUCTION`` event on the frame's code, from a tool id of
    our own, held only while a block is being skipped. Unlike a trace function, it is
    delivered at the next instruction even when another tool (coverage's ``sysmon``
    core, a debugger) instruments the same code, and it leaves their events alone."""

    __slots__ = ("code", "frame")

    _lock: ClassVar[threading.Lock] = threading.Lock()
    #: The tool id held while any frame is armed, and the frames: frame -> body_after.
    _tool: ClassVar[int | None] = None
    _frames: ClassVar[dict[FrameType, int]] = {}
    #: How many armed frames run each code object (its events are on while any is).
    _codes: ClassVar[dict[CodeType, int]] = {}

    def __init__(self, frame: FrameType) -> None:
        self.frame = frame
        self.code = frame.f_code

    @classmethod
    def arm(cls, frame: FrameType, body_after: int) -> _Monitoring | None:
        monitoring = _MONITORING
        code = frame.f_code
        with cls._lock:
            if cls._tool is None:
                cls._tool = _free_tool(monitoring)
                if cls._tool is None:
                    return None
                monitoring.register_callback(
                    cls._tool, monitoring.events.INSTRUCTION, _on_instruction
                )
            cls._frames[frame] = body_after
            cls._codes[code] = cls._codes.get(code, 0) + 1
            monitoring.set_local_events(cls._tool, code, monitoring.events.INSTRUCTION)
        return cls(frame)

    def disarm(self) -> None:
        monitoring = _MONITORING
        cls = type(self)
        with cls._lock:
            cls._frames.pop(self.frame, None)
            tool = cls._tool
            assert tool is not None
            left = cls._codes[self.code] - 1
            if left:
                cls._codes[self.code] = left
            else:
                del cls._codes[self.code]
                monitoring.set_local_events(tool, self.code, 0)
            if not cls._frames:
                monitoring.register_callback(tool, monitoring.events.INSTRUCTION, None)
                monitoring.free_tool_id(tool)
                cls._tool = None


def _free_tool(monitoring: Any) -> int | None:
    # 3 and 4 have no assigned role (0 debugger, 1 coverage, 2 profiler, 5 optimizer).
    for tool in (4, 3, 2, 5, 0, 1):
        if monitoring.get_tool(tool) is None:
            monitoring.use_tool_id(tool, "celery_reliable steps")
            return tool
    return None


def _on_instruction(code: CodeType, offset: int) -> None:
    """An instruction of a code object an armed frame runs (in any thread)."""
    frame = sys._getframe(1)  # the frame that runs it
    body_after = _Monitoring._frames.get(frame)
    if body_after is not None and offset > body_after:
        # Once: the instructions that handle the exception come next.
        del _Monitoring._frames[frame]
        raise _SkipBody


_WITH_OPCODES = frozenset(
    dis.opmap[name] for name in ("SETUP_WITH", "BEFORE_WITH") if name in dis.opmap
)
#: The ``as`` targets stored by one instruction (none: ``POP_TOP``).
_ONE_INSTRUCTION_TARGETS = frozenset(
    dis.opmap[name]
    for name in ("POP_TOP", "STORE_FAST", "STORE_NAME", "STORE_GLOBAL", "STORE_DEREF")
    if name in dis.opmap
)


@functools.lru_cache(maxsize=1024)
def _with_statement_at(code: Any, lasti: int) -> int | None:
    """When the instruction at ``lasti`` is a ``with`` statement calling ``__enter__``:
    the offset after which its body starts (its ``as`` target stored first, when that
    takes one instruction; else -1: the target is skipped too). None otherwise."""
    instructions = list(dis.get_instructions(code))
    for index, instruction in enumerate(instructions):
        if instruction.offset != lasti:
            continue
        opcode = instruction.opcode
        before = instructions[index - 1] if index else None
        enters = opcode in _WITH_OPCODES or (
            # 3.14: LOAD_SPECIAL __enter__, then CALL.
            instruction.opname == "CALL"
            and before is not None
            and before.opname == "LOAD_SPECIAL"
            and "__enter__" in before.argrepr
        )
        if not enters or index + 1 >= len(instructions):
            return None
        target = instructions[index + 1]
        return target.offset if target.opcode in _ONE_INSTRUCTION_TARGETS else -1
    return None

"""Declarations (retry_on / discard_on / cancel_on), their errors, and classification."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

from celery_reliable import cancel_on, discard_on, retry_on
from celery_reliable.backoff import fixed
from celery_reliable.policy import (
    RULES_ATTR,
    CancelRule,
    DiscardRule,
    Policy,
    RetryRule,
    Rule,
    rule_id_for,
)


class Base(Exception):
    pass


class Child(Base):
    pass


class GrandChild(Child):
    pass


class Sibling(Base):
    pass


class Unrelated(Exception):
    pass


class Other(Exception):
    pass


DECLARATIONS: list[Callable[..., Any]] = [retry_on, discard_on, cancel_on]
DECLARATION_IDS = ["retry_on", "discard_on", "cancel_on"]


def rules_of(function: object) -> list[Rule]:
    return list(getattr(function, RULES_ATTR))


def declared(*decorators: Callable[[Any], Any]) -> list[Rule]:
    """The rules of a fresh function decorated (innermost last, as written) with these."""

    def body() -> None: ...

    target: Any = body
    for decorator in reversed(decorators):
        target = decorator(target)
    return rules_of(target)


# -- attempts ----------------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [0, None, -1, 1.5, True, False, "3"])
def test_bad_attempts_raise_value_error(attempts: object) -> None:
    with pytest.raises(ValueError, match="attempts"):
        retry_on(Base, attempts=attempts)  # type: ignore[arg-type]


@pytest.mark.parametrize("attempts", [1, 2, 25])
def test_good_attempts_are_kept(attempts: int) -> None:
    (rule,) = declared(retry_on(Base, attempts=attempts))
    assert isinstance(rule, RetryRule)
    assert rule.attempts == attempts


def test_retry_on_defaults() -> None:
    (rule,) = declared(retry_on(Base))
    assert isinstance(rule, RetryRule)
    assert rule.attempts == 5
    assert rule.exc_types == (Base,)
    assert rule.report is False
    assert rule.jitter > 0


# -- exception classes ----------------------------------------------------------------------


@pytest.mark.parametrize("declaration", DECLARATIONS, ids=DECLARATION_IDS)
@pytest.mark.parametrize(
    "not_an_exception_class",
    [int, object, "ValueError", ValueError("instance"), None, 42, type],
    ids=["int", "object", "str", "instance", "None", "42", "type"],
)
def test_non_exception_classes_raise_type_error(
    declaration: Callable[..., Any], not_an_exception_class: object
) -> None:
    with pytest.raises(TypeError):
        declaration(not_an_exception_class)


@pytest.mark.parametrize("declaration", DECLARATIONS, ids=DECLARATION_IDS)
def test_a_non_class_among_good_classes_raises_type_error(
    declaration: Callable[..., Any],
) -> None:
    with pytest.raises(TypeError):
        declaration(Base, "Other")


@pytest.mark.parametrize("declaration", DECLARATIONS, ids=DECLARATION_IDS)
def test_no_classes_raise_type_error(declaration: Callable[..., Any]) -> None:
    with pytest.raises(TypeError):
        declaration()


@pytest.mark.parametrize("declaration", DECLARATIONS, ids=DECLARATION_IDS)
def test_same_class_twice_in_one_call_raises_value_error(
    declaration: Callable[..., Any],
) -> None:
    with pytest.raises(ValueError, match="Base"):
        declaration(Base, Other, Base)


@pytest.mark.parametrize("declaration", DECLARATIONS, ids=DECLARATION_IDS)
def test_a_class_and_its_subclass_in_one_call_are_fine(
    declaration: Callable[..., Any],
) -> None:
    (rule,) = declared(declaration(Base, Child))
    assert rule.exc_types == (Base, Child)


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (retry_on(Base), discard_on(Base)),
        (retry_on(Base), retry_on(Base, attempts=2)),
        (discard_on(Base), cancel_on(Base)),
        (cancel_on(Other, Base), retry_on(Unrelated, Base)),
        (cancel_on(Base), cancel_on(Base)),
    ],
    ids=["retry+discard", "retry+retry", "discard+cancel", "shared-in-lists", "cancel+cancel"],
)
def test_same_class_in_two_rules_on_one_function_fails_at_decoration(
    first: Callable[[Any], Any], second: Callable[[Any], Any]
) -> None:
    def body() -> None: ...

    decorated = second(body)
    with pytest.raises(ValueError, match="Base"):
        first(decorated)
    # The failed declaration left the function's declarations as they were.
    assert len(rules_of(body)) == 1


def test_the_same_declaration_applied_twice_is_a_duplicate() -> None:
    declaration = retry_on(Base)

    def body() -> None: ...

    declaration(body)
    with pytest.raises(ValueError):
        declaration(body)


def test_base_and_subclass_in_two_rules_are_allowed() -> None:
    rules = declared(retry_on(Child), discard_on(Base))
    assert [type(rule) for rule in rules] == [DiscardRule, RetryRule]


def test_declarations_stack_in_order_and_return_the_function() -> None:
    def body() -> str:
        return "ran"

    decorated = cancel_on(Other)(discard_on(Unrelated)(retry_on(Base)(body)))
    assert decorated is body
    assert body() == "ran"
    assert [type(rule) for rule in rules_of(body)] == [RetryRule, DiscardRule, CancelRule]


def test_wrapping_decorators_do_not_share_a_list_of_rules() -> None:
    def body() -> None: ...

    retry_on(Base)(body)

    @functools.wraps(body)
    def wrapper() -> None: ...

    discard_on(Other)(wrapper)
    assert [type(rule) for rule in rules_of(body)] == [RetryRule]
    assert [type(rule) for rule in rules_of(wrapper)] == [RetryRule, DiscardRule]


class NotATask:
    pass


def _instance_method_holder() -> Any:
    class Holder:
        def method(self) -> None: ...

    return Holder


@pytest.mark.parametrize("declaration", DECLARATIONS, ids=DECLARATION_IDS)
@pytest.mark.parametrize(
    "target",
    [
        NotATask,
        NotATask(),
        Exception,
        functools.partial(print, "x"),
        len,
        "task",
        None,
        42,
    ],
    ids=["plain-class", "instance", "exception-class", "partial", "builtin", "str", "None", "42"],
)
def test_decorating_something_else_raises_type_error(
    declaration: Callable[..., Any], target: object
) -> None:
    with pytest.raises(TypeError):
        declaration(Other)(target)


@pytest.mark.parametrize("declaration", DECLARATIONS, ids=DECLARATION_IDS)
def test_decorating_a_bound_method_decorates_it_or_raises_type_error(
    declaration: Callable[..., Any],
) -> None:
    bound = _instance_method_holder()().method
    try:
        result = declaration(Other)(bound)
    except TypeError:
        return
    assert [rule.exc_types for rule in rules_of(result)] == [(Other,)]


# -- classification by MRO -----------------------------------------------------------------


@pytest.fixture
def base_and_child_policy() -> tuple[Policy, Rule, Rule]:
    rules = declared(retry_on(Child, attempts=3), discard_on(Base))
    discard, retry = rules
    return Policy.compose(None, rules), retry, discard


def test_nearest_class_in_mro_wins(base_and_child_policy: tuple[Policy, Rule, Rule]) -> None:
    policy, child_rule, base_rule = base_and_child_policy
    assert policy.classify(Child()) is child_rule
    assert policy.classify(GrandChild()) is child_rule
    assert policy.classify(Base()) is base_rule
    assert policy.classify(Sibling()) is base_rule
    assert policy.classify(Unrelated()) is None
    assert policy.classify(ValueError()) is None


def test_declaration_order_does_not_change_classification() -> None:
    rules = declared(discard_on(Base), retry_on(Child))
    policy = Policy.compose(None, rules)
    child_rule = next(rule for rule in rules if Child in rule.exc_types)
    base_rule = next(rule for rule in rules if Base in rule.exc_types)
    assert policy.classify(GrandChild()) is child_rule
    assert policy.classify(Sibling()) is base_rule


def test_classification_is_stable_across_calls(
    base_and_child_policy: tuple[Policy, Rule, Rule],
) -> None:
    policy, child_rule, base_rule = base_and_child_policy
    for _ in range(3):
        assert policy.classify(GrandChild()) is child_rule
        assert policy.classify(Sibling()) is base_rule
        assert policy.classify(Unrelated()) is None


def test_multiple_inheritance_follows_the_mro() -> None:
    class Both(Unrelated, Child):
        pass

    class BothReversed(Child, Unrelated):
        pass

    rules = declared(retry_on(Child), cancel_on(Unrelated))
    policy = Policy.compose(None, rules)
    cancel, retry = rules
    assert policy.classify(Both()) is cancel
    assert policy.classify(BothReversed()) is retry


def test_a_rule_on_exception_catches_everything_else() -> None:
    rules = declared(cancel_on(Child), retry_on(Exception))
    catch_all, cancel = rules
    policy = Policy.compose(None, rules)
    assert policy.classify(GrandChild()) is cancel
    assert policy.classify(KeyError()) is catch_all
    assert policy.classify(Base()) is catch_all


def test_empty_policy_classifies_nothing() -> None:
    assert Policy().classify(Base()) is None
    assert Policy.compose(None, []).classify(Base()) is None


# -- rule ids --------------------------------------------------------------------------------


def test_rule_ids_do_not_depend_on_class_order() -> None:
    (one,) = declared(retry_on(Base, Other, Unrelated))
    (two,) = declared(retry_on(Unrelated, Base, Other))
    assert isinstance(one, RetryRule)
    assert isinstance(two, RetryRule)
    assert one.rule_id == two.rule_id
    assert one.rule_id == rule_id_for([Other, Unrelated, Base])


def test_rule_ids_differ_between_rules() -> None:
    rules = declared(retry_on(Base), retry_on(Other), retry_on(Unrelated, Sibling))
    ids = [rule.rule_id for rule in rules if isinstance(rule, RetryRule)]
    assert len(ids) == 3
    assert len(set(ids)) == 3
    assert all(ids)


def test_rule_id_differs_for_a_superset_of_classes() -> None:
    assert rule_id_for([Base]) != rule_id_for([Base, Other])


def test_rule_id_does_not_depend_on_other_settings() -> None:
    (one,) = declared(retry_on(Base, attempts=2, wait=fixed(1)))
    (two,) = declared(retry_on(Base, attempts=9))
    assert isinstance(one, RetryRule)
    assert isinstance(two, RetryRule)
    assert one.rule_id == two.rule_id


def test_rule_id_is_stable_text() -> None:
    # Carried in message headers across deploys: a short, plain, deterministic string.
    rule_id = rule_id_for([Base])
    assert rule_id == rule_id_for([Base])
    assert isinstance(rule_id, str)
    assert 0 < len(rule_id) <= 16
    assert rule_id.isalnum()


# -- Policy.compose -----------------------------------------------------------------------------


def test_compose_overrides_only_the_class_the_subclass_declares() -> None:
    parent_rules = declared(retry_on(Base, Other, attempts=4))
    (parent_rule,) = parent_rules
    parent = Policy.compose(None, parent_rules)

    (child_rule,) = declared(discard_on(Other))
    child = Policy.compose(parent, [child_rule])

    assert child.classify(Other()) is child_rule
    assert child.classify(Base()) is parent_rule
    assert child.classify(Sibling()) is parent_rule
    # The parent is untouched.
    assert parent.classify(Other()) is parent_rule
    assert set(map(id, child.rules)) == {id(parent_rule), id(child_rule)}


def test_compose_subclass_rule_on_a_subclass_of_a_parent_class() -> None:
    parent_rules = declared(retry_on(Base))
    (parent_rule,) = parent_rules
    parent = Policy.compose(None, parent_rules)
    (child_rule,) = declared(cancel_on(Child))
    child = Policy.compose(parent, [child_rule])
    assert child.classify(GrandChild()) is child_rule
    assert child.classify(Sibling()) is parent_rule
    assert parent.classify(GrandChild()) is parent_rule


def test_compose_without_parent_keeps_own_rules() -> None:
    rules = declared(retry_on(Base), cancel_on(Other))
    policy = Policy.compose(None, rules)
    assert policy.rules == rules
    assert policy.retry_rules() == [rule for rule in rules if isinstance(rule, RetryRule)]
    assert len(policy.retry_rules()) == 1


def test_compose_rejects_duplicates_among_own_rules() -> None:
    (one,) = declared(retry_on(Base))
    (two,) = declared(discard_on(Base))
    with pytest.raises(ValueError, match="Base"):
        Policy.compose(None, [one, two])


def test_compose_a_child_may_redeclare_a_parent_class() -> None:
    parent = Policy.compose(None, declared(retry_on(Base, attempts=2)))
    (child_rule,) = declared(retry_on(Base, attempts=7))
    child = Policy.compose(parent, [child_rule])
    found = child.classify(Base())
    assert found is child_rule
    assert isinstance(found, RetryRule)
    assert found.attempts == 7
    assert child.rules == [child_rule]


def test_a_declaration_without_parentheses_says_how_to_write_it() -> None:
    def send() -> None:
        return None

    with pytest.raises(
        TypeError, match=r"write @retry_on\(SomeError, \.\.\.\) with the parentheses"
    ):
        retry_on(send)  # type: ignore[arg-type]  # what @retry_on without () does

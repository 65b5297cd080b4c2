"""The monitoring artifacts in docs/grafana/ query only metrics the library emits.

The emitted names come from ``celery_reliable.metrics`` (the wire contract). From them:

* every sample StatsD name, dotted and tagged, must be mapped by statsd_exporter.yml
  onto the expected Prometheus metric and labels (the exporter's matching rules are
  reimplemented below: globs first, in file order, then regexes, in file order);
* every metric in every PromQL expression (Prometheus dashboard, Prometheus alerts)
  must be one the mapping produces;
* every Graphite series path (Graphite dashboard, Grafana alert file) must be an
  emitted dotted name under the StatsD daemon's namespace for its type.

Pure parsing: PyYAML is not a dependency of the project, so the YAML files are read
by the small reader below, which covers the subset of YAML those files are written in.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_reliable import metrics
from celery_reliable.config import DEFAULTS
from celery_reliable.outcomes import Outcome

GRAFANA = Path(__file__).resolve().parents[2] / "docs" / "grafana"
MAPPING = GRAFANA / "statsd_exporter.yml"
PROMETHEUS_DASHBOARD = GRAFANA / "celery-reliable-prometheus.json"
PROMETHEUS_ALERTS = GRAFANA / "prometheus-alerts.yml"
GRAPHITE_DASHBOARD = GRAFANA / "celery-reliable-graphite.json"
GRAPHITE_ALERTS = GRAFANA / "graphite-alerts.yaml"

PREFIX = DEFAULTS["reliable_statsd_prefix"]
TASKS = ("shop.tasks.send_mail", "queue")  # "queue": a task named like the depth segment
QUEUES = ("mail.high", "celery")
# The outcome counters, and the one a wait for a limit's slot is counted in instead.
OUTCOMES = (*(outcome.value for outcome in Outcome), metrics.LIMITED)

COUNTER, TIMER, GAUGE = "counter", "timer", "gauge"

#: The documented Prometheus metric of each StatsD event (README.md, statsd_exporter.yml).
PROM_NAMES = {
    metrics.STARTED: "celery_task_started_total",
    **dict.fromkeys(OUTCOMES, "celery_task_outcomes_total"),
    metrics.DURATION: "celery_task_duration_seconds",
    metrics.QUEUE_TIME: "celery_task_queue_time_seconds",
    "depth": "celery_queue_depth",
    "outbox_depth": "celery_outbox_depth",
    "outbox_oldest_age": "celery_outbox_oldest_age_seconds",
}
DOCUMENTED = frozenset(PROM_NAMES.values())
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
#: Labels a query may select or group on: the mapping's, ``le`` and the scrape's own.
QUERY_LABELS = frozenset({"task", "queue", "outcome", "le", "job", "instance"})


# --------------------------------------------------------------------------- YAML


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _split_flow(text: str) -> list[str]:
    """Split ``a="x,y", b=~"z"`` on the commas outside quotes."""
    parts, current, quote = [], "", ""
    for char in text:
        if quote:
            current += char
            if char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
            current += char
        elif char == ",":
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return parts


# ----------------------------------------------------------------- emitted names


def emitted(prefix: str = PREFIX) -> list[dict[str, Any]]:
    """Every sample StatsD metric: name, type, DogStatsD tags, the StatsD event it is
    and the Prometheus labels it must end up with."""
    samples = []
    events = [(e, COUNTER) for e in metrics.COUNTER_EVENTS]
    events += [(e, TIMER) for e in metrics.TIMER_EVENTS]
    for task, (event, kind) in itertools.product(TASKS, events):
        labels = {"task": metrics.flatten(task)}
        if event in OUTCOMES:
            labels["outcome"] = event
        name = metrics.task_metric(prefix, task, event)
        samples.append({"name": name, "kind": kind, "tags": {}, "event": event, "labels": labels})
    for queue in QUEUES:
        name = metrics.queue_depth_metric(prefix, queue)
        labels = {"queue": metrics.flatten(queue)}
        samples.append(
            {"name": name, "kind": GAUGE, "tags": {}, "event": "depth", "labels": labels}
        )
    for task, queue, (event, kind) in itertools.product(TASKS, QUEUES, events):
        # The tags the StatsD observer sends: outcome on outcome counters and duration.
        outcome = event if event in OUTCOMES else None
        if event == metrics.DURATION:
            outcome = Outcome.SUCCEEDED.value
        tags = parse_dogstatsd_tags(metrics.dogstatsd_tags(task=task, queue=queue, outcome=outcome))
        name = metrics.tagged_task_metric(prefix, event)
        samples.append({"name": name, "kind": kind, "tags": tags, "event": event, "labels": tags})
    for queue in QUEUES:
        tags = parse_dogstatsd_tags(metrics.dogstatsd_tags(queue=queue))
        name = metrics.tagged_queue_depth_metric(prefix)
        samples.append(
            {"name": name, "kind": GAUGE, "tags": tags, "event": "depth", "labels": tags}
        )
    for gauge in metrics.OUTBOX_GAUGES:
        # The same name in both modes, no tags: one outbox per store.
        name = metrics.outbox_metric(prefix, gauge)
        samples.append(
            {"name": name, "kind": GAUGE, "tags": {}, "event": f"outbox_{gauge}", "labels": {}}
        )
    return samples


def parse_dogstatsd_tags(suffix: str) -> dict[str, str]:
    """``|#task:x,queue:y`` -> labels, as statsd_exporter reads DogStatsD tags."""
    assert suffix.startswith("|#"), suffix
    return dict(tag.split(":", 1) for tag in suffix[2:].split(","))


def dotted_names() -> dict[str, str]:
    """Emitted dotted name -> its StatsD type."""
    return {s["name"]: s["kind"] for s in emitted() if not s["tags"]}


# ------------------------------------------------------------ statsd_exporter

GLOB_LINE = re.compile(r"^(\*\.|[a-zA-Z_](-?[a-zA-Z0-9_])+\.)+(\*|[a-zA-Z_](-?[a-zA-Z0-9_])+)$")
METRIC_NAME = re.compile(r"^([a-zA-Z_]|\$\{?\d+\}?)([a-zA-Z0-9_]|\$\{?\d+\}?)*$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def compile_rules(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The mapping's rules with their compiled patterns, as statsd_exporter loads them."""
    default_type = (config.get("defaults") or {}).get("match_type", "glob")
    rules = []
    for source in config["mappings"]:
        rule = dict(source)
        rule["match_type"] = rule.get("match_type", default_type)
        if rule["match_type"] == "glob":
            assert GLOB_LINE.match(rule["match"]), f"invalid glob {rule['match']!r}"
            pattern = re.escape(rule["match"]).replace(r"\*", "([^.]*)")
            rule["regex"] = re.compile(f"^{pattern}$")
        else:
            assert rule["match_type"] == "regex", rule
            rule["regex"] = re.compile(rule["match"])
        rules.append(rule)
    return rules


def _expand(template: str, match: re.Match[str]) -> str:
    return re.sub(r"\$\{?(\d+)\}?", lambda m: match.group(int(m.group(1))) or "", template)


def map_metric(
    rules: list[dict[str, Any]], name: str, tags: dict[str, str]
) -> tuple[dict[str, Any], str, dict[str, str]] | None:
    """(rule, Prometheus name, labels) for a StatsD metric, or None if unmapped.

    statsd_exporter tries the glob rules first (first match in file order wins, a
    ``*`` being one dot-free segment), then, if none matched, the regex rules in file
    order; a regex is *searched* (unanchored). Mapping labels override tag labels.
    """
    for match_type in ("glob", "regex"):
        for rule in rules:
            if rule["match_type"] != match_type:
                continue
            found = rule["regex"].search(name)
            if found:
                mapped = {k: _expand(str(v), found) for k, v in (rule.get("labels") or {}).items()}
                return rule, _expand(rule["name"], found), {**tags, **mapped}
    return None


def observer(rule: dict[str, Any], defaults: dict[str, Any]) -> str:
    return rule.get("observer_type") or rule.get("timer_type") or defaults.get("observer_type", "")


def check_mapping(config: dict[str, Any]) -> list[str]:
    """Problems with a statsd_exporter mapping: rules that do not load, output names
    that are not documented, sample names that are unmapped or mapped wrongly."""
    problems = []
    defaults = config.get("defaults") or {}
    try:
        rules = compile_rules(config)
    except (AssertionError, re.error) as exc:
        return [f"mapping does not load: {exc}"]
    seen: dict[str, tuple[Any, ...]] = {}
    for rule in rules:
        where = f"rule {rule['match']!r}"
        if rule.get("action", "map") != "map":
            continue
        if not METRIC_NAME.match(rule["name"]):
            problems.append(f"{where}: invalid metric name {rule['name']!r}")
        for label in rule.get("labels") or {}:
            if not LABEL_NAME.match(label):
                problems.append(f"{where}: invalid label name {label!r}")
        if rule["name"] not in DOCUMENTED:
            problems.append(f"{where}: outputs {rule['name']!r}, not one of {sorted(DOCUMENTED)}")
        # One help text and one observer per metric: the exporter refuses to register
        # a second descriptor for a name with a different help.
        shape = (rule.get("help"), observer(rule, defaults), str(rule.get("histogram_options")))
        if seen.setdefault(rule["name"], shape) != shape:
            problems.append(
                f"{where}: help/observer/buckets differ from another {rule['name']} rule"
            )
    for sample in emitted():
        result = map_metric(rules, sample["name"], sample["tags"])
        where = f"{sample['name']} {sample['tags'] or ''}".rstrip()
        if result is None:
            problems.append(f"{where}: matched by no rule")
            continue
        rule, name, labels = result
        expected = PROM_NAMES[sample["event"]]
        if name != expected or labels != sample["labels"]:
            problems.append(
                f"{where}: mapped to {name}{labels}, expected {expected}{sample['labels']}"
            )
        if sample["kind"] == TIMER and observer(rule, defaults) != "histogram":
            problems.append(f"{where}: a timer mapped by {rule['match']!r} without a histogram")
    return problems


def mapping_outputs(config: dict[str, Any]) -> dict[str, str]:
    """Prometheus name -> "counter", "gauge" or "histogram", from the mapping's rules."""
    kinds = {s["name"]: s["kind"] for s in emitted()}
    rules = compile_rules(config)
    outputs = {}
    for sample in emitted():
        result = map_metric(rules, sample["name"], sample["tags"])
        if result is not None:
            rule, name, _ = result
            kind = kinds[sample["name"]]
            if kind == TIMER:
                kind = observer(rule, config.get("defaults") or {}) or "summary"
            outputs[name] = kind
    return outputs


# -------------------------------------------------------------------- PromQL

PROMQL_KEYWORDS = frozenset(
    {
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "atan2",
        "inf",
        "nan",
        "start",
        "end",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^{}]*)\}")
_MATCHER = re.compile(r'\s*([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])(\s*\()?")


def check_promql(expr: str, outputs: dict[str, str]) -> list[str]:
    """Problems with one PromQL expression: metrics the mapping does not produce,
    histogram suffixes on a non-histogram, labels it does not set, unknown outcomes."""
    problems = []
    for block in _MATCHERS.findall(expr):
        for matcher in filter(None, _split_flow(block)):
            found = _MATCHER.fullmatch(matcher)
            if not found:
                problems.append(f"unreadable label matcher {matcher!r} in {expr!r}")
                continue
            label, op, value = found.groups()
            if label not in QUERY_LABELS:
                problems.append(f"label {label!r} is not set by the mapping: {expr!r}")
            if label == "outcome" and op in ("=", "!="):
                unknown = {value} - set(OUTCOMES)
            elif label == "outcome":
                unknown = set(value.split("|")) - set(OUTCOMES)
            else:
                unknown = set()
            if unknown:
                problems.append(f"outcome {sorted(unknown)} is not an outcome: {expr!r}")
    text = _STRING.sub('""', expr)
    for group in _GROUPING.findall(text):
        for label in filter(None, (g.strip() for g in group.split(","))):
            if label not in QUERY_LABELS:
                problems.append(f"grouping label {label!r} is not set by the mapping: {expr!r}")
    text = _GROUPING.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    names = []
    for name, call in _IDENT.findall(text):
        if call or name in PROMQL_KEYWORDS:
            continue  # a function or an operator
        names.append(name)
    if not names:
        problems.append(f"no metric in {expr!r}")
    for name in names:
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name[: -len(suffix)] in outputs:
                base = name[: -len(suffix)]
        if base not in outputs:
            problems.append(f"metric {name!r} is not produced by the mapping: {expr!r}")
        elif base != name and outputs[base] not in ("histogram", "summary"):
            problems.append(f"{name!r}: {base} is a {outputs[base]}, not a histogram")
        elif name.endswith("_bucket") and outputs[base] != "histogram":
            problems.append(f"{name!r}: {base} is not a histogram")
        elif base == name and outputs[base] in ("histogram", "summary"):
            problems.append(f"{name!r} is a histogram: query _bucket, _sum or _count")
    return problems


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows
    return found


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query")
    return query.get("query", "") if isinstance(query, dict) else str(query or "")


def check_prometheus_dashboard(dashboard: dict[str, Any], outputs: dict[str, str]) -> list[str]:
    problems = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = _variable_query(variable)
        found = re.fullmatch(r"\s*label_values\(\s*([\w:]+)\s*,\s*(\w+)\s*\)\s*", query)
        if not found:
            problems.append(f"variable {variable['name']}: not label_values(metric, label)")
            continue
        metric, label = found.groups()
        problems += [f"variable {variable['name']}: {p}" for p in check_promql(metric, outputs)]
        if label not in QUERY_LABELS:
            problems.append(f"variable {variable['name']}: label {label!r} is not set")
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        exprs = [t.get("expr", "") for t in panel.get("targets", [])]
        if not exprs or not all(exprs):
            problems.append(f"panel {panel['title']!r}: a target without an expr")
        for expr in filter(None, exprs):
            problems += [f"panel {panel['title']!r}: {p}" for p in check_promql(expr, outputs)]
    return problems


def check_prometheus_rules(config: dict[str, Any], outputs: dict[str, str]) -> list[str]:
    problems = []
    for group in config["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert") or rule.get("record")
            problems += [f"rule {name}: {p}" for p in check_promql(rule["expr"], outputs)]
    return problems


# ------------------------------------------------------------------- Graphite

#: The StatsD daemon's namespace (non-legacy defaults) and the series it writes per type.
GRAPHITE_PREFIX = {COUNTER: "stats.counters.", TIMER: "stats.timers.", GAUGE: "stats.gauges."}
COUNTER_STATS = re.compile(r"rate|count")
TIMER_STATS = re.compile(
    r"mean|median|upper|lower|count|count_ps|sum|sum_squares|std|"
    r"(?:mean|upper|lower|sum|sum_squares|count)_\d+|histogram\.bin_\w+"
)
_PATH = re.compile(r"(?:[\w*$-]|\{[^{}]*\})+(?:\.(?:[\w*$-]|\{[^{}]*\})+)+")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def graphite_paths(target: str) -> list[str]:
    """The series paths in a Graphite target: every dotted token outside quotes."""
    text = _STRING.sub("''", target)
    text = re.sub(r"\$\{?(\w+)\}?", "*", text)  # Grafana variables: any one segment
    return [p for p in _PATH.findall(text) if not _NUMBER.fullmatch(p)]


def _expand_braces(path: str) -> list[str]:
    found = re.search(r"\{([^{}]*)\}", path)
    if not found:
        return [path]
    head, tail = path[: found.start()], path[found.end() :]
    return [e for alt in found.group(1).split(",") for e in _expand_braces(head + alt + tail)]


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + re.escape(pattern).replace(r"\*", "[^.]*") + "$")


def check_graphite_path(path: str, names: dict[str, str]) -> list[str]:
    """A series path must be an emitted dotted name (``*`` = one segment) under the
    StatsD namespace of its type, with one of that type's StatsD suffixes."""
    problems = []
    for concrete in _expand_braces(path):
        kind = next((k for k, p in GRAPHITE_PREFIX.items() if concrete.startswith(p)), None)
        if kind is None:
            problems.append(f"{concrete!r} is not under stats.counters/timers/gauges")
            continue
        rest = concrete[len(GRAPHITE_PREFIX[kind]) :]
        if kind == GAUGE:
            name = rest
        else:
            name, _, stat = rest.rpartition(".")
            valid = COUNTER_STATS if kind == COUNTER else TIMER_STATS
            if not valid.fullmatch(stat):
                problems.append(f"{concrete!r}: {stat!r} is not a StatsD {kind} series")
                continue
        pattern = _glob(name)
        matching = {n: k for n, k in names.items() if pattern.match(n)}
        if not matching:
            problems.append(f"{concrete!r}: {name!r} matches no emitted metric")
        elif any(k != kind for k in matching.values()):
            wrong = sorted({k for k in matching.values() if k != kind})
            problems.append(f"{concrete!r}: {name!r} is a {'/'.join(wrong)}, read as a {kind}")
    return problems


def check_graphite_target(target: str, names: dict[str, str]) -> list[str]:
    paths = graphite_paths(target)
    if not paths:
        return [f"no series path in {target!r}"]
    return [f"{p} (in {target!r})" for path in paths for p in check_graphite_path(path, names)]


def _full_paths(names: dict[str, str]) -> list[str]:
    full = []
    for name, kind in names.items():
        if kind == GAUGE:
            full.append(GRAPHITE_PREFIX[kind] + name)
        else:
            full += [GRAPHITE_PREFIX[kind] + name + ".count"]
    return full


def check_graphite_dashboard(dashboard: dict[str, Any], names: dict[str, str]) -> list[str]:
    problems = []
    full = _full_paths(names)
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = re.sub(r"\$\{?(\w+)\}?", "*", _variable_query(variable))
        # A metric-find query lists the next segment: it must be a prefix of a series.
        depth = query.count(".") + 1
        prefixes = {".".join(p.split(".")[:depth]) for p in full}
        if not any(_glob(q).match(p) for q in _expand_braces(query) for p in prefixes):
            problems.append(f"variable {variable['name']}: {query!r} finds no emitted series")
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        targets = [t.get("target", "") for t in panel.get("targets", [])]
        if not targets or not all(targets):
            problems.append(f"panel {panel['title']!r}: a target without a Graphite target")
        for target in filter(None, targets):
            problems += [
                f"panel {panel['title']!r}: {p}" for p in check_graphite_target(target, names)
            ]
    return problems


def check_grafana_alerts(config: dict[str, Any], names: dict[str, str]) -> list[str]:
    problems = []
    for group in config["groups"]:
        for rule in group["rules"]:
            queries = [d for d in rule["data"] if d["datasourceUid"] != "__expr__"]
            if not queries:
                problems.append(f"alert {rule['title']}: no Graphite query")
            for query in queries:
                target = query["model"].get("target", "")
                problems += [
                    f"alert {rule['title']}: {p}" for p in check_graphite_target(target, names)
                ]
    return problems


# ---------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def mapping() -> dict[str, Any]:
    return load_yaml(MAPPING)


@pytest.fixture(scope="module")
def outputs(mapping: dict[str, Any]) -> dict[str, str]:
    return mapping_outputs(mapping)


def test_every_emitted_name_is_mapped_to_its_documented_metric(mapping: dict[str, Any]) -> None:
    assert check_mapping(mapping) == []


def test_the_mapping_produces_the_seven_documented_metrics(outputs: dict[str, str]) -> None:
    assert outputs == {
        "celery_task_started_total": "counter",
        "celery_task_outcomes_total": "counter",
        "celery_task_duration_seconds": "histogram",
        "celery_task_queue_time_seconds": "histogram",
        "celery_queue_depth": "gauge",
        "celery_outbox_depth": "gauge",
        "celery_outbox_oldest_age_seconds": "gauge",
    }


def test_timer_buckets_span_5ms_to_10min(mapping: dict[str, Any]) -> None:
    for rule in mapping["mappings"]:
        if observer(rule, mapping.get("defaults") or {}) == "histogram":
            buckets = rule["histogram_options"]["buckets"]
            assert buckets == sorted(buckets), rule["match"]
            assert (buckets[0], buckets[-1]) == (0.005, 600), rule["match"]


def test_queue_depth_is_not_read_as_a_task_named_queue(mapping: dict[str, Any]) -> None:
    result = map_metric(compile_rules(mapping), metrics.queue_depth_metric(PREFIX, "queue"), {})
    assert result is not None
    assert result[1:] == ("celery_queue_depth", {"queue": "queue"})


def test_prometheus_dashboard_queries_only_mapped_metrics(outputs: dict[str, str]) -> None:
    dashboard = json.loads(PROMETHEUS_DASHBOARD.read_text())
    assert dashboard["schemaVersion"] == 39
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert {"task", "queue"} <= set(variables)
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    assert check_prometheus_dashboard(dashboard, outputs) == []


def test_prometheus_alerts_query_only_mapped_metrics(outputs: dict[str, str]) -> None:
    config = load_yaml(PROMETHEUS_ALERTS)
    rules = [rule for group in config["groups"] for rule in group["rules"]]
    assert len(rules) == 4
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]
    assert check_prometheus_rules(config, outputs) == []


def test_graphite_dashboard_reads_only_emitted_series() -> None:
    dashboard = json.loads(GRAPHITE_DASHBOARD.read_text())
    assert dashboard["schemaVersion"] == 39
    assert check_graphite_dashboard(dashboard, dotted_names()) == []


def test_graphite_alerts_read_only_emitted_series() -> None:
    config = load_yaml(GRAPHITE_ALERTS)
    assert config["apiVersion"] == 1
    rules = [rule for group in config["groups"] for rule in group["rules"]]
    assert len(rules) == 4
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["title"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["title"]
        assert rule["condition"] in {d["refId"] for d in rule["data"]}, rule["title"]
    assert check_grafana_alerts(config, dotted_names()) == []


def test_misspelt_metrics_are_rejected(mapping: dict[str, Any], outputs: dict[str, str]) -> None:
    names = dotted_names()
    # PromQL: a wrong metric, a wrong outcome, a wrong label, a histogram read bare.
    assert check_promql("sum(rate(celery_task_outcome_total[5m]))", outputs)
    assert check_promql('rate(celery_task_outcomes_total{outcome="exausted"}[5m])', outputs)
    assert check_promql("sum by (tsak) (rate(celery_task_started_total[5m]))", outputs)
    assert check_promql("rate(celery_task_duration_seconds[5m])", outputs)
    assert check_promql("rate(celery_queue_depth_bucket[5m])", outputs)
    assert not check_promql('sum(rate(celery_task_outcomes_total{outcome="failed"}[5m]))', outputs)
    # Graphite: a wrong event, a counter read as a timer, a wrong StatsD suffix, a
    # wrong alternative inside braces, a path outside the StatsD namespace.
    assert check_graphite_target("aliasByNode(stats.counters.celery.*.succeded.rate, 3)", names)
    assert check_graphite_target("stats.timers.celery.*.succeeded.median", names)
    assert check_graphite_target("stats.timers.celery.*.duration.p95", names)
    assert check_graphite_target("sumSeries(stats.counters.celery.*.{failed,faild}.rate)", names)
    assert check_graphite_target("celery.*.failed", names)
    assert not check_graphite_target("sumSeries(stats.counters.celery.$task.failed.rate)", names)
    # The same functions over whole files: one bad panel, alert or rule is caught.
    dashboard = json.loads(PROMETHEUS_DASHBOARD.read_text())
    dashboard["panels"][0]["targets"][0]["expr"] = "sum(rate(celery_task_outcome_total[5m]))"
    assert check_prometheus_dashboard(dashboard, outputs)
    alerts = load_yaml(PROMETHEUS_ALERTS)
    alerts["groups"][0]["rules"][0]["expr"] = "max(celery_queue_dept) > 1000"
    assert check_prometheus_rules(alerts, outputs)
    graphite = json.loads(GRAPHITE_DASHBOARD.read_text())
    graphite["panels"][0]["targets"][0]["target"] = "stats.counters.celery.*.succeded.rate"
    assert check_graphite_dashboard(graphite, names)
    grafana_alerts = load_yaml(GRAPHITE_ALERTS)
    grafana_alerts["groups"][0]["rules"][0]["data"][0]["model"]["target"] = (
        "stats.gauges.celery.queues.*.depth"
    )
    assert check_grafana_alerts(grafana_alerts, names)
    # The mapping: an undocumented output name, and an outcome rule with a typo.
    bad = copy.deepcopy(mapping)
    for rule in bad["mappings"]:
        rule["name"] = rule["name"].replace("outcomes", "outcome")
    assert check_mapping(bad)
    bad = copy.deepcopy(mapping)
    for rule in bad["mappings"]:
        rule["match"] = rule["match"].replace("succeeded", "succeded")
    assert any("matched by no rule" in p for p in check_mapping(bad))

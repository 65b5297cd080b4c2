"""The documented import path of the gates: ``from celery_reliable.gates import check``.

The audit lives in :mod:`celery_reliable.audit.gates`; this module re-exports its
public names so projects' own tests keep working.
"""

from celery_reliable.audit.gates import (
    PROJECT,
    PROJECT_GATES,
    Findings,
    GateResult,
    Status,
    TaskAudit,
    audit_project,
    audit_task,
    check,
    declared_rules,
    is_idempotent,
)
from celery_reliable.delivery.broker import BrokerFacts

__all__ = [
    "PROJECT",
    "PROJECT_GATES",
    "BrokerFacts",
    "Findings",
    "GateResult",
    "Status",
    "TaskAudit",
    "audit_project",
    "audit_task",
    "check",
    "declared_rules",
    "is_idempotent",
]

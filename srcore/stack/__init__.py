"""The local production stack: PostgreSQL, SeaweedFS (S3), MLflow, Prefect and a two-node Ray.

``up(config)`` starts every service on loopback with its data under one folder (``.stack/``) and
restarts one whose process runs but has stopped answering, ``status(config)`` reports each
service's state (running, not answering, not running), ``down(config)`` stops exactly what ``up``
started (PID files). The endpoints and credentials go to ``<root>/env`` while the stack runs.
"""

from srcore.stack.config import StackConfig, StackError
from srcore.stack.manager import ServiceState, ServiceStatus, UpReport, down, status, up

__all__ = ["StackConfig", "StackError", "ServiceState", "ServiceStatus", "UpReport", "up", "status", "down"]

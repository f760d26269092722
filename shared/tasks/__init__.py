"""The task registry: each task is one module with its head, tail, loss, metrics and labels.

Importing this package registers the built-in tasks. A new task is a new module that
decorates a `Task` subclass with `@register_task("name")`; the body and the transport never change.
"""

from festa.shared.tasks import classification, detection, segmentation  # noqa: F401  (registers them)
from festa.shared.tasks.base import (
    TASKS,
    MetricAccumulator,
    Task,
    get_task,
    primary_metric,
    register_task,
)

__all__ = ["TASKS", "MetricAccumulator", "Task", "get_task", "primary_metric", "register_task"]

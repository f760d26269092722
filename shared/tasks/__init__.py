"""The task registry: each task is one module with its head, tail, loss, metrics and labels.

Importing this package registers the built-in tasks; every list of task names (configs, the
CLI, site settings) comes from this registry. A new task is a new module that
decorates a `Task` subclass with `@register_task("name")`; the body and the transport never change.
"""

# Importing the task modules registers them; this order is the default task order of a run.
from festa.shared.tasks import classification, segmentation, detection  # noqa: F401, I001
from festa.shared.tasks.base import (
    TASKS,
    MetricAccumulator,
    Task,
    get_task,
    primary_metric,
    register_task,
)

__all__ = ["TASKS", "MetricAccumulator", "Task", "get_task", "primary_metric", "register_task"]

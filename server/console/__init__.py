"""The aggregation console: web page + JSON API (`app`), CLI views (`cli`), HTML export (`report`)."""

from festa.server.console.app import ConsoleBindError, ConsoleServer, check_bind, create_app

__all__ = ["ConsoleBindError", "ConsoleServer", "check_bind", "create_app"]

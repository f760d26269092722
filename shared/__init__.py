"""festa's shared library: the split model, tasks, data and wire formats.

Both the server and the client import from here; this package imports neither.
"""

__version__ = "0.1.0"

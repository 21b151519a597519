"""A graph module whose own import fails (test_router checks that the traceback points here)."""

import servegraph_missing_dependency  # noqa: F401

graph = None

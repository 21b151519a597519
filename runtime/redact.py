"""Model parameters and class arguments as shown to people, with secrets masked.

A parameter named like a secret (``api_key``, ``hf_token``, ``db_password``, ...) must not reach
whoever reads a Describe answer, a saved YAML file or a log. The real values still travel where they
are needed: `ModelSpec.to_dict()` is what worker processes load their models from, so masking
happens here, in a copy made only for display.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"
# "token" but not "tokens"/"tokenizer" (max_tokens is a count, a tokenizer a path); "auth" and
# "authorization" but not "author(s)".
SECRET_NAME = re.compile(
    r"api[_-]?key|token(?!s|i[sz]e)|passw(?:or)?d|secret|credential|private[_-]?key|auth(?!ors?(?![a-z]))",
    re.IGNORECASE,
)
ARGUMENTS = frozenset({"parameters", "class_args"})  # the keys of a graph's dict that hold user arguments


def is_secret(name: Any) -> bool:
    return isinstance(name, str) and SECRET_NAME.search(name) is not None


def redacted(spec: Any) -> Any:
    """A copy of a graph's (or step's) dict in which every secret-named parameter or class argument,
    at any depth inside them, reads ``"***"``; the rest (step names included) is left as it is."""
    if isinstance(spec, dict):
        return {key: _masked(value) if key in ARGUMENTS else redacted(value) for key, value in spec.items()}
    if isinstance(spec, list):
        return [redacted(item) for item in spec]
    return spec


def _masked(arguments: Any) -> Any:
    if isinstance(arguments, dict):
        return {key: MASK if is_secret(key) else _masked(value) for key, value in arguments.items()}
    if isinstance(arguments, list | tuple):
        return [_masked(item) for item in arguments]
    return arguments

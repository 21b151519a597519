"""What a worker hosts (`Placement`s) and their fingerprint, the same on the router's side and the worker's.

The router sends a worker its placements as JSON (``{name: placement.to_dict()}``); a remote worker,
started on its own host from the same graph, computes them itself. The fingerprint (a hash of that
JSON, written canonically) is how a router tells that a worker it reaches over the network hosts
exactly the models it expects: the same classes, parameters, artifacts and proxies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .artifacts import ModelArtifact
from .spec import ModelSpec


@dataclass
class Placement:
    """A model to load in a worker, with the endpoints it serves as proxies and their artifacts."""

    spec: ModelSpec
    proxies: dict[str, ModelArtifact | None]

    def to_dict(self) -> dict[str, object]:
        proxies = {name: artifact.to_dict() if artifact else None for name, artifact in self.proxies.items()}
        return {"spec": self.spec.to_dict(), "proxies": proxies}


def declarations(placements: Mapping[str, Placement]) -> dict[str, Any]:
    """The JSON a worker is started with: each model's declaration by name."""
    return {name: placement.to_dict() for name, placement in placements.items()}


def fingerprint(declared: Mapping[str, Any]) -> str:
    """A hash of a worker's declarations (`declarations`, or that JSON read back), key order aside."""
    canonical = json.dumps(declared, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()

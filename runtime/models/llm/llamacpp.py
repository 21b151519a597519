"""A GGUF model on llama.cpp (llama-cpp-python's low-level API) as a continuous-batching backend.

The high-level `llama_cpp.Llama` decodes one sequence per object. Here one context holds
``max_batch_size`` sequences (seq_id = slot) and each scheduler step is ONE `llama_decode` of one
`llama_batch` mixing prefills and one-token decodes, with logits requested only for each entry's
last token. `truncate` is `llama_memory_seq_rm` on the sequence's tail.

The KV cache is not unified (``kv_unified = False``): each sequence gets its own ``n_ctx`` cells
(the context is ``n_ctx * max_batch_size``) and attends only over them, which is what llama.cpp
recommends when sequences share no prefix. The prompt is rendered with the GGUF's own chat
template through llama-cpp-python's `Jinja2ChatFormatter` and tokenized with llama.cpp's tokenizer
exactly as `Llama.create_chat_completion` does, so prompt token counts match it. A free slot's
cells stay until the scheduler reuses their prefix (`truncate` keeps it, removing only the tail).
"""

from __future__ import annotations

import ctypes
import logging
import weakref
from pathlib import Path

import llama_cpp
import numpy
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from ...errors import GraphError, InvalidArgument, ServingError

GGUF_MAGIC = b"GGUF"
UBATCH = 512  # physical batch, as `Llama`'s default: long prefills are split the same way

llama_cpp.llama_backend_init()
# llama-cpp-python prints llama.cpp's log to stderr when its logger's level allows (loading a model
# logs ~1200 lines). Its map of ggml levels is one off (ggml INFO lands on WARNING), so quiet it the
# way `Llama(verbose=False)` does, unless the application chose a level itself.
if logging.getLogger("llama-cpp-python").level == logging.NOTSET:
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)


class LlamaCppBackend:
    """One llama.cpp model and context serving up to ``max_batch_size`` sequences at once."""

    def __init__(
        self, path: str, n_ctx: int = 2048, n_threads: int = 1, n_threads_batch: int = 1, max_batch_size: int = 8
    ):
        file = Path(path)
        if not file.is_file():
            raise InvalidArgument(f"LLModel: no GGUF file at '{path}'")
        with file.open("rb") as handle:
            if handle.read(4) != GGUF_MAGIC:
                raise InvalidArgument(f"LLModel: '{path}' is not a GGUF file")
        model = llama_cpp.llama_model_load_from_file(str(file).encode(), llama_cpp.llama_model_default_params())
        if not model:
            raise GraphError(f"LLModel: llama.cpp could not load '{path}'")
        self.max_batch_size = max_batch_size
        self.max_step_tokens = n_ctx + max_batch_size  # any one prompt that fits, plus everyone's decode
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx * max_batch_size
        params.n_seq_max = max_batch_size
        params.kv_unified = False
        params.n_batch = self.max_step_tokens
        params.n_ubatch = min(UBATCH, self.max_step_tokens)
        # llama.cpp decodes one token with n_threads and a step of several (a prompt, or many
        # sequences) with n_threads_batch: one stream stays on one core, a batch may use more.
        params.n_threads, params.n_threads_batch = n_threads, n_threads_batch
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED  # as `Llama`'s default
        context = llama_cpp.llama_init_from_model(model, params)
        if not context:
            llama_cpp.llama_model_free(model)
            raise GraphError(f"LLModel: llama.cpp could not create a context for '{path}'")
        batch = llama_cpp.llama_batch_init(self.max_step_tokens, 0, 1)
        self._finalizer = weakref.finalize(self, _release, model, context, batch)
        self._context, self._batch = context, batch
        self._memory = llama_cpp.llama_get_memory(context)
        self._vocab = llama_cpp.llama_model_get_vocab(model)
        self.n_ctx = llama_cpp.llama_n_ctx_seq(context)
        self._n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.eos_ids = frozenset(t for t in range(self._n_vocab) if llama_cpp.llama_vocab_is_eog(self._vocab, t))
        self._lengths = [0] * max_batch_size
        self._pieces: dict[int, bytes] = {}
        self._format = self._chat_formatter(model, path)
        # numpy views of the batch's arrays: filling them is one vectorized write per field
        size = self.max_step_tokens
        self._tokens = numpy.ctypeslib.as_array(batch.token, shape=(size,))
        self._positions = numpy.ctypeslib.as_array(batch.pos, shape=(size,))
        self._outputs = numpy.ctypeslib.as_array(batch.logits, shape=(size,))
        self._n_seq = numpy.ctypeslib.as_array(batch.n_seq_id, shape=(size,))
        self._n_seq[:] = 1

    def _chat_formatter(self, model: llama_cpp.llama_model_p, path: str) -> Jinja2ChatFormatter:
        """The GGUF's ``tokenizer.chat_template``, rendered as `Llama.create_chat_completion` does."""
        template = llama_cpp.llama_model_chat_template(model, None)
        if not template:
            raise GraphError(f"LLModel: '{path}' has no chat template (tokenizer.chat_template)")

        def text(token: int) -> str:
            return llama_cpp.llama_vocab_get_text(self._vocab, token).decode() if token >= 0 else ""

        return Jinja2ChatFormatter(
            template.decode(),
            eos_token=text(llama_cpp.llama_vocab_eos(self._vocab)),
            bos_token=text(llama_cpp.llama_vocab_bos(self._vocab)),
        )

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        prompt = self._format(messages=messages).prompt.encode()
        capacity = len(prompt) + 16
        tokens = (llama_cpp.llama_token * capacity)()
        count = llama_cpp.llama_tokenize(self._vocab, prompt, len(prompt), tokens, capacity, False, True)
        if count < 0:  # more tokens than bytes + 16 cannot happen for BPE/SPM, but be exact anyway
            capacity = -count
            tokens = (llama_cpp.llama_token * capacity)()
            count = llama_cpp.llama_tokenize(self._vocab, prompt, len(prompt), tokens, capacity, False, True)
        return list(tokens[:count])

    def forward(self, work: list[tuple[int, list[int]]]) -> numpy.ndarray:
        total = sum(len(tokens) for _, tokens in work)
        if total > self.max_step_tokens:
            raise ServingError(f"llama.cpp step of {total} tokens exceeds the batch of {self.max_step_tokens}")
        last = []
        start = 0
        for slot, tokens in work:
            count, position = len(tokens), self._lengths[slot]
            self._tokens[start : start + count] = tokens
            self._positions[start : start + count] = numpy.arange(position, position + count)
            self._outputs[start : start + count] = 0
            for i in range(start, start + count):
                self._batch.seq_id[i][0] = slot
            start += count
            last.append(start - 1)
        self._outputs[last] = 1
        self._batch.n_tokens = total
        status = llama_cpp.llama_decode(self._context, self._batch)
        if status != 0:
            raise ServingError(f"llama_decode failed with status {status} on {len(work)} sequences")
        for slot, tokens in work:
            self._lengths[slot] += len(tokens)
        logits = numpy.empty((len(work), self._n_vocab), numpy.float32)
        for row, index in enumerate(last):
            pointer = llama_cpp.llama_get_logits_ith(self._context, index)
            logits[row] = numpy.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        return logits

    def truncate(self, slot: int, length: int) -> int:
        if length >= self._lengths[slot]:
            return self._lengths[slot]
        if not llama_cpp.llama_memory_seq_rm(self._memory, slot, length, -1):  # cannot cut: drop it all
            llama_cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)
            length = 0
        self._lengths[slot] = length
        return length

    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            buffer = ctypes.create_string_buffer(64)
            size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, 64, 0, False)
            if size < 0:
                buffer = ctypes.create_string_buffer(-size)
                size = llama_cpp.llama_token_to_piece(self._vocab, token, buffer, -size, 0, False)
            piece = self._pieces[token] = buffer.raw[:size]
        return piece

    def close(self) -> None:
        """Free the model, context and batch now rather than when collected."""
        self._finalizer()


def _release(model: llama_cpp.llama_model_p, context: llama_cpp.llama_context_p, batch: llama_cpp.llama_batch) -> None:
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(context)
    llama_cpp.llama_model_free(model)

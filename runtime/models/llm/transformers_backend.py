"""A transformers causal LM as a continuous-batching backend: packed sequences, per-slot KV cache.

Each step feeds the new tokens of every running sequence as ONE packed row (``[1, total_tokens]``)
with each token's own position id, so every linear layer runs once for the whole batch, prefills
and decodes mixed, and no token is padding. Only attention is per sequence: it is swapped for
`_packed_attention` (registered with transformers' AttentionInterface), which writes each slot's new
keys/values into a preallocated per-layer buffer ``[slots, kv_heads, capacity, head_dim]`` and
attends each sequence to its own past. Decodes of all slots share one SDPA call (keys padded to the
longest sequence and masked); a prefill is one causal SDPA call (with an explicit offset mask when it
continues a prefix the scheduler reused from the slot's cache).

Batched is not bit-identical to alone on CPU: torch's matmul for one row (gemv) and for several
(gemm) round differently (~1e-5 on SmolLM2's projections), and key padding moves SDPA's last bits
(~1e-7). Greedy answers only change at a near-tie of the top two logits: over 24 SmolLM2 prompts
(1,152 greedy tokens) served together and alone, none did.

This replaces transformers' DynamicCache (which grows by concatenation every step) and avoids the
model's mask construction; positions, RoPE and everything else stay the model's own code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy
import torch
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer

from ...errors import GraphError

ATTENTION = "servegraph_packed"
MIN_CAPACITY = 256


@dataclass
class _Decodes:
    """This step's one-token entries, as index tensors built once per step (not once per layer)."""

    slots: torch.Tensor  # their slots
    starts: torch.Tensor  # their token's offset in the packed row
    positions: torch.Tensor  # their token's position (the slot's length before this step)
    lo: int  # slots lo..lo+rows-1 take part in the shared SDPA call (a view of the cache)
    rows: torch.Tensor  # each entry's row in that call (slot - lo)
    shape: tuple[int, int]  # (rows, longest): the call's rows and keys
    mask: torch.Tensor | None  # [rows, 1, 1, longest]: each row's valid keys (a row not decoding sees
    # key 0); None when every row sees all `longest` keys (same result, faster kernel)
    dense: bool  # the whole step is decodes of slots lo, lo+1, ... in packed order: no gather/scatter


@dataclass
class _Plan:
    """Where each sequence's new tokens sit in this step's packed row."""

    prefills: list[tuple[int, int, int, int, torch.Tensor | None]]  # (slot, start, count, position, mask)
    decodes: _Decodes | None
    cache: _SlotCache

    @classmethod
    def build(cls, work: list[tuple[int, list[int]]], lengths: list[int], cache: _SlotCache, device: str) -> _Plan:
        prefills, decodes, start = [], [], 0
        for slot, tokens in work:
            count, position = len(tokens), lengths[slot]
            if count > 1:  # a prompt; after a reused prefix it also attends to the cached part
                end = position + count
                mask = (torch.arange(end) <= torch.arange(position, end)[:, None]).to(device) if position else None
                prefills.append((slot, start, count, position, mask))
            else:
                decodes.append((slot, start, position))
            start += count
        if not decodes:
            return cls(prefills, None, cache)
        slots, starts, positions = (torch.tensor(column) for column in zip(*decodes, strict=True))
        lo, hi = int(slots.min()), int(slots.max()) + 1
        limit = torch.ones(hi - lo, dtype=torch.long)
        limit[slots - lo] = positions + 1
        longest = int(limit.max())
        mask = (torch.arange(longest) < limit[:, None])[:, None, None, :]
        dense = not prefills and slots.tolist() == list(range(lo, hi))
        on = [tensor.to(device) for tensor in (slots, starts, positions, slots - lo)]
        mask = None if bool(mask.all()) else mask.to(device)
        return cls(prefills, _Decodes(on[0], on[1], on[2], lo, on[3], (hi - lo, longest), mask, dense), cache)


class _SlotCache:
    """Keys and values of every slot, per layer, in buffers that grow by doubling (never per step)."""

    def __init__(self, layers: int, slots: int, kv_heads: int, head_dim: int, dtype: torch.dtype, device: str):
        shape = (slots, kv_heads, MIN_CAPACITY, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]

    def reserve(self, length: int) -> None:
        capacity = self.keys[0].shape[2]
        if length <= capacity:
            return
        while capacity < length:
            capacity *= 2
        for buffers in (self.keys, self.values):
            for i, old in enumerate(buffers):
                new = old.new_zeros((*old.shape[:2], capacity, old.shape[3]))
                new[:, :, : old.shape[2]] = old
                buffers[i] = new

    def attend(
        self, layer: int, plan: _Plan, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """Attention output ``[1, tokens, heads, dim]`` for the packed ``query [1, heads, tokens, dim]``."""
        keys, values = self.keys[layer], self.values[layer]
        heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[3]
        out = query.new_empty((query.shape[2], heads, dim))
        for slot, start, count, position, mask in plan.prefills:
            end = position + count
            keys[slot, :, position:end] = key[0, :, start : start + count]
            values[slot, :, position:end] = value[0, :, start : start + count]
            out[start : start + count] = torch.nn.functional.scaled_dot_product_attention(
                query[:, :, start : start + count],
                keys[slot : slot + 1, :, :end].repeat_interleave(heads // kv_heads, dim=1),
                values[slot : slot + 1, :, :end].repeat_interleave(heads // kv_heads, dim=1),
                attn_mask=mask,
                is_causal=mask is None,  # a prompt from position 0: causal over itself
                scale=scale,
            )[0].transpose(0, 1)
        decodes = plan.decodes
        if decodes is not None:
            # One SDPA for all one-token entries over slots lo..lo+rows-1, a view of the buffers (no
            # copy). The query heads sharing a kv head become that head's query rows (grouped-query
            # attention without repeating keys); keys past a row's length are masked (exact zeros).
            rows, longest = decodes.shape
            if decodes.dense:  # views: [tokens, heads, dim] is how q/k/v_proj laid them out
                q, new_keys, new_values = (t[0].transpose(0, 1) for t in (query, key, value))
            else:
                new_keys, new_values = (t[0, :, decodes.starts].transpose(0, 1) for t in (key, value))
                q = query.new_zeros((rows, heads, dim))
                q[decodes.rows] = query[0, :, decodes.starts].transpose(0, 1)
            keys[decodes.slots, :, decodes.positions] = new_keys
            values[decodes.slots, :, decodes.positions] = new_values
            attended = torch.nn.functional.scaled_dot_product_attention(
                q.reshape(rows, kv_heads, -1, dim),
                keys[decodes.lo : decodes.lo + rows, :, :longest],
                values[decodes.lo : decodes.lo + rows, :, :longest],
                attn_mask=decodes.mask,
                scale=scale,
            ).reshape(rows, heads, dim)
            if decodes.dense:
                return attended.unsqueeze(0)
            out[decodes.starts] = attended[decodes.rows]
        return out.unsqueeze(0)


def _packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    packed: _Plan | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    if packed is None:
        raise GraphError(f"the '{ATTENTION}' attention only runs under TransformersBackend.forward")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    return packed.cache.attend(module.layer_idx, packed, query, key, value, scale), None


AttentionInterface.register(ATTENTION, _packed_attention)


class TransformersBackend:
    """A transformers causal LM whose attention goes through AttentionInterface with the usual
    ``[batch, heads, tokens, dim]`` shapes and plain softmax attention (Llama, Qwen2, Mistral, ...).
    A sliding window caps the context, since within it full attention is the same."""

    def __init__(self, directory: str, max_batch_size: int = 8, device: str = "cpu", n_ctx: int = 2048):
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModelForCausalLM.from_pretrained(directory, attn_implementation=ATTENTION).to(device).eval()
        config = self.model.config.get_text_config()
        self.max_batch_size = max_batch_size
        limits = (getattr(config, "max_position_embeddings", None), getattr(config, "sliding_window", None))
        self.n_ctx = min(n_ctx, *(limit for limit in limits if limit))
        self.max_step_tokens = self.n_ctx + max_batch_size
        eos = self.model.generation_config.eos_token_id
        eos_ids = {*(eos if isinstance(eos, list) else [eos]), self.tokenizer.eos_token_id}
        self.eos_ids = frozenset(token for token in eos_ids if token is not None)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        self._cache = _SlotCache(config.num_hidden_layers, max_batch_size, kv_heads, head_dim, self.model.dtype, device)
        self._lengths = [0] * max_batch_size
        self._bytes = _token_bytes_table(self.tokenizer)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)
        return list(encoded["input_ids"])

    def forward(self, work: list[tuple[int, list[int]]]) -> numpy.ndarray:
        ids, position_ids, last = [], [], []
        for slot, tokens in work:
            ids.extend(tokens)
            position_ids.extend(range(self._lengths[slot], self._lengths[slot] + len(tokens)))
            last.append(len(ids) - 1)
        self._cache.reserve(max(self._lengths[slot] + len(tokens) for slot, tokens in work))
        plan = _Plan.build(work, self._lengths, self._cache, self.device)
        with torch.inference_mode():
            output = self.model(
                input_ids=torch.tensor([ids], device=self.device),
                position_ids=torch.tensor([position_ids], device=self.device),
                use_cache=False,
                logits_to_keep=torch.tensor(last, device=self.device),
                packed=plan,
            )
        for slot, tokens in work:
            self._lengths[slot] += len(tokens)
        return output.logits[0].float().cpu().numpy()

    def truncate(self, slot: int, length: int) -> int:
        self._lengths[slot] = min(length, self._lengths[slot])  # later positions get overwritten
        return self._lengths[slot]

    def token_bytes(self, token: int) -> bytes:
        return self._bytes[token] if token < len(self._bytes) else b""

    def close(self) -> None:
        self._cache.keys.clear()
        self._cache.values.clear()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()


def _token_bytes_table(tokenizer: Any) -> list[bytes]:
    """Each token's bytes, so the scheduler can decode incrementally (and hold back half characters).

    Byte-level BPE vocabularies (GPT-2 style: SmolLM, Llama 3, Qwen) map back exactly; for
    SentencePiece ones, ``<0xNN>`` byte tokens are bytes and ``▁`` is a space. Special tokens are empty.
    """
    byte_level = "ByteLevel" in repr(getattr(tokenizer.backend_tokenizer, "decoder", None))
    decoder = {char: byte for byte, char in _bytes_to_unicode().items()}
    special = set(tokenizer.all_special_ids)
    added = {index: token.content for index, token in tokenizer.added_tokens_decoder.items()}
    table = []
    for index, token in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if index in special or token is None:
            table.append(b"")
        elif index in added:
            table.append(added[index].encode())
        elif byte_level:
            table.append(bytes(decoder[char] for char in token))
        elif len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
            table.append(bytes([int(token[3:5], 16)]))
        else:
            table.append(token.replace("\u2581", " ").encode())
    return table


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return chars

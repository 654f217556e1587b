"""Causal self-attention in query blocks for CPU evaluation.

PyTorch's CPU flash-attention kernel (aten _scaled_dot_product_flash_attention_for_cpu) splits
the keys into blocks of up to 512 and skips only whole key blocks above the diagonal, so with
up to 512 keys (the tiny model's windows, and every window shorter than that) is_causal=True
computes the full square and masks half of it away. Here the queries go in blocks of
QUERY_BLOCK, each against the keys up to its own end with the diagonal block masked, so about
half the square is computed; the same kernel runs each block. Scoring 512-token windows takes
~30% less attention time (a quarter of the forward pass on the tiny model), results equal to
float32 rounding.

A GPU's kernels (flash, memory-efficient, cuDNN) skip masked tiles themselves, so this is used
on CPU only, and only for the evaluation forward passes (`blocked_causal_attention(model)`
around them); any call it does not cover (a mask, a KV cache, softcapping, sinks, non-causal
modules) goes to transformers' SDPA unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, PreTrainedModel
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

NAME = "veredicto_causal_blocks"
# Query rows per block: measured on [8, 4, 512, 48] single-threaded, 32-64 are within 5% of
# each other and ~30% under the unblocked kernel; smaller blocks only add calls.
QUERY_BLOCK = 64
# Keyword arguments that change the attention arithmetic: such calls go to SDPA.
_UNCOVERED = ("softcap", "s_aux", "sinks", "position_bias", "cache")


def causal_blocks_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: [batch, heads, seq, head_dim] in,
    ([batch, seq, heads, head_dim], None) out, as sdpa_attention_forward."""
    q_length = query.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if (
        attention_mask is not None
        or not causal
        or dropout
        or q_length <= QUERY_BLOCK
        or key.shape[2] != q_length
        or query.device.type != "cpu"
        or any(kwargs.get(name) is not None for name in _UNCOVERED)
    ):
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )
    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1:
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = torch.empty_like(query)
    for start in range(0, q_length, QUERY_BLOCK):
        end = min(start + QUERY_BLOCK, q_length)
        # query start + i sees keys 0 .. start + i
        mask = torch.ones(end - start, end, dtype=torch.bool, device=query.device)
        out[:, :, start:end] = F.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, :end],
            value[:, :, :end],
            attn_mask=mask.tril(diagonal=start),
            scale=scaling,
        )
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, causal_blocks_attention)
# The same masks as SDPA (None where plain causal will do), so a model whose mask says more
# (sliding windows, padding) hands its mask here and is sent on to SDPA.
AttentionMaskInterface.register(NAME, sdpa_mask)


@contextlib.contextmanager
def blocked_causal_attention(model: PreTrainedModel) -> Iterator[None]:
    """Within the block, a CPU model that uses SDPA uses causal_blocks_attention instead.

    It switches the model's own config (set_attn_implementation) and switches it back on the
    way out, error or not; a model shared by threads that run it at the same time would see
    the switch too (eval workers run one job at a time).
    """
    before = getattr(model.config, "_attn_implementation", None)
    # Models that do not take their attention from AttentionInterface cannot switch.
    switchable = getattr(model, "_can_set_attn_implementation", None)
    if before != "sdpa" or model.device.type != "cpu" or not (switchable and switchable()):
        yield
        return
    try:
        model.set_attn_implementation(NAME)
    except ValueError:  # transformers refused the switch for this model: it keeps SDPA
        yield
        return
    try:
        yield
    finally:
        model.set_attn_implementation(before)

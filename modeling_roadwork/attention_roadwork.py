"""Attention layers of the roadwork head: gated attention (the stack) and gated attention fusion (GAFM)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers_roadwork import RoadworkMlp


class RoadworkAttention(nn.Module):
    """
    Multi-head self-attention over views with `torch.nn.functional.scaled_dot_product_attention` (PyTorch picks the
    kernel). With `gated=True` the attention output is multiplied, before `out_proj`, by `sigmoid(gate_proj(x))`
    computed from the layer's input (gated attention, Qwen team, NeurIPS 2025).

    The submodule names `qkv_proj`, `gate_proj` and `out_proj` are PEFT `target_modules`: never rename them.
    """

    def __init__(self, *, hidden_size: int, num_heads: int, dropout: float = 0.0, gated: bool = False):
        super().__init__()
        assert hidden_size % num_heads == 0, f"hidden_size {hidden_size} not divisible by num_heads {num_heads}"
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.dropout = dropout
        self.qkv_proj = nn.Linear(hidden_size, 3 * hidden_size)
        self.gate_proj = nn.Linear(hidden_size, hidden_size) if gated else None
        self.out_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)"""
        B, N, C = hidden_states.shape
        qkv = self.qkv_proj(hidden_states)
        # (B, N, 3C) -> 3 x (B, heads, N, head_dim)
        q, k, v = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        attn = attn.transpose(1, 2).reshape(B, N, C)  # (B, heads, N, d) -> (B, N, C)
        if self.gate_proj is not None:
            attn = attn * torch.sigmoid(self.gate_proj(hidden_states))
        return self.out_proj(attn)


class RoadworkGatedAttentionLayer(RoadworkAttention):
    """
    Post-norm residual block `LN(x + dropout(gated_attention(x)))`. It subclasses [`RoadworkAttention`] so that its
    projections are `attention_layers.N.qkv_proj` / `gate_proj` / `out_proj` in the state dict.
    """

    def __init__(
        self, *, hidden_size: int, num_heads: int, attention_dropout: float, hidden_dropout: float, gated: bool = True
    ):
        super().__init__(hidden_size=hidden_size, num_heads=num_heads, dropout=attention_dropout, gated=gated)
        self.residual_dropout = nn.Dropout(hidden_dropout)
        self.layer_norm = nn.LayerNorm(hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, N, C) -> (B, N, C)"""
        return self.layer_norm(hidden_states + self.residual_dropout(super().forward(hidden_states)))


class RoadworkViewFusion(nn.Module):
    """
    Gated attention fusion (GAFM): per-view importance gates (MLP `C -> gate_hidden -> 1`, sigmoid), cross-view
    self-attention, a refinement self-attention (both residual + LayerNorm), then the gate-weighted mean of the views.
    """

    def __init__(self, *, hidden_size: int, num_heads: int, gate_hidden_size: int, dropout: float):
        super().__init__()
        self.importance_gate = RoadworkMlp(in_features=hidden_size, hidden_features=gate_hidden_size, out_features=1)
        self.cross_view_attention = RoadworkAttention(hidden_size=hidden_size, num_heads=num_heads, dropout=dropout)
        self.cross_view_norm = nn.LayerNorm(hidden_size)
        self.refinement_attention = RoadworkAttention(hidden_size=hidden_size, num_heads=num_heads, dropout=dropout)
        self.refinement_norm = nn.LayerNorm(hidden_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, N, C) -> fused (B, C), gates (B, N)"""
        gates = torch.sigmoid(self.importance_gate(views))  # (B, N, 1)
        views = self.cross_view_norm(views + self.dropout(self.cross_view_attention(views)))
        views = self.refinement_norm(views + self.dropout(self.refinement_attention(views)))
        # Gates are in (0, 1), so the normaliser is > 0; the epsilon only guards underflow in low precision.
        fused = (views * gates).sum(dim=1) / gates.sum(dim=1).clamp_min(1e-6)
        return fused, gates.squeeze(-1)


__all__ = ["RoadworkAttention", "RoadworkGatedAttentionLayer", "RoadworkViewFusion"]

"""A small pre-norm transformer encoder classifier, written with plain ops so torch.fx traces it.

Each example is flattened and cut into `tokens` equal chunks; each chunk is embedded by a Linear
to `dim`, a learned position embedding is added, `depth` blocks of residual self-attention and
MLP follow (pre-norm), then a final LayerNorm, mean-pooling over tokens and the `head`.
nn.MultiheadAttention is avoided on purpose: it does not trace with torch.fx.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def auto_tokens(n_features: int) -> int:
    """The divisor of `n_features` closest to its square root (ties go to more tokens)."""
    root = math.sqrt(n_features)
    divisors = [d for d in range(1, n_features + 1) if n_features % d == 0]
    return min(divisors, key=lambda d: (abs(d - root), -d))


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention with Linear `q`, `k`, `v` and `proj`."""

    def __init__(self, dim: int, heads: int, tokens: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.tokens, self.head_dim = heads, tokens, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        # (B, T, dim) -> (B, heads, T, head_dim); -1 keeps the batch size symbolic for fx.
        return x.reshape(-1, self.tokens, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        out = torch.matmul(self.drop(attn), v).transpose(1, 2)
        out = out.reshape(-1, self.tokens, self.heads * self.head_dim)
        return self.drop(self.proj(out))


class MLPBlock(nn.Module):
    """Position-wise feed-forward: `fc1` → GELU → `fc2`."""

    def __init__(self, dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


class EncoderBlock(nn.Module):
    """Pre-norm block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, heads: int, tokens: int, mlp_hidden: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, tokens, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLPBlock(dim, mlp_hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """`embed` + `pos` → `blocks.i` → `norm` → mean over tokens → dropout → `head`."""

    def __init__(self, n_features: int, classes: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float, tokens: int, dropout: float) -> None:
        super().__init__()
        self.tokens, self.chunk = tokens, n_features // tokens
        self.embed = nn.Linear(self.chunk, dim)
        self.pos = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        hidden = max(1, round(dim * mlp_ratio))
        self.blocks = nn.ModuleList(
            EncoderBlock(dim, heads, tokens, hidden, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1).reshape(-1, self.tokens, self.chunk)
        x = self.embed(x) + self.pos
        for block in self.blocks:
            x = block(x)
        x = self.norm(x).mean(dim=1)
        return self.head(self.drop(x))


def build_transformer(in_shape: tuple[int, ...], classes: int, dim: int = 32, depth: int = 2,
                      heads: int = 4, mlp_ratio: float = 2.0, tokens: int = 0,
                      dropout: float = 0.0) -> nn.Module:
    """Build the transformer classifier for inputs of any shape (flattened, cut into tokens)."""
    if dim % heads != 0:
        raise ValueError(f"transformer dim ({dim}) must be divisible by heads ({heads}); "
                         f"e.g. dim = {heads * max(1, round(dim / heads))}")
    n_features = math.prod(in_shape)
    if tokens == 0:
        tokens = auto_tokens(n_features)
    elif n_features % tokens != 0:
        divisors = [d for d in range(1, n_features + 1) if n_features % d == 0]
        near = min(divisors, key=lambda d: abs(d - tokens))
        raise ValueError(f"transformer tokens ({tokens}) must divide the {n_features} input "
                         f"features of each example; e.g. tokens = {near}, or 0 to choose")
    return Transformer(n_features, classes, dim, depth, heads, mlp_ratio, tokens, dropout)

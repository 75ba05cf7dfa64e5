"""A BERT encoder in plain torch, for inference only (`TextEncoder(..., inference=True)`).

Why not transformers' `BertModel` here: importing its modelling code costs 1.6-1.9 s on top of
torch on a 2-core CPU (transformers 5 pulls in torch._dynamo, torch.distributed, scipy.optimize
and sympy on the way), while the whole cold `text2brain query` should take at most 2.5 s. The
forward pass of a BERT encoder is a few lines of torch, so text2brain runs it itself when it
only predicts. Training always uses transformers (dropout, gradient checkpointing, any
architecture), and inference falls back to it for every checkpoint this module does not
reproduce exactly (see `supports`). tests/models/test_bert.py checks the outputs against
transformers' `BertModel` to 1e-5.

The submodules carry transformers' names (`embeddings.word_embeddings`,
`encoder.layer.0.attention.self.query`, ...), so state dicts are interchangeable: checkpoints
and exports load unchanged.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Weights file of a Hugging Face folder that this module reads.
WEIGHTS_FILE = "model.safetensors"


class BertOutput(NamedTuple):
    """What `TextEncoder` reads of a transformers model's output."""

    last_hidden_state: Tensor
    pooler_output: Tensor


def read_config(folder: str | Path) -> dict[str, Any] | None:
    """The folder's config.json, or None when it has none (a hub name, another layout)."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) else None


def supports(config: dict[str, Any]) -> bool:
    """Whether this module computes what transformers' `BertModel` computes for `config`."""
    return (
        config.get("model_type") == "bert"
        and config.get("hidden_act", "gelu") == "gelu"
        and config.get("position_embedding_type", "absolute") == "absolute"
        and not config.get("is_decoder", False)
        and not config.get("add_cross_attention", False)
        and isinstance(config.get("hidden_size"), int)
        and isinstance(config.get("num_attention_heads"), int)
        and config["num_attention_heads"] > 0
        and config["hidden_size"] % config["num_attention_heads"] == 0
    )


class _Embeddings(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None) -> Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings(positions)
        )
        return self.LayerNorm(x)


class _SelfAttention(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.heads = cfg.num_attention_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        batch, length, width = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(batch, length, self.heads, width // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.query(x)),
            split(self.key(x)),
            split(self.value(x)),
            attn_mask=mask,
            scale=1.0 / math.sqrt(width // self.heads),
        )
        return out.transpose(1, 2).reshape(batch, length, width)


class _DenseNorm(nn.Module):
    """BERT's post-LayerNorm residual: LayerNorm(dense(x) + residual)."""

    def __init__(self, in_size: int, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.dense = nn.Linear(in_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _Attention(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.self = _SelfAttention(cfg)
        self.output = _DenseNorm(cfg.hidden_size, cfg)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.output(self.self(x, mask), x)


class _Intermediate(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))  # exact (erf) GELU, transformers' "gelu"


class _Layer(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.attention = _Attention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _DenseNorm(cfg.intermediate_size, cfg)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        attended = self.attention(x, mask)
        return self.output(self.intermediate(attended), attended)


class _Encoder(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.layer = nn.ModuleList(_Layer(cfg) for _ in range(cfg.num_hidden_layers))


class _Pooler(nn.Module):
    def __init__(self, cfg: SimpleNamespace) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))


class BertEncoder(nn.Module):
    """transformers' `BertModel` forward in eval mode (no dropout, no cache), in plain torch.

    Args:
        config: the model's config.json as a dict (`supports(config)` must hold).
    """

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        if not supports(config):
            raise ValueError(f"not a BERT config this module reproduces: {config}")
        defaults = {"type_vocab_size": 2, "layer_norm_eps": 1e-12, "max_position_embeddings": 512}
        self.config = SimpleNamespace(**{**defaults, **config})
        self.embeddings = _Embeddings(self.config)
        self.encoder = _Encoder(self.config)
        self.pooler = _Pooler(self.config)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> BertEncoder | None:
        """The folder's model with its weights, or None when they need transformers' loader.

        That is: no safetensors file, or weights under other names than `BertModel`'s (an old
        checkpoint's gamma/beta, a missing pooler), which transformers renames or initialises.
        """
        from safetensors.torch import load_file

        config, weights = read_config(folder), Path(folder) / WEIGHTS_FILE
        if config is None or not supports(config) or not weights.is_file():
            return None
        state = load_file(weights)
        if all(key.startswith("bert.") for key in state if not key.startswith("cls.")):
            state = {key[5:]: value for key, value in state.items() if key.startswith("bert.")}
        model = cls(config)
        own = model.state_dict()
        if not all(key in state and state[key].shape == own[key].shape for key in own):
            return None
        # Assigned, not copied into the random weights: a copy costs 0.25 s of page faults.
        model.load_state_dict({key: state[key].float() for key in own}, assign=True)
        return model

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> BertOutput:
        # Boolean mask over keys: padding is never attended to.
        mask = attention_mask.bool()[:, None, None, :]
        hidden = self.embeddings(input_ids, token_type_ids)
        for layer in self.encoder.layer:
            hidden = layer(hidden, mask)
        return BertOutput(hidden, self.pooler(hidden))

"""Where each model family keeps its FFN neurons.

The capture point (METHOD.md) is the *input* of every decoder layer's FFN
down-projection: ``act(gate(x)) * up(x)`` for gated FFNs, the GELU output for
BLOOM / GPT-2 / GPT-NeoX. One forward pre-hook on the down-projection sees
exactly that tensor, shape (batch, tokens, F), so every family uses the same
rule and only the module paths differ. This module is the only place in
lingua_ray that names model internals: a new architecture is one entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # annotations only: importing the adapters (and validating a config) needs no torch
    from torch import nn

from lingua_ray.registry import Registry


class UnsupportedModelError(ValueError):
    """The model's ``model_type`` has no adapter."""


def _get_path(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Adapter:
    """How to find the FFN neurons of one model family.

    Attributes:
        model_type: the HF ``config.model_type`` this adapter serves.
        body: attribute path from the ``*ForCausalLM`` to the decoder body
            (the base model without LM head), e.g. ``"model"``.
        layers: attribute path from the body to the ``ModuleList`` of decoder layers.
        down_proj: attribute path from one decoder layer to its FFN down-projection.
        width: ``config -> F``, the FFN width (neurons per layer).
        check: optional ``config -> None`` raising when a config variant would
            bypass the down-projection module (so the hook would never fire).
        act_fn: attribute path from one decoder layer to the FFN's activation-function module,
            whose forward *output* is act(gate(x)) for gated FFNs (LAPE's activation) and the
            GELU output (= the down-projection input) otherwise. None: not supported.
        gated: True when u = act(gate(x)) * up(x), so the two hook points differ.
    """

    model_type: str
    body: str
    layers: str
    down_proj: str
    width: Callable[[object], int]
    check: Callable[[object], None] | None = None
    act_fn: str | None = None
    gated: bool = False

    def body_module(self, model: nn.Module) -> nn.Module:
        """The decoder body: running it skips the LM head (METHOD.md)."""
        if getattr(model.config, "model_type", None) == self.model_type and hasattr(model, self.body.split(".")[0]):
            return _get_path(model, self.body)
        return model  # already the body (e.g. AutoModel)

    def layer_modules(self, model: nn.Module) -> nn.ModuleList:
        return _get_path(self.body_module(model), self.layers)

    def down_projections(self, model: nn.Module) -> list[nn.Module]:
        """One module per decoder layer whose forward *input* is u[layer], shape (B, T, F)."""
        if self.check is not None:
            self.check(model.config)
        return [_get_path(layer, self.down_proj) for layer in self.layer_modules(model)]

    def activation_modules(self, model: nn.Module) -> list[nn.Module]:
        """One module per decoder layer whose forward *output* is act(gate(x)) (gated FFNs) or the
        activation output (others), shape (B, T, F): the hook point of LAPE-style statistics."""
        if self.act_fn is None:
            raise UnsupportedModelError(f"adapter {self.model_type!r} names no activation-function module (act_fn)")
        if self.check is not None:
            self.check(model.config)
        return [_get_path(layer, self.act_fn) for layer in self.layer_modules(model)]

    def n_layers(self, config) -> int:
        return int(config.num_hidden_layers if hasattr(config, "num_hidden_layers") else config.n_layer)

    def n_neurons(self, config) -> int:
        return int(self.width(config))


# model_type -> Adapter. An unknown model_type says which ones exist and where to add one.
ADAPTERS: Registry[Adapter] = Registry(
    "model_type",
    error=UnsupportedModelError,
    hint="To support it, add one entry in lingua_ray/models/adapters.py (body, layers, down_proj, width).",
)


def register_adapter(adapter: Adapter) -> Adapter:
    """Register ``adapter`` under its ``model_type``; a model_type can be taken once."""
    return ADAPTERS.register(adapter.model_type, adapter)


def get_adapter(model_or_config) -> Adapter:
    """The adapter for a model, a config, or a ``model_type`` string; UnsupportedModelError
    (listing the supported types and the closest match) when there is none."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = config if isinstance(config, str) else getattr(config, "model_type", None)
    return ADAPTERS.get(model_type)


def _intermediate(config) -> int:
    return int(config.intermediate_size)


def _bloom_check(config) -> None:
    # With slow_but_exact and pretraining_tp > 1 BLOOM's MLP multiplies weight slices
    # itself and never calls dense_4h_to_h, so a hook there would see nothing.
    if getattr(config, "slow_but_exact", False) and getattr(config, "pretraining_tp", 1) > 1:
        raise UnsupportedModelError(
            "BLOOM with slow_but_exact=True and pretraining_tp>1 bypasses mlp.dense_4h_to_h; "
            "load it with slow_but_exact=False"
        )


# Gated FFNs: u = act(gate(x)) * up(x) is the input of mlp.down_proj.
# act_fn(gate(x)) is the output of mlp.act_fn (Phi-3 fuses gate and up: mlp.activation_fn).
for _t in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "olmo", "olmo2", "phi3"):
    register_adapter(Adapter(_t, body="model", layers="layers", down_proj="mlp.down_proj", width=_intermediate,
                             act_fn="mlp.activation_fn" if _t == "phi3" else "mlp.act_fn", gated=True))

register_adapter(
    Adapter(
        "bloom",
        body="transformer",
        layers="h",
        down_proj="mlp.dense_4h_to_h",
        width=lambda c: 4 * int(c.hidden_size),
        check=_bloom_check,
        act_fn="mlp.gelu_impl",
    )
)
register_adapter(
    Adapter(
        "gpt2",
        body="transformer",
        layers="h",
        down_proj="mlp.c_proj",
        width=lambda c: int(c.n_inner) if c.n_inner is not None else 4 * int(c.n_embd),
        act_fn="mlp.act",
    )
)
register_adapter(
    Adapter("gpt_neox", body="gpt_neox", layers="layers", down_proj="mlp.dense_4h_to_h", width=_intermediate,
            act_fn="mlp.act")
)

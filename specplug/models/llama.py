"""A compact Llama-family forward for the embedded engine (after gpt-fast).

Weights are fused where the math allows (Q/K/V in one matrix, gate/up in one), RoPE is applied to
Q and K together as one rotation of interleaved pairs (their rows are permuted to pairs at load
time, which leaves attention scores unchanged) looked up once per forward, attention reads the static
GQA cache through SDPA with ``enable_gqa=True``, and logits are computed only at the positions asked
for. Eager mode pays per operation, so each layer runs as few as the math allows (measured in
docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from specplug.errors import SpecplugError
from specplug.models.kernels import KernelPlan, lay_out, project, rows_of
from specplug.models.kv_cache import StaticKVCache

SUPPORTED_MODEL_TYPES = ("llama", "mistral")


@dataclass
class Block:
    """One decoder layer's weights (fused). Shapes are for the rows layout; a KernelPlan's cols layout
    stores each 2-D weight transposed ([in, out], contiguous), its packed layout in oneDNN's format."""

    attn_norm: torch.Tensor  # [hidden]
    qkv: torch.Tensor  # [(q_heads + 2 * kv_heads) * head_dim, hidden]; Q, K rows in RoPE pair order
    out: torch.Tensor  # [hidden, q_heads * head_dim]
    mlp_norm: torch.Tensor  # [hidden]
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    down: torch.Tensor  # [hidden, intermediate]
    packed: dict[str, torch.Tensor] = field(default_factory=dict)  # oneDNN copies, if the plan keeps them

    MATRICES = ("qkv", "out", "gate_up", "down")

    def matrices(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in self.MATRICES]

    def relayout(self, old: str, new: str, packed_copy: bool) -> None:
        for name in self.MATRICES:
            setattr(self, name, lay_out(rows_of(getattr(self, name), old), new))
        self.packed = {name: lay_out(rows_of(getattr(self, name), new), "packed")
                       for name in self.MATRICES} if packed_copy else {}

    def linear(self, x: torch.Tensor, name: str, table: list) -> torch.Tensor:
        """x [..., in] through this layer's weight ``name``, with the kernel table's formulation."""
        return project(x, getattr(self, name), table, self.packed.get(name))


@dataclass(frozen=True)
class LayerPlan:
    """Which sub-layers a forward runs: a self-speculative draft skips some (all run by default)."""

    attention: tuple[bool, ...]  # [num_layers]
    mlp: tuple[bool, ...]  # [num_layers]

    @classmethod
    def skipping(cls, num_layers: int, attention: Iterable[int] = (), mlp: Iterable[int] = (),
                 exit_layer: int | None = None) -> "LayerPlan":
        """Skip the attention of layers ``attention``, the MLP of layers ``mlp``, and every layer from
        ``exit_layer`` on (early exit: the final norm and LM head then read layer exit_layer - 1)."""
        end = num_layers if exit_layer is None else exit_layer
        skip_attention, skip_mlp = set(attention), set(mlp)
        return cls(tuple(i < end and i not in skip_attention for i in range(num_layers)),
                   tuple(i < end and i not in skip_mlp for i in range(num_layers)))

    @property
    def skipped_fraction(self) -> float:
        """Share of sub-layers (attention and MLP count one each) that are skipped."""
        runs = sum(self.attention) + sum(self.mlp)
        return 1 - runs / (2 * len(self.attention))


@dataclass(frozen=True)
class Shape:
    num_layers: int
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    norm_eps: float


def check_supported(config) -> None:
    problems = []
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        problems.append(f"model type '{config.model_type}'")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        problems.append("bias in attention or MLP")
    if getattr(config, "hidden_act", "silu") != "silu":
        problems.append(f"activation '{config.hidden_act}'")
    if problems:
        raise SpecplugError(
            f"the embedded engine runs Llama-family models ({', '.join(SUPPORTED_MODEL_TYPES)}: no biases, "
            f"SiLU); this model has {', '.join(problems)}. Use a Llama-family model or the vLLM adapter."
        )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of ``x`` [..., hidden], computed in float32, returned in x's dtype times ``weight``."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    return weight * F.rms_norm(x.float(), weight.shape, eps=eps).to(x.dtype)


def rope_table(inv_freq: torch.Tensor, max_positions: int, scale: float = 1.0) -> torch.Tensor:
    """[max_positions, head_dim / 2, 2]: (cos, sin) x ``scale`` of each position's angle per frequency."""
    positions = torch.arange(max_positions, dtype=torch.float32, device=inv_freq.device)
    angles = positions[:, None] * inv_freq.float()[None, :]
    return torch.stack((angles.cos(), angles.sin()), -1) * scale


def _pair_order(heads: int, head_dim: int) -> torch.Tensor:
    """Row order that turns HF's rotate-half layout into interleaved (real, imag) pairs, per head."""
    half = head_dim // 2
    per_head = torch.stack([torch.arange(half), torch.arange(half) + half], dim=1).flatten()
    return (torch.arange(heads)[:, None] * head_dim + per_head[None, :]).flatten()


class CompactLlama(nn.Module):
    def __init__(self, shape: Shape, blocks: list[Block], embed: torch.Tensor, norm: torch.Tensor,
                 lm_head: torch.Tensor, inv_freq: torch.Tensor, rope_scale: float):
        super().__init__()
        self.shape, self.blocks = shape, blocks
        self.embed, self.norm, self.lm_head = embed, norm, lm_head
        self.rope = rope_table(inv_freq, shape.max_positions, rope_scale)  # [max_positions, head_dim / 2, 2]
        self.use_kernels(KernelPlan.uniform("linear", "default"))

    def use_kernels(self, plan: KernelPlan) -> None:
        """Compute every linear layer as ``plan`` says (re-laying the layer weights if it asks)."""
        current = self.kernels if hasattr(self, "kernels") else KernelPlan.uniform("linear", "default")
        if (current.layout, current.packed_copy) != (plan.layout, plan.packed_copy):
            for block in self.blocks:
                block.relayout(current.layout, plan.layout, plan.packed_copy)
        self.kernels = plan
        self._block_kernels, self._head_kernels = plan.table("blocks"), plan.table("head")
        self._head_packed = lay_out(self.lm_head, "packed") if plan.head_copy else None

    def layer_matrices(self) -> list[torch.Tensor]:
        """Every decoder layer's 2-D weights in the rows layout ([out, in]; views where transposed,
        dense copies where packed)."""
        return [rows_of(w, self.kernels.layout) for block in self.blocks for w in block.matrices()]

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @classmethod
    def from_hf(cls, hf_model, dtype: torch.dtype, device: torch.device) -> "CompactLlama":
        """Fuse the weights of a transformers Llama model (which may then be freed)."""
        config = hf_model.config
        check_supported(config)
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = Shape(config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
                      config.num_key_value_heads, head_dim, config.vocab_size,
                      config.max_position_embeddings, config.rms_norm_eps)
        q_order = _pair_order(shape.q_heads, head_dim)
        k_order = _pair_order(shape.kv_heads, head_dim)

        def take(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(device=device, dtype=dtype).contiguous()

        blocks = []
        for layer in hf_model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = torch.cat([attn.q_proj.weight[q_order], attn.k_proj.weight[k_order], attn.v_proj.weight])
            blocks.append(Block(
                attn_norm=take(layer.input_layernorm.weight), qkv=take(qkv), out=take(attn.o_proj.weight),
                mlp_norm=take(layer.post_attention_layernorm.weight),
                gate_up=take(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])),
                down=take(mlp.down_proj.weight),
            ))
        embed = take(hf_model.model.embed_tokens.weight)
        tied = hf_model.lm_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()
        lm_head = embed if tied else take(hf_model.lm_head.weight)
        rotary = hf_model.model.rotary_emb
        return cls(shape, blocks, embed, take(hf_model.model.norm.weight), lm_head,
                   rotary.inv_freq.to(device), float(getattr(rotary, "attention_scaling", 1.0)))

    def new_cache(self, slots: int, max_len: int) -> StaticKVCache:
        s = self.shape
        return StaticKVCache(s.num_layers, slots, s.kv_heads, max_len, s.head_dim, self.dtype, self.device)

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, weight, self.shape.norm_eps)

    def apply_rope(self, qk: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """qk [B, T, heads, head_dim] in pair order -> rotated for ``positions`` [B, T], same shape and dtype."""
        return self._rotate(qk, self._rotations(positions))

    def _rotations(self, positions: torch.Tensor) -> torch.Tensor:
        """positions [B, T] -> their RoPE rotations [B, T, 1, head_dim / 2, 2] (cos, sin)."""
        return self.rope[positions][:, :, None]

    @staticmethod
    def _rotate(qk: torch.Tensor, rotations: torch.Tensor) -> torch.Tensor:
        """Eager runs the rotation as one complex product (a third of the operations, 2-7x faster,
        measured); inductor cannot generate complex code, so a compiled step runs it in real arithmetic,
        which it fuses."""
        pairs = qk.float().reshape(*qk.shape[:-1], -1, 2)
        if torch.compiler.is_compiling():
            x, y, cos, sin = pairs[..., 0], pairs[..., 1], rotations[..., 0], rotations[..., 1]
            rotated = torch.stack((x * cos - y * sin, x * sin + y * cos), -1)
        else:
            rotated = torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(rotations))
        return rotated.flatten(-2).to(qk.dtype)

    @staticmethod
    def attention_mask(positions: torch.Tensor, upto: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
        """[B, 1, T, upto]: the query at position p sees cache positions <= p. Boolean, or additive for a
        float ``dtype`` (0 where seen, -inf elsewhere: SDPA would otherwise convert it in every layer)."""
        keys = torch.arange(upto, device=positions.device)
        visible = (keys[None, None, :] <= positions[:, :, None])[:, None]
        if dtype == torch.bool:
            return visible
        return torch.zeros(visible.shape, dtype=dtype, device=positions.device).masked_fill_(~visible, float("-inf"))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: StaticKVCache,
                rows: slice, logit_positions: torch.Tensor | None = None,
                plan: LayerPlan | None = None, upto: int | None = None) -> torch.Tensor:
        """Run ``input_ids`` [B, T] at ``positions`` [B, T] for cache ``rows``; write their K/V.

        Returns float32 logits [B, T', V] at ``logit_positions`` [B, T'] (indices into T; all if None).
        Rows of one call may sit at different positions; the caller keeps ``cache.lengths``.
        ``plan`` skips sub-layers (their cache entries are then neither read nor written).
        ``upto`` (> every position) bounds the cache extent attended; callers that keep the lengths
        on the host pass it, so the step reads nothing back from the device.
        """
        return self.forward_features(input_ids, positions, cache, rows, (), logit_positions, plan, upto)[0]

    def forward_features(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: StaticKVCache,
                         rows: slice, layers: tuple[int, ...], logit_positions: torch.Tensor | None = None,
                         plan: LayerPlan | None = None, upto: int | None = None
                         ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """``forward``, also returning the residual stream entering each decoder layer of ``layers``
        ({layer: [B, T, hidden]} at every position; layer ``num_layers`` is the last layer's output before
        the final norm), the features EAGLE-3 heads draft from (vLLM's aux hidden states)."""
        if upto is None:
            upto = int(positions.max()) + 1
        mask, rotations = self.attention_mask(positions, upto, self.dtype), self._rotations(positions)
        h = F.embedding(input_ids, self.embed)
        features = {}
        for index, block in enumerate(self.blocks):
            if index in layers:
                features[index] = h
            if plan is None or plan.attention[index]:
                h = h + self.attention(index, block, h, positions, cache, rows, upto, mask, rotations)
            if plan is None or plan.mlp[index]:
                gate, up = block.linear(self.rms_norm(h, block.mlp_norm), "gate_up", self._block_kernels).chunk(2, -1)
                h = h + block.linear(F.silu(gate) * up, "down", self._block_kernels)
        if self.shape.num_layers in layers:
            features[self.shape.num_layers] = h
        if logit_positions is not None:
            h = h.gather(1, logit_positions[..., None].expand(-1, -1, h.shape[-1]))
        logits = project(self.rms_norm(h, self.norm), self.lm_head, self._head_kernels, self._head_packed).float()
        return logits, features

    def linear(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """x [..., in] through a decoder layer's weight (as its block stores it), with the kernel plan's
        formulation (for plugins; the forward calls ``Block.linear``)."""
        for block in self.blocks:
            for name in block.MATRICES:
                if getattr(block, name) is weight:
                    return block.linear(x, name, self._block_kernels)
        raise ValueError("linear() takes a decoder layer's weight of this model (Block.qkv, out, gate_up or down)")

    def attention(self, index: int, block: Block, h: torch.Tensor, positions: torch.Tensor,
                  cache: StaticKVCache, rows: slice, upto: int, mask: torch.Tensor,
                  rotations: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention of layer ``index`` (its residual input ``h`` [B, T, hidden]); writes K/V.
        ``rotations``: the positions' RoPE rotations, looked up once per forward (else here)."""
        if rotations is None:
            rotations = self._rotations(positions)
        s = self.shape
        batch, steps = h.shape[:2]
        qkv = block.linear(self.rms_norm(h, block.attn_norm), "qkv", self._block_kernels)
        qkv = qkv.view(batch, steps, s.q_heads + 2 * s.kv_heads, s.head_dim)
        qk = self._rotate(qkv[:, :, : s.q_heads + s.kv_heads], rotations)
        q, k, v = qk[:, :, : s.q_heads], qk[:, :, s.q_heads :], qkv[:, :, s.q_heads + s.kv_heads :]
        cache.write(index, rows, positions, k, v)
        k_all, v_all = cache.read(index, rows, upto)
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k_all, v_all, attn_mask=mask, enable_gqa=True)
        return block.linear(attn.transpose(1, 2).reshape(batch, steps, -1), "out", self._block_kernels)

"""An EAGLE-3 draft head: one decoder layer over [token embedding, target features], in vLLM's layout.

The head drafts from the target's own residual stream: ``fc`` maps the features of three target layers
(vLLM's aux hidden states, concatenated) to one hidden vector; the "midlayer" attends over
[input_norm(embed(token)), hidden_norm(hidden)] (2 * hidden wide) with its own KV cache; its output
before the final norm is the hidden vector of the next draft step, and ``lm_head`` scores a reduced
draft vocabulary (draft id d is target token d + d2t[d]).

Entry i of a row (at position i, as in vLLM) reads the target's features at position i and the token
at position i + 1, and predicts the token at i + 2. The target's features come one position behind its
tokens, so a row's cache holds real entries up to the row's second-to-last token; draft steps write
entries past them that the next catch-up overwrites.

The checkpoint is vLLM's: ``config.json`` (``LlamaForCausalLMEagle3``, ``draft_vocab_size``,
``eagle_config.eagle_aux_hidden_state_layer_ids``) and ``model.safetensors`` (``fc``, ``midlayer.*``,
``norm``, ``lm_head``, ``d2t``, ``t2d``); the embedding is the target's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from specplug.errors import ConfigError
from specplug.models.kernels import KernelPlan, lay_out, project
from specplug.models.llama import rms_norm, rope_table

ARCHITECTURE = "LlamaForCausalLMEagle3"


def entries(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, T, C] at entries ``index`` [B, T'] of each row: [B, T', C]."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


@dataclass(frozen=True)
class HeadShape:
    hidden: int
    q_heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab_size: int  # the target's
    draft_vocab_size: int
    layers: tuple[int, ...]  # the target layers whose input features the head reads
    norm_eps: float
    rope_theta: float
    max_positions: int

    @classmethod
    def for_target(cls, config, draft_vocab_size: int, layers: tuple[int, ...] | None = None) -> "HeadShape":
        """A head as wide as the target (an HF Llama config), reading vLLM's default layers."""
        n = config.num_hidden_layers
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        theta = getattr(config, "rope_theta", None) or (getattr(config, "rope_parameters", None) or {}).get("rope_theta")
        return cls(config.hidden_size, config.num_attention_heads, config.num_key_value_heads, head_dim,
                   config.intermediate_size, config.vocab_size, draft_vocab_size,
                   tuple(layers or (2, n // 2, n - 3)), config.rms_norm_eps, float(theta or 10000.0),
                   config.max_position_embeddings)


class Eagle3Head(nn.Module):
    MATRICES = {  # name: (rows, columns) in units of the shape's fields
        "fc": lambda s: (s.hidden, len(s.layers) * s.hidden),
        "q_proj": lambda s: (s.q_heads * s.head_dim, 2 * s.hidden),
        "k_proj": lambda s: (s.kv_heads * s.head_dim, 2 * s.hidden),
        "v_proj": lambda s: (s.kv_heads * s.head_dim, 2 * s.hidden),
        "o_proj": lambda s: (s.hidden, s.q_heads * s.head_dim),
        "gate_proj": lambda s: (s.intermediate, s.hidden),
        "up_proj": lambda s: (s.intermediate, s.hidden),
        "down_proj": lambda s: (s.hidden, s.intermediate),
        "lm_head": lambda s: (s.draft_vocab_size, s.hidden),
    }
    NORMS = ("input_norm", "hidden_norm", "post_norm", "norm")

    def __init__(self, shape: HeadShape, d2t: torch.Tensor):
        super().__init__()
        self.shape = shape
        for name, size in self.MATRICES.items():
            self.register_parameter(name, nn.Parameter(torch.empty(size(shape))))
            nn.init.normal_(getattr(self, name), std=0.02)
        for name in self.NORMS:
            self.register_parameter(name, nn.Parameter(torch.ones(shape.hidden)))
        self.register_buffer("d2t", d2t.long())  # [draft_vocab]: draft id d is target token d + d2t[d]
        self.register_buffer("target_ids", torch.arange(shape.draft_vocab_size) + self.d2t, persistent=False)  # [draft_vocab]
        inv_freq = 1.0 / shape.rope_theta ** (torch.arange(0, shape.head_dim, 2).float() / shape.head_dim)
        self.register_buffer("rope", rope_table(inv_freq, shape.max_positions), persistent=False)
        self.kernels: list | None = None  # a kernel table for inference (use_kernels); None: x @ W.T (training)
        self.packed: dict[str, torch.Tensor] = {}

    def use_kernels(self, plan: KernelPlan) -> None:
        """Compute the head's products as the target's measured plan computes its LM head (the rows layout,
        with packed copies where the plan keeps one for the head): at one or two rows ``x @ W.T`` streams
        the weights 2-3x slower on some CPUs (docs/benchmarks.md). For inference only (no gradients)."""
        self.kernels = plan.table("head")
        self.packed = {name: lay_out(getattr(self, name).detach(), "packed") for name in self.MATRICES} \
            if plan.head_copy else {}

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        weight = getattr(self, name)
        if self.kernels is None:
            return x @ weight.T
        return project(x, weight, self.kernels, self.packed.get(name))

    def project_features(self, features: torch.Tensor) -> torch.Tensor:
        """Target features [..., len(layers) * hidden] -> the head's hidden input [..., hidden]."""
        return self._linear(features.to(self.fc.dtype), "fc")

    def qkv(self, embeds: torch.Tensor, hidden: torch.Tensor, positions: torch.Tensor,
            queries_at: torch.Tensor | None = None):
        """Queries [B, q_heads, T, d], keys and values [B, kv_heads, T, d] of tokens' ``embeds`` [B, T, H] and
        ``hidden`` [B, T, H] at ``positions`` [B, T]; the queries only at entries ``queries_at`` [B, T'] if
        given ([B, q_heads, T', d]: a drafter needs each row's last output, and the others' keys and values)."""
        s = self.shape
        x = torch.cat([rms_norm(embeds, self.input_norm, s.norm_eps), rms_norm(hidden, self.hidden_norm, s.norm_eps)], -1)
        batch, steps = x.shape[:2]
        k = self._linear(x, "k_proj").view(batch, steps, s.kv_heads, s.head_dim)
        v = self._linear(x, "v_proj").view(batch, steps, s.kv_heads, s.head_dim)
        rope = q_rope = self.rope[positions][:, :, None]  # [B, T, 1, d / 2, 2]
        if queries_at is not None:
            x, q_rope = entries(x, queries_at), self.rope[positions.gather(1, queries_at)][:, :, None]
        q = self._linear(x, "q_proj").view(batch, x.shape[1], s.q_heads, s.head_dim)
        return self._rotate(q, q_rope).transpose(1, 2), self._rotate(k, rope).transpose(1, 2), v.transpose(1, 2)

    @staticmethod
    def _rotate(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """HF's rotate-half RoPE of ``x`` [B, T, heads, d]."""
        cos, sin = rope[..., 0], rope[..., 1]
        x1, x2 = x.float().chunk(2, -1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1).to(x.dtype)

    def finish(self, attended: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention output [B, q_heads, T, d] and the hidden input [B, T, H] -> float32 draft logits
        [B, T, draft_vocab] and the next step's hidden input [B, T, H] (the output before the final norm)."""
        s = self.shape
        batch, _, steps, _ = attended.shape
        h = hidden + self._linear(attended.transpose(1, 2).reshape(batch, steps, -1), "o_proj")
        x = rms_norm(h, self.post_norm, s.norm_eps)
        h = h + self._linear(F.silu(self._linear(x, "gate_proj")) * self._linear(x, "up_proj"), "down_proj")
        return self._linear(rms_norm(h, self.norm, s.norm_eps), "lm_head").float(), h

    def full_logits(self, draft_logits: torch.Tensor) -> torch.Tensor:
        """Draft logits [..., draft_vocab] spread over the target's vocabulary [..., V] (-inf elsewhere)."""
        out = draft_logits.new_full((*draft_logits.shape[:-1], self.shape.vocab_size), float("-inf"))
        out[..., self.target_ids] = draft_logits
        return out

    # ---- checkpoints (vLLM's EAGLE-3 layout) -------------------------------------------------------
    CHECKPOINT_NAMES = {
        "fc": "fc.weight", "input_norm": "midlayer.input_layernorm.weight",
        "hidden_norm": "midlayer.hidden_norm.weight", "q_proj": "midlayer.self_attn.q_proj.weight",
        "k_proj": "midlayer.self_attn.k_proj.weight", "v_proj": "midlayer.self_attn.v_proj.weight",
        "o_proj": "midlayer.self_attn.o_proj.weight", "post_norm": "midlayer.post_attention_layernorm.weight",
        "gate_proj": "midlayer.mlp.gate_proj.weight", "up_proj": "midlayer.mlp.up_proj.weight",
        "down_proj": "midlayer.mlp.down_proj.weight", "norm": "norm.weight", "lm_head": "lm_head.weight",
    }

    def save(self, directory: Path, dtype: torch.dtype = torch.bfloat16, training: dict | None = None) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        tensors = {key: getattr(self, name).detach().to(dtype).contiguous()
                   for name, key in self.CHECKPOINT_NAMES.items()}
        t2d = torch.zeros(self.shape.vocab_size, dtype=torch.bool)
        t2d[self.target_ids.cpu()] = True
        tensors.update(d2t=self.d2t.cpu(), t2d=t2d)
        save_file(tensors, str(directory / "model.safetensors"))
        (directory / "config.json").write_text(json.dumps(self._hf_config(dtype, training), indent=2) + "\n")

    def _hf_config(self, dtype: torch.dtype, training: dict | None) -> dict:
        s = self.shape
        config = {
            "architectures": [ARCHITECTURE], "model_type": "llama", "hidden_size": s.hidden,
            "intermediate_size": s.intermediate, "num_attention_heads": s.q_heads,
            "num_key_value_heads": s.kv_heads, "head_dim": s.head_dim, "num_hidden_layers": 1,
            "rms_norm_eps": s.norm_eps, "rope_theta": s.rope_theta, "max_position_embeddings": s.max_positions,
            "vocab_size": s.vocab_size, "draft_vocab_size": s.draft_vocab_size, "target_hidden_size": s.hidden,
            "hidden_act": "silu", "tie_word_embeddings": False, "torch_dtype": str(dtype).removeprefix("torch."),
            "eagle_config": {"use_aux_hidden_state": True, "eagle_aux_hidden_state_layer_ids": list(s.layers)},
        }
        if training:
            config["specplug_training"] = training
        return config

    @classmethod
    def load(cls, directory: Path, dtype: torch.dtype, device: torch.device) -> "Eagle3Head":
        from safetensors.torch import load_file

        shape = cls.shape_of(directory)
        tensors = load_file(str(directory / "model.safetensors"))
        head = cls(shape, tensors["d2t"])
        with torch.no_grad():
            for name, key in cls.CHECKPOINT_NAMES.items():
                getattr(head, name).copy_(tensors[key].float())
        return head.to(device=device, dtype=dtype).requires_grad_(False)

    @staticmethod
    def shape_of(directory: Path) -> HeadShape:
        """The shape of the head saved in ``directory`` (its config.json)."""
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise ConfigError(f"no EAGLE-3 head at '{directory}' (config.json missing): train one with "
                              "`specplug make-eagle3 --config <config> --out DIR`, or point proposer.head at "
                              "a directory in vLLM's EAGLE-3 layout")
        config = json.loads(config_path.read_text())
        if ARCHITECTURE not in config.get("architectures", []):
            raise ConfigError(f"'{directory}' holds a {config.get('architectures')} model, not an EAGLE-3 head "
                              f"({ARCHITECTURE})")
        layers = config.get("eagle_config", {}).get("eagle_aux_hidden_state_layer_ids")
        if not layers:
            raise ConfigError("the EAGLE-3 head's config.json names no eagle_config.eagle_aux_hidden_state_layer_ids")
        hidden = config["hidden_size"]
        return HeadShape(hidden, config["num_attention_heads"], config["num_key_value_heads"],
                         config.get("head_dim") or hidden // config["num_attention_heads"],
                         config["intermediate_size"], config["vocab_size"],
                         config.get("draft_vocab_size") or config["vocab_size"], tuple(layers),
                         config["rms_norm_eps"], float(config.get("rope_theta", 10000.0)),
                         config["max_position_embeddings"])

    def describe(self) -> dict:
        return asdict(self.shape)

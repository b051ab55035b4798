"""The measured choice of linear-layer formulation: every candidate computes the same product, the
choice follows the timings (never trading F.linear for a formulation that is not measurably faster),
is cached per machine, and falls back to F.linear where timing fails."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from specplug.config import LINEAR_KERNELS
from specplug.models import kernel_choice, kernels
from specplug.models.kernels import FORMULATIONS, ROW_BUCKETS, KernelPlan


CPU = torch.device("cpu")
FP32 = {"rtol": 1e-5, "atol": 1e-5}  # oneDNN and MKL sum in different orders


def _dtype_for(name: str) -> torch.dtype:
    """float64 where the formulation takes it (exact comparisons), else float32 (oneDNN packing)."""
    return torch.float64 if name in kernels.available(torch.float64, CPU) else torch.float32


def test_onednn_packing_is_offered_for_float32_and_bfloat16_only():
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    assert "onednn" in kernels.available(torch.float32, CPU) and "onednn" in kernels.available(torch.bfloat16, CPU)
    assert "onednn" not in kernels.available(torch.float64, CPU)
    assert "onednn" not in kernels.available(torch.float32, torch.device("meta"))


def test_every_formulation_computes_f_linear_s_product():
    torch.manual_seed(0)
    for name, (layout, apply) in FORMULATIONS.items():
        if name not in kernels.available(torch.float32, CPU):
            continue
        dtype = _dtype_for(name)
        weight = torch.randn(48, 32, dtype=dtype)
        stored = kernels.lay_out(weight, layout)
        assert torch.equal(kernels.rows_of(stored, layout), weight), f"{layout}: the stored weight reads back exactly"
        for rows in (1,) if name == "w_x_pad" else (1, 2, 3, 7, 40):
            x = torch.randn(rows, 32, dtype=dtype)
            out = apply(x, stored)
            assert out.is_contiguous(), f"{name} M={rows}: the forward views its output, it must be contiguous"
            torch.testing.assert_close(out, torch.nn.functional.linear(x, weight), msg=f"{name} M={rows}", **FP32)


def test_every_setting_computes_the_same_product_at_every_row_count():
    torch.manual_seed(0)
    for setting in LINEAR_KERNELS[1:]:
        if setting not in kernels.available(torch.float32, CPU):
            continue
        plan = KernelPlan.uniform(setting, "forced")
        dtype = _dtype_for(plan.blocks[-1])
        weight = torch.randn(48, 32, dtype=dtype)
        stored = kernels.lay_out(weight, plan.layout)
        table = plan.table("blocks")
        for rows in range(1, ROW_BUCKETS[-1] + 6):
            x = torch.randn(1, rows, 32, dtype=dtype)
            out = kernels.project(x, stored, table)
            assert out.shape == (1, rows, 48)
            torch.testing.assert_close(out, torch.nn.functional.linear(x, weight), msg=f"{setting} M={rows}", **FP32)


def _times(**per_name):
    """Synthetic timings: name -> one value for every bucket (None where not a candidate)."""
    return {name: [value if name != "w_x_pad" or b == 1 else None for b in ROW_BUCKETS]
            for name, value in per_name.items()}


def test_choice_takes_the_fastest_only_when_it_beats_linear_beyond_noise():
    head = _times(linear=1.0, w_x=0.5, w_x_pad=0.4)
    plan = kernel_choice.choose(_times(linear=1.0, w_x=0.97, w_x_pad=2.0, x_wt=1.0, wt_x=1.0), head)
    assert plan.layout == "rows" and set(plan.blocks) == {"linear"}  # 3% faster is noise
    assert plan.head == ("w_x_pad",) + ("w_x",) * (len(ROW_BUCKETS) - 1)


def test_cols_layout_only_when_faster_overall_and_never_slower_than_linear():
    head = _times(linear=1.0, w_x=1.0, w_x_pad=1.0)
    plan = kernel_choice.choose(_times(linear=1.0, w_x=1.0, w_x_pad=1.0, x_wt=0.5, wt_x=0.6), head)
    assert plan.layout == "cols" and set(plan.blocks) == {"x_wt"}
    blocks = _times(linear=1.0, w_x=1.0, w_x_pad=1.0, x_wt=0.5, wt_x=0.6)
    blocks["x_wt"][3] = blocks["wt_x"][3] = 1.5  # much slower than F.linear in one bucket
    assert kernel_choice.choose(blocks, head).layout == "rows"


def test_packed_layout_when_faster_overall_than_the_best_so_far():
    head = _times(linear=1.0, w_x=1.0, w_x_pad=1.0)
    plan = kernel_choice.choose(_times(linear=1.0, w_x=1.0, w_x_pad=1.0, x_wt=0.6, wt_x=0.6, onednn=0.4), head)
    assert plan.layout == "packed" and set(plan.blocks) == {"onednn"}
    assert KernelPlan.uniform("onednn", "forced").head == plan.head == ("linear",) * len(ROW_BUCKETS)
    blocks = _times(linear=1.0, w_x=1.0, w_x_pad=1.0, x_wt=0.5, wt_x=0.6, onednn=0.49)
    assert kernel_choice.choose(blocks, head).layout == "cols"  # 2% faster than cols is noise
    blocks = _times(linear=1.0, w_x=1.0, w_x_pad=1.0, onednn=0.5)
    blocks["onednn"][0] = 1.2  # slower than F.linear for the decode step
    assert kernel_choice.choose(blocks, head).layout == "rows"


def test_a_packed_copy_serves_the_rows_layout_where_onednn_is_fastest_if_memory_allows():
    head = _times(linear=1.0, w_x=1.0, w_x_pad=1.0)
    blocks = _times(linear=1.0, w_x=1.0, w_x_pad=1.0, halves=1.0, onednn=0.5)
    blocks["halves"][0] = 0.3  # the decode step: rows (halves) beat oneDNN there
    single = kernel_choice.choose(blocks, head)
    assert single.layout == "packed" and not single.packed_copy and single.copy_mb == 0
    mixed = kernel_choice.choose(blocks, head, copies={"blocks": 425.0, "head": 113.0})
    assert mixed.layout == "rows" and mixed.packed_copy and not mixed.head_copy and mixed.copy_mb == 425.0
    assert mixed.blocks == ("halves",) + ("onednn",) * (len(ROW_BUCKETS) - 1)
    assert "packed copies of the layers (425 MB)" in mixed.describe()
    assert mixed.table("blocks")[-1][0] == "packed"  # past the last bucket oneDNN still rules
    blocks["halves"][0] = 0.49  # barely ahead: a second copy of the weights is not worth it
    assert kernel_choice.choose(blocks, head, copies={"blocks": 425.0}).layout == "packed"
    blocks["halves"][0], blocks["onednn"][-1] = 1.0, 0.3  # oneDNN gains only past the verify widths
    assert kernel_choice.choose(blocks, head, copies={"blocks": 425.0}).layout == "packed"


def test_the_head_keeps_a_packed_copy_where_onednn_speeds_a_verify_pass():
    blocks = _times(linear=1.0, w_x=1.0, w_x_pad=1.0)
    head = _times(linear=1.0, w_x=1.0, w_x_pad=1.0, halves=1.0, onednn=0.6)
    head["halves"][0] = 0.3
    plan = kernel_choice.choose(blocks, head, copies={"blocks": 425.0, "head": 113.0})
    assert plan.layout == "rows" and not plan.packed_copy and plan.head_copy and plan.copy_mb == 113.0
    assert plan.head == ("halves",) + ("onednn",) * (len(ROW_BUCKETS) - 1)
    assert "packed copies of the head (113 MB)" in plan.describe()
    assert not kernel_choice.choose(blocks, head).head_copy  # no memory for it: the rows formulations


def test_measured_plan_is_cached_per_machine_and_read_back(tiny_model, tmp_path, monkeypatch):
    weights = tiny_model.layer_matrices()
    first = kernel_choice.select("auto", weights, tiny_model.lm_head, tmp_path)
    assert first.source == "measured"
    files = list((tmp_path / "kernels").glob("*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["key"]["cpu"] == kernel_choice.cpu_model() and saved["key"]["torch"] == torch.__version__

    def no_timing(*args, **kwargs):
        raise AssertionError("a cached plan must not be measured again")

    monkeypatch.setattr(kernel_choice, "measure", no_timing)
    again = kernel_choice.select("auto", weights, tiny_model.lm_head, tmp_path)
    assert again.source == "cached" and (again.layout, again.blocks, again.head) == (first.layout, first.blocks, first.head)


def test_a_stale_or_broken_cache_file_is_measured_again(tiny_model, tmp_path):
    weights = tiny_model.layer_matrices()
    kernel_choice.select("auto", weights, tiny_model.lm_head, tmp_path)
    path = next((tmp_path / "kernels").glob("*.json"))
    saved = json.loads(path.read_text())
    saved["key"]["cpu"] = "another CPU"
    path.write_text(json.dumps(saved))
    assert kernel_choice.select("auto", weights, tiny_model.lm_head, tmp_path).source == "measured"
    path.write_text("{not json")
    assert kernel_choice.select("auto", weights, tiny_model.lm_head, tmp_path).source == "measured"


def test_falls_back_to_f_linear_when_timing_fails(tiny_model, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no timer here")

    monkeypatch.setattr(kernel_choice, "measure", broken)
    with pytest.warns(UserWarning, match="using F.linear everywhere"):
        plan = kernel_choice.select("auto", tiny_model.layer_matrices(), tiny_model.lm_head, tmp_path)
    assert plan.source == "fallback" and set(plan.blocks) == set(plan.head) == {"linear"}
    assert not (tmp_path / "kernels").exists()  # a fallback is not cached


@pytest.mark.parametrize("setting", LINEAR_KERNELS[1:])
def test_forced_setting_is_not_measured(tiny_hf, tmp_path, setting):
    from specplug.models.llama import CompactLlama

    model = CompactLlama.from_hf(tiny_hf, _dtype_for(setting), CPU)
    plan = kernel_choice.select(setting, model.layer_matrices(), model.lm_head, tmp_path)
    assert plan.source == "forced" and plan == KernelPlan.uniform(setting, "forced")
    assert not (tmp_path / "kernels").exists()
    assert all(name in FORMULATIONS for name in plan.blocks + plan.head)


def test_a_forced_kernel_that_cannot_run_is_one_line_naming_the_fix(tiny_model, tmp_path):
    from specplug.errors import SpecplugError

    with pytest.raises(SpecplugError, match=r"linear_kernel: onednn cannot run for float64 weights.*linear_kernel: auto"):
        kernel_choice.select("onednn", tiny_model.layer_matrices(), tiny_model.lm_head, tmp_path)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_relaid_weights_give_the_same_logits(tiny_hf, dtype):
    from specplug.models.llama import CompactLlama

    model = CompactLlama.from_hf(tiny_hf, dtype, CPU)
    rows = model.layer_matrices()
    ids = torch.tensor([[5, 17, 3, 99, 42]])
    positions = torch.arange(5)[None]
    reference = model(ids, positions, model.new_cache(1, 8), slice(0, 1))
    some = ("linear",) + ("onednn",) * (len(ROW_BUCKETS) - 1)
    mixed = KernelPlan("rows", some, some, "measured", 1.0)
    plans = [KernelPlan.uniform(s, "forced") for s in ("x_wt", "onednn", "w_x", "onednn", "linear")] + [mixed]
    for plan in [p for p in plans if set(p.blocks) <= set(kernels.available(dtype, CPU))]:
        model.use_kernels(plan)  # rows -> cols -> packed -> rows -> packed -> rows -> rows with a packed copy
        assert bool(model.blocks[0].packed) == plan.packed_copy
        torch.testing.assert_close(model(ids, positions, model.new_cache(1, 8), slice(0, 1)), reference, **FP32)
        torch.testing.assert_close(model(ids[:, :1], positions[:, :1], model.new_cache(1, 8), slice(0, 1)),
                                   reference[:, :1], **FP32)  # one row: the rows formulation
        x = torch.randn(6, rows[0].shape[1], dtype=dtype)
        torch.testing.assert_close(model.linear(x, model.blocks[0].qkv), F.linear(x, rows[0]), **FP32)
    assert all(torch.equal(a, b) for a, b in zip(model.layer_matrices(), rows))  # no re-layout changes a weight


def test_compiled_forward_runs_onednn_s_packed_weights(tiny_hf, monkeypatch, tmp_path):
    """inductor cannot lower oneDNN's packed weights (measured: a LoweringException at the first verify
    pass of compile: on with a plan that packs); the compiled forward calls them as an opaque op."""
    from specplug.models.llama import CompactLlama

    if "onednn" not in kernels.available(torch.float32, CPU):
        pytest.skip("this torch build has no oneDNN")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    model = CompactLlama.from_hf(tiny_hf, torch.float32, CPU)
    model.use_kernels(KernelPlan.uniform("onednn", "forced"))
    ids, positions = torch.tensor([[5, 17, 3, 99]]), torch.arange(4)[None]
    with torch.inference_mode():
        eager = model(ids, positions, model.new_cache(1, 8), slice(0, 1))
        compiled = torch.compile(model.forward)(ids, positions, model.new_cache(1, 8), slice(0, 1))
    torch.testing.assert_close(compiled, eager, **FP32)

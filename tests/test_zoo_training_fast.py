"""The fast training step: bf16 autocast with attention as plain products on the CPU, a compiled
forward that leaves the module as it was, and ``--gpu-budget`` tried on the CPU."""
import json

import pytest
import torch
import torch.nn.functional as F

from chains_lite.zoo.training.fast import compiled_forward, matmul_attention, precision_context


@pytest.mark.parametrize("kwargs", [{}, {"is_causal": True}, {"scale": 0.3}, {"mask": "bool"},
                                    {"mask": "float"}])
def test_matmul_attention_equals_sdpa_and_restores_the_function(kwargs):
    """In float32, the plain-products attention equals torch's kernel (causal, scale, boolean
    and additive masks); under bf16 autocast it computes in bf16, near the float32 result."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8, generator=g) for _ in range(3))
    kwargs = dict(kwargs)
    mask = kwargs.pop("mask", None)
    if mask == "bool":
        kwargs["attn_mask"] = torch.rand(16, 16, generator=g) > 0.3
        kwargs["attn_mask"][:, 0] = True  # no row fully masked
    elif mask == "float":
        kwargs["attn_mask"] = torch.randn(2, 1, 16, 16, generator=g)
    original = F.scaled_dot_product_attention
    reference = original(q, k, v, **kwargs)
    with matmul_attention():
        assert F.scaled_dot_product_attention is not original
        ours = F.scaled_dot_product_attention(q, k, value=v, **kwargs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), **kwargs)
    assert F.scaled_dot_product_attention is original
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert low.dtype == torch.bfloat16 and (low.float() - reference).abs().max() < 0.05


def test_matmul_attention_leaves_dropout_to_torch_and_restores_after_an_error():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 8, 4, generator=g) for _ in range(3))
    original = F.scaled_dot_product_attention
    with matmul_attention():
        torch.manual_seed(0)
        ours = F.scaled_dot_product_attention(q, k, v, dropout_p=0.5)
    torch.manual_seed(0)
    torch.testing.assert_close(ours, original(q, k, v, dropout_p=0.5))
    with pytest.raises(RuntimeError):
        with matmul_attention():
            raise RuntimeError("boom")
    assert F.scaled_dot_product_attention is original


def test_precision_context_bf16_keeps_a_step_close_to_fp32():
    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(32, 32)
    x = torch.randn(8, 32, generator=g)
    with precision_context(torch.device("cpu"), "fp32"):
        y32 = layer(x)
    with precision_context(torch.device("cpu"), "bf16"):
        y16 = layer(x)
    assert y32.dtype == torch.float32 and y16.dtype == torch.bfloat16
    assert torch.allclose(y16.float(), y32, atol=0.05) and not torch.equal(y16.float(), y32)
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        precision_context(torch.device("cpu"), "fp8")


def test_compiled_forward_gives_the_same_output_and_leaves_the_module_unchanged():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4))
    x = torch.randn(5, 8)
    keys = list(model.state_dict())
    with compiled_forward(model, torch.device("cpu")):
        assert "forward" in vars(model)
        y = model(x)
    assert "forward" not in vars(model) and list(model.state_dict()) == keys
    assert torch.allclose(y, model(x), atol=1e-6)
    with compiled_forward(model, torch.device("cpu"), enabled=False):
        assert "forward" not in vars(model)


def test_gpu_budget_on_the_cpu_runs_bf16_compiled_and_resumes_an_unfinished_run(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    from chains_lite.zoo.training import train
    from chains_lite.zoo.registry import read_card
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA device"):
            train.main(["shapes-vit", "--gpu-budget", "1", "--out", str(tmp_path)])
    common = ["shapes-vit", "--gpu-budget", "5", "--device", "cpu", "--steps", "2", "--batch", "4",
              "--pool", "8", "--eval-n", "8", "--no-install", "--out", str(tmp_path / "runs"),
              "--checkpoint-dir", str(tmp_path / "ship")]
    train.main(common)
    run = tmp_path / "runs" / "shapes-vit"
    card = read_card("shapes-vit", run)
    assert card["training"]["precision"] == "bf16" and card["training"]["compiled"]
    assert card["training"]["minutes"] == 5 and card["training"]["init"] == "random"  # nothing shipped
    assert all(f.stat().st_size < 16 * 2**20 for f in run.rglob("*") if f.is_file())
    # a finished run is not continued: the next budget starts again (here: from random weights)
    state = torch.load(run / "state" / "state.pt", weights_only=True)
    assert state["state"]["step"] == 2
    # an unfinished run of the same device is continued with its own options
    from chains_lite.zoo.training.resume import load_state, save_state
    full = load_state(run / "state")
    full["args"]["steps"] = 3
    save_state(full, run / "state", tag="edited")
    train.main([*common[:5], "--eval-n", "8", "--no-install", "--out", str(tmp_path / "runs"),
                "--checkpoint-dir", str(tmp_path / "ship")])
    again = json.loads((run / "shapes-vit.json").read_text())
    assert again["training"]["steps"] == 3 and again["training"]["batch"] == 4


def test_native_bf16_reads_the_cpu_flags_and_a_bf16_run_without_them_is_warned(tmp_path, monkeypatch, capsys):
    from pathlib import Path
    from chains_lite.zoo.training import fast, train
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists() and " avx512f" in cpuinfo.read_text():   # an x86 Linux machine: its flags decide
        flags = set(cpuinfo.read_text().split())
        assert fast.native_bf16(torch.device("cpu")) == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert fast.native_bf16(torch.device("cpu"))
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert not fast.native_bf16(torch.device("cpu"))
    pytest.importorskip("timm")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tiny = ["shapes-vit", "--steps", "1", "--batch", "4", "--pool", "8", "--eval-n", "8", "--no-install",
            "--checkpoint-dir", str(tmp_path / "ship")]
    train.main([*tiny, "--precision", "bf16", "--out", str(tmp_path / "a")])
    assert "bf16 autocast is emulated and slower than float32" in capsys.readouterr().out
    train.main([*tiny, "--out", str(tmp_path / "b")])
    assert "emulated" not in capsys.readouterr().out

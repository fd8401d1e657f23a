"""The fast training step: bf16 autocast with float32 attention on the CPU, a compiled forward
that leaves the module as it was, and ``--gpu-budget`` tried on the CPU."""
import json

import pytest
import torch
import torch.nn.functional as F

from chains_lite.zoo.training.fast import compiled_forward, float32_attention, precision_context


def test_float32_attention_computes_in_float32_under_autocast_and_restores_the_function():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 16, 8, generator=g) for _ in range(3))
    original = F.scaled_dot_product_attention
    reference = original(q, k, v)  # float32, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = F.scaled_dot_product_attention(q, k, v)
        with float32_attention():
            assert F.scaled_dot_product_attention is not original
            kept = F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), value=v.bfloat16())
    assert F.scaled_dot_product_attention is original
    assert plain.dtype == torch.bfloat16 and kept.dtype == torch.float32
    # the inputs were rounded to bf16, the softmax and products were not: closer than bf16 attention
    err_kept, err_plain = (reference - kept).abs().max(), (reference - plain.float()).abs().max()
    assert err_kept < 0.02 and err_kept < err_plain


def test_float32_attention_restores_the_function_after_an_error():
    original = F.scaled_dot_product_attention
    with pytest.raises(RuntimeError):
        with float32_attention():
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

"""The resumable state's files (chains_lite.zoo.training.resume): sharded under a size limit,
read back whole, and the previous state survives until the new one is complete."""
import pytest
import torch

from chains_lite.zoo.training.resume import INDEX, load_state, save_state


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"model": {"a.weight": torch.randn(100, 50, generator=g), "b": torch.arange(7)},
            "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(300, generator=g)}},
                          "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0], "foreach": None}]},
            "ema": None, "gen": g.get_state(), "step": 3, "losses": [1.5, 1.25], "args": {"name": "x"}}


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_state_round_trips_in_shards_under_the_limit(tmp_path):
    state = _state()
    limit = 100 * 50 * 4 + 16  # one shard holds the largest tensor, not two
    files = save_state(state, tmp_path, tag=3, limit=limit)
    shards = [f for f in files if f.name != INDEX]
    assert len(shards) == 2 and all(f.name.startswith("shard-3-") for f in shards)
    # the tensors of a shard fit the limit (the file adds pickle framing around them)
    for f in shards:
        assert sum(t.numel() * t.element_size() for t in torch.load(f).values()) <= limit
    assert _equal(load_state(tmp_path), state)


def test_a_new_save_replaces_the_old_one_and_removes_its_shards(tmp_path):
    save_state(_state(0), tmp_path, tag=3)
    save_state(_state(1), tmp_path, tag=7)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-7-0.pt", INDEX]
    assert _equal(load_state(tmp_path), _state(1))


def test_refuses_a_tensor_over_the_limit_and_a_missing_state(tmp_path):
    with pytest.raises(ValueError, match="tensor /model/a.weight takes 20000 bytes"):
        save_state(_state(), tmp_path, tag=0, limit=10000)
    with pytest.raises(FileNotFoundError, match="no resumable state"):
        load_state(tmp_path / "nothing")

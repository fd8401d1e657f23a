"""Linear probing: features are the captured visualisations with the CLS entry dropped; the probe
learns separable data, stays at chance on noise; the paired test has the exact small-sample p."""
import pytest
import torch

from chains_lite import tokenrank
from chains_lite.capture import capture
from chains_lite.methods.probing import attention_features, linear_probe


def test_features_are_visualisations_without_cls(tiny_vit):
    vit = tiny_vit()
    x = torch.rand(5, 3, 16, 16)
    f = attention_features(vit, x, batch_size=2, progress=False)
    assert f["tokenrank"].shape == (5, 2 * 2 * 16)
    with torch.no_grad(), capture(vit) as rec:
        vit(x)
    want = torch.cat([tokenrank(A)[..., 1:].flatten(1) for A in rec.attentions], 1)
    torch.testing.assert_close(f["tokenrank"], want)
    torch.testing.assert_close(f["cls_row"][:, :16], rec.attentions[0][:, 0, 0, 1:])
    mixed = attention_features(vit, x, methods=("column_sum",), head_scheme="uniform", progress=False)
    torch.testing.assert_close(mixed["column_sum"][:, :16], rec.attentions[0].mean((1, 2))[:, 1:])
    with pytest.raises(ValueError, match="head_scheme"):
        attention_features(vit, x, head_scheme="max", progress=False)


def test_probe_learns_separable_data_and_not_noise():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 20, generator=g) * 3

    def split(n):
        y = torch.randint(0, 3, (n,), generator=g)
        return centers[y] + 0.3 * torch.randn(n, 20, generator=g), y
    r = linear_probe(split(300), split(100), split(100), lrs=(1e-3, 1e-2), epochs=5)
    assert r["test_accuracy"] >= 0.97 and r["lr"] in (1e-3, 1e-2)
    noise = lambda n: (torch.randn(n, 20, generator=g), torch.randint(0, 3, (n,), generator=g))  # noqa: E731
    r = linear_probe(noise(300), noise(200), noise(400), lrs=(1e-2,), epochs=5)
    assert r["test_accuracy"] < 0.45




def test_per_layer_is_each_layers_own_features(tiny_vit):
    from chains_lite.methods.probing import per_layer
    model, x = tiny_vit(depth=3), torch.rand(4, 3, 16, 16)
    both = attention_features(model, x, methods=("tokenrank",), head_scheme="uniform", progress=False)["tokenrank"]
    split = per_layer(both, 3)
    for layer in range(3):
        alone = attention_features(model, x, methods=("tokenrank",), layers=[layer], head_scheme="uniform",
                                   progress=False)["tokenrank"]
        torch.testing.assert_close(split[:, layer], alone)
    with pytest.raises(ValueError, match="do not split into 5 layers"):
        per_layer(both, 5)


def test_fit_linear_takes_raw_features_and_agrees_with_the_probe():
    from chains_lite.methods.probing import fit_linear
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 10, generator=g) * 3 + 50      # far from 0: standardising matters

    def split(n):
        y = torch.randint(0, 3, (n,), generator=g)
        return centers[y] + 0.3 * torch.randn(n, 10, generator=g), y
    tr, va, te = split(200), split(100), split(100)
    clf, best = fit_linear(tr, va, lrs=(1e-3, 1e-2), epochs=5)
    probe = linear_probe(tr, va, te, lrs=(1e-3, 1e-2), epochs=5)
    assert best["lr"] == probe["lr"] and best["val_accuracy"] == probe["val_accuracy"]
    acc = (clf(te[0]).argmax(-1) == te[1]).float().mean().item()
    assert acc == pytest.approx(probe["test_accuracy"]) and acc >= 0.97
    mu, sd = tr[0].mean(0), tr[0].std(0)
    torch.testing.assert_close(clf(te[0]), clf.linear((te[0] - mu) / sd))


def test_fit_linear_refuses_empty_splits_and_fits_one_item():
    from chains_lite.methods.probing import fit_linear
    X, y = torch.tensor([[1.0, 2.0]]), torch.tensor([1])
    clf, best = fit_linear((X, y), (X, y), lrs=(1e-1,), epochs=3)
    assert torch.isfinite(clf(X)).all() and best["val_accuracy"] == 1.0
    with pytest.raises(ValueError, match="at least one item"):
        fit_linear((X, y), (X[:0], y[:0]))

"""Self-attention guidance (chains_lite.sag) and its experiment, on small random-weight diffusers UNets,
against hand-written sampling loops, hand-computed masks, scipy's Gaussian filter and naive metrics."""
import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from PIL import Image
from scipy import ndimage

from chains_lite import quality, sag, sag_experiment as exp
from chains_lite.capture import TokenLayout, attention_layers, capture

UNET = dict(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
            down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=8, norm_num_groups=8)
COND = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=12,
            attention_head_dim=8, norm_num_groups=8)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return UNet2DModel(**UNET).eval()


@pytest.fixture(scope="module")
def cond_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(**COND).eval()


@pytest.fixture(scope="module")
def sched():
    return DDIMScheduler.from_config(DDPMScheduler(beta_schedule="squaredcos_cap_v2").config)


def test_layers_are_the_decoder_and_bottleneck_self_attentions(unet, cond_unet):
    for model in (unet, cond_unet):
        layers = attention_layers(model, kind="self")
        dec = [m for m in model.up_blocks[-2].modules() if m in layers]
        mid = [m for m in model.mid_block.modules() if m in layers]
        assert layers[sag.sag_layer(model, "decoder")] is dec[-1]
        assert layers[sag.sag_layer(model, "bottleneck")] is mid[-1]
    with pytest.raises(ValueError, match="layer must be"):
        sag.sag_layer(unet, "middle")


def test_scale_zero_is_plain_ddim_bit_for_bit(unet, sched):
    noise = sag.initial_noise(range(3), (3, 16, 16), seed=5)
    s = DDIMScheduler.from_config(sched.config)
    s.set_timesteps(6)
    x = noise.clone()
    with torch.no_grad():
        for t in s.timesteps:
            x = s.step(unet(x, t).sample, t, x).prev_sample
    for settings in (sag.SAG(), sag.SAG(0.0, "tokenrank", cap=0.4)):
        out = sag.sample(unet, sched, noise, settings, steps=6)
        assert torch.equal(out.x, x)
        assert (out.masked_fraction == 0).all()


def test_guidance_changes_samples_and_repeats_exactly(unet, sched):
    noise = sag.initial_noise([4, 9], (3, 16, 16), seed=1)
    g = sag.SAG(1.5, "tokenrank", cap=0.4)
    a, b = sag.sample(unet, sched, noise, g, steps=4), sag.sample(unet, sched, noise, g, steps=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.masked_fraction, b.masked_fraction)
    assert not torch.allclose(a.x, sag.sample(unet, sched, noise, steps=4).x)
    assert (a.masked_fraction <= 0.4 + 1e-6).all() and (a.masked_fraction > 0).all()


def test_trajectory_masks_follow_the_plain_trajectory(unet, sched):
    noise = sag.initial_noise([0, 1], (3, 16, 16), seed=2)
    masks, grid, x = sag.trajectory_masks(unet, sched, noise, ("column_sum", "tokenrank"), (None, 0.25), steps=3)
    assert torch.equal(x, sag.sample(unet, sched, noise, steps=3).x)
    assert grid == (8, 8) and masks["tokenrank"].shape == (3, 2, 8, 8)
    assert (masks["tokenrank"].flatten(2).sum(-1) <= 16).all()   # floor(0.25 * 64)
    s = DDIMScheduler.from_config(sched.config)
    s.set_timesteps(3)
    with torch.no_grad(), capture(unet, layers=[sag.sag_layer(unet)], heads="mean") as rec:
        unet(noise, s.timesteps[0])
    first = sag.token_mask(rec.attentions[0], rec.layouts[0], "column_sum").reshape(2, 8, 8)
    assert torch.equal(masks["column_sum"][0], first)


def test_noise_of_an_index_does_not_depend_on_the_chunk():
    whole = sag.initial_noise(range(5), (2, 3), seed=7)
    parts = torch.cat([sag.initial_noise([0, 1], (2, 3), 7), sag.initial_noise([2, 3, 4], (2, 3), 7)])
    assert torch.equal(whole, parts)
    assert not torch.equal(whole, sag.initial_noise(range(5), (2, 3), seed=8))
    with pytest.raises(ValueError, match="indices"):
        sag.initial_noise([-1], (2,), 0)


def _steady_state(P):
    """Left eigenvector of eigenvalue 1 by numpy, normalised to sum 1."""
    w, v = np.linalg.eig(P.T)
    pi = np.real(v[:, np.argmin(abs(w - 1))])
    return pi / pi.sum()


def test_masks_are_thresholds_of_the_head_mean_on_the_uniform_scale():
    A = torch.tensor([[[0.7, 0.1, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.5, 0.3, 0.1, 0.1], [0.4, 0.4, 0.1, 0.1]],
                      [[0.1, 0.5, 0.3, 0.1], [0.1, 0.6, 0.2, 0.1], [0.1, 0.1, 0.7, 0.1], [0.2, 0.2, 0.5, 0.1]]])[None]
    lay = TokenLayout(grid=(2, 2))
    mean = A[0].mean(0).numpy()
    # by hand: head column sums 2.2, 1.0, 0.4, 0.4 and 0.5, 1.4, 1.7, 0.4; their mean 1.35, 1.2, 1.05, 0.4
    assert np.allclose(mean.sum(0), [1.35, 1.2, 1.05, 0.4])  # SAG masks those > 1
    assert sag.token_mask(A, lay, "column_sum").tolist() == [[True, True, True, False]]
    # the 40 % cap of 4 tokens keeps floor(1.6) = 1, the highest
    assert sag.token_mask(A, lay, "column_sum", cap=0.4).tolist() == [[True, False, False, False]]
    alpha = 0.9
    pi = _steady_state(alpha * mean + (1 - alpha) / 4)
    got = sag.token_mask(A, lay, "tokenrank", alpha=alpha)
    assert got.tolist() == [list(4 * pi > 1)]
    assert sag.token_mask(A[:, 0], lay, "column_sum").tolist() == [list(A[0, 0].numpy().sum(0) > 1)]
    # any registry score: two incoming bounces from the centre token (index 3 of a 2 x 2 grid)
    P = mean.astype(np.float64)
    two = np.eye(4)[3] @ P @ P
    assert sag.token_mask(A, lay, "bounce_center", steps=2).tolist() == [list(4 * two > 1)]
    with pytest.raises(ValueError, match="cap"):
        sag.token_mask(A, lay, cap=1.5)
    with pytest.raises(ValueError, match="unknown method"):
        sag.token_mask(A, lay, "colsum")


def test_blur_matches_scipy_and_changes_only_masked_pixels():
    x = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    ref = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 1.0, 1.0), mode="mirror", truncate=4.0)
    assert np.allclose(sag.gaussian_blur(x, 9, 1.0).numpy(), ref, atol=1e-5)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 5]], mask[1, 15] = True, True          # a 4 x 4 token grid: 3 x 3 pixel cells
    out = sag.blur_in_mask(x, mask, (4, 4))
    pix = mask.reshape(2, 1, 4, 4).repeat_interleave(3, -1).repeat_interleave(3, -2).expand_as(x)
    assert torch.equal(out[~pix], x[~pix])
    assert torch.allclose(out[pix], torch.from_numpy(ref)[pix])
    assert not torch.allclose(out[pix], x[pix])
    with pytest.raises(ValueError, match="odd"):
        sag.gaussian_blur(x, 4)


def test_captured_map_is_the_softmax_of_the_layers_own_q_and_k(unet):
    layer = attention_layers(unet, kind="self")[sag.sag_layer(unet, "decoder")]
    seen = []
    h = layer.register_forward_pre_hook(lambda m, a, kw: seen.append(a[0] if a else kw["hidden_states"]),
                                        with_kwargs=True)
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    try:
        with torch.no_grad(), capture(unet, layers=[sag.sag_layer(unet, "decoder")], heads="mean") as rec:
            unet(x, 10)
    finally:
        h.remove()
    hs = seen[0]
    b, c, hh, ww = hs.shape
    tok = layer.group_norm(hs.view(b, c, -1)).transpose(1, 2)
    heads = layer.heads
    q = layer.to_q(tok).view(b, -1, heads, c // heads).transpose(1, 2)
    k = layer.to_k(tok).view(b, -1, heads, c // heads).transpose(1, 2)
    ref = ((q @ k.transpose(-1, -2)) * (c // heads) ** -0.5).softmax(-1).mean(1, keepdim=True)
    assert rec.layouts[0].grid == (hh, ww)
    assert torch.allclose(rec.attentions[0], ref, atol=1e-5)


def test_guided_eps_is_eps_plus_scale_times_the_blur_difference(unet, sched):
    s = DDIMScheduler.from_config(sched.config)
    s.set_timesteps(5)
    t = s.timesteps[1]
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    g = sag.SAG(0.8, "column_sum")
    got, mask = sag.guided_eps(unet, s, x, t, g)
    with torch.no_grad():
        eps = unet(x, t).sample
        a = s.alphas_cumprod[int(t)]
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x_hat = s.add_noise(sag.blur_in_mask(x0, mask, (8, 8)), eps, t[None])
        ref = eps + 0.8 * (eps - unet(x_hat, t).sample)
    assert torch.allclose(got, ref, atol=1e-5)


def test_conditional_unet_with_cfg_guides_with_the_unconditional_branch(cond_unet, sched):
    s = DDIMScheduler.from_config(sched.config)
    s.set_timesteps(5)
    t = s.timesteps[0]
    gen = torch.Generator().manual_seed(4)
    x, c, u = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 3, 12, generator=gen), torch.randn(2, 3, 12, generator=gen)
    plain, none = sag.guided_eps(cond_unet, s, x, t, sag.SAG(), c, u, cfg=3.0)
    with torch.no_grad():
        eu, ec = cond_unet(x, t, encoder_hidden_states=u).sample, cond_unet(x, t, encoder_hidden_states=c).sample
    assert none is None and torch.allclose(plain, eu + 3.0 * (ec - eu), atol=1e-5)
    got, mask = sag.guided_eps(cond_unet, s, x, t, sag.SAG(1.0, "tokenrank"), c, u, cfg=3.0)
    with torch.no_grad(), capture(cond_unet, layers=[sag.sag_layer(cond_unet)], heads="mean") as rec:
        cond_unet(x, t, encoder_hidden_states=u)
    assert torch.equal(mask, sag.token_mask(rec.attentions[0], rec.layouts[0], "tokenrank"))
    with pytest.raises(ValueError, match="uncond_context"):
        sag.guided_eps(cond_unet, s, x, t, sag.SAG(), c, None, cfg=3.0)


def scipy_fd(a, b):
    """The Fréchet distance with scipy's matrix square root (FID's usual formula)."""
    import numpy as np
    from scipy import linalg
    a, b = a.numpy(), b.numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s1 @ s2).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def test_frechet_distance_matches_scipy_sqrtm():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(300, 6, generator=gen, dtype=torch.float64) @ torch.randn(6, 6, generator=gen, dtype=torch.float64)
    b = torch.randn(200, 6, generator=gen, dtype=torch.float64) + 0.5
    assert quality.frechet_distance(a, b) == pytest.approx(scipy_fd(a, b), rel=1e-8)
    assert quality.frechet_distance(a, a) == pytest.approx(0, abs=1e-8)


def test_kid_and_is_against_naive_references():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 3, generator=gen), torch.randn(5, 3, generator=gen) + 1
    k = lambda x, y: (float(x.double() @ y.double()) / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(a[i], a[j]) for i in range(6) for j in range(6) if i != j) / 30
    yy = sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / 20
    xy = sum(k(a[i], b[j]) for i in range(6) for j in range(5)) / 30
    assert quality.kid(a, b) == pytest.approx(xx + yy - 2 * xy, rel=1e-9)
    assert quality.inception_score(torch.eye(4)) == pytest.approx(4.0)
    assert quality.inception_score(torch.full((5, 4), 0.25)) == pytest.approx(1.0)
    p = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    m = p.mean(0)
    ref = np.exp(np.mean([(pi * (pi / m).log()).sum() for pi in p]))
    assert quality.inception_score(p) == pytest.approx(float(ref))
    assert quality.confident_share(p) == 0.5


def test_bootstrap_table_pairs_and_intervals():
    gen = torch.Generator().manual_seed(1)
    real = torch.randn(40, 4, generator=gen)
    probs = torch.softmax(torch.randn(30, 3, generator=gen), -1)
    near, far = torch.randn(30, 4, generator=gen), torch.randn(30, 4, generator=gen) + 3
    t = quality.bootstrap_table({"near": (near, probs), "far": (far, probs)}, real, [("near", "far")], n_boot=50)
    assert t["runs"]["far"]["frechet"]["value"] > t["runs"]["near"]["frechet"]["value"]
    d = t["pairs"]["near - far"]["frechet"]
    assert d["high"] < 0 and d["better_share"] == 1.0
    assert t["pairs"]["near - far"]["is"]["value"] == 0
    for m in quality.METRICS:   # the bias shift centres the resamples on the full-sample value
        row = t["runs"]["near"][m]
        assert row["low"] <= row["value"] <= row["high"]
    with pytest.raises(ValueError, match="same number"):
        quality.bootstrap_table({"a": (near, probs), "b": (far[:5], probs[:5])}, real)


class _Judge(torch.nn.Module):
    """A stand-in for shapes-vit with timm's forward_features / forward_head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.f, self.h = torch.nn.Linear(3, 5), torch.nn.Linear(5, 4)

    def forward_features(self, x):
        return self.f(x.mean((-2, -1)))

    def forward_head(self, z, pre_logits=False):
        return z if pre_logits else self.h(z)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def test_lite_work_records_do_not_depend_on_chunks_and_summarize(unet, sched):
    work = lambda idx: exp.lite_work(idx, unet=unet, scheduler=sched, judge=_Judge(), scales=(1.0,),  # noqa: E731
                                     steps=2, seed=3)
    whole, parts = work([0, 1, 2, 3]), work([0, 1]) + work([2, 3])
    assert json.loads(json.dumps(whole)) == whole
    # the same noise per index; batched kernels may round differently, so equal up to float32 rounding
    feats = lambda recs: torch.tensor([[r["features"] for r in x["runs"]] for x in recs])  # noqa: E731
    assert torch.allclose(feats(whole), feats(parts), atol=1e-5)
    assert [r["method"] for r in whole[0]["runs"]] == list(exp.METHODS)
    ref = torch.randn(10, 5, generator=torch.Generator().manual_seed(0))
    table = exp.summarize(parts[::-1], ref, n_boot=5)
    assert set(table["methods"]) == set(exp.METHODS) and table["headline_scale"] == 1.0
    assert set(table["pairs"]) == {"sag_tokenrank@1 - sag_column_sum@1", "sag_column_sum@1 - none@0",
                                   "sag_tokenrank@1 - none@0"}
    assert table["methods"]["none"]["masked_fraction"] == 0


def test_full_work_on_a_random_conditional_unet(cond_unet, sched, tmp_path):
    gen = torch.Generator().manual_seed(0)
    table = {p: torch.randn(3, 12, generator=gen) for p in ["", "a red circle", "two stars", "a cat"]}
    encode = lambda ps: torch.stack([table[p] for p in ps])  # noqa: E731
    decode = lambda z: torch.sigmoid(z[:, :3])  # noqa: E731
    kw = dict(unet=cond_unet, scheduler=sched, encode=encode, decode=decode,
              prompts=["a red circle", "two stars", "a cat"], scales=(0.5,), steps=2, cfg=2.0)
    whole = exp.full_work([0, 1, 2], out_dir=tmp_path / "a", **kw)
    parts = exp.full_work([0], out_dir=tmp_path / "b", **kw) + exp.full_work([1, 2], out_dir=tmp_path / "b", **kw)
    for r, q in zip(whole, parts):
        assert r["prompt"] == q["prompt"]
        for x, y in zip(r["runs"], q["runs"]):
            a, b = (np.asarray(Image.open(z["path"])).astype(int) for z in (x, y))
            assert np.abs(a - b).max() <= 1   # 8-bit images of the same noise (float rounding aside)
    with pytest.raises(ValueError, match="prompts"):
        exp.full_work([3], out_dir=tmp_path / "c", **kw)
    fake = lambda imgs: (imgs.double().mean((-2, -1)), torch.softmax(imgs.double().mean((-2, -1)), -1))  # noqa: E731
    refs = [x["path"] for x in whole[0]["runs"]] + [x["path"] for x in whole[1]["runs"]]
    t = exp.summarize_full(parts, refs, extract=fake, n_boot=5)
    assert set(t["methods"]) == set(exp.METHODS) and t["n_samples"] == 3


def test_benchmark_refuses_bad_arguments_and_an_existing_out_before_work(tmp_path, capsys):
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("bench_sag", Path(__file__).parent.parent / "benchmarks" / "sag.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "r.json"
    out.write_text("{}")
    for argv, msg in ((["--out", str(out)], "exists"), (["--n-samples", "0", "--out", str(tmp_path / "x.json")], "n-samples"),
                      (["--scales", "-1", "--out", str(tmp_path / "y.json")], "scales"),
                      (["--mode", "full", "--out", str(tmp_path / "z.json")], "--prompts")):
        with pytest.raises(SystemExit):
            bench.main(argv)
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "y.json").exists()


def test_benchmark_writes_json_and_resumes_from_its_run_dir(tmp_path):
    import importlib.util
    import json
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("bench_sag", Path(__file__).parent.parent / "benchmarks" / "sag.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--n-samples", "2", "--steps", "2", "--scales", "1", "--n-boot", "5", "--batch", "1",
            "--run-dir", str(tmp_path / "run")]
    bench.main(argv + ["--out", str(tmp_path / "a.json")])
    bench.main(argv + ["--out", str(tmp_path / "b.json")])   # every record is on disk: nothing to sample
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert set(a["methods"]) == {"none", "sag_column_sum", "sag_tokenrank"} and a["methods"] == b["methods"]


def eig_fd(a, b):
    """The Fréchet distance from the general eigenvalues of S_a S_b (numpy, float64)."""
    a, b = a.numpy(), b.numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)


@pytest.mark.parametrize("n", [3, 12, 40, 41, 90])
def test_frechet_distance_with_fewer_samples_than_dimensions(n):
    # n <= D = 40 takes the N x N path, n > D the D x D one; both against numpy's eigvals
    gen = torch.Generator().manual_seed(n)
    mix = torch.randn(40, 40, generator=gen, dtype=torch.float64)
    a = torch.randn(n, 40, generator=gen, dtype=torch.float64) @ mix
    b = torch.randn(150, 40, generator=gen, dtype=torch.float64) @ mix + 0.3
    assert quality.frechet_distance(a, b) == pytest.approx(eig_fd(a, b), rel=1e-7)
    assert quality.frechet_distance(a[[0, 0, 1, 2, 2]], b) == pytest.approx(eig_fd(a[[0, 0, 1, 2, 2]], b),
                                                                             rel=1e-7)


def test_reference_gives_the_metrics_of_its_features():
    gen = torch.Generator().manual_seed(1)
    f, real = torch.randn(20, 30, generator=gen), torch.randn(50, 30, generator=gen) + 0.2
    probs = torch.softmax(torch.randn(20, 5, generator=gen), -1)
    ref = quality.Reference(real)
    m = quality.metrics(f, probs, ref)
    assert m["frechet"] == pytest.approx(eig_fd(f.double(), real.double()), rel=1e-7)
    k = lambda x, y: (x.double() @ y.double().T / 30 + 1) ** 3  # noqa: E731
    naive = (k(f, f).sum() - k(f, f).trace()) / 380 + (k(real, real).sum() - k(real, real).trace()) / 2450 \
        - 2 * k(f, real).mean()
    assert m["kid"] == pytest.approx(float(naive), rel=1e-9)
    runs = {"x": (f, probs), "y": (f + 0.1, probs)}
    t1 = quality.bootstrap_table(runs, real, [("x", "y")], n_boot=5)
    t2 = quality.bootstrap_table(runs, ref, [("x", "y")], n_boot=5)
    assert t1 == t2
    with pytest.raises(ValueError, match="M >= 2"):
        quality.Reference(real[:1])
    with pytest.raises(ValueError, match="frechet_distance needs"):
        quality.frechet_distance(f[:, :5], ref)

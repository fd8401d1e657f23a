"""Independent references the tests compare with: numpy / scipy computations written without
chains_lite, eager attention assembled from a model's own weights, and small test inputs
(``from references import ...`` in a test module)."""
import numpy as np
import scipy.linalg
import torch


def ref_steady_state(P):
    """Left eigenvector of P for the eigenvalue closest to 1, via scipy (float64)."""
    w, vl = scipy.linalg.eig(np.asarray(P, dtype=np.float64), left=True, right=False)
    v = np.real(vl[:, np.argmin(np.abs(w - 1))])
    return v / v.sum()


def ref_lambda2(P):
    mods = np.sort(np.abs(np.linalg.eigvals(np.asarray(P, dtype=np.float64))))[::-1]
    return mods[1] if len(mods) > 1 else 0.0


def ref_outgoing(A):
    """A_l^T with A_l = A / colsum; an all-zero column (masked key) jumps uniformly."""
    n = A.shape[-1]
    cols = A.sum(-2, keepdims=True)
    A_l = np.where(cols > 0, A / np.where(cols > 0, cols, 1), 1.0 / n)
    return np.swapaxes(A_l, -1, -2)


def ref_teleport(P, alpha, p=None):
    n = P.shape[-1]
    p = np.full(n, 1.0 / n) if p is None else np.asarray(p) / np.sum(p)
    return alpha * P + (1 - alpha) * np.outer(np.ones(n), p)


def small_vit(reg_tokens=0, seed=0):
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(seed)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4,
                             num_classes=5, reg_tokens=reg_tokens).eval()


def timm_eager_attention(model, x):
    """Reference: timm's own non-fused path, read at its attention-dropout input (= softmax)."""
    got, handles = [], []
    for b in model.blocks:
        b.attn.fused_attn = False
        handles.append(b.attn.attn_drop.register_forward_hook(lambda m, i, o: got.append(o)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for b, h in zip(model.blocks, handles):
            h.remove()
            b.attn.fused_attn = True
    return got


def n_hooks(modules):
    return sum(len(m._forward_pre_hooks) for m in modules)


def block_chain(size: int, blocks: torch.Tensor, noise: float = 0.02, seed: int = 0) -> torch.Tensor:
    """``(size^2, size^2)``: each token attends (almost) uniformly to the tokens of its block."""
    g = torch.Generator().manual_seed(seed)
    lab = blocks.flatten()
    A = (lab[:, None] == lab[None, :]).float() + noise * torch.rand(size * size, size * size, generator=g)
    return A / A.sum(-1, keepdim=True)


def halves(size: int) -> torch.Tensor:
    return (torch.arange(size)[None, :] >= size // 2).long().expand(size, size)


def scipy_fd(a, b):
    """The Fréchet distance with scipy's matrix square root (FID's usual formula)."""
    import numpy as np
    from scipy import linalg
    a, b = a.numpy(), b.numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(s1 @ s2).real
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1 + s2 - 2 * root))


def eig_fd(a, b):
    """The Fréchet distance from the general eigenvalues of S_a S_b (numpy, float64)."""
    a, b = a.numpy(), b.numpy()
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * cross)

"""Dense vs matrix-free (``LazyAttention``) chains: time and peak memory, in one run.

    python benchmarks/bench_lazy.py [--sizes 1024,4608,16384] [--heads 24] [--d 128]
                                    [--quick] [--ops bounce,tokenrank,lambda2] [--timeout 900]
                                    [--max-bytes 268435456] [--stream] [--device cpu|cuda]

q and k are ``chains_lite.core.synthetic.attention_qk`` (structured heads, |lambda2| from ~0.05 to
~0.99), float32, ``heads x n x d``. For each n and operation

* dense: ``A = softmax(q k^T / sqrt(d))`` formed in place (one ``heads x n x n`` float32
  buffer), then ``cl.bounce(A, "uniform")`` / ``cl.tokenrank(A)`` / ``cl.lambda2(A)``. The
  time includes forming A.
* lazy: the same call on ``cl.LazyAttention(q, k, max_bytes=...)``. ``--stream`` adds a
  row with a budget too small for one dense head, so tokenrank and lambda2 run matrix-free.

Every case runs in its own subprocess, after a small warm-up of the same call. Memory is
measured, not estimated: on CPU the peak RSS (``VmHWM``, reset with ``/proc/self/clear_refs``
after q and k exist), on CUDA ``torch.cuda.max_memory_allocated``. "peak" is the process's
peak during the call (interpreter, torch and q, k included); "extra" is that peak minus the
memory just before the call: what the call itself needed. Dense cases whose matrix (and one working copy) would not fit
``--dense-limit-gib`` (default: 80% of the available memory) are skipped, not run; a case
that runs past ``--timeout`` is reported as such.
Ratios are lazy / dense; "max |diff|" compares the two results.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

OPS = ("bounce", "tokenrank", "lambda2")


# ----------------------------------------------------------------------------- one case (child)
def _memory_mib(device: str):
    """(current, peak since the last reset) in MiB."""
    import torch
    if device == "cuda":
        return torch.cuda.memory_allocated() / 2**20, torch.cuda.max_memory_allocated() / 2**20
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    kib = lambda k: int(fields[k].split()[0])
    return kib("VmRSS") / 1024, kib("VmHWM") / 1024


def _reset_peak(device: str):
    import torch
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS


def dense_attention(q, k):
    """softmax(q k^T / sqrt(d)) in one buffer: the cheapest way to form the dense map."""
    S = (q / math.sqrt(q.shape[-1])) @ k.mT
    S.sub_(S.amax(-1, keepdim=True)).exp_()
    return S.div_(S.sum(-1, keepdim=True))


def case(op: str, mode: str, n: int, heads: int, d: int, max_bytes: int, device: str, out: str):
    import torch

    import chains_lite as cl
    from chains_lite.core.synthetic import attention_qk

    calls = {"bounce": lambda A: cl.bounce(A, "uniform"), "tokenrank": cl.tokenrank,
             "lambda2": cl.lambda2}
    build = {"dense": dense_attention,
             "lazy": lambda q, k: cl.LazyAttention(q, k, max_bytes=max_bytes)}[mode]
    run = lambda q, k: calls[op](build(q, k))
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    run(*(t.to(device) for t in attention_qk(2, 64, d, seed=1)))  # warm-up: threads, kernels
    q, k = (t.to(device) for t in attention_qk(heads, n, d, seed=0))
    sync()
    _reset_peak(device)
    before, _ = _memory_mib(device)
    t0 = time.perf_counter()
    result = run(q, k)
    sync()
    seconds = time.perf_counter() - t0
    _, peak = _memory_mib(device)
    torch.save(result.cpu(), out)
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "extra_mib": peak - before}))


# ----------------------------------------------------------------------------- the table (parent)
def run_case(args, op, mode, n, max_bytes):
    with tempfile.NamedTemporaryFile(suffix=".pt", delete=False) as f:
        out = f.name
    cmd = [sys.executable, __file__, "--case", op, mode, str(n), str(args.heads), str(args.d),
           str(max_bytes), args.device, out]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timed out (> {args.timeout:.0f} s)"}
    if p.returncode != 0:
        return {"status": f"failed: {p.stderr.strip().splitlines()[-1][:80]}"}
    row = json.loads(p.stdout.strip().splitlines()[-1])
    import torch
    row["result"] = torch.load(out)
    os.unlink(out)
    return row


def available_gib() -> float:
    fields = dict(line.split(":", 1) for line in open("/proc/meminfo"))
    return int(fields["MemAvailable"].split()[0]) / 2**20


def fmt(row, key, spec):
    return format(row[key], spec) if "status" not in row else row["status"]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1024,4608,16384", help="comma list of n")
    ap.add_argument("--heads", type=int, default=24)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="small sizes: n = 256, 512; 4 heads")
    ap.add_argument("--ops", default=",".join(OPS))
    ap.add_argument("--max-bytes", type=int, default=None,
                    help="LazyAttention budget (default: chains_lite.DEFAULT_MAX_BYTES)")
    ap.add_argument("--stream", action="store_true",
                    help="also run lazy with a budget below one dense head (matrix-free solvers)")
    ap.add_argument("--dense-limit-gib", type=float, default=None)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per case")
    ap.add_argument("--device", default=None)
    ap.add_argument("--case", nargs=8, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        op, mode, n, heads, d, max_bytes, device, out = args.case
        return case(op, mode, int(n), int(heads), int(d), int(max_bytes), device, out)

    import torch

    import chains_lite as cl
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        args.sizes, args.heads = "256,512", 4
    sizes = [int(s) for s in args.sizes.split(",")]
    ops = args.ops.split(",")
    max_bytes = args.max_bytes or cl.DEFAULT_MAX_BYTES
    if args.device == "cuda":
        limit = args.dense_limit_gib or 0.8 * torch.cuda.mem_get_info()[1] / 2**30
    else:
        limit = args.dense_limit_gib or 0.8 * available_gib()
    print(f"device={args.device} torch={torch.__version__} threads={torch.get_num_threads()} "
          f"heads={args.heads} d={args.d} max_bytes={max_bytes / 2**20:.0f} MiB "
          f"dense limit={limit:.1f} GiB", flush=True)

    rows, start = [], time.perf_counter()
    for n in sizes:
        # a budget below one dense head with a working copy: no dense chunks, all matrix-free
        stream_bytes = (3 * n * n * 4) // 2
        stream = args.stream and max_bytes >= 3 * n * n * 4  # (else the default streams already)
        modes = [("dense", 0), ("lazy", max_bytes)] + ([("lazy", stream_bytes)] if stream else [])
        needs = 2 * args.heads * n * n * 4 / 2**30  # the matrices and one working copy
        for op in ops:
            results = {}
            for mode, mb in modes:
                label = mode if mode == "dense" else f"lazy {mb / 2**20:.3g} MiB"
                if mode == "dense" and needs > limit:
                    results[label] = {"status": f"skipped (needs {needs:.1f} GiB)"}
                else:
                    print(f"  n={n} {op} {label} ...", end=" ", flush=True)
                    results[label] = r = run_case(args, op, mode, n, mb)
                    # each case's figures as soon as they exist: a run cut short keeps them
                    print(r["status"] if "status" in r else
                          f"{r['seconds']:.3f} s, peak {r['peak_mib']:.0f} MiB, extra {r['extra_mib']:.0f} MiB",
                          flush=True)
            rows.append((n, op, results))
    print_table(rows)
    print(f"\n(whole run: {time.perf_counter() - start:.0f} s)")


def print_table(rows):
    print("\n| n | op | variant | time s | peak MiB | extra MiB | time ratio | peak ratio "
          "| extra ratio | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n, op, results in rows:
        dense = results.get("dense", {})
        for label, r in results.items():
            ratios = ["", "", "", ""]
            if label != "dense" and "status" not in r and "status" not in dense:
                ratios = [f"{r['seconds'] / dense['seconds']:.2f}x",
                          f"{r['peak_mib'] / dense['peak_mib']:.1%}",
                          f"{r['extra_mib'] / max(dense['extra_mib'], 1e-9):.1%}",
                          f"{(r['result'] - dense['result']).abs().max().item():.1e}"]
            print(f"| {n} | {op} | {label} | {fmt(r, 'seconds', '.3f')} | "
                  f"{fmt(r, 'peak_mib', '.0f')} | {fmt(r, 'extra_mib', '.0f')} | "
                  + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()

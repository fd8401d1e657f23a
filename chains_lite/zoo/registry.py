"""Where the lite checkpoints live, and how they are written and read (safetensors + a JSON card)."""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import torch
from torch import nn

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


def card_path(name: str, folder: Path = CHECKPOINT_DIR) -> Path:
    return Path(folder) / f"{name}.json"


def weights_path(name: str, folder: Path = CHECKPOINT_DIR) -> Path:
    return Path(folder) / f"{name}.safetensors"


def objective_path(name: str, folder: Path = CHECKPOINT_DIR) -> Path:
    """Where the training objective's own trained modules (``shapes-vit-ssl``: its projector and
    decoder) are kept beside the weights, so that training further starts from them too."""
    return Path(folder) / f"{name}-objective.safetensors"


def _save_fp16(module: nn.Module, path: Path, name: str) -> None:
    from safetensors.torch import save_file

    state = {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
             for k, v in module.state_dict().items()}
    save_file(state, str(path), metadata={"name": name})


def save_checkpoint(model: nn.Module, card: dict, folder: Path, objective: nn.Module | None = None) -> None:
    """Write ``NAME.safetensors`` (fp16, to keep the repository small), ``NAME.json`` and ``NAME.md``;
    with ``objective`` (modules of the training objective that the shipped model does not hold),
    also ``NAME-objective.safetensors`` (:func:`objective_path`)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _save_fp16(model, weights_path(card["name"], folder), card["name"])
    if objective is not None:
        _save_fp16(objective, objective_path(card["name"], folder), card["name"])
    write_card(card, folder)


def write_card(card: dict, folder: Path = CHECKPOINT_DIR) -> None:
    """Write ``NAME.json`` and its rendered ``NAME.md`` into ``folder``."""
    card_path(card["name"], folder).write_text(json.dumps(card, indent=1) + "\n")
    (Path(folder) / f"{card['name']}.md").write_text(render_card(card))


def load_weights(model: nn.Module, name: str, folder: Path = CHECKPOINT_DIR, path: Path | None = None) -> nn.Module:
    """Load ``NAME.safetensors`` (or the file ``path``) into ``model`` (cast to the model's float32
    parameters)."""
    from safetensors.torch import load_file

    path = weights_path(name, folder) if path is None else Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint {path}; train it with `python -m chains_lite.zoo.training {name}`")
    state = load_file(str(path))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    return model


def checkpoint_digest(name: str, folder: Path = CHECKPOINT_DIR) -> str:
    """``"sha256:<hex>"`` of ``NAME.safetensors``: what identifies a lite model's weights (a
    retrained checkpoint keeps its name, not its digest)."""
    path = weights_path(name, folder)
    st = path.stat()
    return _digest(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    # cached by size and mtime: a rewritten file is hashed again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def read_card(name: str, folder: Path = CHECKPOINT_DIR) -> dict:
    return json.loads(card_path(name, folder).read_text())


HISTORY = 5  # earlier checkpoints a card remembers


def history(shipped: dict | None, keys) -> list:
    """The ``history`` of a new card after ``shipped`` (the card in ``--checkpoint-dir`` that a run
    starts from with ``--init`` and is compared with, or None): that card's own history and one
    entry for it (date, total steps, wall time and its validation numbers under ``keys``), the
    last :data:`HISTORY` of them."""
    if shipped is None:
        return []
    return [*shipped.get("history", []), _history_entry(shipped, keys)][-HISTORY:]


def _history_entry(card: dict, keys) -> dict:
    """One row of a card's history: its date, total steps, wall time and validation numbers under ``keys``."""
    training = card.get("training", {})
    return {"date": card.get("date", "?"), "total_steps": training.get("total_steps", training.get("steps")),
            "wall_time_s": card.get("wall_time_s", 0.0),
            "validation": {k: card["validation"][k] for k in keys if k in card["validation"]}}


def target_verdict(value, op: str, bound: float) -> str:
    """``"0.586: missed by 0.314"``, ``"11.4: met"``: a card number against its target
    (``op`` ``">="`` or ``"<="``; ``value`` None: the card lacks the number)."""
    if value is None:
        return "not measured"
    met = value >= bound if op == ">=" else value <= bound
    return f"{value:g}: " + ("met" if met else f"missed by {abs(value - bound):.3g}")


def record_run(shipped: dict, run: dict, why: str, keys, source: str = "") -> dict:
    """``shipped`` with ``run`` (a trained card that was not installed in its place) added to its
    ``runs_not_installed`` (the last :data:`HISTORY`): the run's date, total steps, wall time, its
    validation numbers under ``keys``, ``why`` it was not installed and where the record comes
    from (``source``). The learning curves of the card's targets (:func:`target_trend`) read them."""
    entry = {**_history_entry(run, keys), "why": why, **({"source": source} if source else {})}
    return {**shipped, "runs_not_installed": [*shipped.get("runs_not_installed", []), entry][-HISTORY:]}


def with_limit(card: dict, key: str, text: str, source: str, date: str) -> dict:
    """``card`` with a finding on what limits its number ``key`` (one of its targets) toward the
    target: ``text``, measured by ``source`` (a command or script) on ``date``. Shown under "What
    limits the targets"; a later finding on the same number replaces it."""
    if key not in card.get("targets", {}):
        raise ValueError(f"{key!r} is not one of the card's targets {sorted(card.get('targets', {}))}")
    if not text.strip() or not source.strip():
        raise ValueError("a finding needs its text and the source that measured it")
    limits = {**card.get("limits", {}), key: {"text": text.strip(), "source": source.strip(), "date": date}}
    return {**card, "limits": limits}


def target_trend(card: dict, key: str, op: str, bound: float) -> str:
    """The learning curve of one card number toward its target (``op`` ``">="`` or ``"<="``), from
    the two checkpoints with the most training steps that measured it, among the card's history,
    the card itself and its runs not installed (:func:`record_run`):
    ``"+0.04 over the last 14,739 steps (+0.0271 per 10,000); at that rate the target is
    115,701 steps away"``. A number that did not move toward an unmet target says so; a card
    with one such checkpoint has no learning curve."""
    rows = [*card.get("history", []), _history_entry(card, [key])]
    runs = card.get("runs_not_installed", [])
    points = sorted((h["total_steps"], h["validation"][key], h in runs) for h in [*rows, *runs]
                    if h.get("total_steps") and h["validation"].get(key) is not None)
    if len(points) < 2 or points[-1][0] == points[-2][0]:
        return "one checkpoint: no learning curve yet"
    (s0, v0, _), (s1, v1, late) = points[-2:]
    rate = (v1 - v0) / (s1 - s0) * 10_000
    text = f"{v1 - v0:+.3g} over the last {s1 - s0:,} steps ({rate:+.3g} per 10,000)"
    if late:
        text += f", in a run not installed ({v1:g} at {s1:,} steps)"
    if (v1 >= bound) if op == ">=" else (v1 <= bound):
        return text
    if (rate > 0) != (op == ">=") or rate == 0:
        return text + "; not moving toward the target"
    return text + f"; at that rate the target is {abs(bound - v1) / abs(rate) * 10_000:,.0f} steps away"


def render_card(card: dict) -> str:
    """The model card as Markdown."""
    lines = [f"# {card['name']}", "",
             f"Trained by `python -m chains_lite.zoo.training {card['name']}` on {card['date']}.", "",
             f"* **Parameters:** {card['params']:,} (stored as float16 safetensors)",
             f"* **Data:** {card['data']}",
             "* **Training:** " + ", ".join(f"{k} = {v}" for k, v in card["training"].items()),
             f"* **Wall time:** {card['wall_time_s']:.0f} s on {card['hardware']} (torch {card['torch']})",
             "", "## Validation (fresh ShapeWorld images, split=val)", "",
             "| metric | value |", "|---|---|"]
    fmt = lambda v: ", ".join(f"{k} {x}" for k, x in v.items()) if isinstance(v, dict) else v  # noqa: E731
    lines += [f"| {k} | {fmt(v)} |" for k, v in card["validation"].items()]
    if card.get("targets"):
        lines += ["", "## Targets", "", "The learning curve compares the two checkpoints with the most training steps "
                  "that measured the number: this one, those of its history and its runs not installed.", "",
                  "| number | target | this checkpoint | learning curve |", "|---|---|---|---|"]
        for key, (op, bound) in card["targets"].items():
            value = card["validation"].get(key)
            lines.append(f"| {key} | {op} {bound:g} | {target_verdict(value, op, bound)} | "
                         f"{target_trend(card, key, op, bound)} |")
    if card.get("limits"):
        lines += ["", "## What limits the targets", ""]
        lines += [f"* **{key}** ({f['date']}, `{f['source']}`): {f['text']}" for key, f in card["limits"].items()]
    if card.get("history"):
        lines += ["", "## History", "", "Earlier checkpoints of this model, oldest first, and this one:", ""]
        keys = list(dict.fromkeys(k for h in card["history"] for k in h["validation"]))
        lines += ["| date | steps | wall time | " + " | ".join(keys) + " |", "|---" * (3 + len(keys)) + "|"]
        now = _history_entry(card, keys)
        for h in [*card["history"], now]:
            lines.append(f"| {h['date']}{' (this)' if h is now else ''} | {h['total_steps']} | "
                         f"{h['wall_time_s']:.0f} s | " + " | ".join(str(h["validation"].get(k, "")) for k in keys) + " |")
    if card.get("runs_not_installed"):
        runs = card["runs_not_installed"]
        keys = list(dict.fromkeys(k for h in runs for k in h["validation"]))
        lines += ["", "## Runs not installed", "", "Runs trained further that did not replace the "
                  "checkpoint, with the reason:", "",
                  "| date | steps | wall time | " + " | ".join(keys) + " | why |", "|---" * (4 + len(keys)) + "|"]
        lines += [f"| {h['date']} | {h['total_steps']} | {h['wall_time_s']:.0f} s | "
                  + " | ".join(str(h["validation"].get(k, "")) for k in keys)
                  + f" | {h['why']}{' (' + h['source'] + ')' if h.get('source') else ''} |" for h in runs]
    lines += ["", "## Samples", "", f"![{card['name']} samples]({card['name']}-samples.png)",
              "", "## Config", "", "```json", json.dumps(card["config"], indent=1), "```", ""]
    return "\n".join(lines)

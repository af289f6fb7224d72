"""Weight averaging ("model soup"): one model from several runs of one recipe, at one model's size and speed.

Runs fine-tuned from the same base by one recipe with different seeds stay close in weight space, so
the uniform average of their weights is itself a working model (MODEL_CARD, fourteenth session: the
average of three 12,000-step seeds beat each of them on sentiment). The members' heads start from
different random weights, which the 20-way topic head suffers from, so by default the averaged heads
are then refit on the averaged encoder's frozen features: full-batch L-BFGS on the training rows, with
the recipe's class weights and label smoothing, starting from the averaged heads. Last, each head's
temperature is fitted on the calibration rows and the model is validated, as ``finpulse train`` does.

The temperature is only honest when no member trained on the calibration rows, i.e. when the members
share their calibration draw (``--calibration-seed``); otherwise the soup is refused unless the caller
accepts it, and ``metrics.json`` says so.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog
import torch

from engine.modeling import MultiHeadClassifier, load_model
from engine.tokenize import BatchTokenizer
from training.refit import refit_heads as refit_heads_on
from training.settings import TrainSettings
from training.train import (
    TOKENIZER_FILES,
    TaskSplit,
    calibrate,
    class_weights,
    load_splits,
    unseen_reports,
    validate,
)

log = structlog.get_logger(__name__)

# The hyperparameters that decide which rows a run trained on, held out, and how its heads were trained.
SPLIT_KEYS = ("limit", "calibration_fraction")
RECIPE_KEYS = ("max_seq_len", "class_weighting", "label_smoothing", "valid_limit")


class SoupError(ValueError):
    """The members cannot be averaged into one model (a different architecture, heads, tokenizer or data split)."""


def average_states(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The uniform average of floating-point tensors; other tensors (ids, counters) must be equal."""
    if not states:
        raise SoupError("nothing to average")
    keys = set(states[0])
    for i, st in enumerate(states[1:], start=1):
        if set(st) != keys:
            raise SoupError(f"member {i} has other weights than member 0: {sorted(keys ^ set(st))[:5]}")
    out: dict[str, torch.Tensor] = {}
    for k, first in states[0].items():
        for i, st in enumerate(states[1:], start=1):
            if st[k].shape != first.shape:
                raise SoupError(f"{k}: member {i} has shape {tuple(st[k].shape)}, member 0 {tuple(first.shape)}")
        if first.is_floating_point():
            out[k] = (sum(st[k].double() for st in states) / len(states)).to(first.dtype)  # type: ignore[union-attr]
        else:
            if any(not torch.equal(st[k], first) for st in states[1:]):
                raise SoupError(f"{k}: the members' non-float values differ")
            out[k] = first.clone()
    return out


def _calibration_draw(hp: dict[str, Any]) -> tuple[Any, ...]:
    seed = hp.get("calibration_seed", hp.get("seed"))
    return (seed, *(hp.get(k) for k in SPLIT_KEYS))


def soup(
    members: Sequence[Path],
    out: Path,
    data: TrainSettings,
    *,
    refit_heads: bool = True,
    allow_seen_calibration: bool = False,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Average ``members`` into ``out`` (checkpoint, tokenizer, metrics.json); returns the metrics.

    ``data`` supplies the data files; which rows are training, calibration and validation rows comes
    from the members' own hyperparameters, so the refit and the temperature see what the members saw.
    """
    paths = [Path(m) for m in members]
    if len(paths) < 2:
        raise SoupError("a soup needs at least two members")
    hps: list[dict[str, Any]] = []
    for p in paths:
        try:
            hps.append(json.loads((p / "metrics.json").read_text())["hyperparameters"])
        except (OSError, ValueError, KeyError) as exc:
            raise SoupError(
                f"{p} has no readable metrics.json with hyperparameters: finpulse train writes one"
            ) from exc
    tok_bytes = {(p / "tokenizer.json").read_bytes() if (p / "tokenizer.json").is_file() else b"" for p in paths}
    if len(tok_bytes) != 1 or b"" in tok_bytes:
        raise SoupError("the members' tokenizer.json files differ or are missing: they were not trained from one base")
    for key in RECIPE_KEYS:
        if len({json.dumps(hp.get(key)) for hp in hps}) != 1:
            raise SoupError(f"the members differ in {key}: {[hp.get(key) for hp in hps]}")
    shared_calibration = len({_calibration_draw(hp) for hp in hps}) == 1
    if not shared_calibration and not allow_seen_calibration:
        raise SoupError(
            "the members held out different calibration rows (train them with one --calibration-seed), so each "
            "member trained on rows that would fit the soup's temperature; pass --allow-seen-calibration to accept"
        )

    loaded = [load_model(p) for p in paths]
    heads = [(h.name, tuple(h.labels)) for h in loaded[0].model.head_specs]
    for p, lm in zip(paths[1:], loaded[1:], strict=True):
        if [(h.name, tuple(h.labels)) for h in lm.model.head_specs] != heads:
            raise SoupError(f"{p} has other heads or label orders than {paths[0]}")
    model: MultiHeadClassifier = loaded[0].model
    model.load_state_dict(average_states([lm.model.state_dict() for lm in loaded]))
    # The members' temperatures belong to their own weights; the soup fits its own below.
    model.head_specs = tuple(replace(h, temperature=1.0) for h in model.head_specs)
    model.eval()

    first = hps[0]
    settings = data.model_copy(
        update={
            "seed": int(first["seed"]),
            "calibration_seed": first.get("calibration_seed"),
            **{k: first[k] for k in (*SPLIT_KEYS, *RECIPE_KEYS)},
        }
    )
    splits: list[TaskSplit] = [sp for sp in load_splits(settings) if sp.task in dict(heads)]
    tokenizer = BatchTokenizer.from_model_dir(paths[0], max_seq_len=int(settings.max_seq_len), pad_multiple=8)
    for sp in splits:
        sp.valid_tok = tokenizer.tokenize(sp.valid.texts) if sp.valid is not None else None

    refit: dict[str, Any] = {}
    if refit_heads:
        weights = {sp.task: class_weights(sp.train.counts(), str(settings.class_weighting)) for sp in splits}
        refit = refit_heads_on(
            model, tokenizer, splits, weights, float(settings.label_smoothing), batch_size=batch_size
        )
    reports, valid_logits, _ = validate(model, tokenizer, splits, batch_size, torch.device("cpu"))
    calibration = calibrate(model, tokenizer, splits, batch_size, valid_logits)
    ids = [lm.model_id for lm in loaded]
    metrics: dict[str, Any] = {
        "soup_of": ids,
        "members": [str(p) for p in paths],
        "refit_heads": refit or None,
        "shared_calibration_rows": shared_calibration,
        "heads": reports,
        "unseen": unseen_reports(splits, valid_logits),
        "calibration": calibration,
        "hyperparameters": first,
        "members_hyperparameters": hps,
    }
    out.mkdir(parents=True, exist_ok=True)
    model_id = f"finpulse-soup-{out.name}"
    model.save_pretrained(out, extra_config={"finpulse_model_id": model_id, "finpulse_soup_of": ids})
    for name in TOKENIZER_FILES:
        if (paths[0] / name).is_file():
            shutil.copyfile(paths[0] / name, out / name)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    lines = [
        f"# {model_id}",
        "",
        f"The uniform weight average of {len(ids)} finpulse models ({', '.join(ids)})"
        + (", heads refit on the averaged encoder's features" if refit else "")
        + ". Validation macro-F1: "
        + ", ".join(f"{t} {r['macro_f1']:.4f}" for t, r in reports.items())
        + ".",
    ]
    if not shared_calibration:
        lines += [
            "",
            "The members held out different calibration rows: the temperature was fitted on rows that some of them "
            "trained on.",
        ]
    (out / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")
    return metrics

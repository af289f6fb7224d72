"""Evaluate a trained model on a labelled file: per-class P/R/F1, macro-F1, accuracy, confusion matrix.

``evaluate`` runs the model through the inference engine (``engine.runtime.load_classifier``), so
what is measured is what the stream worker serves; any backend the engine knows can be evaluated.
``predict_logits`` is the in-process variant the trainer uses for its validation passes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from rich.console import Console
from rich.table import Table

from engine.modeling import HeadSpec, MultiHeadClassifier
from engine.settings import DEFAULT_MAX_SEQ_LEN
from engine.tokenize import BatchTokenizer, TokenizedTexts
from training.data import DataError, Format, TaskData, label_map_for, load_for_heads
from training.metrics import classification_report, expected_calibration_error

log = structlog.get_logger(__name__)


def predict_logits(
    model: MultiHeadClassifier,
    tokenizer: BatchTokenizer,
    texts: Sequence[str] | TokenizedTexts,
    batch_size: int = 128,
    device: Any = "cpu",
) -> list[np.ndarray]:
    """Logits per head (head order) for ``texts``, in input order; batches are sorted by length to avoid padding."""
    widths = [len(h.labels) for h in model.head_specs]
    return _sorted_pass(model, tokenizer, texts, batch_size, device, widths, lambda ids, mask: model(ids, mask))


def predict_logits_and_features(
    model: MultiHeadClassifier,
    tokenizer: BatchTokenizer,
    texts: Sequence[str] | TokenizedTexts,
    batch_size: int = 128,
    device: Any = "cpu",
) -> tuple[list[np.ndarray], np.ndarray]:
    """``predict_logits`` and ``predict_features`` from one pass of the encoder."""

    def both(ids: Any, mask: Any) -> tuple[Any, ...]:
        logits, feats = model.forward_with_features(ids, mask)
        return (*logits, feats)

    widths = [len(h.labels) for h in model.head_specs] + [int(model.config.hidden_size)]
    *logits, feats = _sorted_pass(model, tokenizer, texts, batch_size, device, widths, both)
    return logits, feats


def predict_features(
    model: MultiHeadClassifier,
    tokenizer: BatchTokenizer,
    texts: Sequence[str] | TokenizedTexts,
    batch_size: int = 128,
    device: Any = "cpu",
) -> np.ndarray:
    """What the heads read for ``texts`` (the mean-pooled last layer), in input order, in eval mode."""

    def pooled(ids: Any, mask: Any) -> tuple[Any, ...]:
        return (model.forward_with_features(ids, mask)[1],)

    width = int(model.config.hidden_size)
    return _sorted_pass(model, tokenizer, texts, batch_size, device, [width], pooled)[0]


def _sorted_pass(
    model: MultiHeadClassifier,
    tokenizer: BatchTokenizer,
    texts: Sequence[str] | TokenizedTexts,
    batch_size: int,
    device: Any,
    widths: list[int],
    forward: Callable[[Any, Any], Sequence[Any]],
) -> list[np.ndarray]:
    import torch

    tok = texts if isinstance(texts, TokenizedTexts) else tokenizer.tokenize(list(texts))
    n = int(tok.lengths.size)
    outs = [np.zeros((n, w), dtype=np.float32) for w in widths]
    if n == 0:
        return outs
    order = np.argsort(tok.lengths, kind="stable")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                batch = tokenizer.collate(tok, idx)
                got = forward(
                    torch.from_numpy(batch.input_ids).to(device), torch.from_numpy(batch.attention_mask).to(device)
                )
                for out, lg in zip(outs, got, strict=True):
                    out[idx] = lg.float().cpu().numpy()
    finally:
        model.train(was_training)
    return outs


def _model_to_data_index(head: HeadSpec, data: TaskData) -> np.ndarray:
    """For each of the head's logits, the index of the same label in the data's label order."""
    lmap = label_map_for(data.task)
    mapping = []
    for lab in head.labels:
        idx = lmap.encode(lab)
        if idx is None:
            raise ValueError(
                f"head {head.name!r} has label {lab!r}, which the {data.task} label map does not know "
                f"({lmap.describe()})"
            )
        mapping.append(idx)
    if sorted(mapping) != list(range(len(data.labels))):
        raise ValueError(f"head {head.name!r} labels {head.labels} do not cover the {data.task} labels {data.labels}")
    return np.asarray(mapping, dtype=np.int64)


def evaluate(
    model_dir: str | Path,
    data_file: str | Path,
    task: str | None = None,
    *,
    json_out: str | Path | None = None,
    backend: str = "torch",
    max_seq_len: int = DEFAULT_MAX_SEQ_LEN,
    batch_size: int = 64,
    fmt: Format | None = None,
    label_ids: Mapping[str, Sequence[str]] | None = None,
    console: Console | None = None,
    show: bool = True,
) -> dict[str, Any]:
    """Metrics for every head of the model that the data labels (or only ``task``).

    A ``text,label`` file is one task (``task``, else inferred from its path or labels); a file
    with columns named after heads (``text,sentiment,topic``) evaluates each of those heads.
    Returns ``{"model", "data", "backend", "heads": {head: report}}`` (see
    ``training.metrics.classification_report``); prints tables when ``show`` and writes the
    same dict to ``json_out`` when given. Numeric label ids are read in the task's own convention
    unless ``label_ids`` gives the names in id order for a task; each head's report says what its
    ids were read as (``ids_read_as``), because a wrong order scores a file wrongly without an error.
    """
    from engine.runtime import load_classifier
    from engine.settings import EngineSettings

    clf = load_classifier(
        EngineSettings(backend=backend, max_seq_len=max_seq_len, max_batch_size=batch_size), model_dir
    )
    heads = {h.name: h for h in clf.heads}
    data = load_for_heads(data_file, list(heads), task=task, fmt=fmt, label_ids=label_ids)
    if unused := sorted(set(label_ids or {}) - set(data)):
        raise ValueError(f"label ids were given for {', '.join(unused)}, but {data_file} labels {', '.join(data)}")
    result: dict[str, Any] = {
        "model": str(model_dir),
        "data": str(data_file),
        "backend": backend,
        "max_seq_len": max_seq_len,
        "heads": {},
    }
    for name, td in data.items():
        probs = clf.classify(td.texts)[name]
        to_data = _model_to_data_index(heads[name], td)
        pred = to_data[probs.argmax(axis=1)]
        report = classification_report(td.label_ids, pred, td.labels)
        # Calibration of what is served (the head's temperature included), with columns in data order.
        in_data_order = np.empty_like(probs)
        in_data_order[:, to_data] = probs
        report["ece"] = expected_calibration_error(in_data_order, td.label_ids)
        report["ids_read_as"] = list(td.ids_read_as) if td.ids_read_as is not None else None
        result["heads"][name] = report
        log.info(
            "evaluated",
            head=name,
            data=str(data_file),
            n=report["n"],
            macro_f1=round(report["macro_f1"], 4),
            accuracy=round(report["accuracy"], 4),
            ece=round(report["ece"], 4),
            temperature=heads[name].temperature,
        )
    if show:
        print_report(result, console)
    if json_out is not None:
        out = Path(json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
    return result


def print_report(result: dict[str, Any], console: Console | None = None) -> None:
    """Rich tables: per-class scores per head, then the confusion matrix where it fits a terminal."""
    console = console or Console()
    for name, rep in result["heads"].items():
        console.print(
            f"[bold]{name}[/bold]: macro-F1 {rep['macro_f1']:.4f} · accuracy {rep['accuracy']:.4f} · "
            f"ECE {rep.get('ece', float('nan')):.4f} · n={rep['n']}"
        )
        if ids := rep.get("ids_read_as"):
            console.print(
                f"numeric labels read as {', '.join(f'{i} {lab}' for i, lab in enumerate(ids))}; "
                "if the file means another order, pass --label-ids"
            )
        table = Table()
        for col in ("label", "precision", "recall", "F1", "support"):
            table.add_column(col, justify="left" if col == "label" else "right")
        for lab, s in rep["per_class"].items():
            table.add_row(lab, f"{s['precision']:.3f}", f"{s['recall']:.3f}", f"{s['f1']:.3f}", str(s["support"]))
        table.add_section()
        table.add_row(
            "macro avg",
            f"{rep['macro_precision']:.3f}",
            f"{rep['macro_recall']:.3f}",
            f"{rep['macro_f1']:.3f}",
            str(rep["n"]),
        )
        console.print(table)
        labels = rep["labels"]
        if len(labels) <= 10:
            cm = Table(caption="confusion matrix: rows true, columns predicted")
            cm.add_column("")
            for lab in labels:
                cm.add_column(lab[:12], justify="right")
            for lab, row in zip(labels, rep["confusion_matrix"], strict=True):
                cm.add_row(lab[:12], *(str(v) for v in row))
            console.print(cm)
        else:
            console.print(f"[dim]{name}: {len(labels)}x{len(labels)} confusion matrix omitted here; use --json[/dim]")


__all__ = ["DataError", "evaluate", "predict_logits", "print_report"]

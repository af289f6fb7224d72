"""Hidden-state distillation: the student's layers learn a larger teacher's token states.

TinyBERT's task-stage idea, joined to the ordinary gold loss: student layer ``i`` of ``L_s`` is matched
to teacher layer ``round(i * L_t / L_s)`` through one learned linear map per layer (student width to
teacher width). Each layer's loss is the squared error over real tokens divided by the teacher states'
own mean square, so a layer with large activations does not drown the others; the layers are averaged.

Token states can only be compared where both tokenizers cut a text into the same pieces. MiniLM and
MPNet share BERT's uncased WordPiece vocabulary, so they do on every row of the shared data; a row that
is cut differently is left out of this loss, and a teacher that cuts most rows differently is refused.
The output-distillation path (``training.distill``) needs no such agreement; this one needs the teacher
to run on every step, since its states (every layer, every token) are too large to cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.modeling import MultiHeadClassifier, load_model
from engine.tokenize import BatchTokenizer, TokenizedTexts
from training.distill import DistillError

# Below this share of rows that the two tokenizers cut alike, the loss would see too little to teach.
MIN_ALIGNED_SHARE = 0.5


def layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """(student layer, teacher layer) pairs, 1-based (0 is the embeddings, not matched): uniform spacing."""
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError("both encoders need at least one layer")
    return [(i, round(i * teacher_layers / student_layers)) for i in range(1, student_layers + 1)]


def aligned_rows(
    student_tok: BatchTokenizer, student: TokenizedTexts, teacher_tok: BatchTokenizer, teacher: TokenizedTexts
) -> np.ndarray:
    """Per row: whether the two tokenizations have the same length and the same pieces between the first and
    last (special) tokens, so that token ``j`` of one is token ``j`` of the other."""
    if len(student.ids) != len(teacher.ids):
        raise ValueError("the two tokenizations must cover the same texts")
    teacher_vocab = teacher_tok.vocab()
    # Student id -> teacher id of the same piece (-1: the teacher has no such piece).
    to_teacher = {i: teacher_vocab.get(piece, -1) for piece, i in student_tok.vocab().items()}
    out = np.zeros(len(student.ids), dtype=bool)
    for row, (s_ids, t_ids) in enumerate(zip(student.ids, teacher.ids, strict=True)):
        out[row] = len(s_ids) == len(t_ids) and [to_teacher.get(i, -1) for i in s_ids[1:-1]] == list(t_ids[1:-1])
    return out


class HiddenDistiller(nn.Module):
    """The learned maps from the student's layers to the teacher's, and the loss; the teacher stays frozen.

    The teacher is held outside the module's parameters, so an optimizer over ``parameters()`` trains the
    maps only.
    """

    def __init__(self, teacher: MultiHeadClassifier, student: MultiHeadClassifier) -> None:
        super().__init__()
        s_cfg, t_cfg = student.config, teacher.config
        self.pairs = layer_map(int(s_cfg.num_hidden_layers), int(t_cfg.num_hidden_layers))
        self.maps = nn.ModuleList(nn.Linear(int(s_cfg.hidden_size), int(t_cfg.hidden_size)) for _ in self.pairs)
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        self._teacher = [teacher]  # a list, so that nn.Module does not register it as a submodule

    @property
    def teacher(self) -> MultiHeadClassifier:
        return self._teacher[0]

    def teacher_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The teacher's token states for its own ids of the batch (no gradient)."""
        with torch.no_grad():
            return self.teacher.forward_with_hidden_states(input_ids, attention_mask)[1]

    def loss(
        self,
        student_states: tuple[torch.Tensor, ...],
        teacher_states: tuple[torch.Tensor, ...],
        attention_mask: torch.Tensor,
        rows: torch.Tensor,
    ) -> torch.Tensor:
        """Mean over the matched layers of the relative squared error on real tokens of the aligned ``rows``."""
        keep = attention_mask.bool() & rows.bool().unsqueeze(1)
        if not bool(keep.any()):
            return student_states[-1].new_zeros(()).float()
        losses = []
        for proj, (s_layer, t_layer) in zip(self.maps, self.pairs, strict=True):
            s = proj(student_states[s_layer][keep].float())
            t = teacher_states[t_layer][keep].float()
            losses.append(((s - t) ** 2).sum() / (t**2).sum().clamp(min=1e-6))
        return torch.stack(losses).mean()


@dataclass
class HiddenTeacher:
    """A loaded teacher for hidden-state distillation with its own tokenizer."""

    distiller: HiddenDistiller
    tokenizer: BatchTokenizer
    model_id: str


def load_hidden_teacher(path: Path, student: MultiHeadClassifier, max_seq_len: int) -> HiddenTeacher:
    """Load a finpulse (or plain encoder) checkpoint as the hidden-state teacher of ``student``."""
    try:
        loaded = load_model(path)
    except Exception as exc:  # noqa: BLE001 - any loader failure is a distillation setup error here
        raise DistillError(f"hidden-state teacher {path} cannot be loaded: {exc}") from exc
    tok = BatchTokenizer.from_model_dir(path, max_seq_len=max_seq_len, pad_multiple=8)
    return HiddenTeacher(distiller=HiddenDistiller(loaded.model, student), tokenizer=tok, model_id=loaded.model_id)


def check_alignment(aligned: np.ndarray, task: str, teacher: Path) -> None:
    """Refuse a teacher whose tokenizer cuts most rows of a task differently from the student's."""
    share = float(aligned.mean()) if aligned.size else 0.0
    if share < MIN_ALIGNED_SHARE:
        raise DistillError(
            f"hidden-state teacher {teacher} cuts only {share:.0%} of the {task} rows into the student's pieces "
            f"(at least {MIN_ALIGNED_SHARE:.0%} needed): its tokenizer differs from the student's"
        )

"""Labelled text loaders: CSV, JSONL and the Financial PhraseBank ``sentence@label`` format.

Every row becomes (text, label id in the head's order, line number). Labels may be ids or names;
each task has a label map, and the sentiment map also knows the twitter-financial-news convention
(``0`` Bearish, ``1`` Bullish, ``2`` Neutral), which is *not* the head order (negative, neutral,
positive). Anything wrong with a file raises ``DataError`` naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from engine.heads import SENTIMENT_LABELS

Format = Literal["csv", "jsonl", "phrasebank"]

TOPIC_LABELS: tuple[str, ...] = (
    "Analyst Update",
    "Fed / Central Banks",
    "Company / Product News",
    "Treasuries / Corporate Debt",
    "Dividend",
    "Earnings",
    "Energy / Oil",
    "Financials",
    "Currencies",
    "General News / Opinion",
    "Gold / Metals / Materials",
    "IPO",
    "Legal / Regulation",
    "M&A / Investments",
    "Macro",
    "Markets",
    "Politics",
    "Personnel Change",
    "Stock Commentary",
    "Stock Movement",
)
TASKS: tuple[str, ...] = ("sentiment", "topic")


class DataError(ValueError):
    """A data file cannot be used; ``path`` and ``line`` (1-based, ``None`` for the whole file) say where."""

    def __init__(self, path: str | Path, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {reason}")
        self.path = Path(path)
        self.line = line
        self.reason = reason


def _norm(label: str) -> str:
    return " ".join(label.strip().lower().split())


@dataclass(frozen=True)
class LabelMap:
    """A task's labels in head (logit) order, and every spelling that maps onto them."""

    task: str
    labels: tuple[str, ...]
    aliases: Mapping[str, int] = field(default_factory=dict)

    def encode(self, raw: Any) -> int | None:
        """Index of ``raw`` (an id as int or string, or a name in any case), or ``None`` when unknown."""
        if isinstance(raw, bool) or raw is None:
            return None
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        key = _norm(str(raw))
        return self.aliases.get(key)

    def describe(self) -> str:
        return ", ".join(self.labels)

    def id_names(self) -> tuple[str, ...]:
        """What each numeric id means, in id order (``("negative", "positive", "neutral")`` for sentiment)."""
        return tuple(self.labels[self.aliases[str(i)]] for i in range(len(self.labels)))

    def with_ids(self, names: Sequence[str]) -> LabelMap:
        """This map with numeric ids re-assigned: id ``i`` means ``names[i]`` (any known spelling).

        A file's numeric ids carry no meaning by themselves: the twitter-financial-news sets use
        ``0`` Bearish, ``1`` Bullish, ``2`` Neutral, while other headline sets use 0 negative, 1 neutral,
        2 positive. Read with the wrong order, such a file is scored wrongly without any error, so
        callers that read outside files say the order explicitly.
        """
        names = [n for n in names if n.strip()]
        if len(names) != len(self.labels):
            raise ValueError(
                f"{self.task} ids need {len(self.labels)} label names in id order, got {len(names)}: {', '.join(names)}"
            )
        resolved: list[int] = []
        for name in names:
            key = _norm(name)
            if key.isdigit() or key not in self.aliases:
                raise ValueError(f"unknown {self.task} label name {name!r} (known: {self.describe()})")
            resolved.append(self.aliases[key])
        if sorted(resolved) != list(range(len(self.labels))):
            raise ValueError(f"{self.task} id order {', '.join(names)} names some label twice")
        aliases = {k: v for k, v in self.aliases.items() if not k.isdigit()}
        aliases.update({str(i): r for i, r in enumerate(resolved)})
        return LabelMap(task=self.task, labels=self.labels, aliases=aliases)


def _label_map(
    task: str, labels: Sequence[str], ids: Mapping[str, str] | None = None, extra: Mapping[str, str] | None = None
) -> LabelMap:
    index = {lab: i for i, lab in enumerate(labels)}
    aliases: dict[str, int] = {_norm(lab): i for i, lab in enumerate(labels)}
    for spelling, name in {**(ids or {}), **(extra or {})}.items():
        aliases[_norm(spelling)] = index[name]
    if ids is None:
        aliases.update({str(i): i for i in range(len(labels))})
    return LabelMap(task=task, labels=tuple(labels), aliases=aliases)


# Ids follow the twitter-financial-news-sentiment convention, not the head order.
SENTIMENT_MAP = _label_map(
    "sentiment",
    SENTIMENT_LABELS,
    ids={"0": "negative", "1": "positive", "2": "neutral"},
    extra={"bearish": "negative", "bullish": "positive", "neg": "negative", "pos": "positive", "neu": "neutral"},
)
TOPIC_MAP = _label_map("topic", TOPIC_LABELS)
LABEL_MAPS: dict[str, LabelMap] = {"sentiment": SENTIMENT_MAP, "topic": TOPIC_MAP}


def label_map_for(task: str) -> LabelMap:
    """The label map of a known task (``sentiment`` or ``topic``)."""
    try:
        return LABEL_MAPS[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(LABEL_MAPS)}") from None


@dataclass(frozen=True)
class Record:
    """One raw row: its text, its label cells by column name, and where it came from."""

    text: str
    labels: Mapping[str, Any]
    line: int


@dataclass
class TaskData:
    """Texts and label ids (head order) of one task from one file."""

    task: str
    labels: tuple[str, ...]
    texts: list[str]
    label_ids: np.ndarray
    lines: list[int]
    source: Path
    #: what the file's numeric ids were read as, in id order; ``None`` when every label was a name
    ids_read_as: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self) -> np.ndarray:
        return np.bincount(self.label_ids, minlength=len(self.labels))

    def split(self, fraction: float, seed: int) -> tuple[TaskData, TaskData | None]:
        """``(rest, held)``: a seeded random ``fraction`` of the rows held out (``None`` when it rounds to 0 rows)."""
        n_held = int(round(fraction * len(self)))
        if n_held <= 0 or n_held >= len(self):
            return self, None
        held = np.zeros(len(self), dtype=bool)
        held[np.random.default_rng(seed).choice(len(self), size=n_held, replace=False)] = True
        return self._rows(np.flatnonzero(~held)), self._rows(np.flatnonzero(held))

    def _rows(self, idx: np.ndarray) -> TaskData:
        return TaskData(
            task=self.task,
            labels=self.labels,
            texts=[self.texts[i] for i in idx],
            label_ids=self.label_ids[idx],
            lines=[self.lines[i] for i in idx],
            source=self.source,
            ids_read_as=self.ids_read_as,
        )

    def with_rows(self, texts: Sequence[str], label_ids: np.ndarray) -> TaskData:
        """These rows plus ``texts`` labelled ``label_ids`` (rows from no file: line -1), e.g. pseudo-labels."""
        return TaskData(
            task=self.task,
            labels=self.labels,
            texts=[*self.texts, *texts],
            label_ids=np.concatenate([self.label_ids, np.asarray(label_ids, dtype=self.label_ids.dtype)]),
            lines=[*self.lines, *([-1] * len(texts))],
            source=self.source,
            ids_read_as=self.ids_read_as,
        )

    def subset(self, n: int | None, seed: int) -> TaskData:
        """At most ``n`` rows drawn at random (files are often sorted by label, so never the first ``n``)."""
        if n is None or n >= len(self):
            return self
        return self._rows(np.sort(np.random.default_rng(seed).choice(len(self), size=n, replace=False)))


def _read_text(path: Path, fallback_latin1: bool = False) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(path, None, f"cannot read file ({exc.strerror or exc})") from exc
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if fallback_latin1:
            # The PhraseBank ships as ISO-8859-1; every byte sequence is valid latin-1.
            return raw.decode("latin-1")
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(path, line, f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc


def detect_format(path: Path, text: str | None = None) -> Format:
    """By extension (.csv, .jsonl/.json/.ndjson, .txt), else by sniffing the first non-blank line."""
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".txt":
        return "phrasebank"
    if text is None:
        text = _read_text(path, fallback_latin1=True)
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if first.startswith("{"):
        return "jsonl"
    if "@" in first and SENTIMENT_MAP.encode(first.rsplit("@", 1)[1]) is not None:
        return "phrasebank"
    return "csv"


def _read_csv(path: Path) -> list[Record]:
    text = _read_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(path, 1, "empty file: expected a header with 'text' and 'label' columns") from None
    except csv.Error as exc:
        raise DataError(path, 1, f"malformed CSV header ({exc})") from exc
    names = [h.strip().lower() for h in header]
    if "text" not in names:
        raise DataError(path, 1, f"no 'text' column (columns: {header}); expected 'text,label'")
    label_cols = [n for n in names if n != "text"]
    if not label_cols:
        raise DataError(path, 1, f"no label column (columns: {header}); expected 'text,label'")
    records: list[Record] = []
    line = reader.line_num
    while True:
        start = line + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(path, start, f"malformed CSV ({exc})") from exc
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue  # blank line
        if len(row) != len(names):
            raise DataError(path, start, f"expected {len(names)} fields ({','.join(names)}), found {len(row)}")
        cells = dict(zip(names, row, strict=True))
        records.append(Record(text=cells["text"], labels={k: cells[k] for k in label_cols}, line=start))
    return records


def _read_jsonl(path: Path) -> list[Record]:
    records: list[Record] = []
    for n, raw in enumerate(_read_text(path).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DataError(path, n, f"invalid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise DataError(path, n, f"expected a JSON object with 'text' and 'label', found {type(obj).__name__}")
        if "text" not in obj:
            raise DataError(path, n, f"no 'text' field (fields: {sorted(obj)})")
        label_cols = {k: v for k, v in obj.items() if k != "text"}
        if not label_cols:
            raise DataError(path, n, f"no label field (fields: {sorted(obj)})")
        text = obj["text"]
        if not isinstance(text, str):
            raise DataError(path, n, f"'text' must be a string, found {type(text).__name__}")
        records.append(Record(text=text, labels=label_cols, line=n))
    return records


def _read_phrasebank(path: Path) -> list[Record]:
    records: list[Record] = []
    for n, raw in enumerate(_read_text(path, fallback_latin1=True).splitlines(), start=1):
        if not raw.strip():
            continue
        if "@" not in raw:
            raise DataError(path, n, "expected 'sentence@label' (no '@' found)")
        # The sentence itself may contain '@'; the label is after the last one.
        text, label = raw.rsplit("@", 1)
        records.append(Record(text=text, labels={"label": label}, line=n))
    return records


def read_records(path: str | Path, fmt: Format | None = None) -> list[Record]:
    """Raw rows of a labelled file; fails with ``DataError`` on unreadable files and wrong columns."""
    p = Path(path)
    if not p.is_file():
        raise DataError(p, None, "file not found" if not p.exists() else "not a regular file")
    fmt = fmt or detect_format(p)
    readers = {"csv": _read_csv, "jsonl": _read_jsonl, "phrasebank": _read_phrasebank}
    if fmt not in readers:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(readers)}")
    records = readers[fmt](p)
    if not records:
        raise DataError(p, None, "no data rows")
    return records


def _label_column(path: Path, records: Sequence[Record], task: str) -> str:
    cols = set(records[0].labels)
    if task in cols:
        return task
    if "label" in cols:
        return "label"
    raise DataError(path, 1, f"no 'label' or '{task}' column (label columns: {sorted(cols)})")


def encode_records(
    path: str | Path,
    records: Sequence[Record],
    task: str,
    column: str | None = None,
    skip_missing: bool = False,
    label_ids: Sequence[str] | None = None,
) -> TaskData:
    """Label ids for ``task`` from ``column``; empty texts and unknown labels fail with their line.

    ``skip_missing`` drops rows whose label cell is empty (multi-column files label some rows for
    one head only); otherwise an empty label is an error like any unknown one. ``label_ids`` names
    the labels of the file's numeric ids in id order (``LabelMap.with_ids``); without it the task's
    own convention applies, and the result says which it was (``ids_read_as``).
    """
    p = Path(path)
    lmap = label_map_for(task)
    if label_ids is not None:
        lmap = lmap.with_ids(label_ids)
    col = column or _label_column(p, records, task)
    texts: list[str] = []
    ids: list[int] = []
    lines: list[int] = []
    numeric = False
    for rec in records:
        raw = rec.labels.get(col)
        if skip_missing and (raw is None or (isinstance(raw, str) and not raw.strip())):
            continue
        text = rec.text.strip()
        if not text:
            raise DataError(p, rec.line, "empty text")
        label = lmap.encode(raw)
        if label is None:
            raise DataError(
                p, rec.line, f"unknown {task} label {raw!r} (known: ids 0..{len(lmap.labels) - 1} or {lmap.describe()})"
            )
        numeric = numeric or _is_id(raw)
        texts.append(text)
        ids.append(label)
        lines.append(rec.line)
    if not texts:
        raise DataError(p, None, f"no rows labelled for {task}")
    return TaskData(
        task=task,
        labels=lmap.labels,
        texts=texts,
        label_ids=np.asarray(ids, dtype=np.int64),
        lines=lines,
        source=p,
        ids_read_as=lmap.id_names() if numeric else None,
    )


def _is_id(raw: Any) -> bool:
    """Whether a label cell is a numeric id rather than a name."""
    if isinstance(raw, bool):
        return False
    if isinstance(raw, int) or (isinstance(raw, float) and raw.is_integer()):
        return True
    return isinstance(raw, str) and raw.strip().isdigit()


def load_task_data(path: str | Path, task: str, fmt: Format | None = None) -> TaskData:
    """Load one task's labelled file (CSV/JSONL with ``text,label`` or ``text,<task>``, or PhraseBank)."""
    records = read_records(path, fmt)
    return encode_records(path, records, task)


def infer_task(path: str | Path, records: Sequence[Record]) -> str:
    """Which task a single-label file is for: its folder/file name, else the labels it holds.

    Ids 0..2 are read as sentiment (the twitter-financial-news convention); any id above 2, or a
    topic name, means topic.
    """
    p = Path(path)
    hint = f"{p.parent.name}/{p.name}".lower()
    named = [t for t in TASKS if t in hint]
    if len(named) == 1:
        return named[0]
    col = "label" if "label" in records[0].labels else next(iter(records[0].labels))
    values = {r.labels.get(col) for r in records}
    for task in TASKS:
        lmap = LABEL_MAPS[task]
        if all(lmap.encode(v) is not None for v in values):
            return task
    raise DataError(p, None, f"cannot tell the task from labels {sorted(map(str, values))[:10]}; pass task=")


def load_for_heads(
    path: str | Path,
    heads: Sequence[str],
    task: str | None = None,
    fmt: Format | None = None,
    label_ids: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, TaskData]:
    """Per-head data in a file: a ``text,label`` file gives one task (``task`` or inferred); columns
    named after heads (``text,sentiment,topic``) give one entry per such column. ``label_ids`` gives,
    per task, the label names of the file's numeric ids in id order (``encode_records``)."""
    p = Path(path)
    ids = dict(label_ids or {})
    records = read_records(p, fmt)
    cols = set(records[0].labels)
    head_cols = [h for h in heads if h in cols]
    if task is not None:
        if task not in heads:
            raise ValueError(f"the model has no {task!r} head (heads: {', '.join(heads)})")
        return {task: encode_records(p, records, task, column=task if task in cols else None, label_ids=ids.get(task))}
    if head_cols and "label" not in cols:
        return {h: encode_records(p, records, h, column=h, skip_missing=True, label_ids=ids.get(h)) for h in head_cols}
    inferred = infer_task(p, records)
    if inferred not in heads:
        raise DataError(p, None, f"data is for {inferred!r} but the model's heads are {', '.join(heads)}")
    return {inferred: encode_records(p, records, inferred, label_ids=ids.get(inferred))}


def sentiment_texts(data_dir: str | Path, n: int, split: Literal["train", "valid"] = "valid") -> list[str]:
    """The first ``n`` texts of the sentiment data set's ``split`` under ``data_dir``.

    Used wherever real texts are needed without labels (export validation, benchmarks, test
    fixtures). ``FileNotFoundError`` names the file when it is missing.
    """
    from training.settings import SENTIMENT_SUBDIR

    path = Path(data_dir) / SENTIMENT_SUBDIR / f"{split}.csv"
    with open(path, newline="", encoding="utf-8") as f:
        return [row["text"] for _, row in zip(range(n), csv.DictReader(f), strict=False)]

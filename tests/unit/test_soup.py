"""Weight averaging: the average itself, the refusals, and a soup of two short runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

from engine.modeling import load_model
from tests.support.tiny_bert import tiny_train_settings
from training.settings import TrainSettings
from training.soup import SoupError, average_states, soup
from training.train import train


def test_average_is_elementwise_and_refuses_mismatches() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "ids": torch.tensor([0, 1])}
    b = {"w": torch.tensor([3.0, 6.0]), "ids": torch.tensor([0, 1])}
    c = {"w": torch.tensor([5.0, 1.0]), "ids": torch.tensor([0, 1])}
    got = average_states([a, b, c])
    assert torch.allclose(got["w"], torch.tensor([3.0, 3.0]))
    assert torch.equal(got["ids"], a["ids"])
    with pytest.raises(SoupError, match="other weights"):
        average_states([a, {"w": a["w"]}])
    with pytest.raises(SoupError, match="shape"):
        average_states([a, {"w": torch.zeros(3), "ids": a["ids"]}])
    with pytest.raises(SoupError, match="non-float"):
        average_states([a, {"w": a["w"], "ids": torch.tensor([1, 0])}])


def _settings(d: Path, **kw: Any) -> TrainSettings:
    return tiny_train_settings(d, **{"max_steps": 8, "calibration_fraction": 0.2, **kw})


@pytest.fixture(scope="module")
def members(tiny_task_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("members")
    runs = {
        "a": _settings(tiny_task_dir, seed=1, calibration_seed=9),
        "b": _settings(tiny_task_dir, seed=2, calibration_seed=9),
        "c": _settings(tiny_task_dir, seed=3),  # its own calibration draw
        "d": _settings(tiny_task_dir, seed=4, calibration_seed=9, max_seq_len=24),  # another recipe
    }
    for name, settings in runs.items():
        train(settings, out / name)
    return {name: out / name for name in runs}


@pytest.mark.slow
def test_soup_of_two_runs_is_their_average_with_refit_heads(
    tiny_task_dir: Path, members: dict[str, Path], tmp_path: Path
) -> None:
    metrics = soup([members["a"], members["b"]], tmp_path / "s", _settings(tiny_task_dir))
    assert metrics["shared_calibration_rows"] is True
    assert set(metrics["heads"]) == {"sentiment", "topic"}
    assert {t: r["rows"] for t, r in metrics["refit_heads"].items()} == {"sentiment": 48, "topic": 48}
    got = load_model(tmp_path / "s").model.state_dict()
    a = load_model(members["a"]).model.state_dict()
    b = load_model(members["b"]).model.state_dict()
    enc = [k for k in got if k.startswith("bert.")]
    for k in enc:
        assert torch.allclose(got[k].float(), (a[k].float() + b[k].float()) / 2, atol=1e-6), k
    # The heads were refit, so they are not the members' average.
    head = "heads.topic.weight"
    assert not torch.allclose(got[head], (a[head] + b[head]) / 2, atol=1e-4)
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    assert cfg["finpulse_soup_of"] == [load_model(members[m]).model_id for m in ("a", "b")]
    assert (tmp_path / "s" / "tokenizer.json").read_bytes() == (members["a"] / "tokenizer.json").read_bytes()

    plain = soup([members["a"], members["b"]], tmp_path / "p", _settings(tiny_task_dir), refit_heads=False)
    assert plain["refit_heads"] is None
    p = load_model(tmp_path / "p").model.state_dict()
    assert torch.allclose(p[head], (a[head] + b[head]) / 2, atol=1e-6)


@pytest.mark.slow
def test_soup_refuses_other_calibration_rows_and_other_recipes(
    tiny_task_dir: Path, members: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(SoupError, match="calibration-seed"):
        soup([members["a"], members["c"]], tmp_path / "x", _settings(tiny_task_dir))
    seen = soup([members["a"], members["c"]], tmp_path / "y", _settings(tiny_task_dir), allow_seen_calibration=True)
    assert seen["shared_calibration_rows"] is False
    assert "some of them trained on" in (tmp_path / "y" / "MODEL_CARD.md").read_text()
    with pytest.raises(SoupError, match="max_seq_len"):
        soup([members["a"], members["d"]], tmp_path / "z", _settings(tiny_task_dir))
    with pytest.raises(SoupError, match="at least two"):
        soup([members["a"]], tmp_path / "w", _settings(tiny_task_dir))


@pytest.mark.slow
def test_soup_command(
    tiny_task_dir: Path, members: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training.cli import soup_cmd

    for key in ("sentiment_train", "sentiment_valid", "topic_train", "topic_valid"):
        monkeypatch.setenv(f"FINPULSE_TRAIN_{key.upper()}", str(tiny_task_dir / f"{key}.csv"))
    res = CliRunner().invoke(soup_cmd, ["--out", str(tmp_path / "s"), str(members["a"]), str(members["c"])])
    assert res.exit_code != 0 and "calibration-seed" in res.output
    res = CliRunner().invoke(soup_cmd, ["--out", str(tmp_path / "s"), str(members["a"]), str(members["b"])])
    assert res.exit_code == 0, res.output
    assert "soup of 2" in res.output and (tmp_path / "s" / "metrics.json").is_file()

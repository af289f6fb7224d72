"""Replay column mapping: recognised names, flags, the headline-only layout, and errors that name the columns."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from stream.cli.replay import ColumnFlags, MappingError, choose_mapping
from stream.cli.replay.command import replay_cmd
from tests.support.replay_files import HEADLINE_COLUMNS, headline_rows, write_rows


@pytest.mark.parametrize("time_col", ["date", "published_at", "created_at", "timestamp", "datetime", "Date"])
@pytest.mark.parametrize("ticker_col", ["stock", "ticker", "symbol", "tickers"])
def test_common_names_are_recognised(time_col: str, ticker_col: str) -> None:
    m = choose_mapping(["text", time_col, ticker_col])
    assert (m.text, m.time, m.tickers) == ("text", time_col, ticker_col)


def test_a_headline_file_reads_its_title_as_the_text() -> None:
    m = choose_mapping(HEADLINE_COLUMNS)
    assert (m.text, m.title, m.time, m.tickers, m.id) == ("title", None, "date", "stock", None)
    assert m.default_source == "news"
    assert "text=title time=date" in m.describe() and "derived" in m.describe()


def test_title_and_text_both_present() -> None:
    m = choose_mapping(["id", "title", "body", "published_at", "source", "author", "url", "lang"])
    assert (m.text, m.title, m.id, m.source, m.author, m.url, m.lang) == (
        "body",
        "title",
        "id",
        "source",
        "author",
        "url",
        "lang",
    )


def test_stocknet_layout() -> None:
    m = choose_mapping(["created_at", "ticker", "tweet_id", "user_id", "lang", "text"])
    assert (m.time, m.tickers, m.id, m.author, m.lang, m.default_source) == (
        "created_at",
        "ticker",
        "tweet_id",
        "user_id",
        "lang",
        "tweet",
    )


def test_flags_win_over_recognised_names() -> None:
    m = choose_mapping(
        ["headline", "body", "when", "date", "sym"], ColumnFlags(text="headline", time="when", tickers="sym")
    )
    assert (m.text, m.time, m.tickers, m.title) == ("headline", "when", "sym", None)


def test_no_time_column_names_the_columns_and_the_flags() -> None:
    with pytest.raises(MappingError) as e:
        choose_mapping(["headline", "when_it_happened"], where="f.csv")
    msg = str(e.value)
    assert "'headline'" in msg and "'when_it_happened'" in msg and "--time COLUMN" in msg and "f.csv" in msg


def test_a_flag_naming_a_missing_column() -> None:
    with pytest.raises(MappingError, match=r"--text 'body' is not a column; columns found: 'a', 'b'"):
        choose_mapping(["a", "b"], ColumnFlags(text="body"))


def test_cli_prints_the_mapping_and_fails_in_one_line(tmp_path: Path) -> None:
    f = write_rows(tmp_path / "news.csv", headline_rows(5), HEADLINE_COLUMNS)
    ok = CliRunner().invoke(replay_cmd, [str(f), "--dry-run", "--limit", "100"])
    assert ok.exit_code == 0, ok.output
    assert "mapping csv: text=title time=date" in ok.output and '"read":5' in ok.output

    bad = tmp_path / "odd.csv"
    bad.write_text("a,b\n1,2\n")
    res = CliRunner().invoke(replay_cmd, [str(bad), "--dry-run"])
    assert res.exit_code == 1
    assert "Traceback" not in res.output
    assert "columns found: 'a', 'b'" in res.output and "--text COLUMN and --time COLUMN" in res.output
    named = CliRunner().invoke(replay_cmd, [str(bad), "--dry-run", "--text", "a", "--time", "b"])
    assert named.exit_code == 0, named.output
    assert '"bad_time":1' in named.output  # "2" is not a time: counted, not a crash

"""The operator's CLI without Ray or the network: bad input (one clear line, exit 2, nothing
created), the lock refusal (exit 5, naming the run that holds it), --help, and the progress bars."""

from __future__ import annotations

import io
from datetime import date, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from ingest.cli import main
from ingest.config import load_config
from ingest.job import EXIT_LOCKED, EXIT_PARTIAL, EXIT_SUCCESS, EXIT_USAGE
from ingest.ledger import Ledger, locks, now, runs
from ingest.progress import NoProgress, RichProgress, for_terminal
from sandbox.cli import main as sandbox_main

LOCAL = Path(__file__).resolve().parents[2] / "config" / "local.yaml"
CFG = load_config(LOCAL)
TODAY = CFG.today()
PAST = (TODAY - timedelta(days=3)).isoformat()
FUTURE = (TODAY + timedelta(days=2)).isoformat()
TOO_LONG_FROM = (TODAY - timedelta(days=CFG.max_backfill_days + 5)).isoformat()


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The local config, its database redirected to a file that must not appear for bad input."""
    path = tmp_path / "ledger.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    return path


BAD_INPUT = [
    # (argv, words the one error line must contain)
    (["rerun", "--media", "tiktok", "--date", PAST], ["unknown media 'tiktok'", "configured: meta"]),
    (["backfill", "--from", PAST, "--to", PAST, "--media", "tiktok"], ["unknown media 'tiktok'"]),
    (["rerun", "--failed", "--media", "tiktok"], ["unknown media 'tiktok'"]),
    (["run", "--date", "2026-13-01"], ["--date", "not a date (YYYY-MM-DD): '2026-13-01'"]),
    (["run", "--date", "20261101"], ["not a date"]),
    (["rerun", "--media", "meta", "--date", "yesterday"], ["not a date"]),
    (["backfill", "--from", "2026-11-31", "--to", PAST], ["--from", "not a date"]),
    (["status", "--date", "11/20/2026"], ["not a date"]),
    (["run", "--date", FUTURE], ["in the future"]),
    (["rerun", "--media", "meta", "--date", FUTURE], ["in the future"]),
    (["rerun", "--failed", "--date", FUTURE], ["in the future"]),
    (["backfill", "--from", PAST, "--to", FUTURE], ["in the future"]),
    (["status", "--date", FUTURE], ["in the future"]),
    (["backfill", "--from", PAST, "--to", (TODAY - timedelta(days=5)).isoformat()], ["is after --to"]),
    (["backfill", "--from", TOO_LONG_FROM, "--to", PAST],
     [f"max_backfill_days={CFG.max_backfill_days}", "split the range"]),
    (["backfill", "--to", PAST], ["--from"]),
    (["rerun", "--date", PAST], ["rerun needs --media and --date (or --failed)"]),
    (["rerun", "--media", "meta"], ["rerun needs --media and --date"]),
    (["rerun", "--failed", "--account", "100200300"], ["--failed cannot be combined with --account"]),
    (["rerun", "--media", "meta", "--date", PAST, "--account", "999"],
     ["account '999' is not configured for media 'meta'"]),
    (["rerun", "--media", "meta", "--date", PAST, "--account", "../x"], ["'../x' is not allowed"]),
    (["frobnicate"], ["invalid choice: 'frobnicate'"]),
    (["run", "--dry"], ["unrecognized arguments: --dry"]),
]


@pytest.mark.parametrize(("argv", "words"), BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_one_clear_error_and_exit_2(db: Path, capsys: pytest.CaptureFixture[str], argv: list[str],
                                                  words: list[str]) -> None:
    code = main(["--config", str(LOCAL), *argv])
    out, err = capsys.readouterr()
    assert code == EXIT_USAGE
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # one line: no usage dump, no traceback, no log noise
    assert lines[0].startswith("error: ")
    for word in words:
        assert word in lines[0]
    assert out == ""
    assert not db.exists()  # nothing started: not even the ledger was created


def test_config_after_the_command_and_console_script_entry(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", str(LOCAL), "--date", FUTURE]) == EXIT_USAGE
    assert "in the future" in capsys.readouterr().err


def test_help_explains_every_command_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == EXIT_SUCCESS
    top = capsys.readouterr().out
    for command in ("run", "rerun", "backfill", "status", "ui"):
        assert f"    {command}" in top
    for command in ("sandbox", "demo"):  # development tools: `python -m sandbox`, not the product's CLI
        assert f"    {command}" not in top
    assert "5 refused" in " ".join(top.split())
    for command, words in {
        "run": ["--date", "--force", "--take-over", "--json", "resumes"],
        "rerun": ["--media", "--account", "--failed", "other media are untouched"],
        "backfill": ["--from", "--to", "--media", "resumes"],
        "status": ["--run", "--json", "Exit code 3"],
    }.items():
        assert main([command, "--help"]) == EXIT_SUCCESS
        text = " ".join(capsys.readouterr().out.split())
        for word in words:
            assert word in text, (command, word)


def test_sandbox_help_lists_the_local_stack_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert sandbox_main(["--help"]) == EXIT_SUCCESS
    top = capsys.readouterr().out
    assert top.startswith("usage: python -m sandbox")
    for command in ("up", "down", "status", "demo"):
        assert f"    {command}" in top
    assert sandbox_main(["demo", "--help"]) == EXIT_SUCCESS
    assert "--date" in capsys.readouterr().out


SANDBOX_BAD_INPUT = [
    (["demo", "--date", FUTURE], ["in the future"]),
    (["demo", "--date", "20261101"], ["not a date"]),
    (["--config", str(LOCAL.parent / "pipeline.yaml"), "up"], ["no `sandbox:` section"]),
    (["--config", str(LOCAL.parent / "pipeline.yaml"), "demo", "--date", PAST], ["no `sandbox:` section"]),
    (["frobnicate"], ["python -m sandbox", "invalid choice: 'frobnicate'"]),
]


@pytest.mark.parametrize(("argv", "words"), SANDBOX_BAD_INPUT, ids=[" ".join(a[-2:]) for a, _ in SANDBOX_BAD_INPUT])
def test_sandbox_bad_input_is_one_clear_error_exit_2_and_starts_nothing(
        db: Path, capsys: pytest.CaptureFixture[str], argv: list[str], words: list[str]) -> None:
    argv = argv if argv[0] == "--config" else ["--config", str(LOCAL), *argv]
    assert sandbox_main(argv) == EXIT_USAGE
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in lines[0]
    assert out == ""
    assert not db.exists()


def _hold(db: Path, run_id: str, day: str, age_s: float = 0.0) -> None:
    """A lock held by another run, as its driver would leave it (fresh or stale heartbeat)."""
    ledger = Ledger(sa.create_engine(f"sqlite:///{db}"))
    ledger.migrate()
    with ledger.engine.begin() as conn:
        conn.execute(locks.insert().values(media="google_ads", date=date.fromisoformat(day), run_id=run_id,
                                           holder="ops@batch-1 pid 4242",
                                           heartbeat_at=now() - timedelta(seconds=age_s)))
    ledger.engine.dispose()


def test_a_second_run_of_a_locked_date_refuses_with_exit_5_naming_the_holder(
        db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _hold(db, "run-20261120T010000-abc123", PAST)
    code = main(["--config", str(LOCAL), "run", "--date", PAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_LOCKED
    assert err[-1].startswith("error: refused: ")
    assert f"google_ads {PAST} is held by run run-20261120T010000-abc123 (ops@batch-1 pid 4242, heartbeat" in err[-1]
    assert "--take-over" in err[-1]
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        refused = conn.execute(sa.select(runs.c.kind, runs.c.outcome, runs.c.counts)).all()
        held = conn.execute(sa.select(locks.c.media, locks.c.run_id)).all()
    engine.dispose()
    # the refused attempt is in the history, took no lock and changed nothing else
    assert [(k, o) for k, o, _ in refused] == [("run", "aborted")] and "held by run" in refused[0][2]
    assert held == [("google_ads", "run-20261120T010000-abc123")]


def test_rerun_failed_with_nothing_to_do_exits_0(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(LOCAL), "rerun", "--failed", "--date", PAST]) == EXIT_SUCCESS
    assert f"nothing failed or unfinished for {PAST}" in capsys.readouterr().out


def test_status_is_read_only_and_names_the_migration(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(LOCAL), "status", "--date", PAST]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run `python -m ingest migrate`" in err
    assert not db.exists() or sa.inspect(sa.create_engine(f"sqlite:///{db}")).get_table_names() == []


def test_status_of_an_empty_date_and_an_unknown_run(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(LOCAL), "migrate"]) == EXIT_SUCCESS
    # a date no run fetched is a missed night: exit 3, with the command that fills it
    assert main(["--config", str(LOCAL), "status", "--date", PAST]) == EXIT_PARTIAL
    out = capsys.readouterr().out
    assert f"nothing recorded for {PAST}" in out and f"ingest run --date {PAST}" in out
    assert main(["--config", str(LOCAL), "status", "--run", "run-nope"]) == EXIT_SUCCESS
    assert "no run run-nope" in capsys.readouterr().out


# -- progress --------------------------------------------------------------------------------


def test_rich_progress_draws_one_bar_per_media_in_a_terminal() -> None:
    from rich.console import Console

    buf = io.StringIO()
    progress = RichProgress(Console(file=buf, force_terminal=True, width=100, color_system=None))
    progress.start("meta", 3)
    progress.start("google_ads", 2)
    for status in ("done", "failed", "done"):
        progress.advance("meta", status)
    progress.advance("google_ads", "done")
    progress.advance("unknown_media", "done")  # never raises
    progress.close()
    screen = buf.getvalue()
    last_meta = [line for line in screen.splitlines() if "meta" in line][-1]
    last_google = [line for line in screen.splitlines() if "google_ads" in line][-1]
    assert "3/3" in last_meta and "1 failed" in last_meta and "━" in last_meta
    assert "1/2" in last_google and "0 failed" in last_google


def test_no_tty_means_no_bars_only_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())  # not a terminal
    assert isinstance(for_terminal(), NoProgress)
    assert isinstance(for_terminal(False), NoProgress)


@pytest.mark.parametrize("argv", [["run"], ["rerun", "--failed"], ["backfill", "--from", PAST, "--to", PAST]])
def test_writing_commands_refuse_the_local_default_when_its_stack_is_not_up(
        db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str]) -> None:
    """No --config, no INGEST_CONFIG, and this is not a machine running the local stack: exit 2 before anything."""
    import ingest.config

    local = tmp_path / "config" / "local.yaml"
    local.parent.mkdir()
    local.write_text(LOCAL.read_text())
    monkeypatch.setattr(ingest.config, "DEFAULT_CONFIG", local)
    monkeypatch.delenv("INGEST_CONFIG", raising=False)
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--config config/pipeline.yaml" in err[0] and "INGEST_CONFIG" in err[0], err
    assert not db.exists()
    # the local stack of that checkout is up (its state file exists): the default is the local profile
    (tmp_path / ".sandbox").mkdir()
    (tmp_path / ".sandbox" / "stack.json").write_text("{}")
    assert main(["rerun", "--failed"]) == EXIT_SUCCESS
    assert "nothing failed" in capsys.readouterr().out


def test_exit_codes_come_from_one_explicit_mapping() -> None:
    """Every operator error type has its own entry: a new ConfigError subclass must be given one."""
    from ingest.cli import EXIT_FOR_ERROR
    from ingest.errors import ConfigError
    from ingest.ledger import LockedError

    assert set(ConfigError.__subclasses__()) <= set(EXIT_FOR_ERROR)
    assert EXIT_FOR_ERROR[LockedError] == EXIT_LOCKED and EXIT_FOR_ERROR[ConfigError] == 2

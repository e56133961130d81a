"""Packaging promises: a light `import om3db`, a light `om3db --help`, the public API surface."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ["torch", "transformers", "open3d", "faiss", "sqlalchemy", "segment_anything", "sklearn"]


def _loaded_after(code: str) -> list[str]:
    probe = f"import sys\n{code}\nimport json; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_om3db_is_light() -> None:
    assert _loaded_after("import om3db") == []


def test_cli_help_is_light() -> None:
    code = "from om3db_cli.main import main\nimport contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()):\n    main(['--help'])"
    assert _loaded_after(code) == []


def test_console_script_help_lists_commands() -> None:
    exe = Path(sys.executable).parent / "om3db"  # the console script installed beside this interpreter
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    for command in ("synth", "demo"):
        assert command in out.stdout


def test_public_api_names_resolve() -> None:
    import om3db

    for name in om3db.__all__:
        assert getattr(om3db, name) is not None, name
    with pytest.raises(AttributeError):
        om3db.no_such_thing  # noqa: B018


def test_errors_form_one_hierarchy() -> None:
    import om3db

    for name in (
        "ScanError",
        "MaskFileError",
        "ConfigError",
        "StoreError",
        "SchemaOutOfDateError",
        "EncoderMismatchError",
        "NotFoundError",
        "DatabaseBusyError",
        "EvaluationError",
        "ModelLoadError",
    ):
        assert issubclass(getattr(om3db, name), om3db.Om3dbError)


def test_usage_error_is_a_message_not_a_traceback(capsys) -> None:
    from om3db_cli.main import main

    assert main(["search", "--bogus"]) == 2
    err = capsys.readouterr().err
    assert "No such option: --bogus" in err and "Traceback" not in err

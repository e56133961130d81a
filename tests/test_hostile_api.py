"""Hostile use of the Python API (and the CLI paths over it): foreign and mislabelled databases given to
upgrade, a closed Database, ids and options that are not what they seem, malformed database URLs.

Each case asserts the typed om3db error with its exact message, and that nothing stored changed.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from om3db_cli.main import main

import om3db
from om3db.errors import ConfigError, NotFoundError, SchemaOutOfDateError, StoreError

SCAN = "synth_0_0"


@pytest.fixture(scope="module")
def base_db(tmp_path_factory, synth_root, tiny_siglip_dir, tiny_dinov2_dir) -> Path:
    db = tmp_path_factory.mktemp("hostile_api") / "db"
    code = main(
        ["ingest", str(synth_root / SCAN), "--db", str(db), "--siglip", str(tiny_siglip_dir), "--dinov2",
         str(tiny_dinov2_dir), "--frame-step", "5", "--json"]
    )  # fmt: skip
    assert code == 0
    return db


@pytest.fixture
def db(base_db, tmp_path) -> Path:
    """A private copy of the base database."""
    copy = tmp_path / "db"
    shutil.copytree(base_db, copy)
    return copy


def dump(db: Path) -> dict:
    """Every row of every table (read-only) and every index file's hash."""
    out = {}
    con = sqlite3.connect(f"file:{db / 'om3db.sqlite'}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        for t in tables:
            out[t] = sorted(repr(r) for r in con.execute(f'SELECT * FROM "{t}"'))
        out["schema"] = sorted(r[0] or "" for r in con.execute("SELECT sql FROM sqlite_master"))
    finally:
        con.close()
    for p in sorted((db / "indexes").glob("*")):
        out[p.name] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def sql(db: Path, *statements: str) -> None:
    con = sqlite3.connect(db / "om3db.sqlite")
    try:
        for s in statements:
            con.execute(s)
        con.commit()
    finally:
        con.close()


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# -- A: db upgrade on what is not an om3db database at a known revision ----------------------------


def test_upgrade_refuses_a_foreign_sqlite_file_and_leaves_it_alone(tmp_path, capsys):
    foreign = tmp_path / "f1"
    foreign.mkdir()
    sql(foreign, "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)", "INSERT INTO users VALUES (1, 'ann')")
    before = (foreign / "om3db.sqlite").read_bytes()
    message = (
        f"{foreign}: holds tables that are not an om3db database (users). Nothing was changed. Give an om3db database"
    )
    with pytest.raises(StoreError) as caught:
        om3db.upgrade_database(foreign)
    assert str(caught.value) == message
    assert cli(capsys, "db", "upgrade", "--db", foreign) == (1, "", f"Error: {message}\n")
    assert (foreign / "om3db.sqlite").read_bytes() == before
    # and it stays refused everywhere, still byte for byte as it was (not even switched to WAL mode)
    for command in (["scans"], ["search", "mug"], ["check"], ["ingest", tmp_path / "no-scans-needed"]):
        if command[0] == "ingest":
            (tmp_path / "no-scans-needed").mkdir()
        code, _, err = cli(capsys, *command, "--db", foreign)
        assert (code, err) == (
            1,
            f"Error: {foreign}: holds tables that are not an om3db database. Use another folder\n",
        )
        assert (foreign / "om3db.sqlite").read_bytes() == before
    assert sorted(p.name for p in foreign.iterdir()) == ["om3db.sqlite", "write.lock"]


def test_upgrade_refuses_a_sqlite_file_without_tables(tmp_path):
    empty = tmp_path / "e"
    empty.mkdir()
    sql(empty, "PRAGMA user_version=1")
    with pytest.raises(NotFoundError) as caught:
        om3db.upgrade_database(empty)
    assert str(caught.value) == (
        f"{empty}: no om3db database here (no om3db tables). Create one by ingesting scans into it"
    )
    assert sqlite3.connect(empty / "om3db.sqlite").execute("SELECT name FROM sqlite_master").fetchall() == []


def test_upgrade_refuses_an_unknown_revision(db, capsys):
    sql(db, "UPDATE alembic_version SET version_num = '9999'")
    before = dump(db)
    message = f"{db}: database schema revision 9999 is newer than this om3db knows (newest 0004). Upgrade om3db"
    with pytest.raises(SchemaOutOfDateError) as caught:
        om3db.upgrade_database(db)
    assert str(caught.value) == message
    assert cli(capsys, "db", "upgrade", "--db", db) == (1, "", f"Error: {message}\n")
    assert dump(db) == before


def test_upgrade_of_a_mislabelled_schema_is_rolled_back(db, capsys):
    sql(db, "UPDATE alembic_version SET version_num = '0002'")  # a 0004 schema that says 0002
    before = dump(db)
    message = (
        f"{db}: upgrading the schema from revision 0002 failed (duplicate column name: views): its tables do not "
        "match what revision 0002 should hold, or the connection failed. Nothing was changed (the database is still "
        "at revision 0002). If the connection failed, run the upgrade again; else restore the database from a "
        "backup, or re-ingest the scans into a new one"
    )
    with pytest.raises(StoreError) as caught:
        om3db.upgrade_database(db)
    assert str(caught.value) == message
    assert cli(capsys, "db", "upgrade", "--db", db) == (1, "", f"Error: {message}\n")
    assert dump(db) == before


def test_upgrade_refuses_an_empty_revision_record(db, capsys):
    sql(db, "DELETE FROM alembic_version")
    before = dump(db)
    message = (
        f"{db}: the database records no schema revision (its alembic_version table is empty), so which migrations "
        "it needs is unknown. Nothing was changed. Restore the database from a backup, or re-ingest the scans into "
        "a new one"
    )
    with pytest.raises(StoreError) as caught:
        om3db.upgrade_database(db)
    assert str(caught.value) == message
    assert cli(capsys, "db", "upgrade", "--db", db) == (1, "", f"Error: {message}\n")
    assert dump(db) == before


# -- B: a closed Database ------------------------------------------------------------------------


def test_a_closed_database_refuses_every_call_and_deletes_nothing(db):
    database = om3db.connect(db, create=False)
    query = database.query(text="red")
    database.close()
    message = f"{db}: this Database is closed. Open the database again with om3db.connect()"
    calls = [
        lambda: database.remove(SCAN),
        lambda: database.scans(),
        lambda: database.search(text="red"),
        lambda: query.to_list(),
        lambda: database.instance(1),
        lambda: database.reindex(),
        lambda: database.info(),
        lambda: database.__enter__(),
    ]
    for call in calls:
        with pytest.raises(StoreError) as caught:
            call()
        assert str(caught.value) == message
    database.close()  # twice is fine
    assert database.closed
    with om3db.connect(db, create=False) as again:
        assert [s.name for s in again.scans()] == [SCAN]


def test_a_closed_ephemeral_database_says_so():
    database = om3db.connect(ephemeral=True)
    database.close()
    with pytest.raises(StoreError) as caught:
        database.scans()
    assert str(caught.value) == (
        f"{database.path}: this Database is closed. Open the database again with om3db.connect() "
        "(it was ephemeral: its folder was deleted on close)"
    )


# -- C, E: ids, encoders, unknown scans and instances ----------------------------------------------


def test_instance_ids_past_int64_are_not_found(db, capsys):
    with om3db.connect(db, create=False) as database:
        for big in (2**70, np.uint64(2**63 + 5), 2**63):
            for call in (database.instance, database.instance_geometry):
                with pytest.raises(NotFoundError) as caught:
                    call(big)
                assert str(caught.value) == f"{db}: no instance {big}. Search first to get instance ids"
    big = 99999999999999999999999
    assert cli(capsys, "show", big, "--db", db) == (
        1,
        "",
        f"Error: {db}: no instance {big}. Search first to get instance ids\n",
    )


def test_instance_geometry_checks_ids_like_instance(db):
    with om3db.connect(db, create=False) as database:
        for bad in ("abc", -1, 0, True, 1.0):
            with pytest.raises(ConfigError) as caught:
                database.instance_geometry(bad)
            assert str(caught.value) == f"instance ids are integers >= 1 (as search returns them), got {bad!r}"
        with pytest.raises(NotFoundError) as caught:
            database.instance_geometry(999)
        assert str(caught.value) == f"{db}: no instance 999. Search first to get instance ids"
        first = database.instances(SCAN)[0].id
        assert set(database.instance_geometry(first)) >= {"aabb_min", "aabb_max", "volume"}


def test_unknown_scans_raise_not_found_everywhere(db):
    message = f"{db}: no scan named 'nosuch'. The scans it holds: {SCAN}"
    with om3db.connect(db, create=False) as database:
        for call in (database.gravity, database.relations, database.instances):
            with pytest.raises(NotFoundError) as caught:
                call("nosuch")
            assert str(caught.value) == message
        assert database.gravity(SCAN)["source"] in ("capture", "floor", "default")


def test_search_with_a_non_encoder_object_is_refused(db):
    with om3db.connect(db, create=False) as database:
        with pytest.raises(ConfigError) as caught:
            database.search(text="red", encoder=object())
    assert str(caught.value) == (
        "the 'siglip' encoder must be a hub id, a model directory or an encoder object with .identity (an "
        "om3db.records.EncoderIdentity) and encode_images() or encode_texts(), got object. Load one with "
        "om3db.embed.load_siglip(...)"
    )


# -- D: label vocabularies -------------------------------------------------------------------------


def test_label_refuses_a_string_vocabulary_and_blank_names(db):
    before = dump(db)
    with om3db.connect(db, create=False) as database:
        with pytest.raises(ConfigError) as caught:
            database.label(SCAN, "chair")
        assert str(caught.value) == (
            "vocabulary is one string ('chair'), not a list of class names: pass a list, e.g. ['chair']"
        )
        for bad in (["", "  "], ["chair", "  "], ["chair", 3]):
            with pytest.raises(ConfigError) as caught:
                database.label(SCAN, bad)
            blank = next(v for v in bad if not isinstance(v, str) or not v.strip())
            assert str(caught.value) == f"vocabulary holds {blank!r}: every class name must be a non-blank string"
        labels = database.label(SCAN, ("chair", "table"))  # any sequence of names works
        assert {lab.label for lab in labels} <= {"chair", "table"} and labels
    assert dump(db) == before


# -- C, F: connect() options -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lock_timeout": "x"}, "lock_timeout must be a number of seconds >= 0, got 'x'"),
        ({"lock_timeout": -1}, "lock_timeout must be a number of seconds >= 0, got -1"),
        ({"lock_timeout": math.nan}, "lock_timeout must be a number of seconds >= 0, got nan"),
        ({"lock_timeout": math.inf}, "lock_timeout must be a number of seconds >= 0, got inf"),
        *[
            (
                {"ivf_threshold": v},
                f"ivf_threshold must be a whole number of vectors >= 1 (or None for the default), got {v!r}",
            )
            for v in ("big", 0, -1, 1.5, True)
        ],
        ({"create": "no"}, "create must be True or False, got str 'no'"),
        ({"repair": 1}, "repair must be True or False, got int 1"),
        ({"use_gpu": "no"}, "use_gpu must be True, False or None (when a GPU is present), got 'no'"),
        ({"url": 5}, "url must be a database URL string, got int 5"),
        (
            {"vectors": "v"},
            "vectors='v' is the FAISS cache folder of a PostgreSQL database, but {db} is a folder database (it keeps "
            "its index files inside it). Leave vectors out, or give a postgresql:// URL as the path",
        ),
        (
            {"url": "notaurl"},
            "notaurl: not a database URL. Give a URL like postgresql://USER:PASSWORD@HOST:PORT/DBNAME",
        ),
        (
            {"url": "mysql://me:s3cret@h/db"},
            "mysql://me:***@h/db: a mysql database: om3db keeps its metadata in SQLite (a folder) or PostgreSQL. "
            "Give a URL like postgresql://USER:PASSWORD@HOST:PORT/DBNAME",
        ),
    ],
)
def test_connect_refuses_options_that_are_not_what_they_seem(tmp_path, kwargs, message):
    target = tmp_path / "new"
    with pytest.raises(ConfigError) as caught:
        om3db.connect(target, **kwargs)
    assert str(caught.value) == message.format(db=target)
    assert not target.exists()  # refused before anything was created


def test_connect_refuses_ephemeral_with_a_path(tmp_path):
    with pytest.raises(ConfigError) as caught:
        om3db.connect(tmp_path / "x", ephemeral=True)
    assert str(caught.value) == (
        "ephemeral=True makes a new temporary database, but path was given too. Leave path out, or drop "
        "ephemeral=True to open that database"
    )
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("path", [123, b"db", ["db"]])
def test_connect_refuses_a_path_of_another_type(path):
    with pytest.raises(ConfigError) as caught:
        om3db.connect(path)
    assert str(caught.value) == (
        f"the database path must be a folder (str or pathlib.Path) or a postgresql:// URL, got "
        f"{type(path).__name__} {path!r}"
    )


def test_an_empty_database_path_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    message = (
        "the database path is empty (''). Give the database's folder (or leave it out for $OM3DB_DB, else ./om3db-data)"
    )
    for call in (lambda: om3db.connect(""), lambda: om3db.upgrade_database("")):
        with pytest.raises(ConfigError) as caught:
            call()
        assert str(caught.value) == message
    assert cli(capsys, "scans", "--db", "") == (1, "", f"Error: {message}\n")
    assert list(tmp_path.iterdir()) == []


# -- C, G: database URLs ----------------------------------------------------------------------------

_FIX = "Give a URL like postgresql://USER:PASSWORD@HOST:PORT/DBNAME"
_SCHEMES = "postgresql://, postgres://, postgresql+psycopg://"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql://x:s3cret@127.0.0.1:notaport/db",
            "postgresql://x:***@127.0.0.1:notaport/db: not a valid database URL (Port could not be cast to integer "
            f"value as 'notaport'). {_FIX}",
        ),
        (
            "postgresql://x:s3cret@[::1/db",
            f"postgresql://x:***@[::1/db: not a valid database URL (Invalid IPv6 URL). {_FIX}",
        ),
        (
            "postgresql+psycopg2://x:s3cret@127.0.0.1:1/db",
            "postgresql+psycopg2://x:***@127.0.0.1:1/db: the postgresql+psycopg2:// driver is not supported: om3db "
            f"connects to PostgreSQL through psycopg 3. Write the URL with one of {_SCHEMES}",
        ),
        (
            "mysql://x:s3cret@127.0.0.1:1/db",
            "mysql://x:***@127.0.0.1:1/db: looks like a URL (mysql://), but a database is a folder here or a "
            f"PostgreSQL URL ({_SCHEMES}). Give a folder path or a PostgreSQL URL",
        ),
    ],
)
def test_malformed_or_unsupported_urls_are_refused_without_the_password(tmp_path, monkeypatch, capsys, url, message):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("OM3DB_VECTORS", raising=False)
    monkeypatch.chdir(tmp_path)
    for call in (lambda: om3db.connect(url), lambda: om3db.upgrade_database(url)):
        with pytest.raises(ConfigError) as caught:
            call()
        assert str(caught.value) == message
    assert cli(capsys, "scans", "--db", url) == (1, "", f"Error: {message}\n")
    assert cli(capsys, "db", "upgrade", "--db", url) == (1, "", f"Error: {message}\n")
    assert list(tmp_path.iterdir()) == []  # no folder, no cache


def test_url_keyword_with_another_postgres_driver_is_refused(tmp_path):
    with pytest.raises(ConfigError) as caught:
        om3db.connect(tmp_path / "db", url="postgresql+psycopg2://x:s3cret@127.0.0.1:1/db")
    assert str(caught.value) == (
        "postgresql+psycopg2://x:***@127.0.0.1:1/db: the postgresql+psycopg2 driver is not supported: om3db connects "
        "to PostgreSQL through psycopg 3. Start the URL with postgresql://, postgres:// or postgresql+psycopg://"
    )
    assert not (tmp_path / "db").exists()


def test_mask_url_hides_passwords_holding_at_and_slash():
    from om3db.store.schema import mask_url

    assert mask_url("postgresql://u:p@ss/w@h:5/db") == "postgresql://u:***@h:5/db"
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert mask_url("notaurl") == "notaurl"


# -- H: an out-of-date schema names the CLI command for the CLI --------------------------------------


def test_out_of_date_error_carries_the_cli_command(tmp_path):
    from om3db.store.schema import make_engine, upgrade

    old = tmp_path / "old db"
    old.mkdir()
    engine = make_engine(f"sqlite:///{(old / 'om3db.sqlite').resolve()}")
    upgrade(engine, "0001")
    engine.dispose()
    with pytest.raises(SchemaOutOfDateError) as caught:
        om3db.connect(old)
    error = caught.value
    problem = f"{old}: database schema is out of date (revision 0001, this om3db needs 0004)"
    assert (
        str(error) == f"{problem}. Upgrade it with om3db.upgrade_database({str(old)!r}) (the CLI's `om3db db upgrade`)"
    )
    assert error.upgrade_command == f"om3db db upgrade --db '{old}'"
    assert error.cli_message == f"{problem}. Run: om3db db upgrade --db '{old}'"


def test_a_short_password_is_masked_as_a_token_not_in_every_word(tmp_path, capsys):
    """A one-letter password ("p") is masked in the URL, and the driver's message keeps its words
    ("port", "accepting"); a long one is masked wherever it appears."""
    from om3db.store.schema import _without_password

    code, out, err = cli(capsys, "info", "--db", "postgresql://u:p@127.0.0.1:1/db")
    assert code == 1 and err.startswith("Error: postgresql://u:***@127.0.0.1:1/db: cannot connect"), err
    assert '"127.0.0.1", port 1 failed' in err and "accepting" in err and ":p@" not in err, err
    assert _without_password("dsn u:p@h port p", "p") == "dsn u:***@h port ***"
    assert _without_password("x mysecretpw1y", "secretpw1") == "x my***y"

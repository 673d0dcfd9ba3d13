"""The `driftrec` command line: the jobs an operator runs against the server's database and data.

Settings are read once, in the group callback, and reach every command through click's context
(`pass_app`). The runtime (database, embedder, index) is built on first use, after checking that
the schema is current. Add a command with ``@cli.command()`` and ``@pass_app``.

User errors print one line on stderr, never a traceback, and exit with:

    1  the job failed: bad input, profile drift found by `verify`, a store or indexer error
    2  wrong usage (click's own)
    3  the database schema is behind the code: run `driftrec db upgrade`
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import sys
import urllib.request
import zipfile
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import click
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from indexer.errors import IndexerError
from interest.errors import InterestError
from service.cli_evaluate import evaluate_command
from service.cli_experiment import experiment_group
from service.cli_model import model_group, train_command
from store import migrate
from store.db import make_engine
from store.errors import SchemaOutOfDate, StoreError
from store.settings import VERIFY_TOLERANCE, Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from collections.abc import Iterable

    from service.runtime import Runtime
    from store.importing import EventRecord
    from store.items import ItemInput

log = logging.getLogger(__name__)

EXIT_FAILURE = 1
EXIT_SCHEMA = 3
APP_FACTORY = "service.app:create_app()"
REPO_ROOT = Path(__file__).resolve().parent.parent
#: One thread per worker for every math library: N workers on N cores, no oversubscription.
SERVER_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "DRIFTREC_TORCH_THREADS": "1",
}


class CliError(click.ClickException):
    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class App:
    """What commands share: the settings, and a runtime built on first use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def safe_url(self) -> str:
        return make_url(self.settings.database_url).render_as_string(hide_password=True)

    def check_schema(self) -> None:
        engine = make_engine(self.settings.database_url)
        try:
            migrate.ensure_schema_current(engine)
        finally:
            engine.dispose()

    @cached_property
    def runtime(self) -> Runtime:
        from service.runtime import Runtime  # loads the model stack only for jobs that use it

        runtime = Runtime(self.settings)
        try:
            migrate.ensure_schema_current(runtime.db.engine)
        except BaseException:
            runtime.close()
            raise
        return runtime

    def close(self) -> None:
        if "runtime" in self.__dict__:
            self.runtime.close()


pass_app = click.make_pass_decorator(App)


class _Group(click.Group):
    """Turns the packages' user-facing exceptions into `CliError`s (message and exit code)."""

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except SchemaOutOfDate as exc:
            raise CliError(str(exc), EXIT_SCHEMA) from exc
        except (StoreError, IndexerError, InterestError, SettingsError) as exc:
            raise CliError(str(exc)) from exc
        except OperationalError as exc:
            reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
            raise CliError(f"database error: {reason}") from exc


@click.group(cls=_Group)
@click.version_option(package_name="driftrec", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """driftrec: recommendations whose user interest vectors move with every event.

    Configuration comes from DRIFTREC_* environment variables (see README.md).
    """
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise CliError(str(exc)) from exc
    _configure_logging(settings.log_level)
    app = App(settings)
    ctx.obj = app
    ctx.call_on_close(app.close)


def _configure_logging(level: str) -> None:
    """driftrec's own loggers at the configured level, everything else at WARNING, on stderr."""
    logging.basicConfig(
        level=logging.WARNING,
        format='ts=%(asctime)s level=%(levelname)s logger=%(name)s msg="%(message)s"',
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    try:
        for package in ("store", "indexer", "interest", "service"):
            logging.getLogger(package).setLevel(level.upper())
    except ValueError as exc:
        raise CliError(f"DRIFTREC_LOG_LEVEL={level!r} is not valid: {exc}") from exc


# -- db ----------------------------------------------------------------------------------------
@cli.group()
def db() -> None:
    """Database schema (Alembic migrations)."""


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@pass_app
def upgrade(app: App, revision: str) -> None:
    """Apply migrations up to REVISION."""
    migrate.upgrade(app.settings.database_url, revision)
    click.echo(f"database {app.safe_url} at revision {_current_revision(app)}")


@db.command()
@click.option("--check", is_flag=True, help=f"Exit {EXIT_SCHEMA} when the schema is behind.")
@pass_app
def current(app: App, check: bool) -> None:
    """Show the schema revision of the database and the one the code expects."""
    now = _current_revision(app)
    head = migrate.head_revision(app.settings.database_url)
    state = "up to date" if now == head else "behind: run `driftrec db upgrade`"
    click.echo(f"database {app.safe_url} at revision {now or 'none'}, head {head} ({state})")
    if check and now != head:
        sys.exit(EXIT_SCHEMA)


def _current_revision(app: App) -> str | None:
    engine = make_engine(app.settings.database_url)
    try:
        return migrate.current_revision(engine)
    finally:
        engine.dispose()


# -- import ------------------------------------------------------------------------------------
@cli.group("import")
def import_group() -> None:
    """Bulk-load catalogues and event logs, committing per batch.

    An interrupted import can simply be rerun: items are upserts, events are idempotent by id.
    New items are embedded before events are loaded, and the profiles of users who got new
    events are rebuilt from their event history.
    """


@import_group.command("movielens")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--tags", is_flag=True, help="Add each movie's user tags to its embedded text.")
@pass_app
def import_movielens(app: App, directory: Path, tags: bool) -> None:
    """Import a MovieLens DIRECTORY (ml-latest(-small), ml-25m, ml-1m or ml-100k layout)."""
    from store.importing import movielens_events, movielens_items

    _import_items(app, movielens_items(directory, include_tags=tags))
    _import_events(app, movielens_events(directory))


@import_group.command("items")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--embed/--no-embed",
    default=True,
    show_default=True,
    help="Embed new and changed items now (else the next reindex or events import does).",
)
@pass_app
def import_items_command(app: App, file: Path, embed: bool) -> None:
    """Import items from a JSONL FILE (id, title, text, categories, properties, ...)."""
    from store.importing import read_items_jsonl

    _import_items(app, read_items_jsonl(file), embed=embed)


@import_group.command("events")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@pass_app
def import_events_command(app: App, file: Path) -> None:
    """Import events from a .csv or .jsonl FILE (id, user_id, item_id, type, value, timestamp)."""
    from store.importing import read_events

    _import_events(app, read_events(file))


def _import_items(app: App, items: Iterable[ItemInput], *, embed: bool = True) -> None:
    from store.importing import import_items

    click.echo(f"items imported={import_items(app.runtime.db, items, progress=True)}")
    if embed:
        _embed_stale(app)


def _import_events(app: App, events: Iterable[EventRecord]) -> None:
    """Load events and bring their users' profiles up to date (`Runtime.import_events`).

    Items still lacking a vector are embedded first: a profile built without them would differ
    from the one `verify` rebuilds once they have one.
    """
    _embed_stale(app)
    done = app.runtime.import_events(events, progress=True)
    stats = done.stats
    click.echo(
        f"events accepted={stats.accepted} duplicates={stats.duplicates} "
        f"rejected={stats.rejected} (unknown or deleted item, or event type without a weight)"
    )
    if done.profiles_updated or done.profiles_rebuilt:
        # Rebuilt: the users a killed earlier import left stale (it stored their events, which
        # this run skipped as duplicates).
        click.echo(f"profiles updated={done.profiles_updated} rebuilt={done.profiles_rebuilt}")


def _embed_stale(app: App) -> None:
    """Embed live items whose vector is missing or stale (loads the model only if any are)."""
    from indexer.reindex import embed_stale
    from store.items import stale_vector_ids

    runtime = app.runtime
    with runtime.db.read() as session:
        if not stale_vector_ids(session, app.settings.embedder_model, limit=1):
            return
    batch_size = app.settings.embed_batch_size
    embedded = embed_stale(runtime.db, runtime.embedder, batch_size=batch_size, progress=True)
    click.echo(f"items embedded={embedded}")


@import_group.command("dump")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@pass_app
def import_dump_command(app: App, directory: Path) -> None:
    """Restore a DIRECTORY written by `driftrec export` into an empty, migrated database.

    Every file's checksum is verified first; rows (ids included) are written in one transaction,
    index and model files are copied into DRIFTREC_DATA_DIR.
    """
    from store.dump import import_dump

    summary = import_dump(app.runtime.db, directory, app.settings.data_dir)
    rows = " ".join(f"{name}={count}" for name, count in summary.rows.items())
    click.echo(f"dump imported {rows} files={summary.files}")


@cli.command("export")
@click.argument("directory", type=click.Path(path_type=Path))
@pass_app
def export_command(app: App, directory: Path) -> None:
    """Back up the database and its index and model files into a new DIRECTORY.

    One consistent snapshot: JSONL per table, item vectors as .npy, the artefact files, and a
    manifest with checksums. Restore with `driftrec import dump DIRECTORY`.
    """
    from store.dump import export_dump

    summary = export_dump(app.runtime.db, directory, app.settings.data_dir)
    rows = " ".join(f"{name}={count}" for name, count in summary.rows.items())
    click.echo(f"dump exported {rows} files={summary.files}")


# -- jobs --------------------------------------------------------------------------------------
@cli.command()
@click.option("--full", is_flag=True, help="Rebuild the index file even if nothing changed.")
@click.option(
    "--retrain",
    is_flag=True,
    help="Recompute an approximate index's coarse centroids (k-means) even if the current "
    "ones still fit the catalogue. Implies --full.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Items embedded and committed at a time [default: DRIFTREC_EMBED_BATCH_SIZE].",
)
@pass_app
def reindex(app: App, full: bool, retrain: bool, batch_size: int | None) -> None:
    """Embed new and changed items, then build and publish a new index version.

    Safe to kill and rerun: embedded vectors are committed batch by batch, and an unchanged
    catalogue is not rebuilt. Running servers switch to the new version without a restart.
    """
    result = app.runtime.reindex(full=full, retrain=retrain, batch_size=batch_size, progress=True)
    click.echo(
        f"reindex embedded={result.embedded} index_version={result.index_version_id} "
        f"items={result.item_count} rebuilt={'yes' if result.rebuilt else 'no'}"
    )


@cli.command("rebuild-profiles")
@click.option("--user", "users", multiple=True, help="External user id (repeatable; default all).")
@pass_app
def rebuild_profiles(app: App, users: tuple[str, ...]) -> None:
    """Recompute profiles from the event log (after changing decay settings, for instance)."""
    runtime = app.runtime
    user_ids = None
    if users:
        from store.events import user_ids as lookup_user_ids

        with runtime.db.read() as session:
            found = lookup_user_ids(session, users)
        missing = sorted(set(users) - set(found))
        if missing:
            raise CliError(f"unknown user(s): {', '.join(missing)}")
        user_ids = set(found.values())
    rebuilt = runtime.rebuild_profiles(user_ids=user_ids, progress=True)
    click.echo(f"profiles rebuilt={rebuilt}")


@cli.command("purge-sessions")
@click.option(
    "--older-than-days",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="Keep sessions that expired less than this long ago (GET /v1/stats counts them).",
)
@pass_app
def purge_sessions(app: App, older_than_days: float) -> None:
    """Delete expired recommendation sessions (one row per answer; run it from a scheduler),
    and empty the requests of those kept for stats."""
    from datetime import timedelta

    from store.recommendations import clear_expired_requests, delete_expired
    from store.types import utcnow

    before = utcnow() - timedelta(days=older_than_days)
    deleted = app.runtime.db.run_write(lambda session: delete_expired(session, before=before))
    cleared = app.runtime.db.run_write(clear_expired_requests)
    click.echo(f"purge-sessions deleted={deleted} requests_cleared={cleared}")


@cli.command()
@click.option(
    "--tolerance",
    default=VERIFY_TOLERANCE,
    show_default=True,
    help="Largest relative error of a profile's accumulators (room for their float32 storage).",
)
@pass_app
def verify(app: App, tolerance: float) -> None:
    """Check every stored profile against the one rebuilt from its events (exit 1 on drift)."""
    from interest.rebuild import verify_profiles
    from store.models import User

    runtime = app.runtime
    report = verify_profiles(
        runtime.db, runtime.profile_config, app.settings.embedder_model, tolerance=tolerance
    )
    click.echo(f"profiles checked={report.checked} drifted={len(report.drifted)}")
    if report.drifted:
        shown = report.drifted[:20]
        with runtime.db.read() as session:
            names = dict(
                session.execute(
                    select(User.id, User.external_id).where(User.id.in_([u for u, _ in shown]))
                ).all()
            )
        for user_id, error in shown:
            click.echo(f"  user={names.get(user_id, user_id)} error={error:.3g}")
        raise CliError("profiles drifted from their events: run `driftrec rebuild-profiles`")


# -- keys --------------------------------------------------------------------------------------
@cli.group()
def keys() -> None:
    """API keys (scopes: read, write, admin; admin implies the others)."""


def _key_database(app: App):  # type: ignore[no-untyped-def]
    from store.db import Database

    app.check_schema()
    return Database(app.settings.database_url)


@keys.command("create")
@click.option("--name", required=True, help="Who or what uses the key (shown by `keys list`).")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    help="read, write or admin (repeatable, or comma-separated).",
)
@pass_app
def keys_create(app: App, name: str, scopes: tuple[str, ...]) -> None:
    """Create a key and print it once: only its hash is stored."""
    from store.keys import create_key

    database = _key_database(app)
    try:
        with database.write() as session:
            row, token = create_key(session, name, scopes)
            prefix, granted = row.prefix, row.scopes
    finally:
        database.dispose()
    click.echo(token)
    click.echo(
        f"key created prefix={prefix} name={name!r} scopes={granted} "
        "(shown once: store it now; revoke with `driftrec keys revoke PREFIX`)",
        err=True,
    )


@keys.command("list")
@click.option("--all", "show_all", is_flag=True, help="Include revoked keys.")
@pass_app
def keys_list(app: App, show_all: bool) -> None:
    """List keys: id, prefix, scopes, name, created and revoked times (never the key)."""
    from service.validation import iso
    from store.keys import list_keys

    database = _key_database(app)
    try:
        with database.read() as session:
            rows = list_keys(session, include_revoked=show_all)
            lines = [
                f"id={r.id} prefix={r.prefix} scopes={r.scopes} name={r.name!r} "
                f"created={iso(r.created_at)}"
                + (f" revoked={iso(r.revoked_at)}" if r.revoked_at else "")
                for r in rows
            ]
    finally:
        database.dispose()
    for line in lines:
        click.echo(line)
    if not lines:
        click.echo("no keys", err=True)


@keys.command("revoke")
@click.argument("ref")
@pass_app
def keys_revoke(app: App, ref: str) -> None:
    """Revoke the key with prefix (or id, or unique name) REF; running servers refuse it within
    DRIFTREC_AUTH_CACHE_S seconds (default 5)."""
    from store.keys import revoke_key

    database = _key_database(app)
    try:
        with database.write() as session:
            row = revoke_key(session, ref)
            click.echo(f"key revoked prefix={row.prefix} name={row.name!r}")
    finally:
        database.dispose()


# -- serving -----------------------------------------------------------------------------------
LOOPBACK_HOSTS = {"127.0.0.1", "::1", "localhost", "[::1]"}


def is_loopback(host: str) -> bool:
    import ipaddress

    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--dev", is_flag=True, help="Flask's development server (debugger, reloader).")
@pass_app
def serve(app: App, host: str, port: int, workers: int, dev: bool) -> None:
    """Serve the HTTP API with gunicorn (refuses to start on an out-of-date schema)."""
    app.check_schema()
    check_port_free(host, port)
    if not app.settings.auth_enabled and not is_loopback(host):
        message = (
            f"WARNING: DRIFTREC_AUTH=disabled and listening on {host}: anyone who can reach "
            "this address can read, write and delete everything. Enable auth or bind 127.0.0.1."
        )
        log.warning("auth disabled on a non-loopback address host=%s", host)
        click.secho(message, fg="red", bold=True, err=True)
    for name, value in SERVER_THREAD_ENV.items():
        os.environ.setdefault(name, value)
    if dev:
        from service.app import create_app

        create_app().run(host=host, port=port, debug=True)
        return
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:service.gunicorn_conf",
        "--bind",
        f"{host}:{port}",
        "--workers",
        str(workers),
        APP_FACTORY,
    ]
    app.close()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)


def check_port_free(host: str, port: int) -> None:
    """Refuse a ``host:port`` that something already listens on, with a message that says what
    to do (gunicorn itself retries for a few seconds, then exits with "Can't connect")."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As gunicorn binds: a port whose last connections are still in TIME_WAIT is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise CliError(
                f"cannot listen on {host}:{port} ({exc.strerror}): stop what uses it or pass "
                "--port (make demo PORT=...)"
            ) from exc


# -- demo --------------------------------------------------------------------------------------
DEMO_URL = "https://files.grouplens.org/datasets/movielens/ml-latest-small.zip"
#: sha256 of the files in GroupLens' ml-latest-small (the release of 2018-09).
DEMO_SHA256 = {
    "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
    "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
}


@cli.command()
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    envvar="DRIFTREC_DEMO_DATA",
    help="MovieLens directory [default: ../shared/datasets/ml-latest-small, else download].",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1))
@click.option("--no-serve", is_flag=True, help="Prepare everything but do not start the server.")
@click.pass_context
def demo(
    ctx: click.Context, data: Path | None, host: str, port: int, workers: int, no_serve: bool
) -> None:
    """Migrate, import MovieLens, build the index and serve it; rerunning skips finished work."""
    app: App = ctx.find_object(App)
    if not no_serve:  # before minutes of work, not after them
        check_port_free(host, port)
    if not os.environ.get("DRIFTREC_TORCH_THREADS"):  # one job on the whole machine
        app.settings = app.settings.replace(torch_threads=os.cpu_count() or 1)
    click.secho("== database", bold=True)
    ctx.invoke(upgrade)
    directory = data or _demo_dataset(app.settings.data_dir)
    click.secho(f"== catalogue and ratings from {directory}", bold=True)
    _demo_import(app, directory)
    click.secho("== index", bold=True)
    ctx.invoke(reindex)
    click.secho("== model", bold=True)
    _demo_model(ctx, app)
    _print_curl_lines(app, f"http://{host}:{port}", _demo_key(app), serving=not no_serve)
    if not no_serve:
        click.secho(f"== serving on http://{host}:{port} (Ctrl-C stops)", bold=True)
        ctx.invoke(serve, host=host, port=port, workers=workers, dev=False)


def _demo_dataset(data_dir: Path) -> Path:
    for base in (Path.cwd(), REPO_ROOT):
        shared = (base / ".." / "shared" / "datasets" / "ml-latest-small").resolve()
        if shared.is_dir():
            _check_demo_files(shared)
            return shared
    target = data_dir / "datasets" / "ml-latest-small"
    if not target.is_dir():
        archive = data_dir / "downloads" / "ml-latest-small.zip"
        if not archive.is_file():
            archive.parent.mkdir(parents=True, exist_ok=True)
            click.echo(f"downloading {DEMO_URL}")
            partial = archive.with_suffix(".part")
            with (
                urllib.request.urlopen(DEMO_URL, timeout=60) as response,
                open(partial, "wb") as out,
            ):
                shutil.copyfileobj(response, out)
            partial.rename(archive)
        staging = target.parent / "ml-latest-small.extracting"
        shutil.rmtree(staging, ignore_errors=True)
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(staging)
        _check_demo_files(staging / "ml-latest-small")
        (staging / "ml-latest-small").rename(target)
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _check_demo_files(directory: Path) -> None:
    for name, expected in DEMO_SHA256.items():
        path = directory / name
        actual = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "missing"
        if actual != expected:
            raise CliError(
                f"{path}: sha256 {actual} is not the published ml-latest-small's {expected}; "
                "set DRIFTREC_DEMO_DATA to use another MovieLens directory"
            )


def _demo_import(app: App, directory: Path) -> None:
    """Import what the database lacks; a finished import is not redone (it would bump every
    item's catalogue revision for nothing)."""
    from store.events import count_events
    from store.importing import movielens_events, movielens_items
    from store.items import count_live_items
    from store.models import Profile, User

    runtime = app.runtime
    with runtime.db.read() as session:
        items, events = count_live_items(session), count_events(session)
        users = session.scalar(select(func.count()).select_from(User))
        profiles = session.scalar(select(func.count()).select_from(Profile))
    if items < sum(1 for _ in movielens_items(directory)):
        _import_items(app, movielens_items(directory))
    else:
        click.echo(f"items: {items} already imported")
        _embed_stale(app)
    if events < sum(1 for _ in movielens_events(directory)):
        _import_events(app, movielens_events(directory))
    elif profiles < users:
        click.echo(f"events: {events} already imported; rebuilding profiles")
        click.echo(f"profiles rebuilt={runtime.rebuild_profiles(progress=True)}")
    else:
        # A killed earlier run may have stored events without folding them in yet.
        stale = runtime.rebuild_stale_profiles(progress=True)
        click.echo(
            f"events: {events} already imported, {profiles} profiles"
            + (f" ({stale} rebuilt)" if stale else "")
        )


def _demo_model(ctx: click.Context, app: App) -> None:
    from store.versions import active_model_version

    with app.runtime.db.read() as session:
        model = active_model_version(session)
    if model is not None:
        click.echo(f"model version {model.id} is active: not training")
    elif "train" in cli.commands:
        ctx.invoke(cli.commands["train"])
    else:
        click.echo("no trained model: queries use the decayed blend of each user's items")


def _demo_key(app: App) -> str | None:
    """A fresh read+write key for the printed requests (None when auth is disabled), named
    after the moment (each run of the demo makes one; `keys revoke NAME` takes a unique name)."""
    if not app.settings.auth_enabled:
        return None
    from datetime import UTC, datetime

    from store.keys import create_key

    name = f"demo-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    with app.runtime.db.write() as session:
        row, token = create_key(session, name, ["read", "write"])
        click.echo(f"api key created prefix={row.prefix} name={name} scopes={row.scopes}")
    return token


def _print_curl_lines(app: App, base: str, key: str | None = None, *, serving: bool) -> None:
    """Copy-paste requests for the first user and the most popular item they have not rated
    (``serving``: the demo goes on to start the server)."""
    from store.events import popular_item_ids, seen_item_ids
    from store.items import items_by_ids
    from store.models import User

    with app.runtime.db.read() as session:
        user = session.scalar(select(User).order_by(User.id).limit(1))
        if user is None:
            return
        seen = seen_item_ids(session, user.id)
        unseen = [i for i, _ in popular_item_ids(session, limit=len(seen) + 1) if i not in seen]
        if not unseen:
            return
        item = items_by_ids(session, unseen[:1])[unseen[0]]
    user_url = f"{base}/v1/users/{user.external_id}/recommendations?k=5"
    event = (
        f'{{"events": [{{"id": "demo-{user.external_id}-{item.external_id}-\'"$(date +%s)"\'", '
        f'"user_id": "{user.external_id}", "item_id": "{item.external_id}", "type": "rating", '
        f'"timestamp": \'"$(date +%s)"\'}}]}}'
    )
    auth = f"-H 'Authorization: Bearer {key}' " if key else ""
    where = "in another shell" if serving else "once `driftrec serve` runs"
    click.secho(f"\n== try it ({where})", bold=True)
    if key:
        click.echo("# the key below (read+write) is shown once; `driftrec keys list` lists keys")
    click.echo(f"# user {user.external_id}'s recommendations now:")
    click.echo(f"curl -s {auth}'{user_url}'")
    click.echo(f"# items similar to {item.title!r}:")
    click.echo(f"curl -s {auth}'{base}/v1/items/{item.external_id}/similar?k=5'")
    click.echo(f"# user {user.external_id} rates {item.title!r} now:")
    click.echo(f"curl -s -X POST {base}/v1/events {auth}-H 'Content-Type: application/json' \\")
    click.echo(f"     -d '{event}'")
    click.echo("# ... and the recommendations have moved:")
    click.echo(f"curl -s {auth}'{user_url}'\n")


cli.add_command(evaluate_command)
cli.add_command(train_command)
cli.add_command(model_group)
cli.add_command(experiment_group)


def main() -> None:
    cli(prog_name="driftrec")


if __name__ == "__main__":
    from service.launcher import main as launch  # what the `driftrec` script runs

    launch()

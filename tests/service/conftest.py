"""Fixtures for the HTTP API tests: a module-scoped app over a real database and a real model.

The app is built once per test module (per database backend where a module asks for both) with
a small catalogue written through the API; the MiniLM model is loaded once per session and
shared by those apps. Every response is checked: any 5xx fails the test that caused it.

Auth is on, as in production: each app gets an admin key (``app.config["ADMIN_KEY"]``) and the
``client`` fixture sends it with every request (tests/service/test_api_auth.py tests auth itself).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from flask import Flask, Response, request
from flask.testing import FlaskClient
from sqlalchemy import Engine, text

from indexer.embedder import load_embedder
from service.app import create_app
from store.keys import create_key
from store.migrate import upgrade
from store.settings import Settings

MAX_BATCH = 50

#: A small catalogue in five themes, so semantic neighbours are predictable.
THEMES: dict[str, list[tuple[str, str]]] = {
    "space": [
        ("Rocket launch to Mars", "A crewed spacecraft lifts off toward the red planet."),
        ("Astronauts on the Moon", "Walking on the lunar surface during an Apollo mission."),
        ("The International Space Station", "Life in orbit aboard the ISS."),
        ("Black holes explained", "How gravity bends light around collapsed stars."),
        ("Telescope images of distant galaxies", "Hubble and Webb photograph the early universe."),
        ("Satellite orbits", "How satellites circle the Earth in low orbit."),
    ],
    "food": [
        ("Pasta carbonara recipe", "Eggs, pecorino and guanciale tossed with spaghetti."),
        ("Baking sourdough bread", "A crusty loaf from a wild yeast starter."),
        ("Thai green curry", "Coconut milk, green chillies and basil."),
        ("Homemade pizza dough", "Knead flour, water and yeast for a chewy crust."),
        ("Chocolate cake", "A rich dessert baked with cocoa and butter."),
        ("Vegetable soup", "A warming soup of carrots, leeks and potatoes."),
    ],
    "sports": [
        ("Football world cup final", "Two national teams play for the trophy."),
        ("Marathon training plan", "Running long distances week by week."),
        ("Tennis grand slam", "A five-set match on the grass courts."),
        ("Basketball playoffs", "Teams compete for the championship on the court."),
        ("Cycling the Tour de France", "Riders race through the mountain stages."),
        ("Swimming at the Olympics", "Freestyle sprint in the Olympic pool."),
    ],
    "music": [
        ("Jazz piano improvisation", "Chords and solos in a smoky club."),
        ("Symphony orchestra concert", "Violins and brass perform Beethoven."),
        ("Learning guitar chords", "Strumming your first songs on an acoustic guitar."),
        ("Rock band on tour", "Drums, bass and electric guitar on a stadium stage."),
        ("Opera singers", "Sopranos and tenors perform arias."),
        ("Hip hop beats", "Producing rap instrumentals with a drum machine."),
    ],
    "nature": [
        ("Hiking in the mountains", "Trails through alpine meadows and forests."),
        ("Birds of the rainforest", "Parrots and toucans in the jungle canopy."),
        ("Ocean coral reefs", "Fish and corals in tropical waters."),
        ("Wolves in the wild", "A wolf pack hunts across the tundra."),
        ("Autumn forest walk", "Leaves turn red and gold among the trees."),
        ("Desert wildlife", "Lizards and cacti survive in the heat."),
    ],
}


def catalogue_items() -> list[dict[str, object]]:
    return [
        {"id": f"{theme}-{n}", "title": title, "text": text, "categories": [theme]}
        for theme, entries in THEMES.items()
        for n, (title, text) in enumerate(entries)
    ]


@pytest.fixture(scope="session")
def embedder():
    """The real bundled MiniLM model, loaded once for every app in the session."""
    return load_embedder(Settings().embedder_model)


@pytest.fixture(scope="session")
def postgres_database(_postgres_admin: Engine, _migrated_postgres_template: str):
    """``with postgres_database() as url``: a fresh migrated PostgreSQL database, then dropped.

    Built on tests/conftest.py's session fixtures (admin engine, migrated template), but for a
    whole module, where ``postgres_url`` gives one per test.
    """

    @contextmanager
    def create() -> Iterator[str]:
        name = f"driftrec_api_{uuid.uuid4().hex[:12]}"
        with _postgres_admin.connect() as connection:
            connection.execute(
                text(f'CREATE DATABASE "{name}" TEMPLATE "{_migrated_postgres_template}"')
            )
        try:
            yield _postgres_admin.url.set(database=name).render_as_string(hide_password=False)
        finally:
            with _postgres_admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return create


@pytest.fixture(scope="module")
def api_database_url(tmp_path_factory) -> str:
    """SQLite by default; modules that must also run on PostgreSQL override this fixture with
    `both_backends`."""
    return f"sqlite:///{tmp_path_factory.mktemp('api-db') / 'driftrec.db'}"


def both_backends(request, tmp_path_factory, postgres_database) -> Iterator[str]:
    """A module's database on SQLite, then on PostgreSQL. Use it as the module's own fixture:
    ``api_database_url = pytest.fixture(scope="module", params=BACKENDS)(both_backends)``."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('api-db') / 'driftrec.db'}"
    else:
        with postgres_database() as url:
            yield url


BACKENDS = ["sqlite", "postgresql"]


def new_user_id() -> str:
    """A user id no other test uses (module-scoped apps share one database)."""
    return f"u-{uuid.uuid4().hex[:8]}"


#: Events a profile may lag in the API tests (`Settings.profile_pending_max`).
PROFILE_PENDING_MAX = 8


def build_app(url: str, data_dir: Path, embedder, **settings: object) -> Flask:
    upgrade(url)
    config = Settings(
        database_url=url,
        data_dir=data_dir,
        **{
            "max_batch_size": MAX_BATCH,
            "reload_interval_s": 0.5,
            # Profiles lag their events (off by default): the pending path on both databases.
            "profile_pending_max": PROFILE_PENDING_MAX,
            **settings,
        },  # type: ignore[arg-type]
    )
    app = create_app({"settings": config, "TESTING": True})
    # Share the session's model instead of loading it again (cached_property slot).
    app.extensions["driftrec"].__dict__["embedder"] = embedder
    with app.extensions["driftrec"].db.write() as session:
        app.config["ADMIN_KEY"] = create_key(session, "tests", ["admin"])[1]
    server_errors: list[str] = []
    app.config["SERVER_ERRORS"] = server_errors

    @app.after_request
    def _no_server_errors(response: Response) -> Response:
        # /readyz answering 503 is its job, not a failure.
        if response.status_code >= 500 and request.path != "/readyz":
            server_errors.append(
                f"{request.method} {request.path} -> {response.status_code} "
                f"{response.get_data(as_text=True)[:300]}"
            )
        return response

    return app


@pytest.fixture(scope="session")
def app_builder():
    """`build_app` for tests that need an app of their own (other settings)."""
    return build_app


def admin_client(app: Flask) -> FlaskClient:
    """A test client that sends the app's admin key with every request."""
    client = app.test_client()
    key = app.config.get("ADMIN_KEY")
    if key:
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"
    return client


@pytest.fixture(scope="module")
def app(api_database_url, embedder, tmp_path_factory) -> Iterator[Flask]:
    """A migrated database, an app over it and the catalogue, upserted through the API."""
    app = build_app(api_database_url, tmp_path_factory.mktemp("api-data"), embedder)
    response = admin_client(app).put("/v1/items", json={"items": catalogue_items()})
    assert response.status_code == 200, response.get_json()
    yield app
    app.extensions["driftrec"].close()


@pytest.fixture
def client(app: Flask) -> Iterator[FlaskClient]:
    """A test client with the admin key; the test fails if any response it caused was a 5xx."""
    errors: list[str] = app.config["SERVER_ERRORS"]
    errors.clear()
    yield admin_client(app)
    assert not errors, f"server errors (a 5xx is always a bug): {errors}"


@pytest.fixture
def runtime(app: Flask):
    return app.extensions["driftrec"]


def train_on_theme_fans(client: FlaskClient, runtime, config=None) -> tuple[int, list[dict]]:
    """Catalogue through the API, then six fans each of space, food and music with four likes
    a minute apart an hour ago; train a model (``config``: an `interest.train.TrainConfig`) and
    reindex for it. Returns the model version and the events."""
    from interest.train import train

    assert client.put("/v1/items", json={"items": catalogue_items()}).status_code == 200
    now = time.time()
    events = [
        {
            "id": f"{theme}-{user}-{n}",
            "user_id": f"{theme}-fan-{user}",
            "item_id": f"{theme}-{(user + n) % 6}",
            "type": "like",
            "timestamp": now - 3600 + 60 * n,
        }
        for theme in ("space", "food", "music")
        for user in range(6)
        for n in range(4)
    ]
    for start in (0, 36):
        batch = {"events": events[start : start + 36]}
        assert client.post("/v1/events", json=batch).get_json()["accepted"] == 36
    version = train(runtime, config=config)
    runtime.reindex()
    return version, events

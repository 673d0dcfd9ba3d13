"""Experiments in the store: at most one runs, names are never reused, stopping ends it."""

from __future__ import annotations

import pytest

from store.db import Database
from store.errors import Conflict, NotFound
from store.experiments import (
    list_experiments,
    running_experiment,
    start_experiment,
    stop_experiment,
)
from store.models import IndexVersion, ModelVersion
from store.versions import add_index_version, add_model_version, latest_index_version_for_model


def _model(session) -> int:
    version = ModelVersion(path="models/m.npz", checksum="0" * 64, embedder_model="m")
    return add_model_version(session, version, activate=False).id


def test_one_experiment_at_a_time_and_names_are_not_reused(db: Database) -> None:
    with db.write() as session:
        model_id = _model(session)
        start_experiment(session, "ab", model_id, 20.0)
    with db.write() as session, pytest.raises(Conflict, match="'ab' is running"):
        start_experiment(session, "other", None, 50.0)
    with db.write() as session:
        assert stop_experiment(session).name == "ab"
    with db.read() as session:
        assert running_experiment(session) is None
    with db.write() as session, pytest.raises(Conflict, match="already ran"):
        start_experiment(session, "ab", model_id, 50.0)
    with db.write() as session:
        start_experiment(session, "blend", None, 50.0)
    with db.read() as session:
        running = running_experiment(session)
        assert (running.name, running.model_version_id, running.percent) == ("blend", None, 50.0)
        assert [e.name for e in list_experiments(session)] == ["ab", "blend"]


@pytest.mark.parametrize(
    ("name", "model_id", "percent", "error"),
    [
        ("", None, 50.0, Conflict),
        ("a:b", None, 50.0, Conflict),
        ("x" * 41, None, 50.0, Conflict),
        ("ok", None, 0.0, Conflict),
        ("ok", None, 100.5, Conflict),
        ("ok", 999, 50.0, NotFound),
    ],
)
def test_bad_experiments_are_refused(db: Database, name, model_id, percent, error) -> None:
    with db.write() as session, pytest.raises(error):
        start_experiment(session, name, model_id, percent)
    with db.read() as session:
        assert list_experiments(session) == []


def test_stopping_with_none_running_is_not_found(db: Database) -> None:
    with db.write() as session, pytest.raises(NotFound):
        stop_experiment(session)


def test_latest_index_for_a_model_ignores_other_models_and_embedders(db: Database) -> None:
    def index(model_id: int | None, embedder: str = "m") -> IndexVersion:
        return IndexVersion(
            path="indexes/x.faiss",
            checksum="0" * 64,
            item_count=1,
            kind="flat",
            embedder_model=embedder,
            model_version_id=model_id,
            fingerprint="f" * 64,
        )

    with db.write() as session:
        model_id = _model(session)
        blend = add_index_version(session, index(None), activate=True).id
        first = add_index_version(session, index(model_id), activate=False).id
        newest = add_index_version(session, index(model_id), activate=False).id
        add_index_version(session, index(model_id, embedder="other"), activate=False)
        add_index_version(session, index(None, embedder="other"), activate=False)
    with db.read() as session:
        assert latest_index_version_for_model(session, model_id, "m").id == newest != first
        assert latest_index_version_for_model(session, None, "m").id == blend
        assert latest_index_version_for_model(session, model_id + 1, "m") is None

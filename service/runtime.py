"""The runtime a server process or a CLI job works with: settings, database, index, models.

Built once per process from settings; holds only caches that can be rebuilt from the database
and the data directory (servers stay stateless).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select

from indexer.catalogue import UpsertResult, delete_from_catalogue, upsert_catalogue
from indexer.embedder import Embedder, LazyEmbedder, load_embedder
from indexer.live import LiveIndex
from indexer.reindex import ReindexResult, build_index
from interest.calibration import user_query_sample
from interest.experiments import ExperimentRouter
from interest.import_fold import import_events_into_profiles
from interest.ingest import EventInput, IngestResult, ProfileConfig, ingest_events
from interest.rebuild import rebuild_profiles, rebuild_stale_profiles
from interest.recommend import Recommender
from interest.registry import EncoderRegistry
from service.session_writer import SessionWriter
from store.db import Database
from store.experiments import running_experiment
from store.importing import EventRecord, ImportStats
from store.items import ItemInput
from store.models import Item
from store.settings import Settings
from store.versions import active_model_version, latest_index_version_for_model

#: Dimension of the bundled model, so profiles can be created before the model is loaded.
BUNDLED_DIM = 384


@dataclass(frozen=True)
class EventImport:
    """What `Runtime.import_events` did."""

    stats: ImportStats
    #: Profiles the import's new events were folded into.
    profiles_updated: int
    #: Profiles rebuilt from the log: those a killed earlier import left stale.
    profiles_rebuilt: int


class Runtime:
    def __init__(
        self, settings: Settings, db: Database | None = None, *, serving: bool = False
    ) -> None:
        """``serving``: for a server process, whose indexes load newly activated versions in
        the background (`indexer.live.LiveIndex`) instead of in a request.

        Servers and jobs alike copy the SQLite WAL into the database from a thread of their
        own (`store.db.WalCheckpointer`): a job's commits then leave that copy and its sync
        to the other core (bulk import of 200k events: 35.6-39.9k -> 39.5-44.0k events/s).
        """
        self.settings = settings
        self._serving = serving
        self.db = db or Database(settings.database_url, background_checkpoints=True)
        self.encoders = EncoderRegistry(self.db, settings)
        self.index = LiveIndex(
            self.db,
            settings.embedder_model,
            transform_for=self.encoders.transform_for,
            version_check_interval_s=settings.reload_interval_s,
            # Index files are memory-mapped read-only: the workers of a server (and every
            # server on the machine) share one copy in the page cache instead of each
            # reading its own. Changes since the file was built live in the overlay.
            mmap=True,
            load_in_background=serving,
        )
        self.recommender = Recommender(self.db, settings, self.index, self.encoders)
        self.sessions = SessionWriter(self.db)
        #: Whether a plain index exists, and when that was last looked up (`content_recommender`).
        self._plain_index_seen = False
        self._plain_index_checked_at = -math.inf
        self.experiments = ExperimentRouter(
            self.db,
            self.recommender,
            self._treatment_recommender,
            check_interval_s=settings.reload_interval_s,
        )

    def content_recommender(self) -> Recommender:
        """The recommender semantic search and similar items answer from: nearest items by
        their text vectors.

        A trained model's index holds the model's item vectors, whose directions come from
        co-occurrence and whose extra coordinates carry popularity: a text query, or an item,
        searched there finds the popular items, not the matching ones. So while a model is
        active these requests go to the newest plain index, which `reindex` keeps beside the
        model's; to the active index when it is the plain one, or while no plain one exists
        (a model activated before this was built: the next `reindex` builds it). No query per
        request: the plain index loads on the first such request of the process, then its
        watcher follows new versions.
        """
        if self.index.model_version_id is None or not self._plain_index_built():
            return self.recommender
        content = self.experiments.treatment(None)
        if not content.index.loaded:
            content.index.refresh()
        return content

    def _plain_index_built(self) -> bool:
        """Whether a plain index exists: looked up at most every reload interval until one
        does. (A live index with no version to load would instead hold every item of the
        catalogue in its exact overlay.)"""
        if self._plain_index_seen:
            return True
        now = time.monotonic()
        if now - self._plain_index_checked_at < self.settings.reload_interval_s:
            return False
        self._plain_index_checked_at = now
        with self.db.read() as session:
            newest = latest_index_version_for_model(session, None, self.settings.embedder_model)
        self._plain_index_seen = newest is not None
        return self._plain_index_seen

    def _treatment_recommender(self, model_version_id: int | None) -> Recommender:
        """A recommender on the newest index built for ``model_version_id`` (an experiment's,
        or None: the plain index of `content_recommender`)."""
        embedder_model = self.settings.embedder_model
        index = LiveIndex(
            self.db,
            embedder_model,
            transform_for=self.encoders.transform_for,
            version_check_interval_s=self.settings.reload_interval_s,
            select_version=lambda session: latest_index_version_for_model(
                session, model_version_id, embedder_model
            ),
            mmap=True,
            load_in_background=self._serving,
        )
        return Recommender(self.db, self.settings, index, self.encoders)

    @functools.cached_property
    def embedder(self) -> Embedder:
        return load_embedder(
            self.settings.embedder_model,
            batch_size=self.settings.embed_batch_size,
            threads=self.settings.torch_threads,
            backend=self.settings.embedder_backend,
            cache_dir=self.settings.data_dir / "embedders",
        )

    @functools.cached_property
    def embedding_dim(self) -> int:
        with self.db.read() as session:
            dim = session.scalar(
                select(Item.vector_dim)
                .where(Item.vector_model == self.settings.embedder_model)
                .limit(1)
            )
        if dim:
            return int(dim)
        if self.settings.embedder_model.startswith("bundled:"):
            return BUNDLED_DIM
        return self.embedder.dim

    @property
    def profile_config(self) -> ProfileConfig:
        return ProfileConfig(
            half_lives=self.settings.half_lives,
            dim=self.embedding_dim,
            buffer_size=self.settings.recent_buffer_size,
            event_weights=self.settings.event_weights,
            pending_max=self.settings.profile_pending_max,
        )

    # -- use cases -------------------------------------------------------------------------
    def upsert_items(self, items: Sequence[ItemInput]) -> UpsertResult:
        result = upsert_catalogue(self.db, self.embedder, items)
        self.index.refresh()
        return result

    def delete_item(self, external_id: str) -> None:
        delete_from_catalogue(self.db, external_id)
        self.index.refresh()

    def ingest(
        self, events: Sequence[EventInput], pre_rejected: Sequence[tuple[int, str]] = ()
    ) -> IngestResult:
        return ingest_events(
            self.db,
            events,
            self.profile_config,
            self.settings.embedder_model,
            pre_rejected=pre_rejected,
        )

    def rebuild_profiles(self, *, user_ids: set[int] | None = None, progress: bool = False) -> int:
        return rebuild_profiles(
            self.db,
            self.profile_config,
            self.settings.embedder_model,
            user_ids=user_ids,
            progress=progress,
        )

    def import_events(
        self, records: Iterable[EventRecord], *, progress: bool = False
    ) -> EventImport:
        """Bulk-load events (a batch per transaction, rerunnable) and bring the profiles of
        their users up to date: the import's new events are folded into the stored profiles
        as it goes (`interest.import_fold`), and profiles a killed earlier import left stale
        are rebuilt from the log. Events of types without a configured weight are rejected."""
        stats, updated = import_events_into_profiles(
            self.db,
            records,
            self.profile_config,
            self.settings.embedder_model,
            progress=progress,
        )
        return EventImport(stats, updated, self.rebuild_stale_profiles(progress=progress))

    def rebuild_stale_profiles(self, *, progress: bool = False) -> int:
        """Rebuild the profiles bulk imports left behind their events (this one's and any
        killed one's)."""
        return rebuild_stale_profiles(
            self.db, self.profile_config, self.settings.embedder_model, progress=progress
        )

    def reindex(
        self,
        *,
        full: bool = False,
        retrain: bool = False,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> ReindexResult:
        """Build the index for the active model (or the plain blend) and publish it; while an
        experiment runs, also the index its treatment model serves from; while a model is
        active, also the plain index semantic search and similar items answer from
        (`content_recommender`).

        Vectors are committed every ``batch_size`` items (default: the embedder's batch size).
        """
        with self.db.read() as session:
            model = active_model_version(session)
            model_id = model.id if model is not None else None
            experiment = running_experiment(session)
            treatment_id = experiment.model_version_id if experiment is not None else model_id
        result = self._build_index(
            model_id,
            activate=True,
            full=full,
            retrain=retrain,
            batch_size=batch_size,
            progress=progress,
        )
        beside = [treatment_id] if treatment_id != model_id else []
        if None not in (model_id, treatment_id):
            beside.append(None)
        for other_id in beside:
            self.build_treatment_index(other_id, full=full, retrain=retrain, progress=progress)
        return result

    def build_treatment_index(
        self,
        model_version_id: int | None,
        *,
        full: bool = False,
        retrain: bool = False,
        progress: bool = False,
    ) -> ReindexResult:
        """Build (unless unchanged) the index ``model_version_id`` serves from beside the active
        one: an experiment's treatment, or (None) the plain index for content queries."""
        return self._build_index(
            model_version_id, activate=False, full=full, retrain=retrain, progress=progress
        )

    def _build_index(
        self,
        model_id: int | None,
        *,
        activate: bool,
        full: bool = False,
        retrain: bool = False,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> ReindexResult:
        embedder = LazyEmbedder(
            self.settings.embedder_model, self.embedding_dim, lambda: self.embedder
        )
        result = build_index(
            self.db,
            embedder,
            self.settings.index_dir,
            exact_max_items=self.settings.exact_index_max_items,
            transform=self.encoders.transform_for(model_id),
            model_version_id=model_id,
            full=full,
            retrain=retrain,
            batch_size=batch_size or self.settings.embed_batch_size,
            progress=progress,
            activate=activate,
            calibration=lambda: user_query_sample(self.db, self.encoders.get(model_id)),
        )
        if activate:
            self.index.refresh(force=True)
        return result

    def close(self) -> None:
        self.sessions.close()
        self.index.close()
        self.experiments.close()
        self.db.dispose()

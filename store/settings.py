"""One typed settings object, read once from ``DRIFTREC_*`` environment variables.

Defaults make the embedded setup work with no configuration: SQLite and data under ``./var/``
and the bundled MiniLM model. Settings are read at the edges (``create_app``, the CLI,
``migrations/env.py``) and passed down; nothing reads the environment at import time.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_EVENT_WEIGHTS: dict[str, float] = {
    "view": 1.0,
    "click": 2.0,
    "add_to_cart": 4.0,
    "like": 4.0,
    "rating": 4.0,
    "purchase": 8.0,
    "dislike": -4.0,
    "skip": -1.0,
    "hide": -8.0,
}

# Wall-clock half-lives of the decayed accumulators every profile keeps, in seconds. The last one
# is infinite: the plain (undecayed) sum. Changing them needs `driftrec rebuild-profiles`.
DAY = 86_400.0
DEFAULT_HALF_LIVES: tuple[float, ...] = tuple(
    days * DAY for days in (0.01, 0.1, 1.0, 10.0, 100.0, float("inf"))
)
#: `driftrec verify`'s default: the largest relative error of a stored profile's accumulators
#: that is not drift. Stored as float32 (`interest.profile.ACCUMULATOR_DTYPE`), they err by
#: ~1e-6 after 10,000 events written one at a time and ~2e-5 after 100,000; a lost or repeated
#: event also changes the exact event count.
VERIFY_TOLERANCE = 1e-4


class SettingsError(ValueError):
    """A DRIFTREC_* variable has a value that cannot be used."""


AUTH_MODES = ("enabled", "disabled")


@dataclass(frozen=True)
class Settings:
    database_url: str = ""
    data_dir: Path = Path("var")
    embedder_model: str = "bundled:all-MiniLM-L6-v2"
    #: "auto" (openvino where installed, else bf16 on CPUs with AMX or AVX-512 BF16, else
    #: torch), "openvino" (OpenVINO on a local conversion, bfloat16 products where native),
    #: "bf16", "torch" (sentence-transformers, float32) or "onnx" (ONNX Runtime on a local
    #: export): see indexer.embedder.
    embedder_backend: str = "auto"
    embed_batch_size: int = 64
    torch_threads: int = 1
    half_lives: tuple[float, ...] = DEFAULT_HALF_LIVES
    recent_buffer_size: int = 50
    #: An event on a user with a stored profile is kept as pending (folded in whenever the
    #: profile is read) instead of rewriting the profile, while the user has at most this many;
    #: the event past it folds them all into the stored profile. 0: every event rewrites it.
    #: Off by default: readers pay for pending events (a recommendation of a user with ~4 of
    #: them cost ~17% more CPU), and PostgreSQL's planner scans the whole table of them until
    #: it has statistics on it. Turned off again, readers keep folding the events still
    #: pending until `driftrec rebuild-profiles` takes them into the profiles.
    profile_pending_max: int = 0
    event_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    #: Above this many items the index is approximate. Exact search reads every vector per
    #: query (memory-bound: ~0.075 ms per 1,000 items at 384 dimensions), and in a server that
    #: scan also evicts the rest of the request from the CPU caches: served by two workers, a
    #: 10k benchmark catalogue answered 1.4-2.5x the recommendations a second approximate
    #: (recall@10 0.97) than exact, 1.8x with a trained model's 1,409-d vectors; at 2k items the
    #: two were within 10% (bench/HISTORY.md, 2026-12-02). Small catalogues keep exact answers.
    exact_index_max_items: int = 2_000
    max_batch_size: int = 1_000
    max_k: int = 1_000
    reload_interval_s: float = 2.0
    #: Half-life (seconds) of the accumulator used as the query when no model is trained.
    blend_half_life: float = DAY
    #: Cold start: popularity over this window before the newest event (seconds).
    cold_start_window: float = 30 * DAY
    log_level: str = "INFO"
    #: "enabled" (every /v1 request needs an API key) or "disabled" (local experiments only).
    auth: str = "enabled"
    #: How long a server trusts an API key it has checked (seconds) before looking it up again:
    #: a revoked key keeps working for at most this long. 0 looks every request up.
    auth_cache_s: float = 5.0
    #: How long a server waits on a client that has stopped sending its request (seconds, per
    #: read) before it drops the connection; see `service.client_timeout`.
    client_timeout_s: float = 5.0
    #: How long a recommendation answer's next pages stay available (seconds since last page).
    recommendation_ttl_s: float = 3600.0
    #: CPU priority of background jobs (reindex, train, import, ...): a nice value, 0-19, applied
    #: to the job's own session so that it yields to a server on the same machine (see
    #: `service.job_priority`). 0 runs jobs at normal priority.
    job_nice: int = 19
    #: Share of the time a background job works while other processes keep the machine busy;
    #: it sleeps between chunks for the rest (see `indexer.pacing`). 1 turns pacing off.
    job_cpu_share: float = 0.25

    def __post_init__(self) -> None:
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{self.data_dir / 'driftrec.db'}")
        if not 0 <= self.job_nice <= 19:
            raise SettingsError(f"DRIFTREC_JOB_NICE={self.job_nice} is not valid: use 0 to 19")
        if not 0 < self.job_cpu_share <= 1:
            raise SettingsError(
                f"DRIFTREC_JOB_CPU_SHARE={self.job_cpu_share} is not valid: use more than 0, "
                "at most 1"
            )
        if not 0 < self.client_timeout_s < float("inf"):
            raise SettingsError(
                f"DRIFTREC_CLIENT_TIMEOUT_S={self.client_timeout_s} is not valid: use a number "
                "of seconds above 0"
            )
        if self.auth not in AUTH_MODES:
            raise SettingsError(
                f"DRIFTREC_AUTH={self.auth!r} is not valid: use enabled or disabled"
            )

    @property
    def auth_enabled(self) -> bool:
        return self.auth == "enabled"

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "indexes"

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "models"

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _float_list(raw: str) -> tuple[float, ...]:
    return tuple(float(part) for part in raw.split(",") if part.strip())


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Build the settings from ``environ`` (default: ``os.environ``) plus explicit overrides."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    parsers: dict[str, tuple[str, object]] = {
        "DRIFTREC_DATABASE_URL": ("database_url", str),
        "DRIFTREC_DATA_DIR": ("data_dir", Path),
        "DRIFTREC_EMBEDDER_MODEL": ("embedder_model", str),
        "DRIFTREC_EMBEDDER_BACKEND": ("embedder_backend", lambda raw: raw.strip().lower()),
        "DRIFTREC_EMBED_BATCH_SIZE": ("embed_batch_size", int),
        "DRIFTREC_TORCH_THREADS": ("torch_threads", int),
        "DRIFTREC_HALF_LIVES": ("half_lives", _float_list),
        "DRIFTREC_RECENT_BUFFER_SIZE": ("recent_buffer_size", int),
        "DRIFTREC_PROFILE_PENDING_MAX": ("profile_pending_max", int),
        "DRIFTREC_EVENT_WEIGHTS": ("event_weights", json.loads),
        "DRIFTREC_EXACT_INDEX_MAX_ITEMS": ("exact_index_max_items", int),
        "DRIFTREC_MAX_BATCH_SIZE": ("max_batch_size", int),
        "DRIFTREC_MAX_K": ("max_k", int),
        "DRIFTREC_RELOAD_INTERVAL_S": ("reload_interval_s", float),
        "DRIFTREC_LOG_LEVEL": ("log_level", str),
        "DRIFTREC_BLEND_HALF_LIFE": ("blend_half_life", float),
        "DRIFTREC_COLD_START_WINDOW": ("cold_start_window", float),
        "DRIFTREC_AUTH": ("auth", lambda raw: raw.strip().lower()),
        "DRIFTREC_AUTH_CACHE_S": ("auth_cache_s", float),
        "DRIFTREC_CLIENT_TIMEOUT_S": ("client_timeout_s", float),
        "DRIFTREC_RECOMMENDATION_TTL_S": ("recommendation_ttl_s", float),
        "DRIFTREC_JOB_NICE": ("job_nice", int),
        "DRIFTREC_JOB_CPU_SHARE": ("job_cpu_share", float),
    }
    for variable, (name, parse) in parsers.items():
        raw = env.get(variable)
        if raw is None or raw == "":
            continue
        try:
            values[name] = parse(raw)  # type: ignore[operator]
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"{variable}={raw!r} is not valid: {exc}") from exc
    values.update(overrides)
    settings = Settings(**values)  # type: ignore[arg-type]
    if not settings.half_lives:
        raise SettingsError("DRIFTREC_HALF_LIVES must name at least one half-life")
    if settings.profile_pending_max < 0:
        raise SettingsError("DRIFTREC_PROFILE_PENDING_MAX must be 0 or more")
    return settings

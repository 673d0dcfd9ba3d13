"""`service.gc_freeze`: server workers freeze their long-lived objects out of full collections."""

from __future__ import annotations

import gc
import importlib
import weakref

import gunicorn.util
from gunicorn.config import Config

from service.gc_freeze import WarmUpFreeze, freeze_after_start


def test_warm_up_freezes_what_exists_once_after_its_requests():
    gc.unfreeze()
    try:
        freezer = WarmUpFreeze(after=3)
        before = [[] for _ in range(1000)]  # e.g. caches a worker built on its first requests
        freezer.request_done()
        freezer.request_done()
        assert gc.get_freeze_count() == 0
        freezer.request_done()
        frozen = gc.get_freeze_count()
        assert frozen >= len(before)
        after = [[] for _ in range(1000)]
        freezer.request_done()
        # Once only: `after` stays collectable. (Frozen objects freed by reference counting
        # meanwhile lower the count a little, so not an equality.)
        assert gc.get_freeze_count() < frozen + len(after)
        del after
    finally:
        gc.unfreeze()


class _Node:
    pass


def test_start_up_freeze_collects_garbage_first():
    gc.unfreeze()
    gc.disable()  # only the freeze's own collection may free the cycle below
    try:
        node = _Node()
        node.self = node  # type: ignore[attr-defined]
        gone = weakref.ref(node)
        del node  # garbage only a collection frees; frozen, it would stay for good
        assert gone() is not None
        freeze_after_start()
        assert gone() is None
        assert gc.get_freeze_count() > 0
    finally:
        gc.enable()
        gc.unfreeze()


def test_the_gunicorn_config_wires_both_freezes():
    """The hooks pass gunicorn's own validation, as `driftrec serve` loads them; importing the
    config patches nothing (the prompt close is installed by its on_starting hook)."""
    close_before = gunicorn.util.close_graceful
    module = importlib.import_module("service.gunicorn_conf")
    assert gunicorn.util.close_graceful is close_before
    config = Config()
    for name, value in vars(module).items():
        if name in config.settings:
            config.set(name, value)
    assert config.post_worker_init is module.post_worker_init
    assert config.post_request is module.post_request
    assert config.on_starting is module.on_starting

"""Gunicorn settings for `driftrec serve`, which adds ``--bind`` and ``--workers``.

Run by hand: ``gunicorn -c python:service.gunicorn_conf -b 127.0.0.1:8000 -w 2``
(with ``OMP_NUM_THREADS=1`` and friends, as `driftrec serve` sets them).
"""

from pathlib import Path

from service.gc_freeze import WarmUpFreeze, freeze_after_start
from service.http_close import install as install_prompt_close

wsgi_app = "service.app:create_app()"
# Requests are CPU-bound (vector math): one request at a time per worker, one worker per core.
# (gthread with keep-alive, one thread: 7% fewer recommendations per second here.)
# gunicorn's sync worker with a read timeout per connection (DRIFTREC_CLIENT_TIMEOUT_S), so a
# client that stalls mid-request is dropped instead of holding the worker (service.client_timeout).
worker_class = "service.client_timeout.SyncWorker"
# Not preloaded: each worker opens its own database connections; none cross a fork.
preload_app = False
# The first search in a worker loads the embedding model: under a second from the cached
# OpenVINO conversion, 5-10 s when it converts first (the torch backends: ~10 s on one thread).
timeout = 60
graceful_timeout = 30
# No access log: paths carry user ids. The app logs method, route and status per request.
accesslog = None
# Gunicorn's control socket sits at one fixed path per user: two servers would fight over it.
control_socket_disable = True
if Path("/dev/shm").is_dir():
    worker_tmp_dir = "/dev/shm"  # heartbeat files off a possibly slow disk


def on_starting(server):  # noqa: ARG001 - gunicorn's hook signature
    """In the master, before workers fork: a worker takes the next connection as soon as it has
    answered, instead of waiting for the client to close this one (see service.http_close)."""
    install_prompt_close()


# Long-lived objects are frozen out of Python's full collections, which otherwise paused a
# worker for 70-85 ms every few tens of seconds under load (see service.gc_freeze).
_warm_up = WarmUpFreeze()


def post_worker_init(worker):  # noqa: ARG001 - gunicorn's hook signature
    freeze_after_start()


def post_request(worker, req, environ, resp):  # noqa: ARG001 - gunicorn's hook signature
    _warm_up.request_done()

"""Read an import's input in a child process while this one writes to the database.

A bulk import spends about as much CPU parsing its file (CSV fields, timestamps, validation)
as writing it, and Python runs one thread's code at a time: parsing in a second process lets
both cores work. The child is forked, so it iterates the very iterator it was given (a
generator reading a file, say) with no need to pickle it; it sends each converted batch
through a pipe, which holds back a child that gets more than a batch or two ahead.

The child only reads and converts: it touches no database connection and takes no lock that
another thread of this process may hold (a fork copies only the forking thread).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import sys
import warnings
from collections.abc import Callable, Generator, Iterable
from multiprocessing.connection import Connection
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_BATCH, _ERROR, _END = "batch", "error", "end"


def can_read_ahead() -> bool:
    """Whether this platform can fork a child that reads ahead: Linux (on macOS system
    libraries may crash a forked child of a process with threads; Windows cannot fork)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork")


def read_ahead(batches: Iterable[T], convert: Callable[[T], R]) -> Generator[R, None, None]:
    """``convert(batch)`` for each of ``batches``, in order, computed in a forked child process
    while the caller works on the previous one (in this process where it cannot fork).

    The caller must not touch ``batches`` (or what it reads from) itself. An exception raised
    while reading or converting is raised here, after the batches read before it; one that
    cannot be pickled comes as a RuntimeError with its text. Closing the returned generator
    early (an error in the caller, say) stops the child.
    """
    if not can_read_ahead():
        yield from map(convert, batches)
        return
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(
        target=_produce, args=(batches, convert, sender), name="driftrec-read-ahead", daemon=True
    )
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process with threads; the child runs none of the
        # code that could need their locks (see the module's docstring).
        warnings.simplefilter("ignore", DeprecationWarning)
        child.start()
    sender.close()
    try:
        while True:
            try:
                kind, payload = receiver.recv()
            except EOFError:
                child.join()
                raise RuntimeError(
                    f"the process reading the import's input ended (exit code {child.exitcode})"
                ) from None
            if kind == _BATCH:
                yield payload
            elif kind == _ERROR:
                raise payload
            else:
                return
    finally:
        receiver.close()
        if child.is_alive():
            child.kill()
        child.join()


def _produce(batches: Iterable[T], convert: Callable[[T], R], sender: Connection) -> None:
    """The child: send each converted batch, then the end, or the exception that stopped it."""
    try:
        try:
            for batch in batches:
                sender.send((_BATCH, convert(batch)))
        except BaseException as exc:  # noqa: BLE001 - the parent raises it
            last = (_ERROR, _picklable(exc))
        else:
            last = (_END, None)
        sender.send(last)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the parent stopped reading: nothing to tell it
    finally:
        with contextlib.suppress(OSError):
            sender.close()


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure: send its text instead
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc

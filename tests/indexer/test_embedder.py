"""Embedder backends: the ONNX Runtime export, the OpenVINO conversion and bfloat16 autocast
agree with float32 sentence-transformers (real MiniLM)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexer.embedder import (
    AUTO,
    BF16,
    ONNX,
    OPENVINO,
    TORCH,
    EmbedderUnavailable,
    LazyEmbedder,
    OpenVinoEmbedder,
    has_native_bf16,
    load_embedder,
    resolve_backend,
    resolve_model_path,
    runtime_unsupported,
)
from store.settings import load_settings

MODEL = "bundled:all-MiniLM-L6-v2"
TEXTS = [
    "Toy Story (1995). Genres: Adventure, Animation, Children, Comedy, Fantasy",
    "Heat (1995)",
    "a much longer description of a film about a detective who solves crimes in a rainy city "
    "at night while the rest of the town sleeps and the jazz clubs play until morning",
    "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)",
    "",
]
# Past the runtime backends' prefix (12 characters a token of the 256-token window): one whose
# prefix fills the window, one whose prefix does not (runs of spaces) and is encoded whole.
LONG_TEXTS = [
    " ".join(f"Amélie{i} naïve café {i * 7919 % 1000} 東京 détective" for i in range(600)),
    "rare " + "x" + " " * 40 + "".join(f"w{i}" + " " * 40 for i in range(200)) + "end",
]


def _check_runtime_backend(embedder, *, min_cosine: float, same_alone_atol: float) -> None:
    """What an inference-runtime backend owes: the model's name and shape, normalised float32
    vectors within ``min_cosine`` of float32 sentence-transformers, and for each text in a
    batch of mixed lengths the vector it gets alone."""
    torch_vectors = load_embedder(MODEL, backend=TORCH).embed(TEXTS + LONG_TEXTS)
    vectors = embedder.embed(TEXTS)
    long_vectors = embedder.embed(LONG_TEXTS)
    assert embedder.model_name == MODEL and embedder.dim == 384
    assert vectors.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    together = np.vstack([vectors, long_vectors])
    assert np.min(np.sum(together * torch_vectors, axis=1)) > min_cosine
    assert np.allclose(embedder.embed(TEXTS[2:3])[0], vectors[2], atol=same_alone_atol)
    assert np.allclose(embedder.embed(LONG_TEXTS[1:])[0], long_vectors[1], atol=same_alone_atol)
    assert embedder.embed([]).shape == (0, 384)


@pytest.mark.slow
def test_onnx_backend_matches_sentence_transformers(tmp_path):
    onnx = load_embedder(MODEL, backend=ONNX, cache_dir=tmp_path, batch_size=7)
    _check_runtime_backend(onnx, min_cosine=0.9999, same_alone_atol=1e-5)
    exported = list(tmp_path.glob("*.onnx"))
    assert len(exported) == 1  # exported once, then reused from the cache directory
    assert exported[0].stat().st_mode & 0o777 == 0o644  # readable by a server's user


def test_openvino_backend_matches_sentence_transformers(tmp_path):
    # The conversion runs in a child interpreter: the process asking for it (a server worker,
    # on its first search) never imports transformers for it.
    # Neither converting nor loading and running it leaves OpenVINO's telemetry client id and
    # counters in the home directory.
    probe = (
        "import sys; from pathlib import Path; from indexer.embedder import export_openvino, "
        "load_embedder, resolve_model_path; export_openvino(Path(resolve_model_path(sys.argv[1])), "
        "Path(sys.argv[2])); print('transformers' in sys.modules); "
        "load_embedder(sys.argv[1], backend='openvino', cache_dir=Path(sys.argv[2])).embed(['x'])"
    )
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    converting = subprocess.run(
        [sys.executable, "-c", probe, MODEL, str(cache)],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(home)},
    )
    assert converting.returncode == 0, converting.stderr
    assert converting.stdout.strip() == "False"
    assert list(home.iterdir()) == []  # no ~/intel
    (converted,) = cache.glob("openvino-*/model.xml")
    assert list(cache.iterdir()) == [converted.parent]  # no staging directory left behind
    assert converted.parent.stat().st_mode & 0o777 == 0o755  # readable by a server's user
    # A second conversion would make (and remove) a staging directory in the cache: its
    # mtime would move even where the finished one is kept.
    listed = cache.stat().st_mtime_ns

    openvino = load_embedder(MODEL, backend=OPENVINO, cache_dir=cache, batch_size=5)
    # bfloat16 products where the CPU has them natively (as the bf16 backend), else float32.
    bf16 = openvino.precision == "bf16"
    _check_runtime_backend(openvino, min_cosine=0.999 if bf16 else 0.9999, same_alone_atol=1e-4)
    float32 = OpenVinoEmbedder(MODEL, cache_dir=cache, precision="f32")
    _check_runtime_backend(float32, min_cosine=0.9999, same_alone_atol=1e-5)
    assert cache.stat().st_mtime_ns == listed  # converted once, then reused


def test_runtime_backends_tokenize_long_texts_from_a_prefix_as_if_whole():
    """What `_RuntimeEmbedder._encode` gives a long text (from a prefix, where that fills the
    window) is token for token the tokenizer's encoding of the whole text."""
    from indexer.embedder import PREFIX_CHARS_PER_TOKEN, _RuntimeEmbedder

    encoder = _RuntimeEmbedder(MODEL)
    limit = 256 * PREFIX_CHARS_PER_TOKEN
    texts = [*TEXTS, *LONG_TEXTS, "word " * 2_000, "x" * (limit + 10)]
    assert all(len(text) > limit for text in texts[len(TEXTS) :])
    encoded = encoder._encode(texts)
    whole = encoder._tokenizer.encode_batch(texts)
    assert [e.ids for e in encoded] == [e.ids for e in whole]
    assert max(len(e.ids) for e in encoded) == 256


def test_sentence_transformers_backends_embed_long_texts_as_if_whole():
    """`torch` (and `bf16`) cut a long text to its prefix only where that keeps the window:
    the vectors are those of the whole texts."""
    from indexer.embedder import _long_text_windows

    embedder = load_embedder(MODEL, backend=TORCH)
    texts = [*LONG_TEXTS, "word " * 2_000, TEXTS[0]]
    windows = _long_text_windows(embedder._window_tokenizer, texts, 256)
    assert {i for i, (text, _) in windows.items() if text is not texts[i]} == {0, 2}
    whole = embedder._model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert np.allclose(embedder.embed(texts), whole, atol=1e-6)


def test_bf16_backend_stays_close_to_float32():
    # Runs everywhere (emulated where the CPU lacks bfloat16 matrix units, only slower).
    torch_vectors = load_embedder(MODEL, backend=TORCH).embed(TEXTS)
    bf16 = load_embedder(MODEL, backend=BF16)
    bf16_vectors = bf16.embed(TEXTS)
    assert bf16 is not load_embedder(MODEL, backend=TORCH)
    assert bf16.model_name == MODEL and bf16_vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(bf16_vectors, axis=1), 1.0, atol=1e-5)
    cosines = np.sum(bf16_vectors * torch_vectors, axis=1)
    assert np.min(cosines) > 0.999
    # Not float32 in disguise: bfloat16 products do move the vectors a little.
    assert np.max(np.abs(bf16_vectors - torch_vectors)) > 1e-6
    # The float32 embedder is not left in autocast by the bf16 one (thread-local state).
    assert np.array_equal(load_embedder(MODEL, backend=TORCH).embed(TEXTS), torch_vectors)


def test_auto_backend_picks_openvino_else_bf16_only_with_native_support(monkeypatch):
    assert resolve_backend(AUTO) == OPENVINO  # a dependency: installed
    assert resolve_backend(TORCH) == TORCH and resolve_backend(ONNX) == ONNX
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)  # as if not installed
    assert resolve_backend(AUTO) == (BF16 if has_native_bf16() else TORCH)
    monkeypatch.undo()
    assert load_embedder(MODEL) is load_embedder(MODEL, backend=resolve_backend(AUTO))


@pytest.mark.parametrize(
    "change",
    [
        {"pooling": {"pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}},
        {"module": {"idx": 3, "name": "3", "path": "3_Dense", "type": "x.models.Dense"}},
    ],
)
def test_runtime_backends_refuse_models_they_would_compute_differently(tmp_path, change):
    bundled = Path(resolve_model_path(MODEL))
    model = tmp_path / "model"
    shutil.copytree(bundled, model)
    if "pooling" in change:
        config = model / "1_Pooling" / "config.json"
        config.write_text(json.dumps(json.loads(config.read_text()) | change["pooling"]))
    else:
        modules = json.loads((model / "modules.json").read_text())
        (model / "modules.json").write_text(json.dumps([*modules, change["module"]]))
    assert runtime_unsupported(MODEL) is None
    assert runtime_unsupported(str(model)) is not None
    # auto falls back to sentence-transformers; asked for by name, the backends refuse it.
    assert resolve_backend(AUTO, str(model)) == (BF16 if has_native_bf16() else TORCH)
    for backend in (OPENVINO, ONNX):
        with pytest.raises(EmbedderUnavailable, match="needs the torch or bf16 backend"):
            load_embedder(str(model), backend=backend, cache_dir=tmp_path / "cache")


def test_auto_falls_back_to_sentence_transformers_where_openvino_cannot_load(tmp_path, monkeypatch):
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # the conversion's directory cannot be made under a file
    attempts = []

    def counted(*args, **kwargs):  # the real class, its tries counted
        attempts.append(1)
        return OpenVinoEmbedder(*args, **kwargs)

    monkeypatch.setattr("indexer.embedder.OpenVinoEmbedder", counted)
    fallback = BF16 if has_native_bf16() else TORCH
    embedder = load_embedder(MODEL, batch_size=3, cache_dir=blocked / "cache")
    assert embedder is load_embedder(MODEL, batch_size=3, backend=fallback)
    assert embedder is load_embedder(MODEL, batch_size=3, cache_dir=blocked / "cache")
    assert len(attempts) == 1  # the failure is remembered: no second conversion attempt
    with pytest.raises(EmbedderUnavailable):  # asked for by name: no fallback
        load_embedder(MODEL, batch_size=3, backend=OPENVINO, cache_dir=blocked / "cache")


def test_unknown_backend_is_refused():
    with pytest.raises(EmbedderUnavailable):
        load_embedder(MODEL, backend="tensorflow")


def test_backend_setting():
    assert load_settings({}).embedder_backend == AUTO
    assert load_settings({"DRIFTREC_EMBEDDER_BACKEND": " ONNX "}).embedder_backend == ONNX


def test_lazy_embedder_loads_only_for_texts():
    loads = []

    class Real:
        model_name, dim = "m", 3

        def embed(self, texts, *, progress=False):
            return np.ones((len(texts), 3), dtype=np.float32)

    def load():
        loads.append(1)
        return Real()

    lazy = LazyEmbedder("m", 3, load)
    assert lazy.embed([]).shape == (0, 3) and not loads
    assert lazy.embed(["x"]).shape == (1, 3) and loads == [1]

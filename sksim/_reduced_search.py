"""Neighbour candidates found in a reduced space, then ranked.

A search over ``m`` principal directions of the sketches costs ``m / width``
of one over the full sketches. The reduced inner products only choose a few
times more candidates than neighbours asked for (the searches'
``candidates_per_neighbor``); the neighbours are the candidates with the
largest similarities, so a neighbour is lost only when the reduced search
misses it among its candidates.

The candidates are ranked by a similarity given as a function: the inner
products of the full sketches, or exact similarities from the network's
whitened Jacobians. Ranking reads every candidate's sketch (or Jacobian) from
memory. Queries of one k-means cluster of the reduced sketches may share
candidates, so they are ranked in turn (:func:`locality_order`), while those
rows are still in the processor's cache.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from sklearn.utils import check_random_state

from ._engine.budget import rows_that_fit
from ._engine.pieces import pair_products, rectangular_pairs

CANDIDATES_PER_NEIGHBOR = 24  # the searches' default candidates_per_neighbor
MAX_FIT_ROWS = 4096  # reference sketches the directions are fitted on
BLOCK_ROWS = 4096  # queries ranked at a time (bounds the copies and pattern)
SEARCH_ROWS = 16_384  # queries FAISS searches at a time for their candidates
# a tile of an exhaustive search's products (16 MiB of float32 at most): its
# products and heaps took 6 to 8 % less time than in tiles of 4096 x 4096 (25 000
# queries and reference rows, 2 cores)
TILE_QUERIES = 2048  # queries of a tile, at most
TILE_REFERENCE = 2048  # reference rows of a tile
LOCALITY_CLUSTERS = 256  # k-means clusters that order the queries
POINTS_PER_CLUSTER = 39  # reduced sketches k-means is fitted on, per cluster
OVERSAMPLES = 10  # random directions the randomized SVD adds to those asked for
POWER_ITERATIONS = 2  # its products with F^T F


def direction_rows(
    n: int, n_components: int, random_state: int, max_rows: int | None = None
) -> np.ndarray:
    """The rows of ``n`` reference sketches the principal directions are fitted on.

    At most ``max_rows`` (fewer than :data:`MAX_FIT_ROWS`, that fit in
    memory; None: that many) or twice ``n_components``, drawn at random,
    sorted; all ``n`` when there are no more.
    """
    n_rows = max(MAX_FIT_ROWS if max_rows is None else max_rows, 2 * n_components)
    if n <= n_rows:
        return np.arange(n)
    rng = check_random_state(random_state)
    return np.sort(rng.choice(n, n_rows, replace=False))


def principal_directions(
    F: np.ndarray, n_components: int, random_state: int
) -> np.ndarray:
    """The leading right singular vectors of the rows of ``F``, as columns.

    Fitted without centring (the directions that keep inner products best),
    on the rows :func:`direction_rows` draws, by a randomized SVD in torch
    (Halko, Martinsson and Tropp, 2011): :data:`OVERSAMPLES` more random
    directions than asked for, refined by :data:`POWER_ITERATIONS` products
    with ``F^T F``, each made orthonormal by a QR factorisation. Returns a
    float32 array ``(F.shape[1], n_components)`` with orthonormal columns;
    ``n_components`` must be below both sides of ``F``.
    """
    F = torch.from_numpy(np.ascontiguousarray(F, dtype=np.float32))
    width = min(n_components + OVERSAMPLES, *F.shape)
    generator = torch.Generator().manual_seed(random_state)
    basis = torch.randn(
        F.shape[1], width, generator=generator, device="cpu", dtype=F.dtype
    )
    for _ in range(POWER_ITERATIONS):
        basis = F.T @ torch.linalg.qr(F @ basis)[0]
    range_, _ = torch.linalg.qr(F @ basis)
    _, _, Vt = torch.linalg.svd(range_.T @ F, full_matrices=False)
    return np.ascontiguousarray(Vt[:n_components].T.numpy())


def candidate_rows(
    index,
    G: np.ndarray,
    n_candidates: int,
    params,
    n_reference: int,
    max_bytes: float,
) -> np.ndarray:
    """The ``n_candidates`` reference rows the FAISS ``index`` finds for each query.

    The queries ``G`` are searched :data:`SEARCH_ROWS` at a time and only the
    rows are kept, as int32 when ``n_reference`` rows allow it: the
    similarities and int64 rows are held for one chunk, not for all queries.
    An exhaustive index is searched by :func:`largest_products` (its products
    in tiles of ``max_bytes`` at most), any other by FAISS with its search
    parameters ``params``; -1 marks a candidate not found.
    """
    int32 = n_reference <= np.iinfo(np.int32).max
    rows = np.empty((len(G), n_candidates), dtype=np.int32 if int32 else np.int64)
    reference = flat_vectors(index)
    for start in range(0, len(G), SEARCH_ROWS):
        chunk = slice(start, start + SEARCH_ROWS)
        if reference is None:
            _, rows[chunk] = index.search(G[chunk], n_candidates, params=params)
        else:
            rows[chunk] = largest_products(G[chunk], reference, n_candidates, max_bytes)
    return rows


def flat_vectors(index) -> np.ndarray | None:
    """The vectors of an exhaustive inner-product FAISS ``index``, else None.

    A view of the index's own storage: valid while ``index`` lives.
    """
    import faiss

    if not (
        isinstance(index, faiss.IndexFlat)
        and index.metric_type == faiss.METRIC_INNER_PRODUCT
    ):
        return None
    n, d = index.ntotal, index.d
    return faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d)


def largest_products(
    Q: np.ndarray, R: np.ndarray, n: int, max_bytes: float
) -> np.ndarray:
    """Rows of ``R`` with the ``n`` largest inner products with each query of ``Q``.

    What FAISS's exhaustive search finds (int64 rows, -1 past ``len(R)``),
    in no particular order: the products are computed by torch, one tile of
    :data:`TILE_QUERIES` (fewer in ``max_bytes``) x :data:`TILE_REFERENCE`
    at a time, and FAISS's heaps keep each query's largest. Torch's products
    can be twice as fast as those of the BLAS FAISS ships, which take half
    of its search.
    """
    import faiss

    values = np.empty((len(Q), n), dtype=np.float32)
    rows = np.empty((len(Q), n), dtype=np.int64)
    heaps = faiss.float_minheap_array_t()  # keeps the largest values
    heaps.k, heaps.nh = n, len(Q)
    heaps.val, heaps.ids = faiss.swig_ptr(values), faiss.swig_ptr(rows)
    heaps.heapify()
    width = min(len(R), TILE_REFERENCE)
    height = rows_that_fit(max_bytes, 4 * width, min(len(Q), TILE_QUERIES))
    tile = torch.empty(height * width, dtype=torch.float32, device="cpu")
    with warnings.catch_warnings():  # read-only (memory-mapped) queries: only read
        warnings.simplefilter("ignore", UserWarning)
        Q, R = torch.from_numpy(Q), torch.from_numpy(R)
    for q in range(0, len(Q), height):
        queries = Q[q : q + height]
        for r in range(0, len(R), TILE_REFERENCE):
            reference = R[r : r + TILE_REFERENCE]
            products = tile[: len(queries) * len(reference)]
            products = products.view(len(queries), len(reference))
            torch.mm(queries, reference.T, out=products)
            heaps.addn(
                len(reference), faiss.swig_ptr(products.numpy()), r, q, len(queries)
            )
    return rows


def locality_order(G: np.ndarray, random_state: int) -> np.ndarray:
    """An order of the queries that puts those with common candidates together.

    The queries ``G`` (reduced sketches, float32) sorted by their k-means
    cluster: at most :data:`LOCALITY_CLUSTERS` clusters, fitted by FAISS on
    :data:`POINTS_PER_CLUSTER` queries per cluster in 10 iterations. Fewer
    than two clusters' worth of queries keep their order.
    """
    n_clusters = min(LOCALITY_CLUSTERS, len(G) // POINTS_PER_CLUSTER)
    if n_clusters < 2:
        return np.arange(len(G))
    import faiss

    kmeans = faiss.Kmeans(
        G.shape[1],
        n_clusters,
        niter=10,
        seed=random_state,
        max_points_per_centroid=POINTS_PER_CLUSTER,
    )
    kmeans.train(G)
    _, clusters = kmeans.index.search(G, 1)
    return np.argsort(clusters[:, 0], kind="stable")


def rank_candidates(
    similarity: Callable[[np.ndarray, np.ndarray], np.ndarray],
    candidates: np.ndarray,
    n_neighbors: int,
    order: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``n_neighbors`` candidates of each query with the largest similarity.

    Parameters
    ----------
    similarity : callable
        ``similarity(rows, columns)`` gives the similarities ``(len(rows),
        n_candidates)`` of the queries ``rows`` to the reference rows
        ``columns`` (sorted for each query): :func:`sketch_similarity`, or
        exact similarities.
    candidates : ndarray of shape (n_queries, n_candidates)
        Distinct reference rows for each query.
    n_neighbors : int
    order : ndarray of shape (n_queries,), default=None
        The order in which the queries are ranked (:func:`locality_order`);
        it changes the speed, not the result. None ranks them as given.

    Returns
    -------
    similarities, indices : ndarray of shape (n_queries, n_neighbors)
        Similarities in decreasing order (ties: the smaller row first), float32,
        and reference rows.
    """
    if order is None:
        order = np.arange(len(candidates))
    similarities = np.empty((len(candidates), n_neighbors), dtype=np.float32)
    indices = np.empty((len(candidates), n_neighbors), dtype=candidates.dtype)
    for start in range(0, len(order), BLOCK_ROWS):
        rows = order[start : start + BLOCK_ROWS]
        columns = np.sort(candidates[rows], axis=1)
        inner = similarity(rows, columns)
        top = largest(inner, n_neighbors)
        similarities[rows] = np.take_along_axis(inner, top, axis=1)
        indices[rows] = np.take_along_axis(columns, top, axis=1)
    return similarities, indices


def largest(values: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` largest float32 ``values`` of each row, largest first.

    Ties come in the order of their positions, as a stable sort would give
    them. Each value and its position are packed into one int64 key that
    orders as (value descending, position ascending): a partial sort of the
    keys then selects without comparing values and positions apart.
    """
    bits = (values + np.float32(0)).view(np.int32)  # -0.0 as 0.0: equal, as floats
    ascending = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))  # ordered as the floats
    keys = (~ascending).astype(np.int64) << 32 | np.arange(values.shape[1])
    if n < values.shape[1]:
        keys = np.partition(keys, n - 1, axis=1)[:, :n]
    keys.sort(axis=1)
    return keys & 0xFFFFFFFF


def sketch_similarity(
    Q: np.ndarray, R: np.ndarray
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Inner products of the sketches of queries ``Q`` and reference ``R``.

    The ``similarity`` of :func:`rank_candidates`: computed for the candidate
    pairs alone, without copying the candidates' sketches.
    """
    with warnings.catch_warnings():  # read-only (unpickled) sketches: only read
        warnings.simplefilter("ignore", UserWarning)
        Q = torch.from_numpy(np.asarray(Q, dtype=np.float32))
        R = torch.from_numpy(np.asarray(R, dtype=np.float32))

    def similarity(rows, columns):
        columns = torch.from_numpy(columns.astype(np.int64))
        pairs = rectangular_pairs(columns)
        return pair_products(Q[rows], R, *pairs).reshape(columns.shape).numpy()

    return similarity

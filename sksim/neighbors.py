"""Nearest neighbours from the network's perspective (theory: density)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from numbers import Integral, Real
from types import ModuleType

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.sparse import csr_matrix
from sklearn.utils import Bunch
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._base import POSITIVE_INT, NetworkEstimator, constraints, forget_failed_fit
from ._docs import fill_doc
from ._engine.budget import (
    KEPT_MEMORY,
    check_kept_bytes,
    left_beside,
    readable_bytes,
    rows_that_fit,
)
from ._engine.checkpoints import checkpoint_seed, stacked, weighted_rows
from ._engine.finite import rows_of_reference
from ._engine.flags import flag_scope
from ._engine.inputs import n_samples, take
from ._engine.jacobian import DEFAULT_MAX_MEMORY
from ._engine.parallel import split_rows
from ._engine.pieces import KeptPieces
from ._engine.rows import (
    ExactNeighbors,
    candidate_similarities,
    cosine_rows,
    sketch_features,
    sketch_rows,
    sketched_rows,
    streamed_similarities,
    top_k,
    whitened_bytes,
)
from ._reduced_search import (
    CANDIDATES_PER_NEIGHBOR,
    MAX_FIT_ROWS,
    candidate_rows,
    direction_rows,
    locality_order,
    principal_directions,
    rank_candidates,
    sketch_similarity,
)
from ._typing import Checkpoints, NetInput, NetLike, Output, Self
from ._validation import given_or_item_labels
from .density import CHECKPOINTS, NEIGHBOR_PARAMETERS
from .kernel import distance_in_place, similarity_to_distance

N_BACKGROUND = 200  # reference rows whose similarities set the percentiles
N_BACKGROUND_COLUMNS = 5000  # the reference rows they are paired with, at most
CANDIDATE_BYTES = 16  # a query's candidate: its int32 row, FAISS's float32 and int64
# more for a candidate ranked in a pass over the reference: its float32 similarity
# and where the pass meets it (int64 query, slot, position, order, bound; measured)
STREAMED_CANDIDATE_BYTES = 56
SEARCH_COPIES = 2  # a block of exact similarities and the masks of its selection
AUTO_COMPONENTS = (4096, 2048, 1024, 512, 256, 128, 64)  # n_components="auto"
CANDIDATE_COMPONENTS = 256  # "auto" when the sketches only choose candidates
HNSW_BEAM = 2  # an HNSW search's efSearch, per candidate it must return
HNSW_FROM = 1_000_000  # reference examples from which automatic searches use HNSW
MAX_RANKING_BLOCKS = 8  # thirds of max_memory the Jacobians of an exact ranking fill
#: Parameters of a search that only its queries read: a fitted search takes others.
QUERY_PARAMS = ("n_neighbors", "candidates_per_neighbor")
N_COMPONENTS = [POSITIVE_INT, StrOptions({"auto"}), None]  # its constraint


def import_faiss() -> ModuleType:
    """Import faiss lazily, with an error naming the extra that provides it."""
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            'algorithm="faiss" needs the faiss library: install it with '
            "`pip install faiss-cpu` (sksim's faiss extra: `pip install "
            '".[faiss]"` in its checkout).'
        ) from error
    return faiss


def each_of(*callbacks):
    """One ``each_batch`` calling every callback that is not None (None: none)."""
    callbacks = [c for c in callbacks if c is not None]
    if not callbacks:
        return None

    def each_batch(rows, pieces):
        for callback in callbacks:
            callback(rows, pieces)

    return each_batch


def check_sketched(n_components: int | str | None) -> None:
    """Raise a ValueError unless a FAISS search has sketches (``n_components``)."""
    if n_components is None:
        raise ValueError(
            'algorithm="faiss" searches sketched gradient features: set '
            'n_components (e.g. 64 to 256, or "auto"), or use algorithm="exact".'
        )


def automatic_index(n_reference: int) -> str:
    """The FAISS index of the automatic searches (the audit's, the label issues').

    Exhaustive (``"Flat"``) below :data:`HNSW_FROM` reference examples, HNSW
    graphs (``"HNSW32"``) from there.
    """
    return "Flat" if n_reference < HNSW_FROM else "HNSW32"


def index_bytes(index, n: int) -> int:
    """Bytes the FAISS ``index`` will hold for ``n`` vectors, from an empty one.

    Its codes (the vectors themselves for ``"Flat"``); an inverted list's
    8-byte ids; an HNSW graph's links: ``2 M`` on the bottom level, about
    one more above it, and each node's level and offset. An index whose
    codes FAISS does not size counts as a float32 copy of the vectors.
    """
    faiss = import_faiss()
    codes = faiss.downcast_index(index)  # a view: ``index`` must outlive it
    per_vector = 0
    if isinstance(codes, faiss.IndexHNSW):
        per_vector += 4 * (codes.hnsw.nb_neighbors(0) + 1) + 12
        codes = faiss.downcast_index(codes.storage)
    if isinstance(codes, faiss.IndexIVF):
        per_vector += 8 + codes.code_size
    else:
        try:
            per_vector += codes.sa_code_size()
        except RuntimeError:
            per_vector += 4 * codes.d
    return n * per_vector


# reference examples as similar as a query's k-th nearest, within float32
# rounding, are as near as it: a search that finds one of them misses nothing
TIE_TOLERANCE = 1e-5
RECALL_DEPTH = 20  # exact neighbours gathered for the recall, at least


def recall(found: np.ndarray, similarities: np.ndarray, indices: np.ndarray) -> float:
    """The recall@k of a search whose neighbours are ``found``, ``(n_queries, k)``.

    ``similarities`` and ``indices``, in decreasing order, are each query's
    exact nearest reference examples, at least ``k`` (more let ties count):
    an exact ``k`` nearest found is a hit, and so is an example as similar
    as the ``k``-th (within :data:`TIE_TOLERANCE`) for each place the
    ``k``-th's ties take among the ``k``. Rows in any order.
    """
    k = found.shape[1]
    hits = []
    for row, near, s in zip(found, indices, similarities, strict=True):
        above = near[s > s[k - 1] + TIE_TOLERANCE]
        tied = near[np.abs(s - s[k - 1]) <= TIE_TOLERANCE]
        places = k - len(above)
        shared = len(np.intersect1d(row, above))
        hits.append(shared + min(places, len(np.intersect1d(row, tied))))
    return float(np.mean(hits) / k)


@fill_doc
class NetworkNeighbors(NetworkEstimator):
    """The reference examples a network treats as most similar to an input.

    Neighbours are ranked by the network's cosine similarity ``k^C`` (see
    :func:`sksim.network_similarity`), largest first. The interface follows
    :class:`sklearn.neighbors.NearestNeighbors`: :meth:`kneighbors` returns
    distances ``sqrt(2 - 2 k)`` (the Euclidean distance between unit-scaled
    whitened Jacobians, when no Gram's eigenvalue is floored) in ascending
    order, :meth:`kneighbors_graph` them as a sparse graph,
    :meth:`radius_neighbors` and :meth:`radius_neighbors_graph` those within
    a distance; :meth:`most_similar` returns the similarities themselves, in
    descending order, for the neighbours of :meth:`kneighbors`.

    Two algorithms:

    * ``"exact"`` (default): every similarity is computed, in blocks of query
      rows against the reference set (similarities of one block,
      ``batch_size x N``, at a time; the reference Jacobians are kept in
      memory when they fit in ``max_memory``). With ``n_components`` set, the
      similarities are those of random projections (sketches) of the whitened
      Jacobians instead.
    * ``"faiss"``: an inner-product FAISS index over the sketches, flattened
      and unit-normalised, for large reference sets (10^5 samples and more).
      Needs ``n_components`` and the optional ``faiss-cpu`` dependency
      (``pip install ".[faiss]"``). The sketch makes it approximate:
      similarities carry an error of order ``1/sqrt(d * n_components)``, so
      neighbours with nearly equal similarities may swap: ``fit(X,
      X_val=...)`` measures the recall against exact neighbours on held-out
      queries, in the same pass over ``X``. The default ``index="Flat"`` searches
      the sketches exhaustively; for all-pairs queries at 10^6 examples, an
      approximate index such as ``"HNSW32"`` or ``"IVF1024,Flat"`` (with
      ``index_params="nprobe=16"``) trades recall for speed. With
      ``search_components``, the index holds the sketches' leading principal
      components only and finds candidates, which are then ranked by their
      exact similarities: the sketch only chooses the candidates.

    With ``checkpoints``, neighbours are ranked by the averaged cosine
    kernel ``sum_c w_c k^C_c / sum_c w_c`` of the checkpoints: the examples
    the network treated as similar over its training, rather than at its
    end. Sketches are those of the checkpoints side by side, so the FAISS
    index holds ``n_checkpoints`` times wider vectors.

    Memory: with ``n_components``, what the search holds for the reference
    (its sketches as they are kept and the FAISS index over them, an HNSW
    index's graph included) comes out of ``max_memory`` first and may take
    two thirds of it (otherwise ``fit`` raises a MemoryError saying what to
    change). The engine's batches take the last third. What is left goes to
    the whitened Jacobians: half to the reference's, kept when they fit in
    it, and half to those of a block of queries with the block's sketches
    and candidates; all of it to the block when the reference's are not kept.
    ``algorithm="exact"`` over sketches sketches its queries in such blocks
    too, half of the block's share to their sketches and half to their
    similarities.

    Parameters
    ----------
    %(net)s
    n_neighbors : int, default=5
        Number of neighbours returned by default.
    radius : float, default=1.0
        Distance within which :meth:`radius_neighbors` returns neighbours by
        default (similarity at least ``1 - radius**2 / 2``: 0.5 for 1.0).
    algorithm : {"exact", "faiss"}, default="exact"
        Search method, see above.
    %(output)s
    %(params)s
    n_components : int, "auto" or None, default=None
        Size of the sketch per output; None uses exact similarities (only with
        ``algorithm="exact"``). ``"auto"`` chooses it in ``fit``: 256 when the
        candidates of a reduced search are ranked exactly (the sketches then
        only choose them, and only their projections are kept); otherwise
        the widest of 4 096, 2 048, ..., 64 whose float32 sketches of the
        reference, with the FAISS index over them, take at most a third of
        ``max_memory`` (64 if none does, and a MemoryError if those take
        more than two thirds). Where the sketches rank the neighbours
        themselves, wider ones find more of the exact neighbours: on a
        ResNet-18, the recall@5 rose from 0.57 at 256 to 0.88 at 4 096, in
        about the same time. The sketch shares its columns among the layers
        in proportion to their energies on the reference
        (``sketch_weights_``): equal shares found 0.27 and 0.70.
    %(batch_size)s
    %(device)s
    %(rtol)s
    %(random_state)s
    n_jobs : int or None, default=None
        Exact search with queries: joblib workers among which the query rows
        are split (None: one, in process). The FAISS search uses FAISS's own
        OpenMP threads (and torch's for an exhaustive index's products),
        which sksim leaves as they are (set them with ``OMP_NUM_THREADS``,
        ``faiss.omp_set_num_threads`` or ``torch.set_num_threads``).
    %(max_memory)s
    %(verbose)s
    index : str, default="Flat"
        With ``algorithm="faiss"``: the FAISS index, as a string of
        ``faiss.index_factory`` (``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``,
        ...), over inner products. An index that needs training is trained on
        the reference sketches in ``fit``.
    index_params : str or None, default=None
        Search parameters of the FAISS index, as a string of
        ``faiss.ParameterSpace`` (e.g. ``"nprobe=16"`` for an IVF index,
        ``"efSearch=64"`` for HNSW). Unless it sets ``efSearch``, an HNSW
        index (behind a transform too, as in ``"PCA32,HNSW32"``) searches
        with a beam twice as wide as the candidates it returns
        (FAISS's default of 16 would be narrower than them): for 10^6
        reference examples, this kept the recall@5 within 0.04 of the
        exhaustive index's (0.872 against 0.903), in 0.6 of its time.
    search_components : int or None, default=None
        With ``algorithm="faiss"``: None gives the index the whole sketches
        (``d * n_components`` values each). An int gives it their projections
        on that many leading principal directions (fitted in ``fit`` on at
        most 4 096 reference sketches drawn at random, or twice
        ``search_components``, and no more than a third of ``max_memory``
        holds: another ``max_memory`` may give other candidates); the
        index then finds ``candidates_per_neighbor`` times more candidates
        than neighbours asked for, and the candidates with the largest exact
        similarities are returned, with those similarities. The exact
        similarities come from the whitened Jacobians of the reference, kept
        from ``fit`` when they fit in their share of ``max_memory`` (see
        above). Otherwise the queries are taken in blocks whose Jacobians fit
        in that share, and each block's candidates are computed again, in
        a pass over them. When the reference's Jacobians take more than 8
        thirds of ``max_memory`` (a bound on those passes), or with
        ``checkpoints``, the whole sketches rank the candidates
        (``exact_ranking_`` says which). When ranked exactly, only
        the sketches' projections are kept (``search_components`` values per
        example). The search costs about
        ``search_components / (d * n_components)`` as much; a neighbour is
        lost only when it is not among the candidates.
    candidates_per_neighbor : int, default=24
        With ``search_components``: the candidates the index finds per
        neighbour asked for. More find more of the exact neighbours, at a cost
        linear in them; the larger the reference, the more a given recall
        takes: for 25 000 reference and query examples of a 10-class MLP, 16,
        24 and 32 found 0.944, 0.970 and 0.981 of the exact 5 nearest, the
        queries taking 1.6, 2.2 and 2.3 s on 2 cores; over 10^6 reference
        examples, 24 found 0.903 (0.761, 0.821 and 0.864 with the sketch's
        columns shared equally among the layers, before ``sketch_weights_``).
    %(checkpoints)s
    %(checkpoint_weights)s

    Attributes
    ----------
    net_ : skorch net, FrozenEstimator or torch.nn.Module
        The trained network used.
    X_fit_ : ndarray, dict of ndarrays, or Dataset
        The reference inputs (a dataset is kept as it is, not read into memory).
    n_samples_fit_ : int
        Number of reference examples.
    y_fit_ : ndarray of shape (n_samples_fit,) or (n_samples_fit, n_targets) or None
        The targets passed to ``fit`` (the labels :meth:`explain` shows).
    n_components_ : int or None
        The size of the sketch per output: ``n_components``, or the one
        ``"auto"`` chose.
    reference_features_ : ndarray of shape (n_samples_fit, width)
        Unit-normalised sketches of the reference (when ``n_components`` is
        set), ``width`` equal to ``d * n_components_`` values each (more where
        the network has more layer pieces, each taking one column at least;
        fewer where it has fewer parameters); with ``checkpoints``, those of
        the checkpoints side by side
        (``n_checkpoints`` times as wide), each scaled by the square root of
        its share of the weight. When the candidates are ranked exactly
        (``exact_ranking_``), their projections on ``search_directions_``
        alone, ``search_components`` values each.
    search_directions_ : ndarray of shape (width, search_components) or None
        With ``algorithm="faiss"``: the principal directions (``width`` rows,
        the sketches' width) onto which the index's sketches are projected
        (None when ``search_components`` is None or not below the width; at
        most one below the number of reference examples).
    exact_ranking_ : bool
        Whether the candidates of a reduced FAISS search (``search_components``)
        are ranked by their exact similarities (else by the whole sketches);
        False without reduction.
    recall_ : float
        With ``X_val`` passed to ``fit``: the mean share of each query's
        exact ``n_neighbors`` nearest reference examples that
        :meth:`most_similar` finds (recall@``n_neighbors``); an example as
        similar as the exact ``n_neighbors``-th counts as found (ties among
        up to twice ``n_neighbors`` examples, and at least 20, duplicated
        ones for instance).
    %(sketch_weights_)s
    projection_seed_ : int or None
        Seed of the sketch, shared by reference and queries (None without
        sketches).
    n_features_in_ : int
        Size of the second axis of array inputs.

    See Also
    --------
    sksim.density.GradientDensityEstimator : how many neighbours, not which.

    References
    ----------
    .. [1] G. Charpiat, N. Girard, L. Felardos, Y. Tarabalka, "Input Similarity
       from the Neural Network Perspective", NeurIPS 2019, the section on
       retrieving the samples the network sees as similar.

    Examples
    --------
    >>> import torch
    >>> from sksim.neighbors import NetworkNeighbors
    >>> _ = torch.manual_seed(0)
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(),
    ...                           torch.nn.Linear(8, 1))
    >>> X = torch.randn(10, 2).numpy()
    >>> nn = NetworkNeighbors(net, n_neighbors=3).fit(X)
    >>> dist, ind = nn.kneighbors(X[:2])
    >>> ind[:, 0].tolist()  # an example is its own most similar one
    [0, 1]
    >>> bool((dist[:, :-1] <= dist[:, 1:]).all())
    True
    >>> sim, _ = nn.most_similar(X[:2])
    >>> bool(abs(sim[:, 0] - 1).max() < 1e-6)
    True
    """

    _parameter_constraints = constraints(
        *NEIGHBOR_PARAMETERS,
        n_neighbors=[Interval(Integral, 1, None, closed="left")],
        radius=[Interval(Real, 0, None, closed="both")],
        algorithm=[StrOptions({"exact", "faiss"})],
        index=[str],
        index_params=[str, None],
        search_components=[Interval(Integral, 1, None, closed="left"), None],
        candidates_per_neighbor=[Interval(Integral, 1, None, closed="left")],
        n_components=N_COMPONENTS,
        **constraints(*CHECKPOINTS),
    )
    _fitted_params = ("algorithm", "n_components", "rtol", "index", "index_params")
    _fitted_params += ("search_components",)
    _transient_attributes = (
        "_engine_cache",
        "_faiss_index",
        "_reference_pieces",
        "_background",
    )

    def __init__(
        self,
        net: NetLike,
        *,
        n_neighbors: int = 5,
        radius: float = 1.0,
        algorithm: str = "exact",
        output: Output = "logits",
        params: str | Sequence[str] | None = None,
        n_components: int | str | None = None,
        batch_size: int | str = "auto",
        device: str | torch.device | None = None,
        rtol: float = 1e-5,
        random_state: int | np.random.RandomState | None = None,
        n_jobs: int | None = None,
        max_memory: int | None = DEFAULT_MAX_MEMORY,
        verbose: int = 0,
        index: str = "Flat",
        index_params: str | None = None,
        search_components: int | None = None,
        candidates_per_neighbor: int = CANDIDATES_PER_NEIGHBOR,
        checkpoints: Checkpoints | None = None,
        checkpoint_weights: ArrayLike | None = None,
    ) -> None:
        self.net = net
        self.n_neighbors = n_neighbors
        self.radius = radius
        self.algorithm = algorithm
        self.output = output
        self.params = params
        self.n_components = n_components
        self.batch_size = batch_size
        self.device = device
        self.rtol = rtol
        self.random_state = random_state
        self.n_jobs = n_jobs
        self.max_memory = max_memory
        self.verbose = verbose
        self.index = index
        self.index_params = index_params
        self.search_components = search_components
        self.candidates_per_neighbor = candidates_per_neighbor
        self.checkpoints = checkpoints
        self.checkpoint_weights = checkpoint_weights

    @forget_failed_fit
    def fit(
        self, X: NetInput, y: ArrayLike | None = None, *, X_val: NetInput | None = None
    ) -> Self:
        """Train the net if needed and prepare the reference set.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...), dict of them, or Dataset
            Reference inputs (usually the training set).
        y : array-like of shape (n_samples,) or (n_samples, n_targets), default=None
            Targets: needed to train an unfitted skorch net (a Dataset of
            ``(x, y)`` items carries its own), and kept as the labels that
            :meth:`explain` shows.
        X_val : array-like of shape (n_queries, ...), dict of them, Dataset or None
            With ``n_components`` set: held-out queries on which ``recall_``
            is measured. Their exact neighbours (unsketched similarities) are
            gathered while ``X`` is sketched, in the same pass over it (a
            separate pass with ``checkpoints``). Their Jacobians are kept in
            blocks that fit in the queries' share of ``max_memory`` (see
            Memory above): past the first block, each takes a pass of its own
            over ``X``.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        if self.algorithm == "faiss":
            check_sketched(self.n_components)
            import_faiss()
        elif self.search_components is not None:
            raise ValueError(
                'search_components reduces the sketches that algorithm="faiss" '
                'searches: set algorithm="faiss" or search_components=None.'
            )
        if X_val is not None and self.n_components is None:
            raise ValueError(
                "X_val measures the recall of a search over sketches: set "
                "n_components, or leave X_val out (the search is exact)."
            )
        X = self._fit_network(X, y)
        self.X_fit_ = X
        self.n_samples_fit_ = n_samples(X)
        self._faiss_index = None
        self._recall_sample = None
        self._recalls = {}
        self.y_fit_ = self._check_labels(X, y)
        if X_val is not None:
            X_val = self._check_input(X_val, "X_val")
            if self.n_neighbors > self.n_samples_fit_:
                raise ValueError(
                    f"n_neighbors={self.n_neighbors} is more than the "
                    f"{self.n_samples_fit_} reference examples: the recall on "
                    "X_val needs at most that many."
                )
        self._piece_bytes = self._measured_piece_bytes(X)
        self.exact_ranking_ = self._piece_bytes is not None and (
            self._piece_bytes * self.n_samples_fit_
            <= MAX_RANKING_BLOCKS * KEPT_MEMORY * self._engine.max_memory
        )
        self.n_components_ = self._sketch_width(X)
        held = self._search_bytes(X, self.n_components_, self.exact_ranking_)
        self._held_bytes = sum(held)
        self._check_held_bytes(*held)
        exact = None if X_val is None else self._exact_neighbors(X_val)
        if self.n_components_ is not None:
            self.sketch_weights_ = self._sketch_weights(X)
        kept = None
        if self.exact_ranking_ and self._pieces_fit():
            kept = KeptPieces(self.n_samples_fit_, float("inf"))
        if self.exact_ranking_:
            # only the projections are ever held, on directions fitted first
            self.search_directions_ = self._search_directions(X)
            self.reference_features_ = self._sketch(
                X, each_of(exact, kept), self.search_directions_
            )
        elif self.n_components_ is not None:
            F = self._sketch(X, each_of(exact, kept))
            self.search_directions_ = None
            if self.algorithm == "faiss":
                self.search_directions_ = self._search_directions(X, F)
            self.reference_features_ = F
        if exact is not None:
            exact.finish(X)
        self._reference_pieces = None if kept is None else kept.pieces or ()
        self._background = None
        if self.algorithm == "faiss":
            self._faiss_index = self._build_index()
        if X_val is not None:
            if exact is None:  # checkpoints: exact rows of their averaged kernel
                rows = self._cosine_rows(X_val)
                nearest = self._search_rows(
                    rows, n_samples(X_val), self._n_exact_neighbors, False
                )
            else:
                nearest = exact.similarities, exact.indices
            self._recall_sample = (X_val, *nearest)
            self.recall_ = self._sample_recall()
        return self

    def _sample_recall(self) -> float | None:
        """``recall_`` of the search as set now, on the ``X_val`` of ``fit``.

        For another ``n_neighbors`` or ``candidates_per_neighbor`` than
        ``fit``'s. None without ``X_val``, or where ``fit`` gathered fewer
        exact neighbours than ``n_neighbors`` (twice its own); gathered just
        as many, an example as similar as the last found beyond them counts
        as missed. Searched once per setting of the parameters that only
        queries read (:data:`QUERY_PARAMS`).
        """
        if self._recall_sample is None:
            return None
        X_val, similarities, indices = self._recall_sample
        if indices.shape[1] < self.n_neighbors:
            return None
        setting = tuple(getattr(self, name) for name in QUERY_PARAMS)
        if setting not in self._recalls:
            with flag_scope(report=False):  # reported as its neighbours were found
                _, found = self.most_similar(X_val)
            self._recalls[setting] = recall(found, similarities, indices)
        return self._recalls[setting]

    @property
    def _n_recall_queries(self) -> int | None:
        """The number of queries of ``fit``'s ``X_val`` (None without one)."""
        sample = self._recall_sample
        return None if sample is None else n_samples(sample[0])

    def _check_labels(self, X, y) -> np.ndarray | None:
        """The labels :meth:`explain` shows: ``y``, or those of a Dataset's items."""
        y = given_or_item_labels(X, y)
        if y is None:
            return None
        y = np.array(y)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim not in (1, 2):
            raise ValueError(
                "y must be of shape (n_samples,) or (n_samples, n_targets); got "
                f"shape {y.shape}."
            )
        if len(y) != self.n_samples_fit_:
            raise ValueError(
                f"X and y have different numbers of samples: {self.n_samples_fit_} "
                f"and {len(y)}."
            )
        return y

    def _exact_neighbors(self, X_val) -> ExactNeighbors | None:
        """Gatherer of the exact neighbours of ``X_val`` (None: checkpoints)."""
        engines = self._engines()
        if not engines.single:
            return None
        ((_, engine),) = engines
        return ExactNeighbors(
            engine, X_val, self._n_exact_neighbors, self.rtol, self._query_bytes
        )

    @property
    def _n_exact_neighbors(self) -> int:
        """The exact neighbours gathered for the recall: twice those asked for.

        A search finding others as similar as the last then misses nothing.
        At least :data:`RECALL_DEPTH`, so that the recall of another
        ``n_neighbors`` set later is measured on the same queries.
        """
        return min(max(2 * self.n_neighbors, RECALL_DEPTH), self.n_samples_fit_)

    @property
    def _jacobian_bytes(self) -> float:
        """Bytes the kept Jacobians may take, of the reference and of queries.

        Twice :data:`KEPT_MEMORY` of ``max_memory`` (the engine's batches take
        the last third), less what the search holds for the reference besides
        (:meth:`_search_bytes`).
        """
        return left_beside(self._held_bytes, self._engine.max_memory)

    @property
    def _query_bytes(self) -> float:
        """Bytes a block of queries may take: its Jacobians, sketches, candidates.

        :attr:`_jacobian_bytes`, halved when the reference's Jacobians are
        kept beside them.
        """
        kept = self._piece_bytes is not None and self._pieces_fit()
        return self._jacobian_bytes / 2 if kept else self._jacobian_bytes

    def _search_bytes(
        self, X, width: int | None, exact_ranking: bool
    ) -> tuple[int, int]:
        """Bytes the search holds for the reference ``X``, its Jacobians aside.

        Those of its sketches of ``width`` per output as they are kept (their
        projections alone when ranked exactly), and of the FAISS index over
        those it searches; 0 without sketches.
        """
        if width is None:
            return 0, 0
        n = self.n_samples_fit_
        values = self._engine.n_outputs(X) * width * len(self._engines())
        searched = self._search_width(values) or values
        kept = 4 * n * (searched if exact_ranking else values)
        if self.algorithm != "faiss":
            return kept, 0
        return kept, index_bytes(self._empty_index(searched), n)

    def _search_width(self, values: int) -> int | None:
        """The components a search of sketches of ``values`` reduces them to.

        ``search_components`` if below ``values``, at most one below the
        reference size (a small reference keeps nearly all of its sketches'
        span, and its candidates are then all its examples, ranked exactly);
        None without ``search_components`` or without reduction.
        """
        if self.search_components is None:
            return None
        m = int(min(self.search_components, self.n_samples_fit_ - 1))
        return m if 1 <= m < values else None

    def _check_held_bytes(self, kept: int, index: int) -> None:
        """Raise a MemoryError when the search would hold more than it may.

        ``kept``: the bytes of the sketches kept; ``index``: of the FAISS index.
        """
        what = f"The sketches of the {self.n_samples_fit_} reference examples"
        if self.algorithm == "faiss":
            what += (
                f" ({readable_bytes(kept)}) and the FAISS index {self.index!r} "
                f"over them ({readable_bytes(index)})"
            )
            advice = (
                "lower n_components or search_components, raise max_memory, or "
                'hold the index in less with a compressed one (e.g. index="IVF1024,'
                'PQ32"; the sketches are kept whatever the index).'
            )
        else:
            advice = (
                'lower n_components, search with algorithm="faiss" over fewer '
                "search_components, or raise max_memory."
            )
        check_kept_bytes(kept + index, self._engine.max_memory, what, advice)

    def _measured_piece_bytes(self, X) -> float | None:
        """Bytes of one reference example's whitened pieces, for an exact ranking.

        Measured on the first batch of ``X`` when the candidates of a reduced
        FAISS search could be ranked exactly: ``search_components`` below the
        sketch width and the reference size, one network (no
        ``checkpoints``). None otherwise.
        """
        engines = self._engines()
        if self.search_components is None or not engines.single:
            return None
        ((_, engine),) = engines
        width = self.n_components
        if width == "auto":
            width = CANDIDATE_COMPONENTS
        if self._search_width(engine.n_outputs(X) * width) is None:
            return None
        return whitened_bytes(engine, X, self.rtol)

    def _blocks(self, n: int, row_bytes: float | None = None) -> list[slice]:
        """Blocks of ``n`` rows of ``row_bytes`` each that fit :attr:`_query_bytes`.

        ``row_bytes`` defaults to a row's whitened pieces; a single block when
        all ``n`` rows fit.
        """
        row_bytes = self._piece_bytes if row_bytes is None else row_bytes
        step = rows_that_fit(self._query_bytes, row_bytes, n)
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    def _pieces_fit(self) -> bool:
        """Whether the reference's whitened pieces are kept: in half their share."""
        return self._piece_bytes * self.n_samples_fit_ <= self._jacobian_bytes / 2

    def _sketch_width(self, X) -> int | None:
        """``n_components``, ``"auto"`` resolved for the reference ``X``.

        :data:`CANDIDATE_COMPONENTS` when the candidates are ranked exactly
        (the sketches only choose them, and only their projections are
        kept); otherwise the widest of :data:`AUTO_COMPONENTS` whose
        reference sketches (with the FAISS index over them) take at most
        :data:`KEPT_MEMORY` of ``max_memory``.
        """
        if self.n_components != "auto":
            return None if self.n_components is None else int(self.n_components)
        if self.exact_ranking_:
            return CANDIDATE_COMPONENTS
        budget = KEPT_MEMORY * self._engine.max_memory
        fitting = [
            w for w in AUTO_COMPONENTS if sum(self._search_bytes(X, w, False)) <= budget
        ]
        return fitting[0] if fitting else AUTO_COMPONENTS[-1]

    def _whitened_pieces(self, rows: slice | None = None) -> list | None:
        """The whitened pieces of the reference's ``rows`` (None: all), in runs.

        The runs of :class:`~sksim._engine.pieces.KeptPieces`, their rows
        counted from the first of ``rows``; for all the reference, one run
        (None if its pieces take several forms: they are not kept).
        """
        ((_, engine),) = self._engines()
        X = self.X_fit_ if rows is None else take(self.X_fit_, rows)
        kept = KeptPieces(n_samples(X), float("inf"), several_forms=rows is not None)
        with rows_of_reference(rows):
            for batch, pieces, _ in engine.mapped_pieces(X, -0.5, self.rtol):
                kept(batch, pieces)
        return kept.runs

    def _kept_reference_pieces(self) -> list | None:
        """The reference's whitened pieces when they fit (again after unpickling).

        None when they do not, or take several forms (layers that see other
        numbers of positions in other batches), which ``()`` records.
        """
        kept = getattr(self, "_reference_pieces", None)  # not pickled
        if kept is None and self._pieces_fit():
            runs = self._whitened_pieces()
            kept = self._reference_pieces = () if runs is None else runs[0][1]
        return kept or None

    def _search_directions(self, X, F=None):
        """Principal directions of the reference sketches (None: no reduction).

        Fitted on the rows :func:`direction_rows` draws: of the whole
        sketches ``F`` when given, else sketched for the purpose.
        """
        width = self._engine.n_outputs(X) * self.n_components_ * len(self._engines())
        m = self._search_width(width)
        if m is None:
            return None
        # the sketches sampled, and their copy in the decomposition, within
        # a third of max_memory
        fitting = rows_that_fit(self._engine.max_memory / 3, 8 * width, MAX_FIT_ROWS)
        rows = direction_rows(self.n_samples_fit_, m, self.projection_seed_, fitting)
        if F is None:
            with flag_scope(report=False):  # the pass over X reports them
                sample = self._sketch(take(X, rows))
        else:
            sample = F[rows]
        return principal_directions(sample, m, self.projection_seed_)

    def _searched(self, F):
        """Sketches ``F`` as the index holds them.

        Projected on ``search_directions_`` when set, unless the candidates are
        ranked exactly: then only the projections are ever kept.
        """
        if self.search_directions_ is not None and not self.exact_ranking_:
            F = F @ self.search_directions_
        return np.ascontiguousarray(F, dtype=np.float32)

    @contextlib.contextmanager
    def _faiss_errors(self, step: str) -> Iterator[None]:
        """FAISS's errors inside, as ValueErrors naming the index and ``step``."""
        try:
            yield
        except RuntimeError as error:
            raise ValueError(
                f"FAISS cannot {step} index={self.index!r} with "
                f"index_params={self.index_params!r}: {str(error).splitlines()[-1]}"
            ) from error

    def _empty_index(self, dimension: int):
        """The empty FAISS ``index`` over inner products of ``dimension`` values."""
        faiss = import_faiss()
        with self._faiss_errors("build"):
            index = faiss.index_factory(
                int(dimension), self.index, faiss.METRIC_INNER_PRODUCT
            )
            if self.index_params is not None:
                faiss.ParameterSpace().set_index_parameters(index, self.index_params)
        return index

    def _build_index(self):
        """The FAISS index over the reference sketches, trained if it must be."""
        F = self._searched(self.reference_features_)
        index = self._empty_index(F.shape[1])
        with self._faiss_errors(f"train and fill, on {len(F)} reference examples,"):
            if not index.is_trained:
                index.train(F)
            index.add(F)
        return index

    def _searched_queries(self, X, n_neighbors):
        """:meth:`_faiss` of the queries ``X``, in chunks.

        A chunk's sketches and candidates, with its whitened pieces when the
        candidates are ranked exactly, take at most :attr:`_query_bytes`; each
        is sketched and searched in turn (the chunks change no result).
        """
        per_sample = 4 * self.reference_features_.shape[1]
        per_sample += self._candidate_bytes(n_neighbors)
        if self.exact_ranking_:
            per_sample += self._piece_bytes
        n = n_samples(X)
        step = rows_that_fit(self._query_bytes, per_sample, n)
        parts = []
        for start in range(0, n, step):
            chunk = take(X, slice(start, min(start + step, n)))
            kept = None
            if self.exact_ranking_:
                # the chunk fits, in whatever forms its batches' pieces take
                kept = KeptPieces(n_samples(chunk), float("inf"), several_forms=True)
            F = self._sketch(chunk, kept, self._kept_directions())
            runs = None if kept is None else kept.runs
            parts.append(self._faiss(F, n_neighbors, runs=runs))
            del kept, runs  # freed before the next chunk's are computed
        return tuple(np.concatenate(part) for part in zip(*parts, strict=True))

    def _searched_reference(self, n_neighbors):
        """:meth:`_faiss` of the reference itself, each example not its own neighbour.

        Ranked exactly, in the :meth:`_blocks` of the reference whose
        whitened pieces and candidates fit.
        """
        F, n = self.reference_features_, self.n_samples_fit_
        if not self.exact_ranking_:
            return self._faiss(F, n_neighbors, own=np.arange(n))
        kept = self._kept_reference_pieces()
        parts = []
        row_bytes = self._piece_bytes + self._candidate_bytes(n_neighbors + 1)
        for block in self._blocks(n, row_bytes):
            if kept is None:
                runs = self._whitened_pieces(block)
            else:
                runs = [
                    (slice(0, block.stop - block.start), [p.take(block) for p in kept])
                ]
            own = np.arange(block.start, block.stop)
            parts.append(self._faiss(F[block], n_neighbors, own, runs))
            del runs  # freed before the next block's are computed
        return tuple(np.concatenate(part) for part in zip(*parts, strict=True))

    def _sketch(self, X, each_batch=None, directions=None):
        """Sketches of ``X``, side by side for the checkpoints.

        ``each_batch`` (one checkpoint only) sees every batch's whitened
        pieces; ``directions`` (one checkpoint only) project every batch's
        sketches onto their columns.
        """
        return stacked(
            self._engines(),
            lambda engine, c, out: sketch_features(
                engine,
                X,
                self.n_components_,
                checkpoint_seed(self.projection_seed_, c),
                self.rtol,
                each_batch,
                directions,
                self.sketch_weights_[c],
                out,
            ),
        )

    def _kept_directions(self):
        """The directions every kept sketch is projected on (None: kept whole)."""
        return self.search_directions_ if self.exact_ranking_ else None

    def _cosine_rows(self, X=None, Y=None):
        """Exact rows ``k^C(X, Y)``; ``Y=None`` is ``X_fit_``, ``X=None`` is ``Y``."""
        Y = self.X_fit_ if Y is None else Y
        return weighted_rows(
            self._engines(),
            lambda engine, Q: cosine_rows(engine, Y, Q, self.rtol, SEARCH_COPIES),
            X,
            n_samples(Y) if X is None else n_samples(X),
            n_samples(Y),
            reference=Y,
        )

    def _search_rows(self, rows, n, n_neighbors, exclude_self):
        """Top neighbours of ``n`` queries, from blocks ``(block, k)`` of similarities.

        Written into arrays made once: a block may be a few rows.
        """
        shape = (n, min(n_neighbors, self.n_samples_fit_))
        similarities, indices = np.empty(shape), np.empty(shape, dtype=np.int64)
        for block, k in rows:
            if exclude_self:
                own = np.arange(block.start, block.stop)
                k[np.arange(len(own)), own] = -np.inf
            similarities[block], indices[block] = top_k(k, n_neighbors)
        return similarities, indices

    def _similarity_rows(self, X=None):
        """Blocks ``(rows, similarities)`` of queries ``X`` (None: the reference)."""
        if self.n_components_ is None:
            return self._cosine_rows(X)
        F = self.reference_features_
        if X is None:
            return sketch_rows(F, F, self._query_bytes)
        return sketched_rows(self._sketch, X, F, self._query_bytes)

    def _exact(self, X, n_neighbors):
        rows = self._similarity_rows(X)
        n = self.n_samples_fit_ if X is None else n_samples(X)
        return self._search_rows(rows, n, n_neighbors, exclude_self=X is None)

    def _within(self, X, radius, sort_results):
        """Distances and indices of the reference examples within ``radius``."""
        distances, indices = [], []
        for block, k in self._similarity_rows(X):
            d = distance_in_place(k)  # the block is ours
            if X is None:  # each example is not its own neighbour, at any radius
                own = np.arange(block.start, block.stop)
                d[np.arange(len(own)), own] = np.nan
            for row in d:
                found = np.flatnonzero(row <= radius)
                if sort_results:
                    found = found[np.argsort(row[found], kind="stable")]
                distances.append(row[found])
                indices.append(found)
            del k, d, row  # freed before the next block is made
        return object_array(distances), object_array(indices)

    def _faiss(self, F, n_neighbors, own=None, runs=None):
        """Neighbours of the queries' sketches ``F`` from the FAISS index.

        ``own``, the queries' rows when they are reference examples, excludes
        each from its own neighbours. ``runs``, the queries' whitened pieces
        (the runs of :class:`~sksim._engine.pieces.KeptPieces`), rank the
        candidates of a reduced search by exact similarities; None ranks them
        by the sketches.
        """
        if getattr(self, "_faiss_index", None) is None:  # after unpickling
            self._faiss_index = self._build_index()
        # plain ints: FAISS's SWIG bindings refuse numpy's (a grid's values)
        k = int(min(n_neighbors + int(own is not None), self.n_samples_fit_))
        n_candidates = self._n_candidates(k)
        G = self._searched(F)
        params = self._search_parameters(n_candidates)
        with self._faiss_errors("search"):
            indices = candidate_rows(
                self._faiss_index,
                G,
                n_candidates,
                params,
                self.n_samples_fit_,
                self._engine.max_memory / 3,  # the engine's batches' share
            )
        if (indices < 0).any():
            wanted = "neighbours"
            if own is not None and self.search_directions_ is None:
                wanted += " (its own row among them, left out after)"
            if self.search_directions_ is not None:
                wanted = (
                    f"candidates ({self.candidates_per_neighbor} per neighbour; "
                    "fewer with a lower candidates_per_neighbor)"
                )
            raise ValueError(
                f"The FAISS index {self.index!r} found fewer than {n_candidates} "
                f"{wanted} for some queries: search more of it (index_params, "
                'e.g. "nprobe=32" or "efSearch=128") or use index="Flat".'
            )
        indices.sort(axis=1)
        if self.search_directions_ is not None:
            similarity = self._candidate_similarity(F, runs, indices)
            # streamed similarities are all computed already: no order speeds them
            streamed = runs is not None and self._kept_reference_pieces() is None
            order = None if streamed else locality_order(G, self.projection_seed_)
            similarities, indices = rank_candidates(similarity, indices, k, order)
        else:  # compressing indexes (PQ, SQ, PCA) score roughly: the sketches do
            similarity = sketch_similarity(F, self.reference_features_)
            similarities, indices = rank_candidates(similarity, indices, k)
        if own is not None:  # drop each sample itself (wherever ties placed it)
            is_own = indices == own[:, None]
            is_own[is_own.sum(1) == 0, -1] = True
            keep = ~is_own
            similarities = similarities[keep].reshape(len(F), -1)
            indices = indices[keep].reshape(len(F), -1)
        return similarities.astype(np.float64), indices.astype(np.intp)

    def _n_candidates(self, k: int) -> int:
        """The candidates the index finds per query for its ``k`` neighbours.

        ``candidates_per_neighbor`` times more in a reduced search; at most
        the whole reference.
        """
        k = min(k, self.n_samples_fit_)
        if self.search_directions_ is None:
            return k
        return int(min(self.candidates_per_neighbor * k, self.n_samples_fit_))

    def _candidate_bytes(self, n_neighbors: int) -> int:
        """Bytes of a query's candidates (and FAISS's results) for ``n_neighbors``.

        With those of their exact ranking in a pass over the reference, when
        its whitened pieces are not kept (:data:`STREAMED_CANDIDATE_BYTES`).
        """
        per_candidate = CANDIDATE_BYTES
        if self.exact_ranking_ and self._kept_reference_pieces() is None:
            per_candidate += STREAMED_CANDIDATE_BYTES
        return per_candidate * self._n_candidates(n_neighbors)

    def _search_parameters(self, n_candidates: int):
        """An HNSW index's beam: :data:`HNSW_BEAM` times the candidates.

        Behind a transform (``"PCA32,HNSW32"``) too. Unless ``index_params``
        sets ``efSearch``; None for other indexes.
        """
        faiss = import_faiss()
        index = self._faiss_index
        transformed = isinstance(index, faiss.IndexPreTransform)
        if transformed:
            index = faiss.downcast_index(index.index)
        if not isinstance(index, faiss.IndexHNSW):
            return None
        if "efSearch" in (self.index_params or ""):
            return None
        beam = faiss.SearchParametersHNSW(efSearch=HNSW_BEAM * n_candidates)
        if not transformed:
            return beam
        params = faiss.SearchParametersPreTransform(index_params=beam)
        params.referenced_objects = [beam]  # SWIG holds a pointer only
        return params

    def _candidate_similarity(self, F, runs, candidates):
        """The ``similarity`` of :func:`rank_candidates` for the queries.

        Inner products of their sketches ``F`` when ``runs`` is None, else
        exact similarities from their whitened pieces, in the runs of
        :class:`~sksim._engine.pieces.KeptPieces`: with the kept pieces of the
        reference, or computed in a pass over the ``candidates`` (sorted per
        query, as :func:`rank_candidates` asks for them).
        """
        if runs is None:
            return sketch_similarity(F, self.reference_features_)
        reference = self._kept_reference_pieces()
        ((_, engine),) = self._engines()
        if reference is None:
            X = self.X_fit_
            S = streamed_similarities(engine, X, runs, candidates, self.rtol)
            return lambda rows, columns: S[rows]

        def similarity(rows, columns):
            out = np.empty(columns.shape, dtype=np.float32)
            for span, left in runs:
                mine = (rows >= span.start) & (rows < span.stop)
                taken = torch.from_numpy(rows[mine] - span.start)
                out[mine] = candidate_similarities(
                    [piece.take(taken) for piece in left],
                    reference,
                    columns[mine],
                    engine.max_memory,
                )
            return out

        return similarity

    @fill_doc
    def most_similar(
        self, X: NetInput | None = None, n_neighbors: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The most similar reference examples of each query, with similarities.

        Parameters
        ----------
        %(queries)s
        n_neighbors : int, default=None
            Number of neighbours; None uses the constructor's.

        Returns
        -------
        similarities : ndarray of shape (n_queries, n_neighbors)
            Cosine similarities, in descending order.
        indices : ndarray of shape (n_queries, n_neighbors)
            Row indices of the neighbours in the reference set.
        """
        check_is_fitted(self)
        n_neighbors = self.n_neighbors if n_neighbors is None else n_neighbors
        available = self.n_samples_fit_ - (X is None)
        if (
            isinstance(n_neighbors, bool)
            or not isinstance(n_neighbors, Integral)
            or not 1 <= n_neighbors <= available
        ):
            raise ValueError(
                f"n_neighbors must be an int between 1 and the {available} reference "
                "examples available"
                + (
                    " (each one is excluded from its own neighbours)"
                    if X is None
                    else ""
                )
                + f"; got {n_neighbors!r}."
            )
        if X is None:
            self._check_network()
            if self.algorithm == "faiss":
                return self._searched_reference(n_neighbors)
            return self._exact(None, n_neighbors)
        X = self._check_input(X)
        if self.algorithm == "faiss":
            return self._searched_queries(X, n_neighbors)
        exact = self._in_workers("_exact", n_neighbors)
        return split_rows(exact, X, self.n_jobs)

    @fill_doc
    def kneighbors(
        self,
        X: NetInput | None = None,
        n_neighbors: int | None = None,
        return_distance: bool = True,
    ) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """The nearest reference examples of each query, as scikit-learn's.

        Parameters
        ----------
        %(queries)s
        n_neighbors : int, default=None
            Number of neighbours; None uses the constructor's.
        return_distance : bool, default=True
            Whether to return the distances too.

        Returns
        -------
        distances : ndarray of shape (n_queries, n_neighbors)
            ``sqrt(max(2 - 2 k, 0))`` of the cosine similarities ``k``, in
            ascending order. Only with ``return_distance=True``.
        indices : ndarray of shape (n_queries, n_neighbors)
            Row indices of the neighbours in the reference set.
        """
        similarities, indices = self.most_similar(X, n_neighbors)
        if not return_distance:
            return indices
        return similarity_to_distance(similarities), indices

    @fill_doc
    def kneighbors_graph(
        self,
        X: NetInput | None = None,
        n_neighbors: int | None = None,
        mode: str = "connectivity",
    ) -> csr_matrix:
        """The graph of each query's nearest reference examples, as scikit-learn's.

        Parameters
        ----------
        %(queries)s
        n_neighbors : int, default=None
            Number of neighbours; None uses the constructor's.
        mode : {"connectivity", "distance"}, default="connectivity"
            Ones, or the distances of :meth:`kneighbors`, at the neighbours.

        Returns
        -------
        %(graph)s
        """
        check_graph_mode(mode)
        distances, indices = self.kneighbors(X, n_neighbors)
        return neighbor_graph(distances, indices, mode, self.n_samples_fit_)

    @fill_doc
    def radius_neighbors(
        self,
        X: NetInput | None = None,
        radius: float | None = None,
        return_distance: bool = True,
        sort_results: bool = False,
    ) -> tuple[np.ndarray, np.ndarray] | np.ndarray:
        """The reference examples within a distance of each query, as scikit-learn's.

        Every similarity is computed (exact ones, or those of the sketches
        with ``n_components``), in blocks of query rows, so this needs
        ``algorithm="exact"``.

        Parameters
        ----------
        %(queries)s
        radius : float, default=None
            Largest distance ``sqrt(max(2 - 2 k, 0))`` kept (similarity ``k``
            at least ``1 - radius**2 / 2``); None uses the constructor's.
        return_distance : bool, default=True
            Whether to return the distances too.
        sort_results : bool, default=False
            Whether each query's neighbours are sorted by distance (else by
            index).

        Returns
        -------
        distances : ndarray of shape (n_queries,) of ndarrays
            Each query's distances to its neighbours. Only with
            ``return_distance=True``.
        indices : ndarray of shape (n_queries,) of ndarrays
            Row indices of each query's neighbours in the reference set.
        """
        check_is_fitted(self)
        radius = self.radius if radius is None else radius
        if isinstance(radius, bool) or not (isinstance(radius, Real) and radius >= 0):
            raise ValueError(f"radius must be a number >= 0; got {radius!r}.")
        if self.algorithm != "exact":
            raise ValueError(
                "radius_neighbors computes every similarity: fit with "
                'algorithm="exact" (with n_components for sketched similarities), '
                f"not {self.algorithm!r}."
            )
        if X is None:
            self._check_network()
            distances, indices = self._within(None, radius, sort_results)
        else:
            X = self._check_input(X)
            within = self._in_workers("_within", radius, sort_results)
            distances, indices = split_rows(within, X, self.n_jobs)
        return (distances, indices) if return_distance else indices

    @fill_doc
    def radius_neighbors_graph(
        self,
        X: NetInput | None = None,
        radius: float | None = None,
        mode: str = "connectivity",
        sort_results: bool = False,
    ) -> csr_matrix:
        """The graph of the reference examples within a distance, as scikit-learn's.

        Parameters
        ----------
        %(queries)s
        radius : float, default=None
            Largest distance kept; None uses the constructor's.
        mode : {"connectivity", "distance"}, default="connectivity"
            Ones, or the distances of :meth:`radius_neighbors`, at the neighbours.
        sort_results : bool, default=False
            Whether each row's entries are sorted by distance (else by index).

        Returns
        -------
        %(graph)s
        """
        check_graph_mode(mode)
        distances, indices = self.radius_neighbors(X, radius, True, sort_results)
        return neighbor_graph(distances, indices, mode, self.n_samples_fit_)

    def explain(self, X: NetInput, n_neighbors: int | None = None) -> Bunch:
        """Why this prediction: the training examples the network relates to ``X``.

        For each query, its most similar reference examples with their
        similarity, label, and how unusual that similarity is for this
        network. Cosine similarities of one network are often compressed (all
        pairs above 0.9, say), so a raw value says little; the percentile
        places it among the similarities between reference examples (those
        of up to 200 evenly spaced reference examples to up to 5 000 evenly
        spaced others, computed once per fit).

        Parameters
        ----------
        X : array-like of shape (n_queries, ...), dict of them, Dataset or None
            Queries. None explains the reference set itself, each example
            excluded from its own neighbours.
        n_neighbors : int, default=None
            Number of neighbours; None uses the constructor's.

        Returns
        -------
        explanation : Bunch
            ``indices`` and ``similarities`` as :meth:`most_similar` returns
            them, ``percentiles`` (same shape: the percentage of
            reference-pair similarities below each similarity; 99 means more
            similar than 99 % of pairs), and ``labels``, the ``y_fit_`` of
            the neighbours (None when ``fit`` had no ``y``).

        Examples
        --------
        >>> import torch
        >>> from sksim.neighbors import NetworkNeighbors
        >>> _ = torch.manual_seed(0)
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(),
        ...                           torch.nn.Linear(8, 2))
        >>> X = torch.randn(30, 2).numpy()
        >>> y = (X[:, 0] > 0).astype(int)
        >>> why = NetworkNeighbors(net, n_neighbors=3).fit(X, y).explain(X[:2])
        >>> why.indices[:, 0].tolist()  # a sample is its own nearest example
        [0, 1]
        >>> bool((why.labels[:, 0] == y[:2]).all())
        True
        >>> why.percentiles[:, 0].tolist()  # a sample itself: above every pair
        [100.0, 100.0]
        """
        similarities, indices = self.most_similar(X, n_neighbors)
        background = self._background_similarities()
        percentiles = (
            100.0 * np.searchsorted(background, similarities) / len(background)
        )
        return Bunch(
            indices=indices,
            similarities=similarities,
            percentiles=percentiles,
            labels=None if self.y_fit_ is None else self.y_fit_[indices],
        )

    def _background_similarities(self):
        """Sorted similarities between distinct reference examples.

        Those of up to :data:`N_BACKGROUND` evenly spaced reference examples
        to up to :data:`N_BACKGROUND_COLUMNS` evenly spaced others, exact
        unless the sketches rank the neighbours; computed once per fit.
        """
        n = self.n_samples_fit_
        if n < 2:
            raise ValueError(
                "explain ranks similarities among reference examples and needs at "
                "least two of them; the reference set has one."
            )
        if getattr(self, "_background", None) is not None:
            return self._background
        rows = evenly_spaced(n, N_BACKGROUND)
        columns = evenly_spaced(n, N_BACKGROUND_COLUMNS)
        if self.n_components_ is not None and not self.exact_ranking_:
            F = self.reference_features_
            blocks = sketch_rows(F[rows], F[columns])
        else:  # exact, as the neighbours' similarities are
            X = self.X_fit_
            blocks = self._cosine_rows(take(X, rows), take(X, columns))
        values = []
        for block, k in blocks:
            others = rows[block][:, None] != columns[None, :]
            values.append(k[others])
        self._background = np.sort(np.concatenate(values))
        return self._background


def object_array(rows: list[np.ndarray]) -> np.ndarray:
    """A 1-D object array holding ``rows``, one array per entry."""
    out = np.empty(len(rows), dtype=object)
    out[:] = rows
    return out


def check_graph_mode(mode: str) -> None:
    """Raise a ValueError unless ``mode`` is one of scikit-learn's graph modes."""
    if mode not in ("connectivity", "distance"):
        raise ValueError(f'mode must be "connectivity" or "distance"; got {mode!r}.')


def neighbor_graph(distances, indices, mode: str, n_columns: int) -> csr_matrix:
    """A CSR graph of each row's neighbours (rows of equal or ragged lengths)."""
    lengths = [len(row) for row in indices]
    columns = np.concatenate([np.asarray(row, dtype=np.intp) for row in indices])
    values = (
        np.concatenate([np.asarray(row, dtype=np.float64) for row in distances])
        if mode == "distance"
        else np.ones(len(columns))
    )
    pointers = np.concatenate([[0], np.cumsum(lengths)])
    return csr_matrix((values, columns, pointers), shape=(len(indices), n_columns))


def evenly_spaced(n: int, count: int) -> np.ndarray:
    """Up to ``count`` distinct rows of ``n``, evenly spaced from first to last."""
    return np.unique(np.linspace(0, n - 1, min(n, count)).astype(np.intp))

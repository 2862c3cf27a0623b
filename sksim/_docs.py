"""Parameter and attribute descriptions shared by the network estimators, written once.

A docstring names a shared parameter or attribute with ``%(name)s`` on a
line of its own; :func:`fill_doc` replaces it with the description below,
indented to match.
"""

from __future__ import annotations

import textwrap

PARAMETERS = {
    "queries": """
X : array-like of shape (n_queries, ...), dict of them, Dataset or None
    Queries. None queries the reference set itself, each example excluded
    from its own neighbours (as scikit-learn does).""",
    "graph": """
graph : scipy.sparse.csr_matrix of shape (n_queries, n_samples_fit)
    Row ``i`` holds query ``i``'s neighbours, in the reference's columns.""",
    "net": """
net : skorch net, FrozenEstimator or torch.nn.Module
    The network. A fitted skorch net, a ``FrozenEstimator`` around one, or a
    plain module (taken as trained) is used as it is. An unfitted skorch net
    is cloned and trained on ``fit``'s ``X, y`` first, so that
    ``GridSearchCV`` can tune its hyper-parameters. Inside ``GridSearchCV``
    or ``cross_validate`` even a fitted net is cloned, and so trained again:
    wrap it in ``sklearn.frozen.FrozenEstimator`` to keep it as it is.""",
    "trained_net": """
net : skorch net, FrozenEstimator or torch.nn.Module
    The trained network: a fitted skorch net, a ``FrozenEstimator`` around
    one, or a plain module (taken as trained), used as it is. An unfitted
    skorch net is refused: fit it first, or let
    :class:`~sksim.NetworkSimilarityKernel` train it.""",
    "kind": """
kind : {"cosine", "ntk", "influence"}, default="cosine"
    ``"cosine"``: the normalised similarity, ``tr(A(x) A(y)^T) / d`` with the
    whitened Jacobian ``A = (J J^T)^{-1/2} J`` (for one output, the cosine of
    the two parameter gradients); in ``[-1, 1]``, 1 on the diagonal (less for a
    sample whose Gram is singular or nearly so, as a warning reports: the rank
    of ``J J^T`` over ``d`` where it is singular).
    ``"ntk"``: the empirical neural tangent kernel ``tr(J(x) J(y)^T) / d``.
    ``"influence"`` (asymmetric): the effect on ``y`` of the smallest
    parameter step that moves the output at ``x``,
    ``tr(K(y, x) K(x, x)^{-1}) / d``.""",
    "output": """
output : "logits", int or callable, default="logits"
    Which outputs form the Jacobian: all of them, one index (of the first item
    when the network returns a tuple), or a callable mapping the batch output,
    as the network returns it, to a tensor of shape ``(B,)`` or ``(B, d)``,
    each row from its own sample alone. Use logits, not softmax probabilities,
    whose Jacobian Gram is singular.""",
    "params": """
params : str, list of str or None, default=None
    Parameters to differentiate: None for all trainable ones, else names or
    name prefixes (``"fc2"`` selects ``fc2.weight`` and ``fc2.bias``).""",
    "batch_size": """
batch_size : int or "auto", default="auto"
    Samples per vectorised Jacobian computation, and query rows per block.
    ``"auto"`` measures what one sample of this network takes (activations,
    back-propagated signals, per-sample gradients) on a first pass over two
    samples and takes as many as fit in a third of ``max_memory``, at most
    1024.""",
    "device": """
device : str or torch.device, default=None
    Where to compute; None keeps the network's device. Elsewhere a copy of
    the network computes; the network itself does not move.""",
    "rtol": """
rtol : float, default=1e-5
    Eigenvalues of ``J(x) J(x)^T`` below ``rtol`` times the largest one are
    raised to that floor (with a warning) before whitening or inversion; it
    is positive (a zero eigenvalue has no inverse). Values below the
    relative precision of the gradients, about ``1e-6`` for a float32
    network and ``1e-15`` for a float64 one, keep eigenvalues that rounding
    alone made: the kernels of singular Grams (softmax outputs) are then off
    by up to order 1.""",
    "n_components": """
n_components : int or None, default=None
    None computes exactly. An int sketches each sample's (whitened) Jacobian
    to about that many columns per output, layer by layer, and uses inner
    products of the sketches: an unbiased estimate whose error shrinks like
    ``1 / sqrt(n_components)`` (the density estimator scales each sketch to
    unit norm, which makes a sample's similarity to itself exactly 1 and
    biases the others towards 0 by a small fraction of that error).""",
    "random_state": """
random_state : int, RandomState instance or None, default=None
    Seeds torch while an unfitted skorch net is trained, and the sketch.""",
    "n_jobs": """
n_jobs : int or None, default=None
    None computes in this process. An int splits the work into independent
    blocks run by ``joblib.Parallel(n_jobs)``, which honours
    ``joblib.parallel_config`` (e.g. ``backend="dask"`` on a
    ``dask.distributed`` cluster); each block recomputes the gradients it
    needs, within ``max_memory`` in each worker.""",
    "max_memory": """
max_memory : int or None, default=2 GiB
    Bytes that the gradient factors of the reference set may keep between
    blocks of queries; past it they are recomputed for every block (slower,
    bounded memory), and the blocks hold as many queries as their own
    factors fit in a third of it. The factors of one batch may take a third of it: a
    larger batch is computed in smaller parts, and a single sample that
    cannot fit raises a MemoryError saying what to change. A block of exact
    kernel rows, with the copies the estimator makes of it, takes at most
    another third. None sets no limit.""",
    "checkpoints": """
checkpoints : list of state_dicts or paths, default=None
    None uses the network as it is. A list of ``state_dict``s of the
    network's own architecture (``module.state_dict()`` saved during
    training), or paths to files holding them (read with
    ``torch.load(path, weights_only=True)``; see
    :func:`sksim.checkpoints.collect_checkpoints` for skorch's
    ``Checkpoint`` files), gives the kernel averaged over training,
    ``K = sum_c w_c K_c / sum_c w_c``, where ``K_c`` is the kernel of the
    requested kind with the parameters and buffers of checkpoint ``c``: the
    analogue of TracIn's sum over checkpoints. Each checkpoint is loaded in
    turn into a copy of the network (the network itself is not changed),
    one at a time. Exact kernels are accumulated checkpoint by checkpoint;
    sketches (``n_components``) of the checkpoints, each with its own seed,
    are concatenated, scaled by ``sqrt(w_c / sum_c w_c)``, so that their
    inner products are the averaged kernel. The network's own weights are
    not used unless they are one of the checkpoints.""",
    "checkpoint_weights": """
checkpoint_weights : array-like of shape (n_checkpoints,), default=None
    Positive weight ``w_c`` of each checkpoint, for example the learning
    rate at which training left it; None weighs them equally. Only their
    ratios matter.""",
    "verbose": """
verbose : int, default=0
    Show progress bars when positive.""",
    "sketch_weights_": """
sketch_weights_ : list of ndarray
    With sketches: the energy of each layer piece of the whitened Jacobians,
    measured on up to 64 reference examples (one array per checkpoint).
    The sketch gives the pieces columns in proportion to them, for
    reference and queries alike: the split that minimises the sketch's
    variance.""",
}


def fill_doc(obj):
    """Replace each ``%(name)s`` line of ``obj.__doc__`` by the shared text."""
    lines = []
    for line in obj.__doc__.splitlines():
        name = line.strip()
        if name.startswith("%(") and name.endswith(")s"):
            indent = line[: len(line) - len(line.lstrip())]
            text = PARAMETERS[name[2:-2]].strip("\n")
            lines.append(textwrap.indent(text, indent))
        else:
            lines.append(line)
    obj.__doc__ = "\n".join(lines)
    return obj

"""The README's quickstart runs as written, block after block."""

import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from sksim import network_similarity

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs(capsys):
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 3, "the README lost a python code block"
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    accuracy = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.8 < accuracy <= 1.0
    exec(compile(blocks[1], "README.md", "exec"), namespace)  # why this prediction
    why = namespace["why"]
    assert why.indices.shape == why.percentiles.shape == (3, 5)
    assert ((why.percentiles >= 0) & (why.percentiles <= 100)).all()
    X, y = namespace["X"], namespace["y"]
    np.testing.assert_array_equal(why.labels, y[why.indices])
    # the 5 most similar of the 1 000, as the kernel gives them, most similar first
    K = network_similarity(namespace["trained"], X[1000:1003], X[:1000])
    np.testing.assert_allclose(why.similarities, -np.sort(-K, axis=1)[:, :5], atol=1e-6)
    assert (np.diff(why.percentiles, axis=1) <= 0).all()  # rarer as they are nearer
    assert plt.get_fignums(), "plot_neighbors drew nothing"
    plt.close("all")
    exec(compile(blocks[2], "README.md", "exec"), namespace)  # a frozen net searched
    assert namespace["search"].best_params_["svc__C"] in (0.1, 1, 10)

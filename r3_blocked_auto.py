"""Default block_size='auto' (blocked) vs exact single-site sampler on n > 16 (long runs)."""
import time, numpy as np
from sksim.representations import DirichletProcessGaussianMixture
rs = np.random.RandomState(0)
for n, d, spread in [(40, 1, 1.0), (64, 2, 1.0)]:
    X = rs.randn(n, d) * spread
    Xt = rs.randn(2000, d) * spread
    for label, bs in [("exact", 1), ("auto", "auto"), ("bs=8", 8)]:
        t0 = time.time()
        dp = DirichletProcessGaussianMixture(n_sweeps=1500, burn_in=300, thin=2, block_size=bs, init_clusters=10, random_state=0).fit(X)
        K = dp.n_clusters_
        print(f"n={n} d={d} {label:6s} block={dp.block_size_}: E[K]={K.mean():.2f} P(K=1)={np.mean(K==1):.2f} mean alpha={dp.alpha_trace_[300:].mean():.3f} heldout mean logp={dp.score(Xt):.4f} ({time.time()-t0:.0f}s)")

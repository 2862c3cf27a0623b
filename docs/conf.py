"""Sphinx configuration of the sksim documentation (builds offline)."""

import inspect
import os
import re
import sys
from pathlib import Path

import sksim
import sksim.audit
import sksim.audit.models
import sksim.datasets
import sksim.representations
import sksim.sensitivity

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("MPLBACKEND", "Agg")

project = "sksim"
author = "the sksim developers"
copyright = "2026, the sksim developers"
release = version = sksim.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py"]

autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
# The numpydoc sections document the types, as in scikit-learn; the type hints
# (whose aliases Sphinx would expand in full) stay out of the signatures.
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False

# numpydoc validates the docstring of every documented object; with -W a failure
# stops the build. Left out, because the house style differs or the section is
# optional for us: SA01 (See Also), EX01 (Examples: the gallery and the guide
# show usage), ES01 (extended summary), RT02 (scikit-learn's flavour names the
# returned values, ``K : ndarray``). Left out for now, because they ask for
# descriptions that many docstrings leave to the type line: PR07 (parameter
# without description), RT03 (return value without description).
numpydoc_validation_checks = {"all", "SA01", "EX01", "ES01", "RT02", "PR07", "RT03"}
numpydoc_validation_exclude = {
    # A class's constructor is documented in the class docstring.
    r"\.__init__$",
    # skorch's callback hooks, documented by skorch.
    r"^sksim\.ValidPairSimilarity\.on_(epoch|batch)_(begin|end)$",
    # Docstrings to complete (undocumented parameters or returns, summaries,
    # See Also entries); remove each entry once its docstring passes.
    r"^sksim\.audit\.AuditResult(\.(to_html|to_json))?$",
    r"^sksim\.NetworkSimilarityKernel\.transform$",
    r"^sksim\.similarity_to_distance$",
    r"^sksim\.(GradientDensityEstimator|NetworkNeighbors)$",
    r"^sksim\.SimilarityRegularized(Net|Classifier|Regressor)"
    r"(\.(initialize|partial_fit|infer|get_loss))?$",
    r"^sksim\.sensitivity\.DiffeoSensitivity(\.score)?$",
    r"^sksim\.sensitivity\.temperature_range$",
    r"^sksim\.representations\.ClassConditionalDensity\."
    r"(score_samples|predict_log_proba|predict_proba|predict)$",
    r"^sksim\.representations\.DirichletProcessGaussianMixture\."
    r"(score_samples|score)$",
    r"^sksim\.representations\.(extract_representations|class_fitting_report)$",
    r"^sksim\.datasets\.make_(planted_modes|scale_detection)$",
}


def inherited_members(modules):
    """Patterns naming the members sksim's classes inherit from other packages.

    autosummary lists them in the class pages, so numpydoc would validate them,
    but their docstrings are skorch's, scikit-learn's or torch's.
    """
    patterns = set()
    for module in modules:
        for name, cls in vars(module).items():
            if not inspect.isclass(cls) or not cls.__module__.startswith("sksim"):
                continue
            foreign = [
                member
                for member in dir(cls)
                if not _owner(cls, member).__module__.startswith("sksim")
            ]
            if foreign:
                patterns.add(rf"\.{name}\.({'|'.join(map(re.escape, foreign))})$")
    return patterns


def _owner(cls, member):
    """The class of ``cls``'s method resolution order that defines ``member``."""
    return next((klass for klass in cls.__mro__ if member in vars(klass)), object)


numpydoc_validation_exclude |= inherited_members(
    [
        sksim,
        sksim.audit,
        sksim.audit.models,
        sksim.sensitivity,
        sksim.representations,
        sksim.datasets,
    ]
)

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "within_subsection_order": "FileNameSortKey",
}

html_theme = "pydata_sphinx_theme"
html_title = "sksim"
html_theme_options = {"navigation_with_keys": False}

# Several guide pages keep their own reference lists; not every entry is cited.
suppress_warnings = ["ref.citation"]


def skip_scikit_learn_members(app, what, name, obj, skip, options):
    """Document sksim's own methods, not those inherited from scikit-learn."""
    if (getattr(obj, "__module__", None) or "").startswith("sklearn."):
        return True
    return None


def setup(app):
    app.connect("autodoc-skip-member", skip_scikit_learn_members)

"""Sphinx configuration for circfft (builds offline, warnings are errors in CI)."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import circfft  # noqa: E402

project = "circfft"
author = "circfft developers"
copyright = "circfft developers"
release = circfft.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
    "matplotlib.sphinxext.plot_directive",
]

exclude_patterns = ["_build", "generated/*.rst.txt"]
templates_path = []
html_static_path = []

html_theme = "alabaster"
html_theme_options = {"description": "In-place real FFTs in the packed layout"}

# autodoc / autosummary
autosummary_generate = True
autodoc_typehints = "none"
autodoc_default_options = {"member-order": "bysource"}

# numpydoc
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# matplotlib plot directive: figures are drawn at build time, PNG only.
plot_formats = [("png", 110)]
plot_html_show_formats = False
plot_html_show_source_link = False
plot_include_source = False
plot_pre_code = "import numpy as np\nimport matplotlib.pyplot as plt"
plot_rcparams = {"font.size": 10}

# doctest (`make doctest`): every example runs against the installed circfft.
doctest_global_setup = """
import numpy as np
import circfft
np.set_printoptions(precision=4, suppress=True)
"""
doctest_global_cleanup = "np.set_printoptions(precision=8, suppress=False)"

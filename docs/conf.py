"""Sphinx configuration for circfft (builds offline, warnings are errors in CI).

The pages use pydata-sphinx-theme (the theme of numpy, scipy and pandas) and render math with
a MathJax bundled by ``sphinx-mathjax-offline``, so the built pages need no network either.
"""
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
    # Copies a MathJax 3 bundle into _static/mathjax and points mathjax_path at it: math
    # renders from file:// without a CDN.  (The module name has dashes: it is only ever
    # loaded by name, as here.)
    "sphinx-mathjax-offline",
    "numpydoc",
    "matplotlib.sphinxext.plot_directive",
]

exclude_patterns = ["_build", "generated/*.rst.txt"]
templates_path = []

html_theme = "pydata_sphinx_theme"
html_title = f"circfft {release}"
html_theme_options = {
    # Everything is served from the build directory: no icon links to outside hosts, no
    # version switcher (which would fetch a JSON file), no analytics.
    "icon_links": [],
    "navbar_align": "left",
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": [],
}
# Every page is a top-level page, so the primary (left) sidebar would stay empty: off, and the
# article takes its width (_static/circfft.css).
html_sidebars = {"**": []}
html_static_path = ["_static"]
html_css_files = ["circfft.css"]
html_show_sourcelink = False
html_copy_source = False

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

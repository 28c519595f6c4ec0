"""The course machinery: the notebook contract (:func:`start`, :func:`save_metrics`, :func:`save_figure`), the
course runner, publishing, the GPU run, Colab and the command line.

Notebooks call ``lf.course.start(...)`` in their set-up cell.
"""

from .contract import PROFILES, resolve_profile, save_figure, save_metrics, start

__all__ = ["PROFILES", "resolve_profile", "save_figure", "save_metrics", "start"]

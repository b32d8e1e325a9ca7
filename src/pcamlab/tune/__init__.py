"""Hyperparameter search and the knob-by-knob sweep, on Optuna.

- :mod:`pcamlab.tune.space`: search spaces and sweep plans in YAML, validated at load; architecture
  knobs that write ``spec`` models.
- :mod:`pcamlab.tune.study`: storage (SQLite in the study folder, or PostgreSQL for many machines),
  samplers, pruners, the trial objective and the worker processes.
- :mod:`pcamlab.tune.report`: ``trials.csv``, ``best.yaml``, figures and ``report.html``.
- :mod:`pcamlab.tune.sweep`: the "what mattered" table and plot of a one-factor-at-a-time sweep.

Example:
    >>> from pcamlab.config import config_to_dict, load_config
    >>> from pcamlab.tune import StudySettings, run_study
    >>> base = config_to_dict(load_config("configs/tune/base-tiny.yaml"))
    >>> result = run_study(base, "configs/tune/default.yaml", "studies/first", trials=10)
"""

from pcamlab.tune.space import SPEC_KNOBS, SearchSpace, SweepPlan, load_space, load_sweep, spec_layers
from pcamlab.tune.study import StudySettings, open_storage, resume_study, run_study, write_study_outputs
from pcamlab.tune.sweep import format_what_mattered, what_mattered

__all__ = [
    "SPEC_KNOBS",
    "SearchSpace",
    "StudySettings",
    "SweepPlan",
    "format_what_mattered",
    "load_space",
    "load_sweep",
    "open_storage",
    "resume_study",
    "run_study",
    "spec_layers",
    "what_mattered",
    "write_study_outputs",
]

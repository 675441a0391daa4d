"""igds: interpretability-guided data selection.

The modules follow the data's path through the method of Shi et al. (arXiv 2604.25167):

    model -> sae -> activations -> features (recall + causal filter)
          -> scoring -> selection -> finetune -> evaluate -> report

:mod:`igds.pipeline` is the one place the stages are sequenced and :mod:`igds.cli` mirrors
it on the command line; ``docs/design.md`` has the module map. The names below are the
entry points the README uses; everything else is reached through its module.
"""

from ._version import __version__
from .config import ExperimentConfig, RunConfig, load_config
from .experiment import run_experiment
from .feature_set import FeatureSet
from .model import load_model
from .pipeline import run, stages
from .report import write_report
from .sae_loading import load_sae
from .selection import select_indices
from .selectors import SelectionContext, run_selector

__all__ = ["__version__", "RunConfig", "ExperimentConfig", "load_config", "run", "stages", "load_model", "load_sae",
           "FeatureSet", "select_indices", "SelectionContext", "run_selector", "write_report", "run_experiment"]

"""igds: interpretability-guided data selection.

The modules follow the data's path through the method of Shi et al. (arXiv 2604.25167):

    model -> sae -> activations -> features (recall + causal filter)
          -> scoring -> selection -> finetune -> evaluate -> report

Each stage is importable on its own; :mod:`igds.pipeline` chains them and
:mod:`igds.cli` mirrors the same operations on the command line.
"""

from ._version import __version__

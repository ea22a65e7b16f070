"""easytune_lab: a workbench for aligning text-to-motion diffusion models with differentiable rewards.

Reproduces and extends EasyTune (step-aware differentiable-reward fine-tuning, arXiv 2602.07967).
"""

__version__ = "0.1.0"

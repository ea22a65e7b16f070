"""The package's layers, declared once: a module imports from its own layer and the layers below it, never above.

Each entry of :data:`LAYERS` is one layer, bottom first, naming the top-level modules and subpackages of
``easytune_lab`` it holds (``"eval"`` stands for ``easytune_lab.eval`` and everything under it). The package
root (``easytune_lab/__init__.py``, the version) belongs to the bottom layer.

Within one layer, sibling packages may import each other in one direction only (``reward`` uses ``diffusion``'s
attention and schedule, ``finetune`` uses ``eval``'s protocol); ``tests/test_import_layers.py`` checks both rules
on every module's syntax tree, imports inside functions included, and fails naming the file, line and layers.
A new top-level module or subpackage must be added here before that test passes.
"""

from __future__ import annotations

PACKAGE = "easytune_lab"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "io", "runtime", "runs", "distributed", "memory", "layers", "stats", "reference", "training"),  # shared (bottom)
    ("motion",),                 # skeletons, features, procedural motions
    ("data",),                   # HumanML3D-format directories, captions, vocabulary
    ("diffusion", "reward"),     # backbones and samplers; the retrieval reward
    ("finetune", "eval"),        # the fine-tuning loop and policies; the evaluation protocol
    ("analysis", "viz"),         # claim analyses; playback and plots
    ("pipeline", "notebook"),    # the notebook workbench (cached runs) and the notebooks' setup names
    ("commands",),               # one module per `easytune` command group
    ("cli",),                    # the `easytune` entry point
)


def layer_of(module: str) -> int | None:
    """The index in :data:`LAYERS` of a dotted module name inside the package (0 for the package root), or None
    for a module outside the package or one no layer names."""
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    if len(parts) == 1:
        return 0
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index
    return None

"""Memory probes, kept importable here: they live in :mod:`easytune_lab.memory` (the bottom layer), because the
fine-tuning loop and the benches measure with them too."""

from ..memory import CudaMemoryProbe, NullProbe, SavedTensorMeter, memory_probe

__all__ = ["CudaMemoryProbe", "NullProbe", "SavedTensorMeter", "memory_probe"]

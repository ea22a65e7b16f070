"""easytune_lab.eval: the T2M evaluation protocol.

* :mod:`.metrics`          R-Precision, MM-Dist, FID, Diversity, MultiModality, replications (NumPy, from embeddings)
* :mod:`.evaluator`        the T2M-style text–motion matching model; ``load_evaluator``, ``embed_texts``, ``embed_motions``
* :mod:`.evaluator_train`  its profiles and training loop (``easytune evaluator train``)
* :mod:`.protocol`         a set of motions -> all metrics with replications (``easytune eval``)
"""

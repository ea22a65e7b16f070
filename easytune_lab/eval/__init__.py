"""easytune_lab.eval: the T2M evaluation protocol.

* :mod:`.metrics`          R-Precision, MM-Dist, FID, Diversity, MultiModality, replications (NumPy, from embeddings)
* :mod:`.evaluator`        the T2M-style text–motion matching model; ``load_evaluator``, ``embed_texts``, ``embed_motions``
* :mod:`.evaluator_train`  its profiles and training loop (``easytune evaluator train``)
* :mod:`.t2m`              the published T2M / KIT evaluator (``--evaluator t2m:DIR``): architecture, safe loading
* :mod:`.protocol`         a set of motions -> all metrics with replications (``easytune eval``; T2M's loader
                           conventions by default, ``--protocol legacy`` for the earlier ones)
"""

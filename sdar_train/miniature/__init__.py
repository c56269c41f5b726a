"""The CPU replication kit, apart from the harness it drives (as torchtune keeps its recipes apart from
the library): scripted demonstrators per environment, behaviour-cloned warm starts, the planted premise,
the miniature of the paper's comparison and its report, and the demo with its packaged warm start.

    python -m sdar_train.miniature.demo          # make demo: a short SDAR run from the packaged warm start
    python -m sdar_train.miniature.replicate     # make replicate: the miniature (docs/REPLICATION.md)
    python -m sdar_train.miniature.alfworld_warmstart

Nothing in the harness (``sdar_train``'s other modules) imports this package (tests/test_layout.py).
"""

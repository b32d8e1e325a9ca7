"""Training: the loop (``loop.py``: ``train()`` top to bottom), its parts (``epoch.py``: the steps of an
epoch and validation; ``inputs.py``: the data; ``model_setup.py``: model, optimiser, batch check;
``checkpointing.py``: the run folder; ``crops.py``, ``early_stopping.py``, ``schedule.py``, ``ema.py``,
``clock.py``: the rules with state across epochs, one object each), several processes
(``distributed.py``) and the protocols built on it (hold-out, k-fold, final fit: ``protocols.py``).
docs/training-loop.md is the tour.

Nothing that uses a trained model imports this package: checkpoints, the input contract and prediction
live in :mod:`pcamlab.runtime`.
"""

"""Training: the loop (``loop.py``, top to bottom), several processes (``distributed.py``) and the
protocols built on it (hold-out, k-fold, final fit: ``protocols.py``).

Nothing that uses a trained model imports this package: checkpoints, the input contract and prediction
live in :mod:`pcamlab.runtime`.
"""

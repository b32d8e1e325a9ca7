"""``pcamlab serve``: a web page and a versioned HTTP API for a trained patch classifier.

- :class:`ServedModel`: the model loaded once per process (checkpoint, ONNX or TorchScript), its
  model card, predictions through the one predictor, Grad-CAM for checkpoints.
- :func:`create_app`: the FastAPI app (``/v1/model``, ``/v1/predict``, ``/v1/explain``, ``/health``
  and the page at ``/``), with request limits, a bearer token and a bounded worker pool.
- :func:`decode_uploads`: uploaded images, zips and ``.npy``/``.h5`` arrays into uint8 patches.

Example:
    >>> from pcamlab.serve import ServeSettings, ServedModel, create_app
    >>> app = create_app(ServedModel.load("runs/demo/best.safetensors"), ServeSettings())
"""

from pcamlab.serve.app import API_VERSION, ServeSettings, check_token, create_app
from pcamlab.serve.background import BackgroundServer, free_port
from pcamlab.serve.inputs import TooManyPatches, UnsupportedUpload, Upload, decode_uploads
from pcamlab.serve.model import ExplainUnavailable, ServedModel
from pcamlab.serve.pool import PoolBusy, WorkerPool

__all__ = [
    "API_VERSION",
    "BackgroundServer",
    "ExplainUnavailable",
    "PoolBusy",
    "ServeSettings",
    "ServedModel",
    "TooManyPatches",
    "UnsupportedUpload",
    "Upload",
    "WorkerPool",
    "check_token",
    "create_app",
    "decode_uploads",
    "free_port",
]

"""pcamlab: deep-learning detectors of metastases in PatchCamelyon H&E lymph-node patches."""

from pcamlab.config import RunConfig, load_config
from pcamlab.errors import CheckpointError, ConfigError, DataError, PcamlabError, RunError

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "RunConfig",
    "load_config",
    "PcamlabError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "RunError",
]

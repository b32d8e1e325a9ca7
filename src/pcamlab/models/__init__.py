"""Model registry and architectures (plain torch).

Every model maps float (B, 3, H, W) normalised input to LOGITS (B, 1); probability = sigmoid(logit),
which equals Keras' ``Dense(1, activation="sigmoid")``. Add an architecture as one file in this
folder with one ``@register_model("name", options={...})`` builder (each option's range or choices
declared beside it, :mod:`pcamlab.models.options`), and import it below: names are registered here,
explicitly, so they never depend on import order.

Example:
    >>> from pcamlab.config import ModelConfig
    >>> from pcamlab.models import build_model, list_models, model_summary
    >>> model = build_model(ModelConfig(name="baseline"))
    >>> model_summary(model)
    {'parameters': 166977, 'flops': ...}
"""

from __future__ import annotations

# Import every model module so that its builder is registered (keep this list explicit).
from pcamlab.models import (  # noqa: F401
    baseline,
    densenet,
    fcn,
    p4m_densenet,
    resnet,
    simple_cnn,
    spec,
    vgg,
)
from pcamlab.models import factory
from pcamlab.models.factory import *  # noqa: F403  (the public API of models is factory's, listed once there)

__all__ = factory.__all__

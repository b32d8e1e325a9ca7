"""Per-channel statistics and stain normalisation of uint8 H&E patches (numpy).

``channel_stats`` streams over an array, memmap or HDF5 dataset to give the mean and standard
deviation used for model input normalisation. ``ReinhardNormalizer`` and ``MacenkoNormalizer`` map
the colours of a patch towards a reference; both are fit-then-use objects (``fit`` returns
``self``, learned state lives in fields ending in ``_``) and store as JSON with
``to_dict``/``normalizer_from_dict``, e.g. inside a checkpoint.

Background (white, unstained glass) is left out of every estimate: a pixel counts as tissue when
its optical density is at least ``beta`` in every channel (Macenko et al. 2009, beta = 0.15). A
patch with too little tissue to estimate its stain (fewer than ``min_tissue_fraction`` of its
pixels, default 1%) is returned unchanged, with no error.

Example:
    >>> import numpy as np
    >>> from pcamlab.data.normalize import MacenkoNormalizer, normalizer_from_dict
    >>> reference = np.random.default_rng(0).integers(0, 256, (4, 96, 96, 3), dtype=np.uint8)
    >>> normalizer = MacenkoNormalizer().fit(reference)
    >>> restored = normalizer_from_dict(normalizer.to_dict())
    >>> restored.transform(reference[0]).shape
    (96, 96, 3)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pcamlab.config import declare_choices
from pcamlab.errors import CheckpointError, ConfigError, DataError, RunError
from pcamlab.registry import Registry

__all__ = [
    "channel_stats",
    "ReinhardNormalizer",
    "MacenkoNormalizer",
    "NORMALIZERS",
    "normalizer_choices",
    "normalizer_from_dict",
    "tissue_mask",
]

NORMALIZERS: Registry[type] = Registry("stain normaliser")


def channel_stats(images: Any, batch: int = 4096) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each RGB channel, in [0, 1] units, streaming over the images.

    Reads ``batch`` images at a time with contiguous slices (numpy arrays, memmaps and h5py datasets
    all work) and counts each channel's 256 values (exact integer histograms; arrays in RAM on a few
    threads), from which the sums of values and squared values follow exactly, converted to float64
    only at the end, so nothing is ever held as float and the result does not drift with N. 19,171 PCam
    patches: 1.3 s on 2 cores (summing uint16 squares took 6.0 s).

    Args:
        images: uint8 (N, H, W, 3) array-like supporting ``len`` and ``images[start:stop]``.
        batch: images read per slice.

    Returns:
        ``(mean, std)``, each a list of 3 floats (population standard deviation), as used for
        ``input = (image / 255 - mean) / std``.

    Raises:
        DataError: not uint8 (N, H, W, 3), or empty.
        ConfigError: ``batch`` is not a positive integer.

    Example:
        >>> mean, std = channel_stats(np.full((2, 4, 4, 3), 255, dtype=np.uint8))
        >>> mean, std
        ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0])
    """
    shape = tuple(getattr(images, "shape", ()))
    dtype = getattr(images, "dtype", None)
    if len(shape) != 4 or shape[-1] != 3:
        raise DataError(f"channel_stats needs uint8 images of shape (N, H, W, 3); got shape {shape}")
    if dtype != np.uint8:
        raise DataError(
            f"channel_stats needs uint8 images (0..255); got dtype {dtype} "
            f"(convert with (images * 255).round().astype(np.uint8) if they are floats in [0, 1])"
        )
    if shape[0] == 0:
        raise DataError("channel_stats got 0 images; pass at least one (N, H, W, 3) image")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ConfigError(f"channel_stats batch must be a positive integer; got {batch!r}")
    count = shape[0]
    # exact per-channel histograms of the 256 values; sums and squared sums follow from them
    starts = range(0, count, batch)

    def histogram(start: int) -> np.ndarray:
        chunk = np.asarray(images[start : start + batch]).reshape(-1, 3)  # (b*H*W, 3) uint8
        return np.stack([np.bincount(chunk[:, channel], minlength=256) for channel in range(3)])

    if isinstance(images, np.ndarray) and count > batch:  # in RAM: numpy's bincount releases the GIL
        from concurrent.futures import ThreadPoolExecutor

        from pcamlab.data.readers import usable_cpus

        with ThreadPoolExecutor(max_workers=min(4, usable_cpus())) as pool:
            counts = sum(pool.map(histogram, starts))
    else:  # memmaps and HDF5 datasets: one reader
        counts = sum(histogram(start) for start in starts)
    counts = np.asarray(counts, dtype=np.int64)  # (3, 256)
    values = np.arange(256, dtype=np.int64)
    sums = counts @ values
    squares = counts @ (values * values)
    pixels = count * shape[1] * shape[2]
    mean = sums.astype(np.float64) / pixels
    variance = squares.astype(np.float64) / pixels - mean**2
    std = np.sqrt(np.maximum(variance, 0.0))
    return [float(value) for value in mean / 255.0], [float(value) for value in std / 255.0]


# ----------------------------------------------------------------------------------------------
# Helpers shared by the normalisers


def _as_images(images: Any, where: str) -> tuple[np.ndarray, bool]:
    """Check uint8 (N, H, W, 3) or (H, W, 3); return (N, H, W, 3) and whether a batch axis was added."""
    array = np.asarray(images)
    if array.dtype != np.uint8:
        raise DataError(
            f"{where} needs uint8 RGB images (0..255); got dtype {array.dtype} "
            f"(convert with (images * 255).round().astype(np.uint8) if they are floats in [0, 1])"
        )
    if array.ndim == 3 and array.shape[-1] == 3:
        return array[np.newaxis], True
    if array.ndim == 4 and array.shape[-1] == 3:
        return array, False
    raise DataError(f"{where} needs images of shape (N, H, W, 3) or (H, W, 3); got {array.shape}")


def _optical_density(pixels: np.ndarray, light_intensity: float) -> np.ndarray:
    """Optical density -ln((I + 1) / I0) of uint8 pixels (..., 3), float64."""
    return -np.log((pixels.astype(np.float64) + 1.0) / light_intensity)


def tissue_mask(image: np.ndarray, beta: float = 0.15, light_intensity: float = 240.0) -> np.ndarray:
    """Boolean (H, W) mask of tissue: optical density >= ``beta`` in every channel (Macenko et al.)."""
    return (_optical_density(image, light_intensity) >= beta).all(axis=-1)


def _check_fitted(normalizer: Any, field: str) -> None:
    if getattr(normalizer, field) is None:
        name = type(normalizer).__name__
        raise RunError(
            f"{name} is not fitted; call {name}().fit(reference_images) first or load a fitted one "
            f"with normalizer_from_dict"
        )


def _check_fraction(value: float, field: str) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"{field} must be in [0, 1); got {value!r}")


# ----------------------------------------------------------------------------------------------
# Reinhard


# Reinhard et al. 2001: RGB -> LMS cone space, then log10 and a decorrelating rotation to l-alpha-beta.
_LMS_FROM_RGB = np.array(
    [[0.3811, 0.5783, 0.0402], [0.1967, 0.7244, 0.0782], [0.0241, 0.1288, 0.8444]], dtype=np.float64
)
_RGB_FROM_LMS = np.linalg.inv(_LMS_FROM_RGB)
_LAB_FROM_LOG_LMS = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]
)
_LOG_LMS_FROM_LAB = np.linalg.inv(_LAB_FROM_LOG_LMS)
_LMS_EPSILON = 1.0 / 255.0  # keeps log10 finite for black pixels


def _rgb_to_lab(pixels: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) RGB to Reinhard's l-alpha-beta (..., 3), float64."""
    lms = (pixels.astype(np.float64) / 255.0) @ _LMS_FROM_RGB.T
    return np.log10(np.maximum(lms, _LMS_EPSILON)) @ _LAB_FROM_LOG_LMS.T


def _lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """l-alpha-beta (..., 3) back to uint8 RGB (..., 3), clipped."""
    lms = np.power(10.0, lab @ _LOG_LMS_FROM_LAB.T)
    rgb = lms @ _RGB_FROM_LMS.T * 255.0
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


@NORMALIZERS.register("reinhard")
class ReinhardNormalizer:
    """Reinhard colour transfer: match the mean and spread of tissue colours in l-alpha-beta space.

    ``fit`` learns the per-channel mean and standard deviation of the reference's tissue pixels;
    ``transform`` shifts and scales each patch's l-alpha-beta channels (all pixels, using
    statistics of its tissue pixels) onto them. Patches with too little tissue are returned
    unchanged.

    Args:
        beta: optical-density threshold below which a pixel is background.
        light_intensity: intensity of unstained glass, I0 in the optical density.
        min_tissue_fraction: smallest fraction of tissue pixels needed to estimate a patch.

    Example:
        >>> normalizer = ReinhardNormalizer().fit(reference_images)  # doctest: +SKIP
        >>> normalized = normalizer.transform(images)  # doctest: +SKIP
    """

    method = "reinhard"

    def __init__(self, beta: float = 0.15, light_intensity: float = 240.0, min_tissue_fraction: float = 0.01):
        _check_fraction(min_tissue_fraction, "ReinhardNormalizer min_tissue_fraction")
        self.beta = float(beta)
        self.light_intensity = float(light_intensity)
        self.min_tissue_fraction = float(min_tissue_fraction)
        self.mean_: np.ndarray | None = None  # (3,) l-alpha-beta mean of the reference tissue
        self.std_: np.ndarray | None = None  # (3,) l-alpha-beta standard deviation of the same

    def _tissue_lab(self, image: np.ndarray) -> np.ndarray:
        """l-alpha-beta (M, 3) of the tissue pixels of one (H, W, 3) image."""
        mask = tissue_mask(image, self.beta, self.light_intensity)
        return _rgb_to_lab(image[mask])

    def fit(self, reference: np.ndarray) -> ReinhardNormalizer:
        """Learn the target statistics from uint8 reference image(s) (N, H, W, 3) or (H, W, 3).

        Raises:
            DataError: the reference has no tissue (all background).
        """
        images, _ = _as_images(reference, "ReinhardNormalizer.fit")
        tissue = np.concatenate([self._tissue_lab(image) for image in images])  # (M, 3)
        if len(tissue) < 2:
            raise DataError(
                f"ReinhardNormalizer.fit found no tissue in the {len(images)} reference image(s) "
                f"(every pixel has optical density below beta={self.beta}); pick a stained reference"
            )
        self.mean_ = tissue.mean(axis=0)
        self.std_ = tissue.std(axis=0)
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Normalise uint8 (N, H, W, 3) or (H, W, 3) images; returns uint8 of the same shape."""
        _check_fitted(self, "mean_")
        batch, single = _as_images(images, "ReinhardNormalizer.transform")
        output = batch.copy()
        minimum_pixels = max(2, int(self.min_tissue_fraction * batch.shape[1] * batch.shape[2]))
        for index, image in enumerate(batch):
            tissue = self._tissue_lab(image)
            if len(tissue) < minimum_pixels:
                continue  # background patch: identity
            mean = tissue.mean(axis=0)
            std = np.maximum(tissue.std(axis=0), 1e-6)
            lab = _rgb_to_lab(image)
            output[index] = _lab_to_rgb((lab - mean) / std * self.std_ + self.mean_)
        return output[0] if single else output

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description: method, parameters and learned state."""
        _check_fitted(self, "mean_")
        return {
            "method": self.method,
            "params": {
                "beta": self.beta,
                "light_intensity": self.light_intensity,
                "min_tissue_fraction": self.min_tissue_fraction,
            },
            "state": {"mean": self.mean_.tolist(), "std": self.std_.tolist()},
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ReinhardNormalizer:
        """Rebuild a fitted normaliser from ``to_dict`` output."""
        params, state = _split_dict(values, cls.method, {"mean": (3,), "std": (3,)})
        normalizer = cls(**params)
        normalizer.mean_ = state["mean"]
        normalizer.std_ = state["std"]
        return normalizer


# ----------------------------------------------------------------------------------------------
# Macenko


@NORMALIZERS.register("macenko")
class MacenkoNormalizer:
    """Macenko et al. 2009 stain normalisation: estimate H and E vectors, rescale concentrations.

    For each image: optical density of the tissue pixels (OD >= ``beta`` in every channel), the
    plane of its two main directions, the stain vectors at the ``alpha`` and ``100 - alpha``
    percentiles of angle in that plane, concentrations by least squares, and the 99th percentile
    of each concentration. ``transform`` rebuilds each image with the reference stain vectors and
    its concentrations rescaled to the reference maxima. Patches with too little tissue, or whose
    stain estimate is degenerate, are returned unchanged (no error).

    Args:
        beta: optical-density threshold below which a pixel is background.
        alpha: percentile (in %) of the angle used for the robust extreme stain directions.
        light_intensity: intensity of unstained glass, I0 in the optical density.
        min_tissue_fraction: smallest fraction of tissue pixels needed to estimate a patch.

    Example:
        >>> normalizer = MacenkoNormalizer().fit(reference_images)  # doctest: +SKIP
        >>> normalized = normalizer.transform(images)  # doctest: +SKIP
    """

    method = "macenko"

    def __init__(
        self,
        beta: float = 0.15,
        alpha: float = 1.0,
        light_intensity: float = 240.0,
        min_tissue_fraction: float = 0.01,
    ):
        _check_fraction(min_tissue_fraction, "MacenkoNormalizer min_tissue_fraction")
        if not 0 <= alpha < 50:
            raise ConfigError(f"MacenkoNormalizer alpha is a percentile in [0, 50); got {alpha!r}")
        self.beta = float(beta)
        self.alpha = float(alpha)
        self.light_intensity = float(light_intensity)
        self.min_tissue_fraction = float(min_tissue_fraction)
        self.stain_matrix_: np.ndarray | None = None  # (2, 3) unit OD vectors, rows haematoxylin, eosin
        self.max_concentrations_: np.ndarray | None = None  # (2,) 99th percentile of each stain

    def _stain_matrix(self, optical_density: np.ndarray) -> np.ndarray | None:
        """(2, 3) stain vectors from tissue optical densities (M, 3), or None when degenerate."""
        if len(optical_density) < 3:
            return None
        covariance = np.cov(optical_density, rowvar=False)
        if not np.isfinite(covariance).all():
            return None
        _, eigenvectors = np.linalg.eigh(covariance)  # ascending eigenvalues
        plane = eigenvectors[:, 1:3]  # (3, 2) the two main directions
        plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # point into positive OD
        projected = optical_density @ plane  # (M, 2)
        angles = np.arctan2(projected[:, 1], projected[:, 0])
        low, high = np.percentile(angles, [self.alpha, 100.0 - self.alpha])
        first = plane @ np.array([np.cos(low), np.sin(low)])
        second = plane @ np.array([np.cos(high), np.sin(high)])
        # Haematoxylin is the one with more red-channel OD (it absorbs red, looks blue/purple).
        stains = np.stack([first, second] if first[0] > second[0] else [second, first])
        stains = stains * np.where(stains.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
        norms = np.linalg.norm(stains, axis=1, keepdims=True)
        if not np.isfinite(stains).all() or (norms < 1e-8).any():
            return None
        stains = stains / norms
        if abs(float(stains[0] @ stains[1])) > 1 - 1e-6:  # one stain only: not separable
            return None
        return stains

    def _concentrations(self, optical_density: np.ndarray, stains: np.ndarray) -> np.ndarray:
        """Least-squares stain concentrations (M, 2) of optical densities (M, 3)."""
        return optical_density @ np.linalg.pinv(stains)  # (M, 3) @ (3, 2)

    def _estimate(self, optical_density: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(stain matrix (2, 3), max concentrations (2,)) from the OD (M, 3) of a patch, or None."""
        tissue = optical_density[(optical_density >= self.beta).all(axis=1)]
        minimum_pixels = max(3, int(self.min_tissue_fraction * len(optical_density)))
        if len(tissue) < minimum_pixels:
            return None
        stains = self._stain_matrix(tissue)
        if stains is None:
            return None
        maxima = np.percentile(self._concentrations(tissue, stains), 99, axis=0)
        if not (maxima > 1e-6).all():
            return None
        return stains, maxima

    def fit(self, reference: np.ndarray) -> MacenkoNormalizer:
        """Learn reference stain vectors and concentration maxima from uint8 (N, H, W, 3) or (H, W, 3).

        The tissue pixels of all reference images are pooled.

        Raises:
            DataError: the reference has too little tissue or only one stain to estimate from.
        """
        images, _ = _as_images(reference, "MacenkoNormalizer.fit")
        estimate = self._estimate(_optical_density(images.reshape(-1, 3), self.light_intensity))
        if estimate is None:
            raise DataError(
                f"MacenkoNormalizer.fit could not estimate two stains from the {len(images)} "
                f"reference image(s): too little tissue (optical density >= beta={self.beta}) or a "
                f"single colour; pick reference patches with both haematoxylin and eosin"
            )
        self.stain_matrix_, self.max_concentrations_ = estimate
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        """Normalise uint8 (N, H, W, 3) or (H, W, 3) images; returns uint8 of the same shape."""
        _check_fitted(self, "stain_matrix_")
        batch, single = _as_images(images, "MacenkoNormalizer.transform")
        output = batch.copy()
        for index, image in enumerate(batch):
            optical_density = _optical_density(image.reshape(-1, 3), self.light_intensity)  # (H*W, 3)
            estimate = self._estimate(optical_density)
            if estimate is None:
                continue  # background or single-stain patch: identity
            stains, maxima = estimate
            concentrations = self._concentrations(optical_density, stains)  # (H*W, 2)
            concentrations *= self.max_concentrations_ / maxima
            rebuilt = self.light_intensity * np.exp(-concentrations @ self.stain_matrix_)  # (H*W, 3)
            output[index] = np.clip(np.rint(rebuilt), 0, 255).astype(np.uint8).reshape(image.shape)
        return output[0] if single else output

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description: method, parameters and learned state."""
        _check_fitted(self, "stain_matrix_")
        return {
            "method": self.method,
            "params": {
                "beta": self.beta,
                "alpha": self.alpha,
                "light_intensity": self.light_intensity,
                "min_tissue_fraction": self.min_tissue_fraction,
            },
            "state": {
                "stain_matrix": self.stain_matrix_.tolist(),
                "max_concentrations": self.max_concentrations_.tolist(),
            },
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> MacenkoNormalizer:
        """Rebuild a fitted normaliser from ``to_dict`` output."""
        params, state = _split_dict(values, cls.method, {"stain_matrix": (2, 3), "max_concentrations": (2,)})
        normalizer = cls(**params)
        normalizer.stain_matrix_ = state["stain_matrix"]
        normalizer.max_concentrations_ = state["max_concentrations"]
        return normalizer


# ----------------------------------------------------------------------------------------------
# Storage


def normalizer_choices() -> tuple[str, ...]:
    """Allowed values of ``data.stain_normalization``: ``none`` and every registered normaliser."""
    return ("none", *NORMALIZERS.names())


declare_choices("data.stain_normalization", normalizer_choices)  # the config's allowed values are the registry's


def _split_dict(
    values: Any, method: str, shapes: dict[str, tuple[int, ...]]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Validate ``to_dict`` output for ``method``; return (params, state arrays)."""
    if not isinstance(values, dict) or values.get("method") != method:
        got = values.get("method") if isinstance(values, dict) else type(values).__name__
        raise CheckpointError(
            f"stored stain normaliser must be a mapping with method {method!r}; got {got!r}"
        )
    params = values.get("params", {})
    state = values.get("state")
    if not isinstance(params, dict) or not isinstance(state, dict):
        raise CheckpointError(
            f"stored {method} normaliser needs mappings 'params' and 'state' (from to_dict()); "
            f"got keys {sorted(values)}"
        )
    arrays = {}
    for name, shape in shapes.items():
        try:
            array = np.asarray(state[name], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"stored {method} normaliser state.{name} is missing or not numeric; "
                f"store the output of to_dict()"
            ) from None
        if array.shape != shape or not np.isfinite(array).all():
            raise CheckpointError(
                f"stored {method} normaliser state.{name} must be finite with shape {shape}; "
                f"got shape {array.shape}"
            )
        arrays[name] = array
    return params, arrays


def normalizer_from_dict(values: dict[str, Any]) -> ReinhardNormalizer | MacenkoNormalizer:
    """Rebuild a fitted stain normaliser from the ``to_dict`` output of any of them.

    Raises:
        ConfigError: an unknown ``method`` (with a suggestion).
        CheckpointError: the stored state is malformed.
    """
    if not isinstance(values, dict) or "method" not in values:
        raise CheckpointError(
            f"stored stain normaliser must be a mapping with a 'method' key (from to_dict()); "
            f"got {type(values).__name__}"
        )
    cls = NORMALIZERS.get(str(values["method"]), field="stain normaliser method")
    return cls.from_dict(values)

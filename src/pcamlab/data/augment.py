"""Batch augmentation of H&E patches as tensor operations (CPU or GPU, no loop over samples).

Every random parameter is drawn per sample from an explicit ``torch.Generator``, and every
operation works on the whole batch at once, so augmentation runs where the images are (on the GPU
when they are there) and the same generator seed gives the same batch.

The operations, in the order ``augment_batch`` applies them, each off when its strength is 0:

1. random resized crop (``crop_scale < 1``), one ``grid_sample`` call for the whole batch (the
   per-sample affine grids built by broadcasting, equal to ``affine_grid``); when it is on, the
   random dihedral transform is folded into the same sampling grid;
2. the 8 dihedral transforms (``dihedral``): exact pixel permutations when there is no crop;
3. HED stain jitter (``hed``), Tellez et al. 2018;
4. brightness, contrast, saturation and hue jitter (torchvision's factors, fixed order; the first
   three fused into one per-sample affine colour map);
5. gaussian blur with probability ``blur`` and per-sample sigma in ``[0.1, blur_sigma]``.

The output is clamped to [0, 1] and keeps the input's shape, dtype, device and memory format.

Dihedral transforms, numbered ``k = 4 * transpose + 2 * flip_vertical + flip_horizontal``; the
transpose (swap of the H and W axes) is applied first, then the flips:

===  ================================  ===========
k    transform                         inverse k
===  ================================  ===========
0    identity                          0
1    flip horizontally (left-right)    1
2    flip vertically (up-down)         2
3    rotate 180 degrees                3
4    transpose (main diagonal)         4
5    rotate 90 degrees clockwise       6
6    rotate 90 degrees anticlockwise   5
7    anti-transpose (other diagonal)   7
===  ================================  ===========

Example:
    >>> import torch
    >>> from pcamlab.config import AugmentConfig
    >>> from pcamlab.data.augment import augment_batch
    >>> images = torch.rand(8, 3, 96, 96)
    >>> generator = torch.Generator().manual_seed(0)
    >>> config = AugmentConfig(hed=0.05, hue=0.04, blur=0.2, crop_scale=0.8)
    >>> augment_batch(images, config, generator).shape
    torch.Size([8, 3, 96, 96])
"""

from __future__ import annotations

import functools
import math
import numbers

import torch
import torch.nn.functional as functional

from pcamlab.config import AugmentConfig
from pcamlab.errors import ConfigError, DataError

__all__ = [
    "DIHEDRAL_TRANSFORMS",
    "augment_batch",
    "augment_is_identity",
    "check_augment_config",
    "dihedral",
    "dihedral_inverse",
    "random_label_crop",
    "rgb_to_hsv",
    "hsv_to_rgb",
    "rgb_to_hed",
    "hed_to_rgb",
]

DIHEDRAL_TRANSFORMS = 8  # number of dihedral transforms (the symmetry group of a square)

# Inverse of each dihedral transform k (only the two quarter turns are not their own inverse).
_DIHEDRAL_INVERSE = (0, 1, 2, 3, 4, 6, 5, 7)

# Ruifrok & Johnston 2001 stain optical-density vectors (rows: haematoxylin, eosin, DAB) in RGB.
_RGB_FROM_HED = torch.tensor(
    [
        [0.650, 0.704, 0.286],
        [0.072, 0.990, 0.105],
        [0.268, 0.570, 0.776],
    ],
    dtype=torch.float64,
)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)

# Smallest intensity before taking the logarithm (optical density of a black pixel stays finite).
_OPTICAL_DENSITY_EPSILON = 1e-6

# ITU-R 601 luma weights, as torchvision uses for grayscale.
_LUMA = (0.299, 0.587, 0.114)

_MINIMUM_BLUR_SIGMA = 0.1  # lower end of the random blur sigma (as torchvision's GaussianBlur)
_LOG_ASPECT_RANGE = (math.log(3 / 4), math.log(4 / 3))  # random resized crop aspect ratios


def check_augment_config(config: AugmentConfig) -> None:
    """Raise a ConfigError naming the first ``augment.*`` field that is out of range.

    The ranges are declared once, in :data:`pcamlab.config_ranges.RANGES` (also checked when a config is
    loaded). Called by ``augment_batch``, whose config may have been built in code.
    """
    from pcamlab.config_ranges import RANGES, check_field

    for field in RANGES:
        if field.startswith("augment."):
            check_field(field, getattr(config, field.split(".", 1)[1]))


LABEL_REGION = 32  # PCam labels a patch positive when its centre 32x32 px hold tumour (Veeling et al. 2018)


def random_label_crop(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random ``size`` x ``size`` crops of ``(B, H, W, C)`` patches, each still holding the centre 32x32.

    PCam's label concerns only the centre 32x32 pixels, so a crop that keeps them keeps the label;
    training on 64 px crops of 96 px patches costs (64/96)^2 = 0.44 of the convolution FLOPs, and
    the random offsets act as translation augmentation. A global-pooled model then scores full patches.

    Args:
        images: ``(B, H, W, C)`` tensor of any dtype (uint8 patches in the loop), H = W.
        size: crop side in pixels, ``32 <= size <= H``.
        generator: a ``torch.Generator`` on the images' device; per-sample offsets come from it.

    Returns:
        ``(B, size, size, C)`` tensor, same dtype and device.

    Raises:
        ConfigError: ``size`` outside ``[32, H]``.
    """
    height = images.shape[1]
    if not LABEL_REGION <= size <= height:
        raise ConfigError(
            f"augment.crop_size must be between {LABEL_REGION} and the patch size {height}; got {size}"
        )
    low = max(0, (height + LABEL_REGION) // 2 - size)  # the crop must reach the centre region's far edge
    high = min(height - size, (height - LABEL_REGION) // 2)  # and start at or before its near edge
    batch = images.shape[0]
    offsets = torch.randint(low, high + 1, (batch, 2), generator=generator, device=images.device)  # (B, 2) y, x
    span = torch.arange(size, device=images.device)
    rows = (offsets[:, 0:1] + span)[:, :, None]  # (B, size, 1)
    columns = (offsets[:, 1:2] + span)[:, None, :]  # (B, 1, size)
    return images[torch.arange(batch, device=images.device)[:, None, None], rows, columns]  # (B, size, size, C)


def augment_is_identity(config: AugmentConfig) -> bool:
    """Whether ``augment_batch`` with this config returns its input unchanged."""
    return (
        not config.dihedral
        and config.brightness == 0
        and config.contrast == 0
        and config.saturation == 0
        and config.hue == 0
        and config.hed == 0
        and config.blur == 0
        and config.crop_scale >= 1
    )


def _check_images(images: torch.Tensor, name: str = "images") -> None:
    if not isinstance(images, torch.Tensor):
        raise DataError(f"{name} must be a torch.Tensor of shape (B, 3, H, W); got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise DataError(
            f"{name} must have shape (B, 3, H, W) (channels first, RGB); got {tuple(images.shape)}"
        )
    if not images.is_floating_point():
        raise DataError(
            f"{name} must be a float tensor in [0, 1]; got {images.dtype} "
            f"(convert uint8 with images.float() / 255)"
        )


def _memory_format(images: torch.Tensor) -> torch.memory_format:
    """The memory format to give the output: channels_last when the input is only that."""
    if images.is_contiguous():
        return torch.contiguous_format
    if images.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


# ----------------------------------------------------------------------------------------------
# Dihedral transforms


def _check_dihedral_index(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or not 0 <= k < DIHEDRAL_TRANSFORMS:
        raise ConfigError(
            f"dihedral transform k must be an integer in 0..{DIHEDRAL_TRANSFORMS - 1}; got {k!r}"
        )
    return int(k)


def dihedral(images: torch.Tensor, k: int) -> torch.Tensor:
    """Apply dihedral transform ``k`` (0..7, 0 = identity, table in the module docstring) to a batch.

    Args:
        images: tensor (..., H, W); transforms 4..7 swap H and W.
        k: which transform, ``4 * transpose + 2 * flip_vertical + flip_horizontal``.

    Returns:
        The transformed tensor: ``images`` itself for k = 0, a transposed view for k = 4, a copy
        otherwise.

    Example:
        >>> x = torch.arange(4.0).reshape(1, 1, 2, 2)
        >>> dihedral(dihedral(x, 5), dihedral_inverse(5)).equal(x)
        True
    """
    k = _check_dihedral_index(k)
    if k & 4:
        images = images.transpose(-2, -1)
    dims = [dim for bit, dim in ((2, -2), (1, -1)) if k & bit]
    if dims:
        images = torch.flip(images, dims)
    return images


def dihedral_inverse(k: int) -> int:
    """The transform that undoes transform ``k``: ``dihedral(dihedral(x, k), dihedral_inverse(k)) == x``."""
    return _DIHEDRAL_INVERSE[_check_dihedral_index(k)]


@functools.lru_cache(maxsize=16)
def _dihedral_index_table(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(T, H*W) int64: row k lists, for each output pixel, the input pixel of transform k.

    T = 8 for square images, 4 (the flips) otherwise.
    """
    count = DIHEDRAL_TRANSFORMS if height == width else 4
    pixels = torch.arange(height * width, device=device).view(height, width)
    return torch.stack([dihedral(pixels, k).reshape(height * width) for k in range(count)])


def _dihedral_per_sample(images: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Apply dihedral transform ``k[i]`` to sample ``i`` with one gather over the whole batch.

    Args:
        images: (B, C, H, W), any memory format; for H != W only k in 0..3 (flips) exist.
        k: int64 (B,) transform numbers.

    Returns:
        (B, C, H, W) contiguous (NCHW).
    """
    batch, channels, height, width = images.shape
    table = _dihedral_index_table(height, width, images.device)
    index = table[k].view(batch, 1, height * width).expand(batch, channels, height * width)
    flat = images.reshape(batch, channels, height * width)  # a view for NCHW and channels_last
    return flat.gather(2, index).view(batch, channels, height, width)


def _dihedral_matrices(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(8, 2, 2) sampling matrices M_k in normalised (x, y) coordinates: out(p) = in(M_k p).

    With ``align_corners=False`` pixel centres map onto pixel centres, so ``grid_sample`` with
    ``[M_k | 0]`` reproduces ``dihedral(images, k)``.
    """
    swap = torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    flip_vertical = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.float64))
    flip_horizontal = torch.diag(torch.tensor([-1.0, 1.0], dtype=torch.float64))
    identity = torch.eye(2, dtype=torch.float64)
    matrices = []
    for k in range(DIHEDRAL_TRANSFORMS):
        matrix = swap if k & 4 else identity
        matrix = matrix @ (flip_vertical if k & 2 else identity)
        matrix = matrix @ (flip_horizontal if k & 1 else identity)
        matrices.append(matrix)
    return torch.stack(matrices).to(dtype=dtype, device=device)  # (8, 2, 2)


# ----------------------------------------------------------------------------------------------
# Colour spaces


def rgb_to_hsv(images: torch.Tensor) -> torch.Tensor:
    """RGB (B, 3, H, W) in [0, 1] to HSV (B, 3, H, W), every channel in [0, 1] (hue as a turn fraction)."""
    red, green, blue = images.unbind(dim=1)  # each (B, H, W)
    maximum, argmax = images.max(dim=1)
    minimum = images.min(dim=1).values
    delta = maximum - minimum
    saturation = torch.where(maximum > 0, delta / maximum.clamp_min(1e-12), torch.zeros_like(maximum))
    safe_delta = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue_red = torch.remainder((green - blue) / safe_delta, 6.0)
    hue_green = (blue - red) / safe_delta + 2.0
    hue_blue = (red - green) / safe_delta + 4.0
    hue = torch.where(argmax == 0, hue_red, torch.where(argmax == 1, hue_green, hue_blue))
    hue = torch.where(delta > 0, hue / 6.0, torch.zeros_like(hue))
    hue = torch.remainder(hue, 1.0)
    return torch.stack((hue, saturation, maximum), dim=1)  # (B, 3, H, W)


def hsv_to_rgb(images: torch.Tensor) -> torch.Tensor:
    """HSV (B, 3, H, W) with channels in [0, 1] back to RGB (B, 3, H, W) in [0, 1]."""
    hue, saturation, value = images.unbind(dim=1)  # each (B, H, W)
    # Branch-free form: channel n = v - v * s * clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6.
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    k = torch.remainder(offsets + 6.0 * hue.unsqueeze(1), 6.0)  # (B, 3, H, W)
    weight = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return value.unsqueeze(1) * (1.0 - saturation.unsqueeze(1) * weight)


def rgb_to_hed(images: torch.Tensor) -> torch.Tensor:
    """RGB (B, 3, H, W) in [0, 1] to HED stain concentrations (B, 3, H, W) (Ruifrok-Johnston).

    Optical density ``-ln(max(rgb, 1e-6))`` times the inverse of the stain matrix; the inverse is
    ``hed_to_rgb``.
    """
    optical_density = -torch.log(images.clamp_min(_OPTICAL_DENSITY_EPSILON))
    matrix = _HED_FROM_RGB.to(dtype=images.dtype, device=images.device)
    return torch.einsum("bchw,cd->bdhw", optical_density, matrix)


def hed_to_rgb(stains: torch.Tensor) -> torch.Tensor:
    """HED stain concentrations (B, 3, H, W) back to RGB (B, 3, H, W) (not clamped)."""
    matrix = _RGB_FROM_HED.to(dtype=stains.dtype, device=stains.device)
    return torch.exp(-torch.einsum("bdhw,dc->bchw", stains, matrix))


# ----------------------------------------------------------------------------------------------
# Random operations (each draws its parameters per sample from the generator)


def _uniform(
    low: float, high: float, shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    values = torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)
    return low + (high - low) * values


def _random_resized_crop(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Per-sample random resized crop, with the random dihedral transform folded in when on."""
    batch, _, height, width = images.shape
    area = _uniform(config.crop_scale, 1.0, (batch,), images, generator)
    log_aspect = _uniform(*_LOG_ASPECT_RANGE, (batch,), images, generator)
    aspect = torch.exp(log_aspect)
    # Crop side lengths as fractions of the image sides; clamped, so extreme aspects keep less area.
    crop_width = torch.sqrt(area * aspect).clamp(max=1.0)
    crop_height = torch.sqrt(area / aspect).clamp(max=1.0)
    centre_x = (1.0 - crop_width) * _uniform(-1.0, 1.0, (batch,), images, generator)
    centre_y = (1.0 - crop_height) * _uniform(-1.0, 1.0, (batch,), images, generator)
    linear = torch.diag_embed(torch.stack((crop_width, crop_height), dim=1))  # (B, 2, 2)
    if config.dihedral and height == width:
        k = torch.randint(0, DIHEDRAL_TRANSFORMS, (batch,), generator=generator, device=images.device)
        linear = linear @ _dihedral_matrices(images.dtype, images.device)[k]  # (B, 2, 2)
    translation = torch.stack((centre_x, centre_y), dim=1)  # (B, 2)
    grid = _affine_grid(linear, translation, height, width)  # (B, H, W, 2)
    return functional.grid_sample(
        images, grid, mode="bilinear", padding_mode="border", align_corners=False
    )  # (B, 3, H, W)


def _affine_grid(linear: torch.Tensor, translation: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Same as ``affine_grid(cat(linear, translation), align_corners=False)``, by broadcasting.

    An affine map of a regular grid is separable, so this builds it from one (B, 1, W, 2) and one
    (B, H, 1, 2) term instead of a batched matrix product over every pixel (4 ms instead of 27 ms
    for 128 grids of 96x96 on one CPU thread).

    Args:
        linear: (B, 2, 2) maps output (x, y) to input (x, y), normalised coordinates.
        translation: (B, 2).
    """
    batch = linear.shape[0]
    options = {"dtype": linear.dtype, "device": linear.device}
    xs = (torch.arange(width, **options) * 2 + 1) / width - 1  # pixel centres in (-1, 1)
    ys = (torch.arange(height, **options) * 2 + 1) / height - 1
    along_x = xs.view(1, 1, width, 1) * linear[:, :, 0].view(batch, 1, 1, 2)  # (B, 1, W, 2)
    along_y = ys.view(1, height, 1, 1) * linear[:, :, 1].view(batch, 1, 1, 2)  # (B, H, 1, 2)
    return (along_x + translation.view(batch, 1, 1, 2)) + along_y  # (B, H, W, 2)


def _random_dihedral(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random dihedral transform (flips only for non-square images)."""
    batch, _, height, width = images.shape
    choices = DIHEDRAL_TRANSFORMS if height == width else 4
    k = torch.randint(0, choices, (batch,), generator=generator, device=images.device)
    return _dihedral_per_sample(images, k)


def _hed_jitter(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Tellez et al. 2018: per stain channel, s' = alpha * s + beta, alpha ~ U(1-s, 1+s), beta ~ U(-s, s).

    Linear in optical density, so it is one per-sample affine map OD' = OD @ A_b + c_b.

    Args:
        images: contiguous (B, 3, H, W) in [0, 1].
    """
    batch, channels, height, width = images.shape
    alpha = _uniform(1.0 - strength, 1.0 + strength, (batch, 3), images, generator)
    beta = _uniform(-strength, strength, (batch, 3), images, generator)
    hed_from_rgb = _HED_FROM_RGB.to(dtype=images.dtype, device=images.device)
    rgb_from_hed = _RGB_FROM_HED.to(dtype=images.dtype, device=images.device)
    matrix = (hed_from_rgb.unsqueeze(0) * alpha.unsqueeze(1)) @ rgb_from_hed  # (B, 3, 3)
    offset = beta @ rgb_from_hed  # (B, 3)
    optical_density = images.clamp_min(_OPTICAL_DENSITY_EPSILON).log_().neg_()
    optical_density = optical_density.view(batch, channels, height * width)
    # OD'[b, d, p] = offset[b, d] + sum_c matrix[b, c, d] * OD[b, c, p]
    optical_density = torch.baddbmm(offset.unsqueeze(2), matrix.transpose(1, 2), optical_density)
    return optical_density.neg_().exp_().clamp_(0.0, 1.0).view(batch, channels, height, width)


def _grayscale(images: torch.Tensor) -> torch.Tensor:
    """Luma (B, 1, H, W) of RGB (B, 3, H, W)."""
    red, green, blue = images.unbind(dim=1)
    return (_LUMA[0] * red + _LUMA[1] * green + _LUMA[2] * blue).unsqueeze(1)


def _shift_hue(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of each sample by ``shift`` (B, 1, 1) turns, keeping saturation and value.

    Equal to ``hsv_to_rgb`` of ``rgb_to_hsv`` with the hue shifted (the tests check this), fused
    and branch-free: a hue change keeps each pixel's max and min channel, so
    RGB = min + (max - min) * pure_colour(hue). Written with in-place operations and float masks:
    on CPU, fresh allocations and boolean ``torch.where`` cost more than the arithmetic.
    """
    red, green, blue = images.unbind(dim=1)  # each (B, H, W)
    maximum = torch.maximum(red, green)
    torch.maximum(maximum, blue, out=maximum)
    minimum = torch.minimum(red, green)
    torch.minimum(minimum, blue, out=minimum)
    delta = maximum - minimum
    inverse = delta.clamp_min(1e-12).reciprocal_()  # grey pixels: any hue, delta = 0 keeps them grey
    # Hue in sixths of a turn for each possible maximum channel, as offsets from the blue case.
    hue = (red - green).mul_(inverse).add_(4.0)  # blue is the maximum
    hue_red = (green - blue).mul_(inverse).sub_(hue)  # red is the maximum
    hue_green = (blue - red).mul_(inverse).add_(2.0).sub_(hue)  # green is the maximum
    # Float masks: max_is_red = 1 where red is the maximum; max_is_green where green is and red not.
    max_is_red = torch.sub(maximum, red, out=inverse).sign_().neg_().add_(1.0)
    max_is_green = (maximum - green).sign_().neg_().add_(1.0)
    max_is_green.addcmul_(max_is_green, max_is_red, value=-1.0)
    hue.addcmul_(max_is_red, hue_red).addcmul_(max_is_green, hue_green)
    hue.add_(6.0 * shift)
    wraps = torch.div(hue, 6.0, out=hue_red).floor_()
    hue.sub_(wraps.mul_(6.0))  # now in [0, 6)
    # Pure colour of that hue per channel: red clamp(|h - 3| - 1), green clamp(2 - |h - 2|),
    # blue clamp(2 - |h - 4|), each clamped to [0, 1]; then scaled into [min, max].
    options = {"dtype": images.dtype, "device": images.device}
    centres = torch.tensor([3.0, 2.0, 4.0], **options).view(1, 3, 1, 1)
    signs = torch.tensor([1.0, -1.0, -1.0], **options).view(1, 3, 1, 1)
    biases = torch.tensor([-1.0, 2.0, 2.0], **options).view(1, 3, 1, 1)
    pure = (hue.unsqueeze(1) - centres).abs_().mul_(signs).add_(biases).clamp_(0.0, 1.0)  # (B, 3, H, W)
    return pure.mul_(delta.unsqueeze(1)).add_(minimum.unsqueeze(1))  # (B, 3, H, W)


def _colour_matrix(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample brightness, contrast and saturation as one affine colour map: x @ matrix + offset.

    With luma weights l (summing to 1), brightness b, contrast c (blend with the mean luma m of the
    patch) and saturation s (blend with the pixel's luma) compose to
    ``x @ (c * b * S) + (1 - c) * b * m`` with ``S = s * I + (1 - s) * l 1^T``. Returns the
    matrices (B, 3, 3) and offsets (B, 3).
    """
    batch = images.shape[0]
    ones = torch.ones(batch, device=images.device, dtype=images.dtype)
    brightness, contrast, saturation = ones, ones, ones
    if config.brightness > 0:
        brightness = _uniform(
            max(0.0, 1.0 - config.brightness), 1.0 + config.brightness, (batch,), images, generator
        )
    if config.contrast > 0:
        contrast = _uniform(
            max(0.0, 1.0 - config.contrast), 1.0 + config.contrast, (batch,), images, generator
        )
    if config.saturation > 0:
        saturation = _uniform(
            max(0.0, 1.0 - config.saturation), 1.0 + config.saturation, (batch,), images, generator
        )
    luma = torch.tensor(_LUMA, device=images.device, dtype=images.dtype)
    identity = torch.eye(3, device=images.device, dtype=images.dtype)
    to_grey = luma.view(3, 1).expand(3, 3)  # x @ to_grey puts the luma in every channel
    saturation = saturation.view(batch, 1, 1)
    matrix = saturation * identity + (1.0 - saturation) * to_grey  # (B, 3, 3)
    matrix = matrix * (contrast * brightness).view(batch, 1, 1)
    offset = torch.zeros(batch, 3, device=images.device, dtype=images.dtype)
    if config.contrast > 0:
        mean_luma = _grayscale(images).mean(dim=(1, 2, 3))  # (B,)
        offset = ((1.0 - contrast) * brightness * mean_luma).view(batch, 1).expand(batch, 3)
    return matrix, offset


def _colour_jitter(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation then hue, each with a per-sample factor.

    Factors as in torchvision's ColorJitter, in a fixed order; brightness, contrast and saturation
    are linear, so they are applied together as one per-sample affine colour map (one pass instead
    of three, with a single clamp at the end rather than one after each). Never writes into
    ``images``; expects them contiguous (B, 3, H, W).
    """
    batch, channels, height, width = images.shape
    if config.brightness > 0 or config.contrast > 0 or config.saturation > 0:
        matrix, offset = _colour_matrix(images, config, generator)
        flat = images.view(batch, channels, height * width)
        # out[b, d, p] = offset[b, d] + sum_c matrix[b, c, d] * images[b, c, p]
        flat = torch.baddbmm(offset.unsqueeze(2), matrix.transpose(1, 2), flat)
        images = flat.clamp_(0.0, 1.0).view(batch, channels, height, width)
    if config.hue > 0:
        shift = _uniform(-config.hue, config.hue, (batch, 1, 1), images, generator)
        images = _shift_hue(images, shift).clamp_(0.0, 1.0)
    return images


def _blur_with_kernels(images: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Separable blur of (B, C, H, W) with one 1-D kernel per sample (B, K), reflect-padded."""
    batch, channels, height, width = images.shape
    size = kernel.shape[1]
    radius = size // 2
    kernel = kernel.repeat_interleave(channels, dim=0)  # (B*C, K)
    # One depthwise convolution per direction over all B * C planes.
    planes = images.reshape(1, batch * channels, height, width)
    planes = functional.pad(planes, (radius, radius, 0, 0), mode="reflect")
    planes = functional.conv2d(planes, kernel.view(-1, 1, 1, size), groups=batch * channels)
    planes = functional.pad(planes, (0, 0, radius, radius), mode="reflect")
    planes = functional.conv2d(planes, kernel.view(-1, 1, size, 1), groups=batch * channels)
    return planes.view(batch, channels, height, width)


def _gaussian_blur(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Blur each sample with probability ``config.blur``, sigma ~ U(0.1, blur_sigma), separable.

    On CPU only the drawn samples are convolved (``nonzero`` is free there); on other devices
    every sample is, the others with a delta kernel, so that nothing waits on the device.
    """
    batch, _, height, width = images.shape
    radius = min(max(1, math.ceil(3.0 * config.blur_sigma)), height - 1, width - 1)
    apply = torch.rand((batch,), generator=generator, device=images.device) < config.blur
    low = min(_MINIMUM_BLUR_SIGMA, config.blur_sigma)
    sigma = _uniform(low, config.blur_sigma, (batch,), images, generator)
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (offsets.unsqueeze(0) / sigma.unsqueeze(1)) ** 2)  # (B, K)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    if images.device.type == "cpu":
        selected = apply.nonzero().flatten()  # (S,)
        if len(selected) == 0:
            return images
        blurred = _blur_with_kernels(images.index_select(0, selected), kernel.index_select(0, selected))
        return images.index_copy(0, selected, blurred)
    delta = (offsets == 0).to(images.dtype).expand_as(kernel)
    kernel = torch.where(apply.unsqueeze(1), kernel, delta)  # samples not drawn keep a delta kernel
    return _blur_with_kernels(images, kernel)


def augment_batch(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly augment a batch of patches, with per-sample parameters drawn from ``generator``.

    Args:
        images: float (B, 3, H, W) RGB in [0, 1], contiguous or channels_last, on any device.
        config: which augmentations and how strong (``pcamlab.config.AugmentConfig``).
        generator: a ``torch.Generator`` on the images' device; the same seed gives the same output.

    Returns:
        Float (B, 3, H, W) in [0, 1] with the input's dtype, device and memory format. When
        ``augment_is_identity(config)`` the input tensor itself is returned (not a copy).

    Raises:
        ConfigError: a config field is out of range or the generator is on another device.
        DataError: ``images`` is not a float (B, 3, H, W) tensor.

    Example:
        >>> images = torch.rand(4, 3, 96, 96).contiguous(memory_format=torch.channels_last)
        >>> out = augment_batch(images, AugmentConfig(hed=0.05), torch.Generator().manual_seed(0))
        >>> out.is_contiguous(memory_format=torch.channels_last)
        True
    """
    check_augment_config(config)
    _check_images(images)
    if augment_is_identity(config) or images.shape[0] == 0:
        return images
    if generator.device.type != images.device.type:
        raise ConfigError(
            f"the augmentation generator is on {generator.device} but the images are on "
            f"{images.device}; create it with torch.Generator(device=images.device)"
        )
    memory_format = _memory_format(images)
    dtype = images.dtype
    work = images if dtype in (torch.float32, torch.float64) else images.float()

    # The geometric step also brings the batch into NCHW, the layout the colour operations expect.
    if config.crop_scale < 1:
        work = _random_resized_crop(work, config, generator).contiguous()  # dihedral folded in
        if config.dihedral and work.shape[-1] != work.shape[-2]:
            work = _random_dihedral(work, generator)
    elif config.dihedral:
        work = _random_dihedral(work, generator)
    else:
        work = work.contiguous()
    if config.hed > 0:
        work = _hed_jitter(work, config.hed, generator)
    if config.brightness > 0 or config.contrast > 0 or config.saturation > 0 or config.hue > 0:
        work = _colour_jitter(work, config, generator)
    if config.blur > 0:
        work = _gaussian_blur(work, config, generator)
    work = work.clamp(0.0, 1.0).to(dtype)
    return work.contiguous(memory_format=memory_format)

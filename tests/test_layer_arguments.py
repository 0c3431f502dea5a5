"""Layer constructors check their channel counts, kernel sizes and scales where they are
given, naming the argument (one shared validator, inverseflow/nn/_validate.py), rather
than accepting zero channels or failing inside torch.randn or a tuple unpacking."""

import numpy as np
import pytest
import torch

from inverseflow.nn import (ActNorm, AffineCoupling, ConvExp2d, EmergingConv2d, InvConv2d,
                            InvertibleConv1x1, SplineActivation, Split)
from inverseflow.transforms import InvConv2dModule


def _normflows_layer(*args, **kwargs):
    flows = pytest.importorskip("inverseflow.integrations.normflows")
    return flows.InvConv2dFlow(*args, **kwargs)


# Layers with (channels, kernel_size) as their first two arguments.
CONV_LAYERS = {
    "InvConv2d": lambda c, k=3: InvConv2d(c, k, order="TL"),
    "EmergingConv2d": lambda c, k=3: EmergingConv2d(c, k),
    "ConvExp2d": lambda c, k=3: ConvExp2d(c, k),
    "InvConv2dModule": lambda c, k=3: InvConv2dModule(c, k, order="TL"),
    "InvConv2dFlow": lambda c, k=3: _normflows_layer(c, k, order="TL"),
}
CHANNEL_LAYERS = {
    **CONV_LAYERS,
    "ActNorm": lambda c: ActNorm(c),
    "InvertibleConv1x1": lambda c: InvertibleConv1x1(c),
    "AffineCoupling": lambda c: AffineCoupling(c, 8),
    "Split": lambda c: Split(c),
}

BAD_CHANNELS = [(0, ValueError), (-4, ValueError), (4.0, TypeError), (True, TypeError),
                ("4", TypeError), (None, TypeError)]
BAD_KERNELS = [((3,), ValueError), ((3, 3, 3), ValueError), (3.0, TypeError),
               ((3, 2.0), TypeError), ((3, 0), ValueError), (0, ValueError), (True, TypeError),
               ("3", TypeError)]


@pytest.mark.parametrize("layer", sorted(CHANNEL_LAYERS))
@pytest.mark.parametrize("channels,error", BAD_CHANNELS)
def test_bad_channel_count_names_channels(layer, channels, error):
    with pytest.raises(error, match="channels"):
        CHANNEL_LAYERS[layer](channels)


@pytest.mark.parametrize("layer", sorted(CONV_LAYERS))
@pytest.mark.parametrize("kernel_size,error", BAD_KERNELS)
def test_bad_kernel_size_names_kernel_size(layer, kernel_size, error):
    with pytest.raises(error, match="kernel_size"):
        CONV_LAYERS[layer](4, kernel_size)


@pytest.mark.parametrize("layer", ["AffineCoupling", "Split"])
def test_layers_that_halve_the_channels_need_two(layer):
    with pytest.raises(ValueError, match="channels must be an integer >= 2"):
        CHANNEL_LAYERS[layer](1)


@pytest.mark.parametrize("layer", sorted(CONV_LAYERS))
def test_integer_like_arguments_are_accepted(layer):
    # numpy integers (a config read through numpy) and lists (a JSON round trip) are fine.
    module = CONV_LAYERS[layer](np.int64(4), [2, np.int32(3)])
    weights = [p for p in module.parameters() if p.dim() == 4]
    assert weights and all(tuple(w.shape[-2:]) == (2, 3) for w in weights)


@pytest.mark.parametrize("make,kwargs,error,match", [
    (InvConv2d, dict(channels=4, init_scale=-0.1), ValueError, "init_scale"),
    (InvConv2d, dict(channels=4, init_scale="0.1"), TypeError, "init_scale"),
    (ConvExp2d, dict(channels=2, init_scale=float("nan")), ValueError, "init_scale"),
    (ConvExp2d, dict(channels=2, max_terms=2.5), TypeError, "max_terms"),
    (AffineCoupling, dict(channels=4, width=0), ValueError, "width"),
    (AffineCoupling, dict(channels=4, width=8.0), TypeError, "width"),
    (SplineActivation, dict(shape=(2, 3.0, 3)), TypeError, r"shape\[1\]"),
    (SplineActivation, dict(shape=(2, 3, 3), bins=5.0), TypeError, "bins"),
])
def test_other_bad_arguments(make, kwargs, error, match):
    with pytest.raises(error, match=match):
        make(**kwargs)


def test_zero_channel_layer_is_not_built_silently():
    # The op itself takes C = 0 images; a layer of zero channels is a mistake in a model.
    with pytest.raises(ValueError, match="channels"):
        InvConv2d(0, 3, order="TL")
    assert InvConv2d(4, (1, 3), order="TL").weight.shape == torch.Size([4, 4, 1, 3])

"""The paper's backbones (DESIGN §10): the CNN flow and InverseFlow's k×k layer choice.
Exact inverses and log-dets against the dense Jacobian, checkpoint rebuilds, clear errors."""

import pytest
import torch

from inverseflow.models import ConvFlow, InverseFlow, build_model, from_preset
from inverseflow.nn import (ActNorm, ConvExp2d, EmergingConv2d, InvConv2d, InvertibleConv1x1,
                            SmoothLeakyReLU, SplineActivation)

CONV_LAYERS = ["inverse", "finc", "emerging", "conv-exp"]
SHAPE = (1, 4, 4)


def _perturbed(flow, rng):
    """float64, every parameter moved off its (often zero or identity) init."""
    flow = flow.double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=rng, dtype=p.dtype))
    for module in flow.modules():
        if isinstance(module, ActNorm):
            module.initialized.fill_(True)
    return flow


def _images(batch, rng):
    return 0.05 + 0.9 * torch.rand(batch, *SHAPE, generator=rng, dtype=torch.float64)


def _conv_flow(layer, activation, rng):
    return _perturbed(ConvFlow(SHAPE, blocks=2, steps=2, kernel_size=2, layer=layer,
                               activation=activation), rng)


def _glow_backbone(layer, step_layout, rng):
    return _perturbed(InverseFlow(SHAPE, levels=2, steps=1, kernel_size=2, coupling_width=8,
                                  layer=layer, order="TL", step_layout=step_layout), rng)


FLOWS = ([("cnn", layer, act) for layer in CONV_LAYERS
          for act in ("smooth-leaky-relu", "spline")]
         + [("glow", layer, "paper") for layer in CONV_LAYERS + [None]]
         + [("glow", "emerging", "glow")])


def _flow(kind, layer, variant, rng):
    return (_conv_flow if kind == "cnn" else _glow_backbone)(layer, variant, rng)


@pytest.mark.parametrize("kind,layer,variant", FLOWS)
def test_logdet_matches_dense_jacobian_and_decode_inverts(kind, layer, variant, rng):
    flow = _flow(kind, layer, variant, rng)
    x = _images(2, rng)
    z, logdet = flow.encode(x)
    assert z.shape == (2, 16) and logdet.shape == (2,)
    assert torch.allclose(flow.decode(z), x, atol=1e-9, rtol=0)
    for i in range(2):
        jac = torch.autograd.functional.jacobian(
            lambda v: flow.encode(v.reshape(1, *SHAPE))[0][0], x[i].flatten())
        sign, expected = torch.linalg.slogdet(jac)
        assert sign != 0
        assert abs(logdet[i].item() - expected.item()) < 1e-8, (logdet[i], expected)


@pytest.mark.parametrize("layer,kind", [("inverse", InvConv2d), ("finc", InvConv2d),
                                        ("emerging", EmergingConv2d), ("conv-exp", ConvExp2d)])
def test_conv_flow_is_built_as_the_paper_describes(layer, kind):
    flow = ConvFlow((1, 8, 8), blocks=3, steps=4, layer=layer, activation="smooth-leaky-relu")
    convs = [m for m in flow.layers if isinstance(m, kind)]
    activations = [m for m in flow.layers if isinstance(m, SmoothLeakyReLU)]
    assert len(convs) == 12 and len(activations) == 11       # none after the last conv
    assert flow.latent_shape == (16, 2, 2)
    if layer == "finc":
        orders = [m.order for m in convs]
        assert orders[:4] == ["TL", "TR", "BL", "BR"] and set(orders[4:]) == {"quad"}
        assert {m.solve_on for m in convs} == {"sampling"}


def test_glow_backbone_steps():
    paper = InverseFlow((1, 8, 8), 2, 2, layer="inverse", order="TL", step_layout="paper",
                        coupling_width=8)
    kinds = [type(m) for m in paper.levels[0][0].layers]
    assert kinds[1:3] == [InvConv2d, SplineActivation]
    assert not any(isinstance(m, InvertibleConv1x1) for m in paper.modules())
    default = InverseFlow((1, 8, 8), 2, 2, coupling_width=8)
    assert InvertibleConv1x1 in [type(m) for m in default.levels[0][0].layers]
    finc = InverseFlow((1, 8, 8), 2, 2, layer="finc", coupling_width=8)
    assert finc.config["order"] == "quad" and finc.config["solve_on"] == "sampling"
    glow = InverseFlow((1, 8, 8), 2, 2, layer=None, coupling_width=8)
    assert not any(isinstance(m, InvConv2d) for m in glow.modules())


@pytest.mark.parametrize("model,options", [
    ("convflow", dict(layer="emerging", activation="spline")),
    ("convflow", dict(layer="conv-exp")),
    ("inverseflow", dict(layer="emerging", step_layout="paper")),
    ("inverseflow", dict(layer="finc", step_layout="paper")),
])
def test_checkpoint_config_rebuilds_the_same_model(model, options, rng):
    torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=rng)))
    flow = from_preset("digits", model, **options)
    x = 0.05 + 0.9 * torch.rand(3, 1, 8, 8, generator=rng)
    flow.encode(x)                                            # ActNorm's data init
    rebuilt = build_model(dict(flow.config))
    rebuilt.load_state_dict(flow.state_dict())
    assert type(rebuilt) is type(flow) and rebuilt.config == flow.config
    assert torch.equal(rebuilt.encode(x)[0], flow.encode(x)[0])


def test_placement_switch_only_where_it_exists():
    flow = ConvFlow((1, 8, 8), 2, 2, layer="inverse")
    flow.set_solve_on("sampling")
    assert {m.solve_on for m in flow.layers if isinstance(m, InvConv2d)} == {"sampling"}
    for layer in ("emerging", "conv-exp"):
        with pytest.raises(ValueError, match="fixed placement"):
            ConvFlow((1, 8, 8), 2, 2, layer=layer).set_solve_on("density")
        with pytest.raises(ValueError, match="fixed placement"):
            InverseFlow((1, 8, 8), 2, 1, layer=layer, coupling_width=8).set_solve_on("density")


@pytest.mark.parametrize("kwargs,match", [
    (dict(layer="dense"), "layer must be one of"),
    (dict(activation="relu"), "activation must be one of"),
    (dict(blocks=0), "blocks"),
    (dict(steps=-1), "steps"),
    (dict(kernel_size=0), "kernel_size"),
    (dict(blocks=5), "divisible by 2"),
    (dict(image_shape=(1, 8)), "image_shape"),
    (dict(layer="conv-exp", solve_on="density"), "one placement"),
])
def test_conv_flow_bad_arguments(kwargs, match):
    args = dict(image_shape=(1, 8, 8), blocks=2, steps=2) | kwargs
    with pytest.raises(ValueError, match=match):
        ConvFlow(**args)


def test_glow_backbone_bad_arguments():
    with pytest.raises(ValueError, match="layer must be one of"):
        InverseFlow((1, 8, 8), 2, 2, layer="dense")
    with pytest.raises(ValueError, match="step_layout"):
        InverseFlow((1, 8, 8), 2, 2, step_layout="nice")
    flow = ConvFlow((1, 8, 8), 2, 2)
    with pytest.raises(ValueError, match="x must have shape"):
        flow.encode(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match="z must have shape"):
        flow.decode(torch.rand(2, 5))

"""Every generator at every scale and band count; every discriminator at several input sizes."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from srgan.config import CONF_DIR
from srgan.models import (
    ESRGANDiscriminator,
    LKAGenerator,
    PatchGANDiscriminator,
    RCABGenerator,
    RRDBGenerator,
    SRGANDiscriminator,
    SRResNetGenerator,
    StochasticGenerator,
    UNetDiscriminator,
)
from srgan.models.blocks import PixelShuffleUpsampler, fold_conv_through_pixel_shuffle, upsample_image
from tests.conftest import compose_config

GENERATOR_OPTIONS = sorted(p.stem for p in (CONF_DIR / "generator").glob("*.yaml"))
DISCRIMINATOR_OPTIONS = sorted(p.stem for p in (CONF_DIR / "discriminator").glob("*.yaml"))
SMALL = {"n_channels": 8, "n_blocks": 2}


def small_generator(option: str, bands: int, scale: int, **extra) -> torch.nn.Module:
    cfg = compose_config("train", [f"generator={option}"])
    node = {**cfg.generator, "in_channels": bands, "out_channels": bands, "scale": scale, **SMALL, **extra}
    if option == "rcab":
        node["reduction"] = 2  # 4 hidden units in the attention gate: none dead at this seed
    return instantiate(node, _convert_="all")


def test_every_family_is_configured():
    assert set(GENERATOR_OPTIONS) >= {"srresnet", "rcab", "rrdb", "lka", "esrgan", "stochastic"}
    assert set(DISCRIMINATOR_OPTIONS) >= {"srgan", "patchgan", "esrgan", "unet"}


@pytest.mark.parametrize("option", GENERATOR_OPTIONS)
@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("bands", [1, 3, 4, 6])
def test_generator_shape_finite_and_bicubic_at_init(option, scale, bands):
    g = small_generator(option, bands, scale)
    lr = torch.rand(2, bands, 6, 7)
    sr = g(lr)
    assert sr.shape == (2, bands, 6 * scale, 7 * scale)
    assert torch.isfinite(sr).all()
    # Global residual with a zero tail: the untrained generator is exactly bicubic upsampling.
    torch.testing.assert_close(sr, upsample_image(lr, scale, "bicubic"))


@pytest.mark.parametrize("option", GENERATOR_OPTIONS)
@pytest.mark.parametrize("upsampler", ["pixelshuffle", "nearest"])
def test_gradients_reach_every_parameter(option, upsampler):
    torch.manual_seed(0)
    g = small_generator(option, 4, 4, upsampler=upsampler)
    lr, hr = torch.rand(2, 4, 8, 8), torch.rand(2, 4, 32, 32)
    opt = torch.optim.SGD(g.parameters(), lr=0.1)
    # Step 0 only moves the zero-initialised tail (nothing upstream of a zero layer gets gradient);
    # from step 1 on, every parameter must receive a non-zero gradient.
    for _ in range(2):
        opt.zero_grad()
        (g(lr) - hr).abs().mean().backward()
        if _ == 0:
            opt.step()
    dead = [n for n, p in g.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead, f"{option}: no gradient reaches {dead}"


@pytest.mark.parametrize("option", GENERATOR_OPTIONS)
def test_generator_without_global_residual(option):
    g = small_generator(option, 3, 2, global_residual=None)
    lr = torch.rand(1, 3, 8, 8)
    out = g(lr)
    assert out.shape == (1, 3, 16, 16) and not torch.allclose(out, upsample_image(lr, 2, "bicubic"))


@pytest.mark.parametrize("option", GENERATOR_OPTIONS)
def test_relative_global_residual_scales_the_detail_by_the_interpolation(option):
    torch.manual_seed(0)
    g = small_generator(option, 2, 4, global_residual="bicubic_relative")
    lr = torch.rand(1, 2, 8, 8) * 0.3 + 0.005
    up = upsample_image(lr, 4, "bicubic")
    torch.testing.assert_close(g(lr), up)  # zero tail: exactly bicubic, as the additive mode
    with torch.no_grad():  # a detail of +0.1 in every band and pixel
        g.tail.bias.fill_(0.1)
    sr = g(lr)
    torch.testing.assert_close(sr, up * 1.1)
    # The band ratio (what NBR2 and the spectral angle see) is bicubic's, dark pixels included;
    # the additive mode shifts the ratio most where the signal is smallest.
    torch.testing.assert_close(sr[:, 0] / sr[:, 1], up[:, 0] / up[:, 1])
    additive = small_generator(option, 2, 4)
    with torch.no_grad():
        additive.tail.bias.fill_(0.1)
    assert not torch.allclose(additive(lr)[:, 0] / additive(lr)[:, 1], up[:, 0] / up[:, 1], rtol=1e-2)


def test_relative_global_residual_is_refused_for_statistical_normalisations():
    from types import SimpleNamespace

    from omegaconf import OmegaConf

    from srgan.config import ConfigError
    from srgan.data.normalization import LinearScale, ZScore
    from srgan.engine.build import check_relative_residual

    cfg = OmegaConf.create({"generator": {"global_residual": "bicubic_relative"}})
    check_relative_residual(cfg, SimpleNamespace(name="s2", normalization=LinearScale(10000.0)))
    with pytest.raises(ConfigError, match=r"generator.global_residual=bicubic_relative .* use bicubic there"):
        check_relative_residual(cfg, SimpleNamespace(name="s2", normalization=ZScore()))
    check_relative_residual(
        OmegaConf.create({"generator": {"global_residual": "bicubic"}}),
        SimpleNamespace(name="s2", normalization=ZScore()),
    )


@pytest.mark.parametrize("cls", [SRResNetGenerator, RCABGenerator, RRDBGenerator, LKAGenerator, StochasticGenerator])
def test_bad_scale_or_band_count_fails_at_construction(cls):
    with pytest.raises(ValueError, match=r"scale must be one of \(2, 3, 4, 8\), got 5"):
        cls(4, 4, 5, n_channels=8, n_blocks=1)
    with pytest.raises(ValueError, match="in_channels must be a positive integer"):
        cls(0, 0, 4, n_channels=8, n_blocks=1)
    with pytest.raises(ValueError, match="in_channels == out_channels"):
        cls(4, 3, 4, n_channels=8, n_blocks=1)
    with pytest.raises(ValueError, match="upsampler"):
        cls(4, 4, 4, n_channels=8, n_blocks=1, upsampler="deconv")


def test_published_default_sizes():
    for cls in (SRResNetGenerator, RCABGenerator, RRDBGenerator, LKAGenerator):
        g = cls(4, 4, 4)
        assert g.head.out_channels == 64 and len(g.body) == 16 + 1, cls.__name__
    esrgan = instantiate(compose_config("train", ["generator=esrgan"]).generator, _convert_="all")
    assert len(esrgan.body) == 23 + 1
    assert esrgan.body[0].blocks[0].convs[0].out_channels == 32  # growth channels


def test_rrdb_growth_and_residual_scaling_are_used():
    a = RRDBGenerator(4, 4, 4, n_channels=8, n_blocks=1, growth_channels=4)
    b = RRDBGenerator(4, 4, 4, n_channels=8, n_blocks=1, growth_channels=12)
    assert sum(p.numel() for p in a.parameters()) < sum(p.numel() for p in b.parameters())
    x = torch.rand(1, 8, 6, 6)
    block = b.body[0]
    torch.manual_seed(0)
    block.res_scale = 0.0
    torch.testing.assert_close(block(x), x)  # res_scale 0: the block is the identity
    block.res_scale = 0.5
    assert not torch.allclose(block(x), x)


def test_srresnet_norm_is_selectable():
    g = SRResNetGenerator(4, 4, 2, n_channels=8, n_blocks=1, norm="batch")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in g.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in SRResNetGenerator(4, 4, 2, n_blocks=1).modules())
    with pytest.raises(ValueError, match="norm"):
        SRResNetGenerator(4, 4, 2, norm="layer")


def test_stochastic_noise_modes():
    g = StochasticGenerator(4, 4, 2, n_channels=8, n_blocks=2, noise_mode="fixed", noise_seed=1)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if "strength" in name or name.startswith("tail"):
                p.normal_(std=0.5)
    lr = torch.rand(1, 4, 8, 8)
    g.eval()
    with torch.no_grad():
        fixed_a, fixed_b = g(lr), g(lr)
        g.set_noise("fixed", seed=2)
        other_seed = g(lr)
        g.set_noise("random")
        rand_a, rand_b = g(lr), g(lr)
        g.set_noise("none")
        none_a, none_b = g(lr), g(lr)
        g.train()
        train_a, train_b = g(lr), g(lr)
    torch.testing.assert_close(fixed_a, fixed_b)
    assert not torch.allclose(fixed_a, other_seed)
    assert not torch.allclose(rand_a, rand_b)
    torch.testing.assert_close(none_a, none_b)
    assert not torch.allclose(train_a, train_b)  # noise is always resampled in training
    with pytest.raises(ValueError, match="noise_mode"):
        g.set_noise("sometimes")


def test_icnr_upsampler_starts_as_nearest_neighbour():
    up = PixelShuffleUpsampler(4, 2)
    y = up(torch.rand(1, 4, 5, 5))
    cells = y.unfold(2, 2, 2).unfold(3, 2, 2)
    assert torch.allclose(cells, cells[..., :1, :1].expand_as(cells))


def small_discriminator(option: str, bands: int, **extra) -> torch.nn.Module:
    cfg = compose_config("train", [f"discriminator={option}"])
    return instantiate({**cfg.discriminator, "in_channels": bands, "base_channels": 8, **extra}, _convert_="all")


@pytest.mark.parametrize("option", DISCRIMINATOR_OPTIONS)
@pytest.mark.parametrize("size", [(32, 32), (64, 64), (128, 128), (96, 64)])
@pytest.mark.parametrize("spectral_norm", [False, True])
def test_discriminator_accepts_any_patch_size(option, size, spectral_norm):
    d = small_discriminator(option, 6, spectral_norm=spectral_norm)
    x = torch.rand(2, 6, *size, requires_grad=True)
    logits = d(x)
    assert logits.shape[:2] == (2, 1) and torch.isfinite(logits).all()
    if option == "unet":
        assert logits.shape[-2:] == size  # per-pixel decisions
    if option == "patchgan":
        assert logits.dim() == 4 and logits.shape[-1] > 1  # per-patch decisions
    logits.mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_spectral_norm_is_applied_when_asked():
    for cls in (SRGANDiscriminator, PatchGANDiscriminator, ESRGANDiscriminator, UNetDiscriminator):
        with_sn = cls(4, base_channels=8, spectral_norm=True)
        without = cls(4, base_channels=8, spectral_norm=False)
        assert any(n.endswith("weight_orig") for n, _ in with_sn.named_parameters()), cls.__name__
        assert not any(n.endswith("weight_orig") for n, _ in without.named_parameters()), cls.__name__


def test_discriminator_head_does_not_grow_with_patch_size():
    d = SRGANDiscriminator(4)
    # The reference's dense head over a flattened 128 px input has 18.9 M parameters on its own;
    # after adaptive pooling ours is Linear(512, 1024) + Linear(1024, 1).
    assert sum(p.numel() for p in d.head.parameters()) == 512 * 1024 + 1024 + 1024 + 1


def test_discriminator_rejects_bad_band_count():
    for cls in (SRGANDiscriminator, PatchGANDiscriminator, ESRGANDiscriminator, UNetDiscriminator):
        with pytest.raises(ValueError, match="in_channels must be a positive integer"):
            cls(0)


def test_docs_model_table_is_generated_and_current():
    import subprocess
    import sys

    from srgan.config import PROJECT_ROOT

    out = subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "bench" / "model_table.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr


def test_head_and_tail_kernels_are_configurable_and_checked():
    g = RCABGenerator(4, 4, 4, n_channels=16, n_blocks=1, head_kernel=9, tail_kernel=9)
    assert g.head.kernel_size == (9, 9) and g.tail.kernel_size == (9, 9)
    assert g(torch.rand(1, 4, 12, 12)).shape == (1, 4, 48, 48)
    assert SRResNetGenerator(4, 4, 4).head.kernel_size == (9, 9)  # Ledig et al.
    with pytest.raises(ValueError, match="head_kernel"):
        RCABGenerator(4, 4, 4, head_kernel=4)


def test_srgan_discriminator_strided_kernel():
    from srgan.models import SRGANDiscriminator

    for k in (3, 4):
        d = SRGANDiscriminator(4, base_channels=8, downsample_kernel=k)
        assert d.features[2].kernel_size == (k, k) and d(torch.rand(2, 4, 100, 76)).shape == (2, 1)
    with pytest.raises(ValueError, match="downsample_kernel"):
        SRGANDiscriminator(4, downsample_kernel=5)


def test_band_conv_matches_conv2d_and_keeps_the_layout():
    from srgan.models.blocks import BandConv2d

    torch.manual_seed(0)
    band = BandConv2d(16, 4, 9, padding=4)
    plain = torch.nn.Conv2d(16, 4, 9, padding=4)
    plain.load_state_dict(band.state_dict())
    x = torch.randn(2, 16, 20, 24, requires_grad=True)
    y = band(x)
    assert y.is_contiguous() and torch.allclose(y, plain(x), atol=1e-5)
    y.square().sum().backward()
    grad_band, x.grad = x.grad.clone(), None
    plain(x).square().sum().backward()
    assert torch.allclose(grad_band, x.grad, atol=1e-4)
    nhwc = x.detach().contiguous(memory_format=torch.channels_last)
    assert band(nhwc).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kernel,bias", [(9, True), (3, False), (4, True)])
def test_band_conv_training_gradients_match_conv2d(kernel, bias):
    """Training on the CPU takes the channels-last forward / NCHW backward path; its gradients are Conv2d's."""
    from srgan.models.blocks import BandConv2d

    torch.manual_seed(0)
    band = BandConv2d(16, 4, kernel, padding=kernel // 2, bias=bias)
    plain = torch.nn.Conv2d(16, 4, kernel, padding=kernel // 2, bias=bias)
    plain.load_state_dict(band.state_dict())
    x = torch.randn(2, 16, 20, 24, requires_grad=True)
    grads = {}
    for name, conv in (("band", band), ("plain", plain)):
        y = conv(x)
        if name == "band":
            assert type(y.grad_fn).__name__ == "_ChannelsLastForwardNCHWBackwardBackward"
            assert y.is_contiguous() and y.shape == plain(x).shape
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads[name] = [t.grad.clone() for t in (x, *conv.parameters())]
        x.grad = None
    for got, want in zip(grads["band"], grads["plain"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # Without gradients (inference) and under bf16 autocast it is the plain channels-last conv.
    with torch.no_grad():
        assert not band._split_backward(x)
        torch.testing.assert_close(band(x), plain(x), rtol=1e-4, atol=1e-5)
    assert band._split_backward(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not band._split_backward(x)
        y = band(x)
    assert type(y.grad_fn).__name__ != "_ChannelsLastForwardNCHWBackwardBackward"
    y.float().sum().backward()
    assert x.grad is not None


def test_band_conv_split_backward_is_twice_differentiable():
    from srgan.models.blocks import _ChannelsLastForwardNCHWBackward as Split

    torch.manual_seed(0)
    for kernel, padding in ((3, 1), (5, 2), (3, 0)):
        x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
        w = torch.randn(2, 2, kernel, kernel, dtype=torch.float64, requires_grad=True)
        b = torch.randn(2, dtype=torch.float64, requires_grad=True)

        def fn(x, w, b, padding=padding):
            return Split.apply(x, w, b, (padding, padding))

        assert torch.autograd.gradcheck(fn, (x, w, b))
        assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("kernel", [(3, 3), (9, 9), (5, 7), (1, 1)])
def test_conv_folded_through_pixel_shuffle_is_the_same_conv(factor, kernel):
    torch.manual_seed(0)
    z = torch.randn(2, 6 * factor * factor, 7, 9)
    weight, bias = torch.randn(3, 6, *kernel), torch.randn(3)
    padding = (kernel[0] // 2, kernel[1] // 2)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pixel_shuffle(z, factor), weight, bias, 1, padding)
    folded, folded_bias, folded_padding = fold_conv_through_pixel_shuffle(weight, bias, factor)
    reach = [-(-p // factor) for p in padding]
    assert folded.shape == (3 * factor**2, 6 * factor**2, 2 * reach[0] + 1, 2 * reach[1] + 1)
    conv = torch.nn.functional.conv2d(z, folded, folded_bias, 1, folded_padding)
    got = torch.nn.functional.pixel_shuffle(conv, factor)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("scale", [2, 3, 4, 8])
@pytest.mark.parametrize("tail_kernel", [3, 9])
@pytest.mark.parametrize("channels_last", [False, True])
def test_inference_with_the_folded_tail_equals_the_layers_as_written(scale, tail_kernel, channels_last):
    torch.manual_seed(scale)
    g = SRResNetGenerator(4, 4, scale, n_channels=8, n_blocks=1, tail_kernel=tail_kernel).eval()
    torch.nn.init.normal_(g.tail.weight, std=0.05)
    torch.nn.init.normal_(g.tail.bias, std=0.05)
    x = torch.rand(2, 4, 11, 14)
    if channels_last:
        g.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.enable_grad():  # autograd on: the layers as written (training's path)
        assert not g._fold_tail(x)
        written = g(x).detach()
    with torch.inference_mode():
        assert g._fold_tail(x) == (scale != 3)  # x3 is one x3 stage: folding it costs more than it saves
        folded = g(x)
    torch.testing.assert_close(folded, written, rtol=1e-5, atol=1e-5)


def test_a_replaced_or_hooked_tail_is_not_folded():
    torch.manual_seed(0)
    g = SRResNetGenerator(4, 4, 2, n_channels=8, n_blocks=1, global_residual=None).eval()
    x = torch.rand(1, 4, 6, 6)
    with torch.inference_mode():
        assert g._fold_tail(x)
    replacements = {
        "reflect padding": torch.nn.Conv2d(8, 4, 3, padding=1, padding_mode="reflect"),
        "no padding": torch.nn.Conv2d(8, 4, 3, padding=0),
        "dilated": torch.nn.Conv2d(8, 4, 3, padding=2, dilation=2),
        "not a conv": torch.nn.Sequential(torch.nn.Conv2d(8, 4, 3, padding=1)),
    }
    for name, tail in replacements.items():
        g.tail = tail
        with torch.inference_mode():
            assert not g._fold_tail(x), name
            out = g(x)
        with torch.enable_grad():
            torch.testing.assert_close(out, g(x).detach(), msg=name)
    g.tail = torch.nn.Conv2d(8, 4, 3, padding=1)
    calls = []
    g.tail.register_forward_hook(lambda *_: calls.append(1))
    with torch.inference_mode():
        assert not g._fold_tail(x)
        g(x)
    assert calls == [1]  # the hook ran: the tail was called as a module


@pytest.mark.parametrize("strict", [True, False])
def test_torch_export_keeps_the_tail_as_written(strict):
    g = SRResNetGenerator(4, 4, 4, n_channels=8, n_blocks=1).eval()
    with torch.no_grad():  # inference: eager calls would fold here, a traced graph must not
        program = torch.export.export(g, (torch.rand(1, 4, 8, 8),), strict=strict)
    convs = [n for n in program.graph.nodes if "conv2d" in str(n.target) or "convolution" in str(n.target)]
    tail_input = program.graph_signature.inputs_to_parameters
    assert tail_input[str(convs[-1].args[1])] == "tail.weight"

"""Loss terms on known values, real pretrained weights (offline), adversarial types, bf16, config errors."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
import torchvision
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from srgan.losses import (
    BandMeanLoss,
    CharbonnierLoss,
    GANLoss,
    L1Loss,
    L2Loss,
    LPIPSLoss,
    SAMLoss,
    SSIMLoss,
    TVLoss,
    VGGPerceptualLoss,
)
from srgan.losses.adversarial import GAN_TYPES
from srgan.losses.perceptual import BandMapping, vgg_layer_index
from srgan.weights import HUB_FILES, MissingWeightsError, hub_path, read_flax_checkpoint
from tests.conftest import compose_config


def test_pixel_losses_on_hand_computed_values():
    sr = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    hr = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]]])
    assert L1Loss()(sr, hr).item() == pytest.approx(1.5)  # (0 + 1 + 2 + 3) / 4
    assert L2Loss()(sr, hr).item() == pytest.approx(3.5)  # (0 + 1 + 4 + 9) / 4
    expected = (1e-3 + math.sqrt(1 + 1e-6) + math.sqrt(4 + 1e-6) + math.sqrt(9 + 1e-6)) / 4
    assert CharbonnierLoss(eps=1e-3)(sr, hr).item() == pytest.approx(expected, rel=1e-6)


def test_structural_losses_on_known_values():
    x = torch.rand(2, 4, 32, 32)
    assert SSIMLoss()(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert SSIMLoss()(x, torch.rand(2, 4, 32, 32)).item() > 0.5
    assert TVLoss()(torch.full((1, 3, 8, 8), 0.7), None).item() == 0.0
    ramp = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8)
    assert TVLoss()(ramp, None).item() == pytest.approx(1.0)  # horizontal steps of 1, no vertical change


def test_spectral_angle_known_values_and_gradients():
    hr = torch.rand(2, 5, 6, 6) + 0.05
    sam = SAMLoss()
    assert sam(hr, hr.clone()).item() == 0.0
    assert sam(hr * 3.7, hr).item() == pytest.approx(0.0, abs=1e-6)  # a positive scale keeps the angle
    e1, e2 = torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4)
    e1[:, 0], e2[:, 1] = 1.0, 1.0
    assert sam(e1, e2).item() == pytest.approx(math.pi / 2, abs=1e-6)
    sr = hr.clone().requires_grad_(True)
    sam(sr, hr).backward()  # finite gradient exactly where the spectra coincide
    assert torch.isfinite(sr.grad).all()
    with pytest.raises(ValueError, match="2 bands"):
        sam(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 4))


def test_band_mean_loss():
    hr = torch.rand(1, 3, 8, 8)
    assert BandMeanLoss()(hr.flip(-1), hr).item() == pytest.approx(0.0, abs=1e-7)  # same means
    assert BandMeanLoss()(hr + 0.1, hr).item() == pytest.approx(0.1, abs=1e-6)


# ---- pretrained backbones (converted offline by `make weights`; real weights in CI) ----


@pytest.mark.parametrize("network", ["vgg16", "alexnet"])
def test_converted_weights_load_strictly_into_torchvision(network):
    state = torch.load(hub_path(network), weights_only=True)
    model = getattr(torchvision.models, network)(weights=None)
    model.load_state_dict(state, strict=True)
    assert all(torch.isfinite(v).all() for k, v in state.items() if k.startswith("features."))
    # The classifier is absent from the source and poisoned on purpose: no silent nonsense.
    classifier = [v for k, v in state.items() if k.startswith("classifier.")]
    assert classifier and all(torch.isnan(v).all() for v in classifier)
    # ... and torchvision's ordinary loading code finds the file.
    getattr(torchvision.models, network)(weights="IMAGENET1K_V1")


def test_converted_features_respond_like_imagenet_filters():
    # First-layer filters of an ImageNet VGG16 are oriented edge and colour detectors: mostly
    # zero-mean kernels with a clear structure, unlike random initialisation.
    state = torch.load(hub_path("vgg16"), weights_only=True)
    first = state["features.0.weight"]
    assert first.shape == (64, 3, 3, 3)
    random = torchvision.models.vgg16(weights=None).features[0].weight.detach()
    assert first.abs().max() > 3 * random.abs().max()


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    return torchvision.transforms.functional.gaussian_blur(x, kernel_size=9, sigma=sigma)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_is_zero_on_identity_and_grows_with_noise_and_blur(net):
    torch.manual_seed(0)
    loss = LPIPSLoss(num_bands=4, net=net, rgb_bands=[0, 1, 2])
    yy, xx = torch.meshgrid(torch.linspace(0, 6, 64), torch.linspace(0, 6, 64), indexing="ij")
    img = torch.stack([0.5 + 0.4 * torch.sin(xx * (b + 1)) * torch.cos(yy) for b in range(4)])[None]
    assert loss(img, img.clone()).item() == pytest.approx(0.0, abs=1e-6)
    noisy = [loss((img + s * torch.randn_like(img)).clamp(0, 1), img).item() for s in (0.02, 0.1, 0.3)]
    blurred = [loss(blur(img, s), img).item() for s in (0.5, 1.5, 3.0)]
    assert noisy == sorted(noisy) and noisy[0] > 0
    assert blurred == sorted(blurred) and blurred[0] > 0


def test_vgg_perceptual_loss_is_frozen_fp32_and_outside_the_parameters():
    loss = VGGPerceptualLoss(num_bands=6, network="vgg16", layers={"relu1_2": 0.5, "relu2_2": 0.5})
    assert list(loss.parameters()) == []  # nothing for an optimizer or DDP to pick up
    assert not any(p.requires_grad for p in loss._net.net.parameters())
    hr = torch.rand(2, 6, 32, 32)
    sr = (hr + 0.05 * torch.randn_like(hr)).requires_grad_(True)
    value = loss(sr, hr)
    assert value.dtype == torch.float32 and value.item() > 0
    value.backward()
    assert torch.isfinite(sr.grad).all() and sr.grad.abs().sum() > 0
    assert loss(hr, hr.clone()).item() == pytest.approx(0.0, abs=1e-7)
    # Every band on its own as grey, deterministically: the same call gives the same value.
    assert loss(sr, hr).item() == loss(sr, hr).item()


def test_vgg_layer_names_map_to_torchvision_indices():
    assert vgg_layer_index("vgg16", "relu1_1") == 1
    assert vgg_layer_index("vgg16", "relu5_3") == 29
    assert vgg_layer_index("vgg19", "relu5_4") == 35
    features16 = torchvision.models.vgg16(weights=None).features
    assert isinstance(features16[vgg_layer_index("vgg16", "relu4_3")], torch.nn.ReLU)
    with pytest.raises(ValueError, match="relu5_4"):
        vgg_layer_index("vgg16", "relu5_4")


def test_band_mapping_is_explicit():
    x = torch.arange(4.0).view(1, 4, 1, 1).expand(1, 4, 2, 2)
    assert BandMapping([2, 1, 0], 4)(x)[0, :, 0, 0].tolist() == [2.0, 1.0, 0.0]
    grey = BandMapping(None, 4)(x)
    assert grey.shape == (4, 3, 2, 2) and grey[3, :, 0, 0].tolist() == [3.0, 3.0, 3.0]
    with pytest.raises(ValueError, match="index 4 is outside the 4 bands"):
        BandMapping([0, 1, 4], 4)


def test_missing_weights_fail_at_construction_saying_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(MissingWeightsError, match="make weights"):
        VGGPerceptualLoss(num_bands=3)
    with pytest.raises(MissingWeightsError, match="make weights"):
        LPIPSLoss(num_bands=3, net="alex")
    with pytest.raises(MissingWeightsError, match="no offline source"):
        VGGPerceptualLoss(num_bands=3, network="vgg19")
    # A weight of 0 costs nothing: the perceptual term is not even built.
    loss = instantiate(compose_config("train", ["loss=full"]).loss)
    assert "perceptual" not in loss.terms and "lpips" not in loss.terms


def test_vgg19_works_where_its_weights_exist(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    target = tmp_path / "checkpoints" / HUB_FILES["vgg19"]
    target.parent.mkdir(parents=True)
    torch.save(torchvision.models.vgg19(weights=None).state_dict(), target)  # stands in for the download
    loss = VGGPerceptualLoss(num_bands=3, network="vgg19", layers={"relu5_4": 1.0}, rgb_bands=[0, 1, 2])
    assert loss(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)).item() > 0


def test_weight_unpickler_refuses_code(tmp_path):
    evil = tmp_path / "evil.ckpt"

    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    evil.write_bytes(pickle.dumps({"VGG16_0": Payload()}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        read_flax_checkpoint(evil)


# ---- adversarial ----


@pytest.mark.parametrize("gan_type", GAN_TYPES)
def test_discriminator_loss_pushes_real_and_fake_apart(gan_type):
    torch.manual_seed(0)
    gan = GANLoss(gan_type, r1_weight=1.0)
    d = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 1))
    real, fake = torch.rand(16, 3, 2, 2) + 0.5, torch.rand(16, 3, 2, 2) - 0.5
    opt = torch.optim.SGD(d.parameters(), lr=0.05)

    def gap():
        with torch.no_grad():
            return (d(real).mean() - d(fake).mean()).item()

    before = gap()
    for _ in range(30):
        opt.zero_grad()
        gan.discriminator_loss(d(real), d(fake)).backward()
        opt.step()
    assert gap() > before + 0.1
    # The generator loss pulls the other way: it falls as D scores fakes more like reals.
    fake_logits = d(fake)
    g_now = gan.generator_loss(fake_logits, d(real)).item()
    g_better = gan.generator_loss(fake_logits + 1.0, d(real)).item()
    assert g_better < g_now


@pytest.mark.parametrize("gan_type", GAN_TYPES)
def test_penalties_are_finite_and_differentiable(gan_type):
    torch.manual_seed(0)
    gan = GANLoss(gan_type, r1_weight=2.0)
    d = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.LeakyReLU(0.2), torch.nn.Flatten(), torch.nn.Linear(16, 1)
    )
    real = torch.rand(4, 3, 4, 4).requires_grad_(True)
    interp = torch.rand(4, 3, 4, 4).requires_grad_(True)
    penalties = gan.penalties(d(real), real, d(interp), interp)
    assert set(penalties) == ({"r1", "gp"} if gan_type == "wgan_gp" else {"r1"})
    total = sum(penalties.values())
    assert torch.isfinite(total)
    total.backward()
    # Biases do not change input gradients, so only the weights get gradients from a penalty.
    weights = [p for n, p in d.named_parameters() if n.endswith("weight")]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in weights)


def test_label_smoothing_moves_the_targets():
    logits = torch.zeros(4, 1)
    plain, smooth = GANLoss("vanilla"), GANLoss("vanilla", real_label=0.9, fake_label=0.1)
    assert (
        plain.discriminator_loss(logits + 5, logits - 5).item()
        < smooth.discriminator_loss(logits + 5, logits - 5).item()
    )
    with pytest.raises(ValueError, match="label smoothing"):
        GANLoss("hinge", real_label=0.9)
    with pytest.raises(ValueError, match="gan_type"):
        GANLoss("wasserstein")
    with pytest.raises(ValueError, match="real data"):
        GANLoss("ragan").generator_loss(logits)


# ---- composite ----


def test_every_term_in_fp32_under_bf16_autocast_matches_fp32():
    cfg = compose_config(
        "train",
        ["loss=full"]
        + [
            f"loss.weights.{t}=1.0"
            for t in ("l2", "charbonnier", "ssim", "tv", "sam", "band_mean", "perceptual", "lpips")
        ],
    )
    loss = instantiate(cfg.loss)
    assert set(loss.terms) == {"l1", "l2", "charbonnier", "ssim", "tv", "sam", "band_mean", "perceptual", "lpips"}
    torch.manual_seed(0)
    hr = torch.rand(2, 4, 32, 32) * 0.4
    sr = hr + 0.02 * torch.randn_like(hr)
    ref_total, ref_parts = loss.content(sr, hr)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, parts = loss.content(sr.bfloat16(), hr)
    assert total.dtype == torch.float32 and all(v.dtype == torch.float32 for v in parts.values())
    for name, value in parts.items():
        # Inputs rounded to bf16 (3 significant digits) change each term by about that much.
        assert value.item() == pytest.approx(ref_parts[name].item(), rel=0.05, abs=2e-3), name
    assert total.item() == pytest.approx(ref_total.item(), rel=0.05)


def test_bad_loss_configs_fail_before_training_naming_the_key():
    with pytest.raises(InstantiationException, match="unknown term.*'ssimm'"):
        instantiate(compose_config("train", ["loss=full", "+loss.weights.ssimm=0.1"]).loss)
    with pytest.raises(InstantiationException, match="loss.weights.sam must be >= 0"):
        instantiate(compose_config("train", ["loss=full", "loss.weights.sam=-1"]).loss)
    with pytest.raises(InstantiationException, match="index 7 is outside the 4 bands"):
        instantiate(
            compose_config(
                "train", ["loss=full", "loss.weights.perceptual=1", "loss.terms.perceptual.rgb_bands=[0,1,7]"]
            ).loss
        )


def test_install_converts_into_an_empty_hub_cache(tmp_path, monkeypatch):
    # CI machines may already hold the files in the real cache; convert into a fresh one here.
    from srgan.weights import install

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    report = install()
    assert set(report) == {"vgg16", "alexnet"} and all("converted" in v for v in report.values())
    for network in ("vgg16", "alexnet"):
        getattr(torchvision.models, network)(weights="IMAGENET1K_V1")  # strict load from the new cache
    assert all("left as is" in v for v in install().values())  # never overwrites

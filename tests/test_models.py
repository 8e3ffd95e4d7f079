import pytest
import torch
from conftest import WEIGHTS, load_fixture, require

from srcore.errors import CheckpointError, ConfigError
from srcore.models import build, load_model, load_weights, preset_names, save_model
from srcore.models.checkpoint import read_checkpoint

# fixture name -> (preset, overrides from the fixture config, input range)
FIXTURES = {
    "dvmsr_official_x4": ("dvmsr", {}, 1.0),
    "dvmsr_custom_random_x3": ("dvmsr", {"embed_dim": 48, "depths": (2, 2, 2)}, 1.0),
    "mair_tiny_light_x4": ("mair_t", {}, 1.0),
    "mair_small_light_x4": ("mair_s", {}, 1.0),
    "srconvnet_x4": ("srconvnet", {}, 255.0),
    "ibmdn_ntire2025_official_x4": ("ibmdn", {}, 1.0),
    "rlfn_ntire_official_x4": ("rlfn", {}, 255.0),
}


@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_fixture_parity(fixture):
    fx = load_fixture(fixture)
    name, overrides, rng = FIXTURES[fixture]
    model = build(name, fx["config"]["upscale"], **overrides).eval()
    load_weights(model, fx["state_dict"], name=name)
    assert sum(p.numel() for p in model.parameters()) == fx["num_params"]
    with torch.no_grad():
        out = model(fx["input"] / rng) * rng
    expected = fx["output"]
    assert out.shape == expected.shape
    assert (out - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("name,count", [("dvmsr", 424_428), ("mair_t", 897_228), ("mair_s", 1_374_156),
                                        ("ibmdn", 121_116), ("rlfn", 317_218), ("srconvnet", 1_007_515)])
def test_official_parameter_counts(name, count):
    assert sum(p.numel() for p in build(name, 4).parameters()) == count


@pytest.mark.parametrize("name", preset_names())
@pytest.mark.parametrize("scale", [2, 3])
def test_every_model_any_scale_and_odd_size(name, scale):
    model = build(name, scale, **({"depths": (1, 1)} if name.startswith(("dvmsr", "mair")) else {})).eval()
    x = torch.rand(2, 3, 17, 23)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 3, 17 * scale, 23 * scale)


def test_output_independent_of_batch_composition():
    model = build("dvmsr", 2, depths=(1, 1)).eval()
    x = torch.rand(3, 3, 12, 14)
    with torch.no_grad():
        together = model(x)
        alone = model(x[1:2])
    assert torch.allclose(together[1:2], alone, atol=1e-5)


def test_forward_features_expose_blocks_and_deep():
    model = build("dvmsr", 4).eval()
    feats = model.forward_features(torch.rand(1, 3, 8, 8))
    assert len(feats.blocks) == 4 and feats.deep.shape == (1, 60, 8, 8)


@pytest.mark.parametrize("weights", ["dvmsr_ntire2024_x4.pth", "dvmsr_release_x4.pth"])
def test_official_dvmsr_weights_load_strictly(weights):
    path = require(WEIGHTS / weights)
    model = load_model(path, name="dvmsr", scale=4)
    if weights == "dvmsr_release_x4.pth":
        other = load_model(path, name="dvmsr", scale=4, key="params")
        ema = read_checkpoint(path)["params_ema"]
        assert torch.equal(model.state_dict()["conv_first.weight"], ema["conv_first.weight"])
        assert other is not model


@pytest.mark.parametrize("name,weights",
                         [("ibmdn", "ibmdn_ntire2025_x4.pth"), ("rlfn", "rlfn_ntire2024_x4.pth")])
def test_official_zoo_weights_load_strictly(name, weights):
    load_model(require(WEIGHTS / weights), name=name, scale=4)


def test_wrong_architecture_or_scale_is_named(tmp_path):
    path = require(WEIGHTS / "dvmsr_ntire2024_x4.pth")
    with pytest.raises(CheckpointError, match="another scale"):
        load_model(path, name="dvmsr", scale=2)
    with pytest.raises(CheckpointError, match="missing keys"):
        load_model(path, name="rlfn", scale=4)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_model(bad, name="dvmsr")
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pth", name="dvmsr")


def test_own_checkpoint_round_trip(tmp_path):
    model = build("ibmdn", 3, chfab=True)
    save_model(tmp_path / "m.pth", model, "ibmdn")
    loaded = load_model(tmp_path / "m.pth")
    assert loaded.config == model.config
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model.eval()(x))
    with pytest.raises(CheckpointError, match="x3, not x4"):
        load_model(tmp_path / "m.pth", scale=4)
    with pytest.raises(CheckpointError, match="not 'rlfn'"):
        load_model(tmp_path / "m.pth", name="rlfn")


def test_bad_configs():
    with pytest.raises(ConfigError, match="unknown model"):
        build("edsr")
    with pytest.raises(ConfigError, match="scale"):
        build("dvmsr", 5)
    with pytest.raises(ConfigError, match="placement"):
        build("ibmdn", 4, num_blocks=3)
    with pytest.raises(ConfigError, match="widht: Extra inputs"):
        build("rlfn", 4, widht=3)


def test_ibmdn_chfab_option_changes_attention_only():
    plain, chfab = build("ibmdn", 4), build("ibmdn", 4, chfab=True)
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in chfab.parameters())
    chfab.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(plain.eval()(x), chfab.eval()(x))


def test_involution_backends_agree():
    from srcore.ops.involution import involution

    x, w = torch.randn(2, 32, 9, 11), torch.randn(2, 2 * 9, 9, 11)
    assert torch.allclose(involution(x, w, 3, 2, "shift"), involution(x, w, 3, 2, "unfold"), atol=1e-5)

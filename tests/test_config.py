"""Config: defaults match AnimeGAN v1, bad input gives one clear line, identity ignores seed/runtime."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from ablation.config import TrainConfig, cell_hash, load_train_config, parse_set_options
from ablation.errors import UserError


def test_defaults_are_official_animegan_v1() -> None:
    cfg = TrainConfig()
    assert (cfg.schedule.epochs, cfg.schedule.init_epochs, cfg.schedule.batch_size) == (101, 5, 6)
    assert (cfg.optim.init_lr, cfg.optim.g_lr, cfg.optim.d_lr) == (1e-4, 8e-5, 1.6e-4)
    assert (cfg.optim.beta1, cfg.optim.beta2) == (0.5, 0.999)
    assert (cfg.loss.g_adv_weight, cfg.loss.d_adv_weight) == (300.0, 300.0)
    assert (cfg.loss.content_weight, cfg.loss.style_weight, cfg.loss.color_weight) == (1.5, 3.0, 10.0)
    assert cfg.loss.gan_type == "lsgan" and cfg.model.d_sn is True
    w = cfg.loss.d_weights
    assert (w.real, w.fake, w.gray, w.smooth) == (1.0, 1.0, 1.0, 0.1)
    assert cfg.loss.style_target == "gray" and cfg.loss.color_scale == "unit" and cfg.loss.color_count == 1


def test_config_is_frozen() -> None:
    cfg = TrainConfig()
    with pytest.raises(ValidationError):
        cfg.loss.style_weight = 5.0  # type: ignore[misc]


def test_set_overrides_parse_yaml_scalars(tmp_path: Path) -> None:
    cfg = load_train_config(None, parse_set_options(["loss.style_weight=6", "loss.style_target=color",
                                                     "model.d_sn=false"]))
    assert cfg.loss.style_weight == 6.0 and cfg.loss.style_target == "color" and cfg.model.d_sn is False


def test_unknown_key_in_file_names_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("loss:\n  style_wieght: 3\n")
    with pytest.raises(UserError) as err:
        load_train_config(path)
    assert err.value.lines == [f"{path}: loss.style_wieght: unknown key (not a config field)"]


def test_wrong_type_names_expected_and_given(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("loss:\n  style_weight: lots\n  gan_type: wgan\n")
    with pytest.raises(UserError) as err:
        load_train_config(path)
    lines = err.value.lines
    assert f"{path}: loss.style_weight: expected a number, got 'lots'" in lines
    assert any(line.startswith(f"{path}: loss.gan_type: expected one of 'lsgan'") and line.endswith("got 'wgan'")
               for line in lines)


def test_unknown_set_key_suggests_the_real_path() -> None:
    with pytest.raises(UserError) as err:
        load_train_config(None, {"style_weight": 4})
    assert err.value.lines == ["--set: style_weight: expected a config field (did you mean loss.style_weight?), "
                               "got <unknown key>"]


def test_init_epochs_must_be_below_epochs() -> None:
    with pytest.raises(UserError) as err:
        load_train_config(None, {"schedule.epochs": 3, "schedule.init_epochs": 3})
    assert "schedule.init_epochs < schedule.epochs" in err.value.lines[0]


def test_cell_hash_ignores_seed_and_runtime_only() -> None:
    base = TrainConfig()
    assert cell_hash(base) == cell_hash(base.model_copy(update={"seed": 7}))
    assert cell_hash(base) == cell_hash(load_train_config(None, {"runtime.compile": True}))
    assert cell_hash(base) != cell_hash(load_train_config(None, {"loss.style_weight": 3.5}))
    assert len(cell_hash(base)) == 12


def test_impossible_combination_names_the_field(tmp_path: Path) -> None:
    path = tmp_path / "mb.yaml"
    path.write_text("backbone: {arch: mobilenet_v2, width: 1.3, weights: imagenet}\n")
    with pytest.raises(UserError) as err:
        load_train_config(path)
    assert err.value.lines == [f"{path}: backbone.weights: expected random or a local weights file for "
                               "mobilenet_v2 at width 1.3 (torchvision has ImageNet weights only at width 1.0; convert "
                               "Keras' with `ablate weights convert keras-mobilenet-v2`), got 'imagenet'"]

"""The training config: frozen, validated once at the edge, defaults = official AnimeGAN v1 (HEAD).

Every field is addressable by a dotted path (`loss.style_weight`, `loss.d_weights.fake`) from YAML,
from `ablate train --set key=value`, and from a study's axes. The same dotted path is the MLflow
param key and the report's column name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ablation.errors import UserError, from_validation_error, problem

GanType = Literal["lsgan", "gan", "hinge", "wgan-gp", "wgan-lp", "dragan"]
GAN_TYPES: tuple[str, ...] = get_args(GanType)


def _string_choices(annotation: Any) -> tuple[str, ...]:
    """The choices of a `Literal["a", "b"]` field; () for any other annotation."""
    if get_origin(annotation) is Literal and all(isinstance(c, str) for c in get_args(annotation)):
        return get_args(annotation)
    return ()


def _spelled_choice(value: Any, choices: tuple[str, ...]) -> Any:
    """YAML reads `--set loss.color_scale=255` as the int 255: a number that spells a choice is that choice."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text if text in choices else value


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _choices_from_scalars(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, info in cls.model_fields.items():
            if name in out and (choices := _string_choices(info.annotation)):
                out[name] = _spelled_choice(out[name], choices)
        return out


class DataConfig(Frozen):
    root: Path = Path("dataset")  # holds train_photo/, <style>/style/, <style>/smooth/, val/
    style: str = "Hayao"
    image_size: int = Field(256, ge=32)  # every image is resized/cropped to this square
    val_count: int = Field(8, ge=1)  # fixed validation photos stylised after every epoch


Objective = Literal["animegan", "animegan+cycle", "cyclegan"]


class ModelConfig(Frozen):
    # what the networks are trained for (gan/cycle_steps.py): "animegan" the original's losses; "animegan+cycle"
    # those plus an anime->photo generator, a photo discriminator and the cycle loss in both directions;
    # "cyclegan" Zhu et al. 2017's own objective (LSGAN-style adversarial terms of weight 1, cycle and identity
    # L1, image pools), on the same networks unless `generator`/`discriminator` select CycleGAN's
    objective: Objective = "animegan"
    generator: Literal["v1", "v2", "resnet9"] = "v1"  # resnet9: CycleGAN's ResNet-9-block generator
    # patchgan: CycleGAN's 70x70 PatchGAN (d_ch, d_layers; spectral norm only with d_sn, which CycleGAN's lacks)
    discriminator: Literal["animegan", "patchgan"] = "animegan"
    # Spectral norm on G: in no reference (the official code and the write-up's code put it on D only); an
    # extra arm for studies, off by default.
    generator_sn: bool = False
    # generator resizes (v1 down/up, v2 up): "tf1" = TF1 `resize_images` (bilinear, align_corners=False, no
    # half-pixel centres: halving subsamples every other pixel), the original's; "half_pixel" = PyTorch's
    # bilinear (halving averages 2×2 blocks).
    resize: Literal["tf1", "half_pixel"] = "tf1"
    d_ch: int = Field(64, ge=8)
    d_layers: int = Field(3, ge=1)  # n_dis
    d_sn: bool = True
    d_dropout: float = Field(0.0, ge=0.0, lt=1.0)


class BackboneConfig(Frozen):
    arch: Literal["vgg19", "mobilenet_v2", "efficientnet_lite1"] = "vgg19"
    # "imagenet" (torchvision weights by name: the official v1 used a pretrained VGG19), "random" (seeded; the
    # --demo preset and the tests, which cannot download) or a path to a local weights file
    weights: str = "imagenet"
    seed: int | None = None  # random weights: None = the trial seed; logged either way
    # random weights' initialiser: torchvision's (kaiming fan_out: a MobileNetV2's features end at RMS ~1e-4) or
    # what Keras builds for `weights=None` (glorot-uniform kernels, BN eps 1e-3, TF "same" padding: the write-up's
    # random MobileNetV2, exp3)
    init: Literal["torchvision", "keras"] = "torchvision"
    width: float = Field(1.3, gt=0.0)  # mobilenet_v2 width multiplier (the write-up: 1.3)
    # input scaling: auto follows the weights: caffe BGR-mean for vgg19 (ImageNet mean/std with torchvision's
    # weights); for mobilenet_v2 ImageNet mean/std with torchvision's weights or init, [-1, 1] (Keras' convention)
    # for Keras-converted files and the keras init; (x - 127) / 128 of 0-255 for efficientnet_lite1
    preprocess: Literal["auto", "caffe", "imagenet", "signed", "effnet"] = "auto"


class DWeights(Frozen):
    real: float = Field(1.0, ge=0.0)
    fake: float = Field(1.0, ge=0.0)
    gray: float = Field(1.0, ge=0.0)
    smooth: float = Field(0.1, ge=0.0)


class LossConfig(Frozen):
    gan_type: GanType = "lsgan"
    g_adv_weight: float = Field(300.0, ge=0.0)
    d_adv_weight: float = Field(300.0, ge=0.0)
    content_weight: float = Field(1.5, ge=0.0)
    style_weight: float = Field(3.0, ge=0.0)
    color_weight: float = Field(10.0, ge=0.0)
    tv_weight: float = Field(0.0, ge=0.0)  # AnimeGANv2 adds 1.0
    gp_weight: float = Field(10.0, ge=0.0)  # ld, used by wgan-gp / wgan-lp / dragan
    d_weights: DWeights = DWeights()
    style_target: Literal["gray", "color"] = "gray"  # Gram target: grayscale anime (official) or colour
    smooth_target: Literal["gray", "color"] = "gray"  # edge-smoothed image shown to D
    color_scale: Literal["unit", "255"] = "unit"  # YUV on [0,1] (official) or 0-255 (write-up defect)
    color_count: int = Field(1, ge=1, le=2)  # 2 = the write-up's colour term counted twice
    # 0 = the original's content-only init phase. A random backbone's features carry little colour, so the demo
    # adds the (unit-scale) colour loss to its init phase: the reconstruction keeps the photo's colours.
    init_color_weight: float = Field(0.0, ge=0.0)
    # the cycle objectives (model.objective): L1 of photo->anime->photo plus anime->photo->anime, and L1 of each
    # generator on its own target domain (CycleGAN: lambda 10, identity 0.5 lambda = 5)
    cycle_weight: float = Field(10.0, ge=0.0)
    identity_weight: float = Field(0.0, ge=0.0)


class OptimConfig(Frozen):
    init_lr: float = Field(1e-4, gt=0.0)
    g_lr: float = Field(8e-5, gt=0.0)
    d_lr: float = Field(1.6e-4, gt=0.0)
    beta1: float = Field(0.5, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    g_steps_per_d: int = Field(1, ge=1)  # training_rate: one D update every N G updates
    # "linear": G's and D's rates fall linearly to zero over the second half of the GAN phase (CycleGAN)
    lr_decay: Literal["none", "linear"] = "none"
    # each discriminator sees a fake drawn from the last `pool_size` generated images half the time (CycleGAN: 50;
    # the cycle objectives only)
    pool_size: int = Field(0, ge=0)


class ScheduleConfig(Frozen):
    epochs: int = Field(101, ge=1)  # total, init epochs included
    init_epochs: int = Field(5, ge=0)
    batch_size: int = Field(6, ge=1)
    steps_per_epoch: int | None = Field(None, ge=1)  # None = max(#photo, #style) // batch (official)
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(0, ge=0)  # epochs between evaluations (0 = only at the end)
    # epochs between loss-balance measurements (gradient shares, gan/balance.py), beside the first step of each
    # phase and every evaluation; 0 = only those
    balance_every: int = Field(1, ge=0)


class EvalConfig(Frozen):
    enabled: bool = True
    image_size: int = Field(128, ge=32)  # fixed evaluation resolution (the calibration used 128)
    max_images: int = Field(128, ge=8)
    # random-VGG evaluators: weights drawn from a salted stream no training seed reaches; a study refuses these
    # numbers as training seeds all the same
    evaluator_seeds: tuple[int, ...] = (1001, 1002, 1003)
    kid_subsets: int = Field(50, ge=1)
    kid_subset_size: int = Field(100, ge=2)
    efficientnet: bool = True  # KID on ImageNet EfficientNet-Lite0: the independent pretrained evaluator


class RuntimeConfig(Frozen):
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast, CUDA only
    channels_last: bool = True  # CUDA only
    compile: bool = False  # torch.compile, CUDA only
    threads: int | None = Field(None, ge=1)


class TrainConfig(Frozen):
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    backbone: BackboneConfig = BackboneConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @field_validator("schedule")
    @classmethod
    def _init_before_end(cls, schedule: ScheduleConfig) -> ScheduleConfig:
        if schedule.init_epochs >= schedule.epochs:
            raise ValueError(
                f"schedule.init_epochs < schedule.epochs (got {schedule.init_epochs} >= {schedule.epochs})"
            )
        return schedule

    @model_validator(mode="after")
    def _possible_combinations(self) -> TrainConfig:
        bb = self.backbone
        if bb.arch == "mobilenet_v2" and bb.weights == "imagenet" and bb.width != 1.0:
            raise ValueError(f"backbone.weights: expected random or a local weights file for mobilenet_v2 at "
                             f"width {bb.width:g} (torchvision has ImageNet weights only at width 1.0; convert "
                             "Keras' with `ablate weights convert keras-mobilenet-v2`), got 'imagenet'")
        if self.optim.pool_size > 0 and self.model.objective == "animegan":
            raise ValueError(f"optim.pool_size: expected 0 with model.objective animegan (the image pool belongs to "
                             f"the cycle objectives), got {self.optim.pool_size}")
        if self.model.discriminator == "patchgan" and self.model.d_dropout > 0:
            raise ValueError("model.d_dropout: expected 0 with model.discriminator patchgan (CycleGAN's PatchGAN has "
                             f"no dropout), got {self.model.d_dropout:g}")
        return self


# Fields that change how fast a run goes, not what it computes: left out of the cell identity.
NON_IDENTITY_SECTIONS = ("runtime",)
# Fields that change what a run measures, not what it trains (bit for bit: tests/gan/test_balance.py).
NON_IDENTITY_FIELDS = ("schedule.balance_every",)
# Fields added after studies were stored, with the value every earlier run had: left out of the identity while
# they hold it, so a study (or checkpoint) from before keeps its keys and resumes.
ADDED_FIELDS: dict[str, Any] = {
    "model.objective": "animegan", "model.discriminator": "animegan", "loss.cycle_weight": 10.0,
    "loss.identity_weight": 0.0, "optim.lr_decay": "none", "optim.pool_size": 0, "backbone.init": "torchvision",
}


def cell_hash(config: TrainConfig) -> str:
    """Identity of a cell: the resolved config without the seed and the runtime section."""
    payload = config.model_dump(mode="json", exclude={"seed", *NON_IDENTITY_SECTIONS})
    for path in NON_IDENTITY_FIELDS:
        section, _, name = path.partition(".")
        del payload[section][name]
    for path, value in ADDED_FIELDS.items():
        section, _, name = path.partition(".")
        if payload[section][name] == value:
            del payload[section][name]
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def get_path(data: dict[str, Any], dotted: str) -> Any:
    """The value at a dotted path inside nested dicts (a config's `model_dump`): "loss.style_weight" -> 3.0."""
    for part in dotted.split("."):
        data = data[part]
    return data


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a dotted path inside nested dicts, creating levels as needed."""
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def field_paths(model: type[BaseModel] = TrainConfig, prefix: str = "") -> dict[str, Any]:
    """Every addressable dotted path -> its pydantic FieldInfo (leaves only)."""
    paths: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths.update(field_paths(annotation, f"{prefix}{name}."))
        else:
            paths[f"{prefix}{name}"] = info
    return paths


def parse_value(text: str) -> Any:
    """`--set key=value` values are YAML scalars: 3, 3.0, true, gray, [1, 2]."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise UserError(problem(path, "<file>", "an existing YAML file", "<missing>"))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "<file>"
        raise UserError(problem(path, where, "valid YAML", f"<{getattr(exc, 'problem', exc)}>")) from None
    if not isinstance(data, dict):
        raise UserError(problem(path, "<top level>", "a mapping of config sections", type(data).__name__))
    return data


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any], source: str | Path | None) -> dict[str, Any]:
    """Apply dotted-path overrides after checking that each path names a config field."""
    known = field_paths()
    errors = []
    for path, value in overrides.items():
        if path not in known:
            close = [p for p in known if p.split(".")[-1] == path.split(".")[-1]]
            hint = f"a config field (did you mean {', '.join(close)}?)" if close else "a config field"
            errors.append(problem(source, path, hint, "<unknown key>"))
            continue
        set_path(data, path, value)
    if errors:
        raise UserError(*errors)
    return data


def build_config(data: dict[str, Any], source: str | Path | None = None, prefix: str = "") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, source, prefix) from None


def parse_set_options(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise UserError(problem("--set", item, "key=value", item))
        key, _, value = item.partition("=")
        out[key.strip()] = parse_value(value)
    return out


def load_train_config(path: Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """YAML file (optional) + dotted overrides -> validated TrainConfig."""
    data = read_yaml(path) if path is not None else {}
    if overrides:
        data = apply_overrides(data, overrides, "--set")
    # without a file every value came from --set: name it, so the line says where to fix it
    return build_config(data, path if path is not None or not overrides else "--set")


def to_yaml(config: TrainConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def with_overrides(config: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    data = config.model_dump(mode="json")
    return build_config(apply_overrides(data, overrides, None))

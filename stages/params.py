"""params.yaml -> small frozen dataclasses, with every bad key or value rejected by name."""
from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from stages.model import NORMS, build_model

MAX_EPOCHS = 20  # the budget of the comparison
TTA_MODES = ("none", "flip", "flip_shift", "flip_grid", "flip_diag")  # test-time augmentation (see stages.trainer.predict)


class ParamsError(ValueError):
    """params.yaml is wrong; the message names the key."""


def _require(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ParamsError(f"params.yaml: {key}: {msg}")


@dataclass(frozen=True)
class DataParams:
    source: str  # cifar10-jpeg | cifar10 | digits | path or URL of an image-folder archive/directory

    def __post_init__(self):
        _require(bool(self.source.strip()), "data.source", "must not be empty")


@dataclass(frozen=True)
class ModelParams:
    widths: tuple[int, ...]  # stem width, then one width per stage (each halves the resolution)
    depth: tuple[int, ...]  # extra conv-norm-GELU layers after each stage, in residual blocks
    block_convs: int  # conv layers per residual block (1: each layer its own block; 2: ResNet BasicBlock shape)
    stem_pool: bool  # the first halving happens in the stem (its norm and GELU run at half resolution)
    head_width: int  # channels of a 1x1 conv-norm-GELU before global pooling (0: none)
    weight_std: bool  # Weight Standardization of every conv (all norms alike)
    gn_groups: int  # GroupNorm groups (GN model only)

    def __post_init__(self):
        _require(len(self.widths) >= 2 and all(w > 0 for w in self.widths), "model.widths",
                 f"must be a list of at least two positive ints, got {list(self.widths)}")
        _require(len(self.depth) == len(self.widths) - 1 and all(d >= 0 for d in self.depth), "model.depth",
                 f"must list one count >= 0 per stage after the stem ({len(self.widths) - 1} for "
                 f"model.widths={list(self.widths)}), got {list(self.depth)}")
        _require(self.block_convs >= 1, "model.block_convs",
                 f"must be >= 1 (conv layers per residual block), got {self.block_convs}")
        _require(self.head_width >= 0, "model.head_width", f"must be >= 0 (0: no head conv), got {self.head_width}")
        widths = list(self.widths) + ([self.head_width] if self.head_width else [])
        _require(self.gn_groups >= 1 and all(w % self.gn_groups == 0 for w in widths), "model.gn_groups",
                 f"{self.gn_groups} must be >= 1 and divide every width in model.widths={list(self.widths)} "
                 f"and model.head_width={self.head_width}")


@dataclass(frozen=True)
class TrainParams:
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    muon_lr: float  # relative step of Muon's update of every conv filter (0: filters take SGD like the rest)
    muon_stem: bool  # Muon also for the stem's filter, the one that reads the image (false: SGD for it)
    dirac_init: bool  # the 3x3 convs after the stem start as partial identities (model.dirac_init_)
    warmup: float  # fraction of the steps rising to lr (one_cycle)
    muon_warmup: float  # the same for Muon's filter rate (muon_lr > 0)
    low_res: float  # fraction of the epochs, the first ones, trained on images downscaled to low_res_size
    low_res_size: int  # longer side in pixels of those images
    label_smoothing: float
    crop_pad: int
    cutout: int
    flip_only_last: int  # the last this many epochs train on flipped images only (no translation, no cutout)
    l1: float
    bf16: bool
    tta: str  # test-time augmentation of the final evaluation: one of TTA_MODES

    def __post_init__(self):
        _require(0 < self.epochs <= MAX_EPOCHS, "train.epochs", f"must be in 1..{MAX_EPOCHS}, got {self.epochs}")
        _require(self.batch_size > 0, "train.batch_size", f"must be > 0, got {self.batch_size}")
        _require(self.lr > 0, "train.lr", f"must be > 0, got {self.lr}")
        _require(0 <= self.momentum < 1, "train.momentum", f"must be in [0, 1), got {self.momentum}")
        _require(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay}")
        _require(self.muon_lr >= 0, "train.muon_lr", f"must be >= 0 (0: SGD for the conv filters too), got "
                 f"{self.muon_lr}")
        _require(0 <= self.warmup < 1, "train.warmup", f"must be in [0, 1), got {self.warmup}")
        _require(0 <= self.muon_warmup < 1, "train.muon_warmup", f"must be in [0, 1), got {self.muon_warmup}")
        _require(0 <= self.low_res < 1, "train.low_res", f"must be in [0, 1), got {self.low_res}")
        _require(self.low_res_size > 0, "train.low_res_size", f"must be > 0, got {self.low_res_size}")
        _require(0 <= self.label_smoothing < 1, "train.label_smoothing",
                 f"must be in [0, 1), got {self.label_smoothing}")
        _require(self.crop_pad >= 0, "train.crop_pad", f"must be >= 0, got {self.crop_pad}")
        _require(self.cutout >= 0, "train.cutout", f"must be >= 0, got {self.cutout}")
        _require(0 <= self.flip_only_last <= self.epochs, "train.flip_only_last",
                 f"must be in 0..train.epochs={self.epochs}, got {self.flip_only_last}")
        _require(self.l1 >= 0, "train.l1", f"must be >= 0, got {self.l1}")
        _require(self.tta in TTA_MODES, "train.tta", f"must be one of {', '.join(TTA_MODES)}, got {self.tta!r}")


@dataclass(frozen=True)
class Params:
    norm: str  # the model the pipeline reports as its result
    seed: int
    data: DataParams
    model: ModelParams
    train: TrainParams

    def __post_init__(self):
        _require(self.norm in NORMS, "norm", f"must be one of {', '.join(NORMS)}, got {self.norm!r}")
        halvings = len(self.model.widths) - 1  # the stem (with stem_pool) or each stage halves H and W
        _require(self.train.low_res == 0 or self.train.low_res_size >= 2 ** halvings, "train.low_res_size",
                 f"must be >= {2 ** halvings} so that model.widths={list(self.model.widths)} can halve it "
                 f"{halvings} times, got {self.train.low_res_size}")


def _convert(value, typ, key: str):
    """Check one YAML value against a field type (int, float, bool, str, tuple[int, ...])."""
    if typing.get_origin(typ) is tuple:
        _require(isinstance(value, list), key, f"must be a list, got {value!r}")
        return tuple(_convert(v, typing.get_args(typ)[0], f"{key}[{i}]") for i, v in enumerate(value))
    if typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        _require(ok, key, f"must be a number, got {value!r}")
        return float(value)
    if typ is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer, got {value!r}")
    else:
        _require(isinstance(value, typ), key, f"must be a {typ.__name__}, got {value!r}")
    return value


def _build(cls, raw, prefix: str = ""):
    """Build dataclass `cls` from a dict, rejecting unknown and missing keys by their dotted name."""
    where = prefix.rstrip(".") or "top level"
    _require(isinstance(raw, dict), where, f"must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(raw) - set(names))
    _require(not unknown, ", ".join(prefix + str(k) for k in unknown), f"unknown key; expected keys in {where}: "
             f"{', '.join(names)}")
    missing = [n for n in names if n not in raw]
    _require(not missing, ", ".join(prefix + n for n in missing), "missing")
    values = {}
    for name in names:
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            values[name] = _build(typ, raw[name], f"{prefix}{name}.")
        else:
            values[name] = _convert(raw[name], typ, prefix + name)
    return cls(**values)


def parse_params(raw: dict) -> Params:
    params = _build(Params, raw)
    check_budget(params.model)
    return params


def check_budget(model: ModelParams) -> None:
    """Every norm's model must fit the parameter budget (builds them: a few ms)."""
    for norm in NORMS:
        try:
            build_model(norm, **dataclasses.asdict(model))  # the field names are build_model's keywords
        except ValueError as e:
            raise ParamsError(f"params.yaml: model: {e}") from None


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that also reads exponent floats without a dot (1e-05, 5E+3) as floats, as YAML 1.2 does.

    Why: `dvc exp run -S train.l1=1e-5` writes `l1: 1e-05` (DVC's YAML library is YAML 1.2), which PyYAML's
    YAML 1.1 rules would read as the string '1e-05'.
    """


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=_Yaml12Loader)
    except FileNotFoundError:
        raise ParamsError(f"{path} not found: run from the project root") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {e}") from None
    return parse_params(raw)

import copy
import dataclasses
import re

import pytest
import yaml

from stages.params import ModelParams, ParamsError, load_params, parse_params
from tests.conftest import ROOT

RAW = yaml.safe_load((ROOT / "params.yaml").read_text())
# Stages after the stem in the committed net: the bad values below that depend on the net's shape are derived
# from it, so a change of the committed widths does not turn them into valid ones
HALVINGS = len(RAW["model"]["widths"]) - 1


def with_(path: str, value):
    raw = copy.deepcopy(RAW)
    *parents, last = path.split(".")
    node = raw
    for p in parents:
        node = node[p]
    node[last] = value
    return raw


def test_committed_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.norm in ("bn", "gn", "ln") and p.train.epochs <= 20


@pytest.mark.parametrize("path,value,key", [
    ("norm", "xn", "norm"),
    ("norm", 3, "norm"),
    ("seed", "zero", "seed"),
    ("seed", True, "seed"),
    ("data.source", "", "data.source"),
    ("model.widths", [16], "model.widths"),
    ("model.widths", "16,32", "model.widths"),
    ("model.widths", [16, 32.5], "model.widths[1]"),
    ("model.gn_groups", 5, "model.gn_groups"),
    ("model.gn_groups", 0, "model.gn_groups"),
    ("model.depth", [-1] + [0] * (HALVINGS - 1), "model.depth"),
    ("model.depth", [0] * (HALVINGS + 1), "model.depth"),  # one entry per stage after the stem, plus one
    ("model.depth", 1, "model.depth"),
    ("model.block_convs", 0, "model.block_convs"),
    ("model.block_convs", 1.5, "model.block_convs"),
    ("model.stem_pool", 1, "model.stem_pool"),
    ("model.stem_pool", "yes", "model.stem_pool"),
    ("model.stem_pool", [True], "model.stem_pool"),
    ("model.head_width", -16, "model.head_width"),
    ("model.weight_std", "true", "model.weight_std"),
    ("model.head_width", 64.0, "model.head_width"),
    ("model.head_width", 65, "model.gn_groups"),  # 2 groups do not divide the head's 65 channels
    ("train.epochs", 0, "train.epochs"),
    ("train.epochs", 21, "train.epochs"),
    ("train.epochs", 2.5, "train.epochs"),
    ("train.batch_size", 0, "train.batch_size"),
    ("train.lr", 0, "train.lr"),
    ("train.lr", -0.1, "train.lr"),
    ("train.lr", "fast", "train.lr"),
    ("train.weight_decay", -1e-4, "train.weight_decay"),
    ("train.muon_lr", -0.01, "train.muon_lr"),
    ("train.muon_lr", "on", "train.muon_lr"),
    ("train.l1", -1e-5, "train.l1"),
    ("train.momentum", 1.0, "train.momentum"),
    ("train.warmup", 1.0, "train.warmup"),
    ("train.muon_warmup", 1.0, "train.muon_warmup"),
    ("train.muon_warmup", -0.1, "train.muon_warmup"),
    ("train.low_res", 1.0, "train.low_res"),
    ("train.low_res", -0.1, "train.low_res"),
    ("train.low_res_size", 0, "train.low_res_size"),
    ("train.low_res_size", 24.5, "train.low_res_size"),
    ("train.label_smoothing", -0.1, "train.label_smoothing"),
    ("train.crop_pad", -1, "train.crop_pad"),
    ("train.cutout", -2, "train.cutout"),
    ("train.flip_only_last", -1, "train.flip_only_last"),
    ("train.flip_only_last", 21, "train.flip_only_last"),
    ("train.flip_only_last", 1.5, "train.flip_only_last"),
    ("train.bf16", "yes", "train.bf16"),
    ("train.dirac_init", 1, "train.dirac_init"),
    ("train.muon_stem", "no", "train.muon_stem"),
    ("train.tta", "mirror", "train.tta"),
    ("train.tta", True, "train.tta"),
])
def test_bad_values_are_rejected_by_key(path, value, key):
    with pytest.raises(ParamsError) as e:
        parse_params(with_(path, value))
    assert f"{key}:" in str(e.value)


def test_low_res_size_too_small_to_halve_is_rejected_when_low_res_is_on():
    raw = with_("train.low_res_size", 2 ** HALVINGS // 2)  # too small to halve HALVINGS times
    raw["train"]["low_res"] = 0.3
    with pytest.raises(ParamsError) as e:
        parse_params(raw)
    assert "train.low_res_size:" in str(e.value)


def test_low_res_size_is_only_checked_against_the_net_when_low_res_is_on():
    raw = with_("train.low_res_size", 4)
    raw["train"]["low_res"] = 0.0
    assert parse_params(raw).train.low_res_size == 4


def test_unknown_and_misspelt_keys_are_named():
    raw = copy.deepcopy(RAW)
    raw["train"]["learning_rate"] = 0.1
    with pytest.raises(ParamsError, match=r"train\.learning_rate: unknown key"):
        parse_params(raw)
    raw = copy.deepcopy(RAW)
    raw["nrom"] = "bn"
    with pytest.raises(ParamsError, match="nrom: unknown key"):
        parse_params(raw)


def test_missing_keys_are_named():
    raw = copy.deepcopy(RAW)
    del raw["train"]["lr"]
    with pytest.raises(ParamsError, match=r"train\.lr: missing"):
        parse_params(raw)


def test_model_over_the_parameter_budget_is_rejected():
    with pytest.raises(ParamsError, match="model:.*50,000"):
        parse_params(with_("model.widths", [128] * len(RAW["model"]["widths"])))


def test_section_that_is_not_a_mapping(tmp_path):
    with pytest.raises(ParamsError, match="train: must be a mapping"):
        parse_params(with_("train", [1, 2]))


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("norm: [bn\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_exponent_floats_as_dvc_writes_them_are_numbers(tmp_path):
    # `dvc exp run -S train.l1=1e-5` writes `l1: 1e-05`: a string to plain PyYAML (YAML 1.1), a float in YAML 1.2
    text = (ROOT / "params.yaml").read_text()
    text = re.sub(r"(?m)^  l1: .*$", "  l1: 1e-05", text)
    text = re.sub(r"(?m)^  lr: .*$", "  lr: 4E-1", text)
    path = tmp_path / "params.yaml"
    path.write_text(text)
    params = load_params(path)
    assert params.train.l1 == 1e-5 and params.train.lr == 0.4
    assert load_params(ROOT / "params.yaml").data.source == "cifar10-jpeg"  # strings stay strings


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_each_training_stage_declares_every_model_param_it_builds_from(norm):
    """A model param missing from a train stage's `params:` would let DVC skip retraining when it changes."""
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][f"train_{norm}"]
    used = {f"model.{f.name}" for f in dataclasses.fields(ModelParams) if norm == "gn" or f.name != "gn_groups"}
    assert used <= set(stage["params"]) and {"seed", "train"} <= set(stage["params"])

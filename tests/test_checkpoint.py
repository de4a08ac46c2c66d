
import pytest
import torch

from stages.checkpoint import CheckpointError, load, load_model, load_test_logits, new_model, save

CONFIG = {"norm": "bn", "widths": [8, 16], "depth": [0], "stem_pool": False, "head_width": 0, "weight_std": False,
          "gn_groups": 4, "in_channels": 3, "classes": 10}


def saved(tmp_path, config=CONFIG, **extra):
    path = tmp_path / "m.pt"
    save(path, {"config": config, "state_dict": new_model(config).state_dict(), **extra})
    return path


def test_round_trip(tmp_path):
    model = load_model(saved(tmp_path), CONFIG)
    assert not model.training  # eval mode: BN uses its running statistics
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 10)


@pytest.mark.parametrize("change", [{"norm": "gn"}, {"widths": [8, 24]}, {"classes": 2}])
def test_model_of_another_norm_or_architecture_is_refused(tmp_path, change):
    with pytest.raises(CheckpointError, match="holds a model with config .* re-run its training stage"):
        load_model(saved(tmp_path), {**CONFIG, **change})


def test_test_logits_come_back_for_the_same_config_and_tta(tmp_path):
    logits = torch.randn(5, 10)
    path = saved(tmp_path, tta="flip", test_logits=logits)
    assert torch.equal(load_test_logits(path, CONFIG, "flip", 5), logits)
    with pytest.raises(CheckpointError, match="holds a model with config"):
        load_test_logits(path, {**CONFIG, "norm": "ln"}, "flip", 5)


@pytest.mark.parametrize("n_test, shape", [(6, (5, 10)), (5, (5, 9)), (5, (50,))])
def test_test_logits_of_another_shape_are_refused(tmp_path, n_test, shape):
    path = saved(tmp_path, tta="flip", test_logits=torch.zeros(shape))
    with pytest.raises(CheckpointError, match=rf"test logits of shape .* but the test set has {n_test} images "
                                              r"of 10 classes; re-run its training stage"):
        load_test_logits(path, CONFIG, "flip", n_test)


@pytest.mark.parametrize("extra", [{}, {"tta": "flip"}, {"tta": "none", "test_logits": None}])
def test_test_logits_of_another_tta_or_none_are_refused(tmp_path, extra):
    with pytest.raises(CheckpointError, match="no test predictions made with train.tta='none'"):
        load_test_logits(saved(tmp_path, **extra), CONFIG, "none", 5)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(CheckpointError, match="is missing: run its training stage"):
        load(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load(bad)


class Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_pickled_code_is_not_executed(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"config": CONFIG, "x": Evil()}, path)
    with pytest.raises(CheckpointError):
        load(path)
    assert "code ran" not in capsys.readouterr().out


def test_save_is_atomic(tmp_path, monkeypatch):
    path = saved(tmp_path)
    before = path.read_bytes()
    monkeypatch.setattr(torch, "save", lambda obj, f: (open(f, "wb").write(b"half"), 1 / 0))
    with pytest.raises(ZeroDivisionError):
        save(path, {"config": CONFIG})
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]

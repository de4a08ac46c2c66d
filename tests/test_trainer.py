import ctypes
import dataclasses
import platform
import subprocess
import sys

import pytest
import torch

from stages.augment import translate
from stages.data import Dataset
from stages.model import NORMS, build_model
from stages.params import load_params
from stages.train import curve_split, seeded_model
from stages import trainer
from stages.trainer import CPU_BF16_PROBES, CudaGraphStep, NonFiniteLoss, Split, augments, epoch_batches, fit, \
    keep_freed_memory, l1_penalty, make_optimizer, low_res_epochs, newton_schulz, one_cycle, orthogonalized, \
    param_groups, predict, step_function, train_epoch, train_image_size, train_step
from tests.conftest import ROOT

BASE = load_params(ROOT / "params.yaml").train


def cfg(**kw):
    return dataclasses.replace(BASE, **{"epochs": 2, "batch_size": 16, "bf16": False, **kw})


def blobs(n=64, seed=0):
    """Two easy classes: dark vs bright 8x8 images."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = (torch.rand(n, 3, 8, 8, generator=g) * 60 + y[:, None, None, None] * 150).to(torch.uint8)
    return Split(x, y)


def small_model(norm="bn"):
    torch.manual_seed(0)
    return build_model(norm, (8, 16, 16), (0, 0), 4, classes=2)


def test_a_seed_starts_every_norm_from_the_same_weights_and_batches():
    """What makes the seed table's differences between norms paired: for one seed, every norm's conv and
    linear weights start equal and its generator (shuffling, augmentation) starts in the same state."""
    data = blobs(16)
    x, y = data.x.repeat(1, 1, 4, 4).numpy(), data.y.numpy()  # (16, 3, 32, 32) uint8
    ds = Dataset(x, y, x, y, [str(i) for i in range(10)], {})
    params = load_params(ROOT / "params.yaml")
    starts = []
    for norm in NORMS:
        model, _, gen = seeded_model(params, norm, ds, torch.from_numpy(x), seed=3)
        weights = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        starts.append((weights, torch.randperm(1000, generator=gen)))
    for weights, order in starts[1:]:
        assert len(weights) == len(starts[0][0]) == 10  # 9 convs and the classifier
        assert all(torch.equal(w, w0) for w, w0 in zip(weights, starts[0][0]))
        assert torch.equal(order, starts[0][1])
    other_seed = seeded_model(params, "bn", ds, torch.from_numpy(x), seed=4)[0]
    assert not torch.equal(next(other_seed.parameters()), starts[0][0][0])


def test_train_dirac_init_changes_only_the_identity_filters_of_the_seeded_model():
    data = blobs(16)
    x, y = data.x.repeat(1, 1, 4, 4).numpy(), data.y.numpy()
    ds = Dataset(x, y, x, y, [str(i) for i in range(10)], {})
    params = load_params(ROOT / "params.yaml")
    on = dataclasses.replace(params, train=dataclasses.replace(params.train, dirac_init=True))
    off = dataclasses.replace(params, train=dataclasses.replace(params.train, dirac_init=False))
    (a, _, gen_a), (b, _, gen_b) = (seeded_model(p, "ln", ds, torch.from_numpy(x), seed=3) for p in (on, off))
    changed = [name for (name, pa), pb in zip(a.named_parameters(), b.parameters()) if not torch.equal(pa, pb)]
    assert len(changed) == 7  # the 3x3 convs after the stem: 3 halving stages and 4 residual layers
    assert all(name.endswith("weight") and a.get_parameter(name).ndim == 4 for name in changed)
    assert torch.equal(torch.randperm(100, generator=gen_a), torch.randperm(100, generator=gen_b))


def test_one_cycle_warms_up_then_decays_to_zero():
    total = 100
    values = [one_cycle(s, total, 0.2) for s in range(total + 1)]
    assert values[0] == pytest.approx(0.1) and max(values) == pytest.approx(1.0)
    assert values.index(max(values)) == 20 and values[-1] == 0.0
    assert all(a <= b for a, b in zip(values[:20], values[1:21]))
    assert all(a >= b for a, b in zip(values[20:], values[21:]))


def test_weight_decay_skips_norm_and_bias_parameters():
    model = small_model()
    decay, no_decay = param_groups(model, 5e-4)
    assert all(p.ndim > 1 for p in decay["params"]) and decay["weight_decay"] == 5e-4
    assert all(p.ndim <= 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0


def test_l1_penalty_reaches_the_gradient():
    data = blobs(16)
    grads = {}
    for l1 in (0.0, 0.01):
        model = small_model()
        c = cfg(l1=l1, lr=1e-9, momentum=0.0, weight_decay=0.0, crop_pad=0, epochs=1)
        opt = make_optimizer(model, c, 1)
        # the hook sees the weight's whole gradient (loss + penalty) as backward computes it
        model.head.weight.register_hook(lambda g, l1=l1: grads.__setitem__(l1, g.clone()))
        train_epoch(model, data, c, opt, torch.Generator().manual_seed(0), 1)
    # d/dw of l1 * sum|w| is l1 * sign(w): the only difference between the two runs' gradients
    model = small_model()
    expected = 0.01 * torch.sign(model.head.weight.detach())
    assert torch.allclose(grads[0.01] - grads[0.0], expected, atol=1e-6)
    assert l1_penalty(model) > 0


@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 1e-3), (0.0, 1e-3), (0.9, 0.0)])
def test_one_cycle_sgd_is_torchs_sgd_and_schedule_bit_for_bit(momentum, weight_decay):
    # the committed results were trained with torch.optim.SGD + LambdaLR; the rewrite must not change one bit
    c = cfg(momentum=momentum, weight_decay=weight_decay, lr=0.5, warmup=0.3, bf16=False, muon_lr=0.0)
    data, steps = blobs(64), 8
    ours, ref = small_model(), small_model()
    opt = make_optimizer(ours, c, steps)
    ref_opt = torch.optim.SGD(param_groups(ref, weight_decay), lr=c.lr, momentum=momentum, nesterov=momentum > 0)
    sched = torch.optim.lr_scheduler.LambdaLR(ref_opt, lambda s: one_cycle(s, steps, c.warmup))
    for i in range(steps):
        xb, yb = data.x[i * 8:(i + 1) * 8].float(), data.y[i * 8:(i + 1) * 8]
        opt.next_lr()
        assert opt.lr.item() == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-6)
        train_step(ours, opt, c, xb, yb)
        loss = torch.nn.functional.cross_entropy(ref(xb), yb, label_smoothing=c.label_smoothing)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        sched.step()
        assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values()))


def singular_values(m: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(m.double())


def test_newton_schulz_orthogonalizes_each_matrix_of_a_stack():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(3, 16, 144, generator=gen)
    g[1] *= 1e3  # the scale of a gradient must not matter
    # ill-conditioned: singular values from 1 down to 1/50, all lifted into the band (the iteration's limit is
    # near 1/500 of the largest: 5 steps of slope 3.4445 at zero)
    u, _, vh = torch.linalg.svd(g[2], full_matrices=False)
    g[2] = u @ torch.diag(torch.logspace(0, -1.7, 16)) @ vh
    o = newton_schulz(g)
    for m, om in zip(g, o):
        s = singular_values(om)
        assert s.min() > 0.6 and s.max() < 1.25, s  # the quintic's band around 1
        u, _, vh = torch.linalg.svd(m.double(), full_matrices=False)
        polar = u @ vh  # the exact orthogonalization, which the iteration approximates
        assert torch.linalg.norm(om.double() - polar) / torch.linalg.norm(polar) < 0.3


def test_orthogonalized_handles_tall_filters_and_keeps_shapes():
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(64, 32, 1, 1, generator=gen),  # tall: 64 x 32 (the head's 1x1 conv)
             torch.randn(8, 3, 3, 3, generator=gen),
             torch.randn(64, 32, 1, 1, generator=gen).to(memory_format=torch.channels_last)]
    out = orthogonalized(grads, [[0, 2], [1]])
    for g, o in zip(grads, out):
        assert o.shape == g.shape and o.dtype == g.dtype
        s = singular_values(o.reshape(len(o), -1))
        assert s.min() > 0.6 and s.max() < 1.25
    # the layout of a gradient does not change its matrix: (out, in * kh * kw) in logical order
    assert torch.allclose(out[2], orthogonalized([grads[2].contiguous()], [[0]])[0], atol=1e-6)


def test_muon_steps_filters_by_an_orthogonal_update_of_relative_size_muon_lr():
    c = cfg(muon_lr=0.05, lr=0.1, warmup=0.0, momentum=0.9, weight_decay=1e-3, bf16=False)
    data = blobs(16)
    model, plain = small_model(), small_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt, plain_opt = make_optimizer(model, c, 4), make_optimizer(plain, dataclasses.replace(c, muon_lr=0.0), 4)
    assert len(opt.filters) == 3 and all(opt.params[i].ndim == 4 for i in opt.filters)
    for m, o in ((model, opt), (plain, plain_opt)):
        o.next_lr()
        train_step(m, o, c, data.x.float(), data.y)
    rate = 0.05 * one_cycle(0, 4, 0.0)  # muon_lr times the schedule's first multiplier (0.1)
    assert opt.filter_lr.item() == pytest.approx(rate) and opt.lr.item() == pytest.approx(0.1 * one_cycle(0, 4, 0.0))
    plain_params = dict(plain.named_parameters())
    for name, p in model.named_parameters():
        p0 = before[name]
        if p.ndim == 4:
            # rescaled to norm sqrt(out channels), then moved by `rate` times an orthogonal matrix: no weight decay
            scaled = p0 * (len(p0) ** 0.5 / p0.norm())
            step = ((scaled - p.detach()) / rate).reshape(len(p), -1)
            s = singular_values(step)  # flat, save for directions the 16 two-class images barely excite
            assert s.median() > 0.6 and s.max() < 1.25, name
            assert not torch.allclose(p, plain_params[name])
        else:
            # the classifier and the norms' scales and shifts take exactly the SGD step of the plain optimizer
            assert torch.equal(p, plain_params[name]), name


def test_without_muon_stem_the_stem_filter_takes_the_sgd_step_and_the_others_muons():
    c = cfg(muon_lr=0.05, lr=0.1, warmup=0.0, momentum=0.9, weight_decay=1e-3, bf16=False)
    data = blobs(16)
    both, hidden_only, plain = small_model(), small_model(), small_model()
    opts = [make_optimizer(both, c, 4), make_optimizer(hidden_only, dataclasses.replace(c, muon_stem=False), 4),
            make_optimizer(plain, dataclasses.replace(c, muon_lr=0.0), 4)]
    assert len(opts[0].filters) == 3 and opts[1].filters == opts[0].filters[1:]
    for m, o in zip((both, hidden_only, plain), opts):
        o.next_lr()
        train_step(m, o, c, data.x.float(), data.y)
    stem = [p for p in hidden_only.parameters() if p.ndim == 4][0]
    assert stem is hidden_only.features[0][0].weight  # the first filter is the one that reads the image
    filters = [[p for p in m.parameters() if p.ndim == 4] for m in (both, hidden_only, plain)]
    assert torch.equal(filters[1][0], filters[2][0])  # the stem: exactly the SGD step (with weight decay)
    assert not torch.equal(filters[1][0], filters[0][0])
    # the hidden filters: Muon's step, at norm sqrt(out channels) before it, as with Muon for the stem
    for f_hidden, f_both in zip(filters[1][1:], filters[0][1:]):
        assert torch.allclose(f_hidden, f_both, atol=1e-6)


def test_muon_rate_follows_its_own_warmup_and_the_sgd_rate_keeps_warmup():
    steps = 20
    opt = make_optimizer(small_model(), cfg(muon_lr=0.05, lr=0.1, warmup=0.3, muon_warmup=0.1), steps)
    for step in range(steps):
        opt.next_lr()
        assert opt.lr.item() == pytest.approx(0.1 * one_cycle(step, steps, 0.3))
        assert opt.filter_lr.item() == pytest.approx(0.05 * one_cycle(step, steps, 0.1))
    # at step 2 Muon's rate has finished warming up (2 of 20 steps), the SGD rate has not (6 of 20)
    assert one_cycle(2, steps, 0.1) == 1.0 and one_cycle(2, steps, 0.3) < 1.0


def test_equal_warmups_give_the_rates_of_one_schedule_bit_for_bit():
    # the committed models were trained with filter_lr = lr * muon_lr / lr; equal warm-ups must keep those bits
    c = cfg(muon_lr=0.03, lr=0.2, warmup=0.1, muon_warmup=0.1)
    opt = make_optimizer(small_model(), c, 50)
    for step in range(50):
        opt.next_lr()
        before = torch.tensor(opt.lr_at(step) * (0.03 / 0.2))  # the earlier trainer's expression, in float32
        assert opt.filter_lr.item() == before.item()


def test_muon_is_off_at_muon_lr_zero():
    opt = make_optimizer(small_model(), cfg(muon_lr=0.0), 4)
    assert opt.filters == [] and len(opt.sgd) == len(opt.params)


def test_optimizer_state_round_trips():
    model, c = small_model(), cfg()
    opt = make_optimizer(model, c, 10)
    for _ in range(3):
        opt.next_lr()
        train_step(model, opt, c, blobs(8).x.float(), blobs(8).y)
    again = make_optimizer(model, c, 10)
    again.load_state_dict(opt.state_dict())
    assert again.steps_done == 3 and again.lr_at(3) == opt.lr_at(3)
    assert all(torch.equal(a, b) for a, b in zip(again.bufs, opt.bufs)) and any(b.abs().sum() > 0 for b in opt.bufs)


def test_steps_run_directly_off_cuda():
    model, c = small_model(), cfg()
    assert not isinstance(step_function(model, make_optimizer(model, c, 1), c), CudaGraphStep)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_cuda_graph_steps_train_like_direct_steps(norm):
    # recording (with its warm-up steps) must leave the model as it was, and replays must do what calls do
    c, dev = cfg(bf16=True), torch.device("cuda")
    data = blobs(64)
    x, y = data.x.float().to(dev).contiguous(memory_format=torch.channels_last), data.y.to(dev)
    models = [small_model(norm).to(dev, memory_format=torch.channels_last) for _ in range(2)]
    opts = [make_optimizer(m, c, 8) for m in models]
    graphed = step_function(models[0], opts[0], c)
    assert isinstance(graphed, CudaGraphStep)
    for i in range(8):
        b = slice(i % 4 * 16, i % 4 * 16 + 16)
        for opt in opts:
            opt.next_lr()
        got = graphed(x[b], y[b])
        want = train_step(models[1], opts[1], c, x[b], y[b])
        assert torch.allclose(got[0], want[0], rtol=1e-3, atol=1e-4)
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-3, atol=1e-4)
    assert len(graphed.graphs) == 1  # one recording for the one batch shape


def test_non_finite_loss_stops_with_epoch_and_step():
    data = blobs(32)
    data.x[:] = 0
    model = small_model()
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, step 1/2"):
        fit(model, data, data, cfg(), torch.Generator().manual_seed(0))


def test_non_finite_loss_names_the_first_bad_step():
    # an infinite learning rate: the first step's loss is finite, the update makes every later one NaN
    with pytest.raises(NonFiniteLoss, match=r"epoch 1, step 2/2"):
        fit(small_model(), blobs(32), None, cfg(lr=float("inf")), torch.Generator().manual_seed(0))


@pytest.mark.parametrize("norm", ["bn", "gn", "ln"])
def test_fit_learns_an_easy_task(norm):
    data = blobs(128)
    rows = fit(small_model(norm), data, blobs(64, seed=1), cfg(epochs=4, lr=0.1), torch.Generator().manual_seed(0))
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["test_acc"] >= 0.95
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds",
                            "train_size"}


def test_fit_is_deterministic_on_cpu():
    def run():
        return fit(small_model(), blobs(64), blobs(32, 1), cfg(), torch.Generator().manual_seed(3))
    a, b = run(), run()
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b]


def test_predict_with_flip_averages_image_and_mirror():
    model = small_model().eval()
    x = blobs(8).x
    both = predict(model, x, 4, tta="flip", bf16=False)
    plain = predict(model, x, 4, tta="none", bf16=False)
    mirror = predict(model, x.flip(3), 4, tta="none", bf16=False)
    assert torch.allclose(both, (plain + mirror) / 2, atol=1e-5)


def test_predict_with_flip_shift_adds_the_four_shifted_views_at_one_third():
    model = small_model().eval()
    x = blobs(8).x
    flip = predict(model, x, 4, tta="flip", bf16=False)
    shifts = [torch.full((len(x),), d) for d in (1, -1)]
    views = [predict(model, translate(v, s, s), 8, tta="none", bf16=False)
             for v in (x, x.flip(3)) for s in shifts]
    got = predict(model, x, 4, tta="flip_shift", bf16=False)
    assert torch.allclose(got, 2 / 3 * flip + 1 / 3 * sum(views) / 4, atol=1e-5)


def test_predict_with_flip_grid_weighs_all_18_one_pixel_views_equally():
    model = small_model().eval()
    x = blobs(8).x
    views = [predict(model, translate(v, torch.full((8,), dy), torch.full((8,), dx)), 8, tta="none", bf16=False)
             for v in (x, x.flip(3)) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    got = predict(model, x, 4, tta="flip_grid", bf16=False)
    assert torch.allclose(got, sum(views) / 18, atol=1e-5)
    assert not torch.allclose(got, predict(model, x, 4, tta="flip_shift", bf16=False), atol=1e-4)


def test_predict_with_flip_diag_weighs_centre_and_1_and_2_pixel_diagonal_views_equally():
    model = small_model().eval()
    x = blobs(8).x
    positions = [(0, 0)] + [(k * dy, k * dx) for k in (1, 2) for dy in (-1, 1) for dx in (-1, 1)]
    views = [predict(model, translate(v, torch.full((8,), dy), torch.full((8,), dx)), 8, tta="none", bf16=False)
             for v in (x, x.flip(3)) for dy, dx in positions]
    got = predict(model, x, 4, tta="flip_diag", bf16=False)
    assert torch.allclose(got, sum(views) / 18, atol=1e-5)
    assert not torch.allclose(got, predict(model, x, 4, tta="flip_grid", bf16=False), atol=1e-4)


def test_fit_without_test_split_skips_the_per_epoch_test_pass():
    rows = fit(small_model(), blobs(32), None, cfg(epochs=2), torch.Generator().manual_seed(0))
    assert [set(r) for r in rows] == [{"epoch", "train_loss", "train_acc", "lr", "seconds", "train_size"}] * 2


def test_batch_larger_than_the_data_still_trains():
    rows = fit(small_model(), blobs(10), blobs(10), cfg(batch_size=512, epochs=1), torch.Generator())
    assert len(rows) == 1


def test_fit_records_ordered_feature_percentiles_on_the_probe_batch():
    data = blobs(64)
    rows = fit(small_model(), data, data, cfg(epochs=2), torch.Generator().manual_seed(0), probe=data.x[:16])
    for r in rows:
        assert r["p1"] <= r["p20"] <= r["p80"] <= r["p99"]
    assert rows[0]["p99"] != rows[1]["p99"]  # the features change as the model trains
    assert "p1" not in fit(small_model(), data, data, cfg(epochs=1), torch.Generator())[0]


def test_epoch_batches_drop_the_partial_batch_and_cap_at_the_set_size():
    assert epoch_batches(1000, 512) == (512, 1)  # the last 488 images wait for the next (reshuffled) epoch
    assert epoch_batches(1024, 512) == (512, 2)
    assert epoch_batches(100, 512) == (100, 1)  # a set smaller than a batch is one batch


def test_bn_trained_at_batch_2_tests_with_running_statistics():
    # the batch-size study's premise: batch statistics while training, running averages at test time, so a
    # test image's logits do not depend on which other images share its test batch
    model, data = small_model("bn"), blobs()
    c = cfg(batch_size=2, epochs=1)
    train_epoch(model, data, c, make_optimizer(model, c, epoch_batches(len(data.x), 2)[1]),
                torch.Generator().manual_seed(0), 1)
    bn = model.features[0][1]
    assert bn.num_batches_tracked.item() == 32  # one running-stat update per batch-2 step
    alone = predict(model, data.x[:1], 1, False, False)
    in_batch = predict(model, data.x, 64, False, False)[:1]
    assert torch.allclose(alone, in_batch, atol=1e-5)
    model.train()
    assert not torch.allclose(model(data.x[:2].float())[:1], model(data.x[:1].repeat(2, 1, 1, 1).float())[:1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_keep_freed_memory_applies_on_glibc():
    # in a fresh interpreter: the setting is process-wide
    code = "from stages.trainer import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_keep_freed_memory_is_a_no_op_without_glibc(monkeypatch):
    def no_libc(name):
        raise OSError(f"{name}: cannot open shared object file")
    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert keep_freed_memory() is False


def test_curve_split_takes_every_second_test_image_from_every_class():
    y = torch.arange(10).repeat_interleave(1000)  # stored class by class, as the CIFAR-10 test set is
    x = torch.arange(10_000).reshape(-1, 1, 1, 1).expand(-1, 3, 2, 2).to(torch.uint8)
    curve = curve_split(Split(x, y))
    assert len(curve.y) == 5000 and torch.equal(torch.bincount(curve.y), torch.full((10,), 500))
    assert torch.equal(curve.x, x[::2]) and torch.equal(curve.y, y[::2])


def test_train_image_size_is_low_res_size_in_the_first_epochs_and_never_upscales():
    c = cfg(epochs=20, low_res=0.3, low_res_size=24)
    assert [train_image_size(c, e, 32) for e in (1, 6, 7, 20)] == [24, 24, 32, 32]
    assert train_image_size(c, 1, 8) == 8  # digits: already smaller than low_res_size
    assert train_image_size(cfg(epochs=20, low_res=0.0, low_res_size=24), 1, 32) == 32


def test_the_last_flip_only_epochs_drop_translation_and_cutout():
    c = cfg(epochs=20, crop_pad=2, cutout=5, flip_only_last=2)
    assert [augments(c, e) for e in (1, 18, 19, 20)] == [(2, 5), (2, 5), (0, 0), (0, 0)]
    assert augments(cfg(epochs=20, crop_pad=2, cutout=5, flip_only_last=0), 20) == (2, 5)
    assert augments(cfg(epochs=3, crop_pad=2, cutout=0, flip_only_last=3), 1) == (0, 0)


def test_train_epoch_augments_as_its_epoch_says(monkeypatch):
    seen = []

    def spy(x, pad, gen):
        seen.append(pad)
        return x

    monkeypatch.setattr(trainer, "random_crop_flip", spy)
    c = cfg(epochs=2, crop_pad=2, flip_only_last=1)
    model = small_model()
    opt = make_optimizer(model, c, 2 * epoch_batches(64, c.batch_size)[1])
    for epoch in (1, 2):
        train_epoch(model, blobs(), c, opt, torch.Generator().manual_seed(0), epoch)
    assert seen == [2, 0]


def test_low_res_is_a_rounded_fraction_of_the_epochs():
    assert low_res_epochs(cfg(epochs=20, low_res=0.3)) == 6
    assert low_res_epochs(cfg(epochs=6, low_res=0.3)) == 2
    assert low_res_epochs(cfg(epochs=20, low_res=0.0)) == 0


def test_the_first_epochs_train_on_downscaled_images_and_tests_stay_full_size():
    """Progressive resizing: with low_res 0.67 of 3 epochs, epochs 1-2 see 8x8 images, epoch 3 and every
    test pass the data's own 16x16."""
    def blobs16(n, seed):
        d = blobs(n, seed)
        return Split(d.x.repeat_interleave(2, 2).repeat_interleave(2, 3), d.y)
    model, seen = small_model(), []
    model.register_forward_pre_hook(lambda m, args: seen.append((m.training, args[0].shape[-1])))
    rows = fit(model, blobs16(32, 0), blobs16(16, 1), cfg(epochs=3, batch_size=16, low_res=0.67, low_res_size=8),
               torch.Generator().manual_seed(0))
    train_sizes = [size for training, size in seen if training]
    assert train_sizes == [8, 8, 8, 8, 16, 16]  # 2 steps per epoch
    assert {size for training, size in seen if not training} == {16}
    assert [r["train_size"] for r in rows] == [8, 8, 16]


@pytest.fixture
def cpu_probes(monkeypatch):
    """Sets torch's CPU bf16 probes (CPU_BF16_PROBES) to fixed answers (None: the probe is absent) and keeps
    native_bf16's cached answer from leaking into other tests."""
    def set_answers(**answers):
        for name in CPU_BF16_PROBES:
            answer = answers.get(name, False)
            if answer is None:
                monkeypatch.delattr(torch.cpu, name, raising=False)
            else:
                monkeypatch.setattr(torch.cpu, name, lambda a=answer: a)
        trainer.native_bf16.cache_clear()
    yield set_answers
    trainer.native_bf16.cache_clear()


@pytest.mark.parametrize("answers, native", [
    ({}, False),  # AVX-512 without BF16 (Ice Lake) or AVX2 only: emulated bf16, slower than fp32
    ({"_is_avx512_bf16_supported": True}, True),  # Zen 4, Cooper Lake
    ({"_is_amx_tile_supported": True}, True),  # Sapphire Rapids and later
    ({"_is_avx512_bf16_supported": None, "_is_amx_tile_supported": None}, True),  # no probes: trust train.bf16
])
def test_cpu_bf16_only_where_the_cpu_has_bf16_instructions(cpu_probes, answers, native):
    cpu_probes(**answers)
    assert trainer.native_bf16("cpu") is native
    assert trainer.uses_bf16(torch.device("cpu"), True) is native
    assert trainer.uses_bf16(torch.device("cpu"), False) is False


def test_mps_and_other_devices_never_autocast():
    assert trainer.native_bf16("mps") is False
    assert trainer.native_bf16("meta") is False


@pytest.mark.parametrize("native", [True, False])
def test_autocast_computes_in_bf16_only_on_native_hardware(monkeypatch, native):
    monkeypatch.setattr(trainer, "native_bf16", lambda device_type: native)
    conv, x = torch.nn.Conv2d(3, 4, 3), torch.rand(2, 3, 8, 8)
    with trainer.autocast(torch.device("cpu"), bf16=True):
        out = conv(x)
    assert out.dtype == (torch.bfloat16 if native else torch.float32)
    name = trainer.precision_name(torch.device("cpu"), True)
    assert (name == "bf16 autocast") if native else name.startswith("fp32 (train.bf16 asked for bf16")
    with trainer.autocast(torch.device("cpu"), bf16=False):
        assert conv(x).dtype == torch.float32
    assert trainer.precision_name(torch.device("cpu"), False) == "fp32"

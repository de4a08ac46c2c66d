"""One training function for every normalization: the recipe is data (a TrainParams), the norm is a string."""
from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from stages.augment import cutout, downscale, random_crop_flip, translate
from stages.params import TrainParams


class NonFiniteLoss(RuntimeError):
    """Training diverged: the loss became NaN or inf."""


@dataclass
class Split:
    """Images as uint8 (N, C, H, W) and labels as int64 (N,), both on the training device."""
    x: torch.Tensor
    y: torch.Tensor


def pick_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve blocks up to 32 MiB (its maximum) from the heap and to keep freed memory
    instead of returning it to the OS. Why: every training step allocates and frees the same few-MB activation
    buffers; by default glibc maps them fresh from the OS and unmaps them again, so each step pays page faults.
    Measured here: 5-12 % less time per training step (BN), bit-identical results. Process-wide; memory is
    bounded by the peak use. Returns False where there is no glibc (macOS, Windows, musl), changing nothing."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 1 << 30))


# torch's own probes of the x86 CPU's bf16 instructions (AVX-512 BF16 dot products, AMX tiles); absent in
# builds without them, then bf16 is trusted as asked
CPU_BF16_PROBES = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")


@functools.cache
def native_bf16(device_type: str) -> bool:
    """Whether this machine's `device_type` ("cpu", "cuda", ...) computes bf16 in hardware. Why it matters: on
    a CPU without bf16 instructions oneDNN emulates them, and a training step of our net took 1.4-2.0x as long
    as in fp32 (Intel Xeon, Ice Lake, measured), while with them (AMX, or Zen 4's AVX-512 BF16) bf16 is the
    faster one (1.4-1.7x). CUDA: Ampere and later; CPUs other than x86 (torch's probes answer no there): fp32;
    MPS and other devices: never (autocast is not used there)."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device_type != "cpu":
        return False
    probes = [getattr(torch.cpu, name, None) for name in CPU_BF16_PROBES]
    if all(probe is None for probe in probes):
        return True
    return any(probe() for probe in probes if probe is not None)


def uses_bf16(device: torch.device, bf16: bool) -> bool:
    """train.bf16 as applied on `device`: asked for and computed natively there (see native_bf16)."""
    return bf16 and native_bf16(device.type)


def precision_name(device: torch.device, bf16: bool) -> str:
    """What the model computes in on `device`, for logs: "bf16 autocast", or "fp32" with the reason."""
    if uses_bf16(device, bf16):
        return "bf16 autocast"
    if bf16:
        return f"fp32 (train.bf16 asked for bf16, but this {device.type} has no bf16 instructions)"
    return "fp32"


def autocast(device: torch.device, bf16: bool, cache: bool = True):
    """bf16 autocast where asked for and the device computes bf16 natively (uses_bf16); a no-op context
    otherwise, so the model runs in fp32. cache: keep each weight's bf16 copy for reuse within the context
    (torch's default)."""
    if uses_bf16(device, bf16):
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=cache)
    return contextlib.nullcontext()


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only; norm scales/shifts and biases are left undecayed."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over conv and linear weights (the tensors with ndim > 1)."""
    return sum(p.abs().sum() for p in model.parameters() if p.ndim > 1)


def one_cycle(step: int, total: int, warmup: float) -> float:
    """LR multiplier: linear warm-up from 0.1 to 1 over `warmup` of the steps, then linear decay to 0."""
    warm = max(1, round(warmup * total))
    if step < warm:
        return 0.1 + 0.9 * step / warm
    return max(0.0, (total - step) / max(1, total - warm))


def low_res_epochs(cfg: TrainParams) -> int:
    """How many of the first epochs train on downscaled images: train.low_res of train.epochs, rounded."""
    return round(cfg.low_res * cfg.epochs)


def train_image_size(cfg: TrainParams, epoch: int, full: int) -> int:
    """Longer side in pixels of the images that epoch `epoch` (1-based) trains on, for data whose longer side
    is `full`: cfg.low_res_size during the first low_res_epochs (progressive resizing, never upscaled), else full."""
    return min(cfg.low_res_size, full) if epoch <= low_res_epochs(cfg) else full


def augments(cfg: TrainParams, epoch: int) -> tuple[int, int]:
    """(crop_pad, cutout) of epoch `epoch` (1-based): cfg's, except in the last cfg.flip_only_last epochs,
    which see every image unshifted and whole (the random flip stays), as the test set does."""
    return (0, 0) if epoch > cfg.epochs - cfg.flip_only_last else (cfg.crop_pad, cfg.cutout)


def epoch_batches(n: int, batch_size: int) -> tuple[int, int]:
    """(images per step, steps per epoch) for n training images. The last partial batch is dropped:
    BN needs more than one sample per batch."""
    bs = min(batch_size, n)
    return bs, n // bs


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """Approximately orthogonalize each matrix of g (K, m, n) with m <= n: the same singular vectors, every
    singular value moved into about [0.7, 1.2]. Muon's quintic Newton-Schulz iteration (Jordan et al. 2024,
    coefficients (3.4445, -4.7750, 2.0315), chosen for speed over exact convergence), 5 steps from g scaled to
    Frobenius norm 1 (so its spectral norm is at most 1)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (torch.linalg.vector_norm(g, dim=(1, 2), keepdim=True) + eps)
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x


def orthogonalized(grads: list[torch.Tensor], groups: list[list[int]]) -> list[torch.Tensor]:
    """newton_schulz of each conv filter gradient (out, in, kh, kw) seen as an (out, in * kh * kw) matrix;
    `groups` lists the positions of same-shaped gradients, which are stacked and orthogonalized together (one
    batched iteration per shape instead of one per layer). Returns contiguous tensors in grads' order."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(grads)
    for group in groups:
        g = torch.stack([grads[i].reshape(len(grads[i]), -1).float() for i in group])
        wide = g.shape[1] <= g.shape[2]  # the iteration wants m <= n: orthogonalize the transpose otherwise
        o = newton_schulz(g if wide else g.mT)
        o = o if wide else o.mT
        for k, i in enumerate(group):
            out[i] = o[k].reshape(grads[i].shape).to(grads[i].dtype)
    return out


class OneCycleSGD:
    """SGD with Nesterov momentum (plain SGD at momentum 0), weight decay on the first param group only, and the
    one-cycle learning rate: torch.optim.SGD's update with torch.optim.lr_scheduler.LambdaLR's schedule, written
    out with the rate held in a tensor on the parameters' device (bit-identical to them on CPU: tested).

    With cfg.muon_lr > 0 every conv filter (4-dim weight) takes Muon's step instead (Jordan et al. 2024, as in
    airbench94_muon): the same Nesterov momentum, then the update orthogonalized (`newton_schulz`), applied at
    muon_lr times the one-cycle multiplier (with its own warm-up, cfg.muon_warmup), after the filter is
    rescaled to Frobenius norm sqrt(out channels). A norm follows every conv, so a filter's scale changes
    nothing and the fixed norm makes muon_lr the relative size of each step; for the same reason weight decay,
    which only shrinks the scale, is not applied to filters. Norm scales/shifts and the linear classifier keep SGD,
    and so does the stem's filter when cfg.muon_stem is false (Muon's authors keep it for hidden layers).
    Why: orthogonalized updates move every direction of a filter at the same rate instead of mostly the
    dominant few; in 20-epoch runs of this net the training accuracy rose by about a point for every norm, and
    test accuracy over five seeds by +0.55 (GN), +0.49 (LN) and +0.03 (BN) points.

    Why not torch's SGD: a CUDA graph (CudaGraphStep) replays a recorded training step, update included, so
    the rates must be read from device memory, which `next_lr()` refills before every step; torch.optim.SGD
    bakes a Python float into the recording. Usage per step: `opt.next_lr()`, then `opt.step(grads)` (no
    autograd).
    """

    def __init__(self, model: nn.Module, cfg: TrainParams, steps_total: int):
        decay, no_decay = (g["params"] for g in param_groups(model, cfg.weight_decay))
        self.params, self.n_decay = decay + no_decay, len(decay)
        self.momentum, self.weight_decay = cfg.momentum, cfg.weight_decay
        self.peak, self.warmup, self.steps_total = cfg.lr, cfg.warmup, steps_total
        self.muon_warmup = cfg.muon_warmup
        self.bufs = [torch.zeros_like(p) for p in self.params]  # 0 * momentum + grad: torch's first-step buffer
        self.lr = torch.zeros((), device=self.params[0].device)
        self.steps_done = 0
        # Muon's filters (positions in self.params), grouped by matrix shape; SGD takes the others. The first
        # filter is the stem's (the model registers it first): Muon's too only with cfg.muon_stem.
        filters = [i for i, p in enumerate(self.params) if p.ndim == 4] if cfg.muon_lr > 0 else []
        self.filters = filters if cfg.muon_stem else filters[1:]
        shapes: dict[tuple[int, int], list[int]] = {}
        for k, i in enumerate(self.filters):
            shapes.setdefault((len(self.params[i]), self.params[i][0].numel()), []).append(k)
        self.filter_groups = list(shapes.values())
        self.sgd = sorted(set(range(len(self.params))) - set(self.filters))  # decayed ones first
        self.muon_ratio = cfg.muon_lr / cfg.lr
        self.filter_lr = torch.zeros((), device=self.params[0].device)

    def lr_at(self, step: int, warmup: float | None = None) -> float:
        """SGD's learning rate of step `step` (0-based); with `warmup`, that rate under another warm-up fraction."""
        return self.peak * one_cycle(step, self.steps_total, self.warmup if warmup is None else warmup)

    def next_lr(self) -> None:
        """Load the rates of the next step into self.lr and self.filter_lr (outside any CUDA graph: the count
        lives on the host)."""
        self.lr.fill_(self.lr_at(self.steps_done))
        # lr * muon_ratio, not muon_lr * multiplier: equal warm-ups give the bits of the single schedule before
        self.filter_lr.fill_(self.lr_at(self.steps_done, self.muon_warmup) * self.muon_ratio)
        self.steps_done += 1

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        """Update the parameters in place from their gradients (same order as self.params; overwritten)."""
        grads = list(grads)
        if self.filters:
            self._filter_step([grads[i] for i in self.filters])
        params, bufs = [self.params[i] for i in self.sgd], [self.bufs[i] for i in self.sgd]
        d, n_decay = [grads[i] for i in self.sgd], sum(i < self.n_decay for i in self.sgd)
        if self.weight_decay:
            d[:n_decay] = torch._foreach_add(d[:n_decay], params[:n_decay], alpha=self.weight_decay)
        self._nesterov(bufs, d)
        torch._foreach_addcmul_(params, d, [self.lr] * len(d), value=-1)

    def _nesterov(self, bufs: list[torch.Tensor], d: list[torch.Tensor]) -> None:
        """Momentum buffers += gradients d (after momentum decay), then d = d + momentum * buffer in place
        (Nesterov, as torch.optim.SGD); nothing at momentum 0."""
        if self.momentum:
            torch._foreach_mul_(bufs, self.momentum)
            torch._foreach_add_(bufs, d)
            torch._foreach_add_(d, bufs, alpha=self.momentum)

    def _filter_step(self, d: list[torch.Tensor]) -> None:
        """Muon's step for the filters (self.filters' order) from their gradients d (overwritten)."""
        params = [self.params[i] for i in self.filters]
        self._nesterov([self.bufs[i] for i in self.filters], d)
        norms = torch._foreach_norm(params)
        torch._foreach_mul_(params, [math.sqrt(len(p)) / n for p, n in zip(params, norms)])
        update = orthogonalized(d, self.filter_groups)
        torch._foreach_addcmul_(params, update, [self.filter_lr] * len(params), value=-1)

    def state_dict(self) -> dict:
        return {"bufs": [b.clone() for b in self.bufs], "steps_done": self.steps_done}

    def load_state_dict(self, state: dict) -> None:
        for b, saved in zip(self.bufs, state["bufs"], strict=True):
            b.copy_(saved)
        self.steps_done = state["steps_done"]


def make_optimizer(model: nn.Module, cfg: TrainParams, steps_total: int) -> OneCycleSGD:
    return OneCycleSGD(model, cfg, steps_total)


def train_step(model: nn.Module, opt: OneCycleSGD, cfg: TrainParams, xb: torch.Tensor, yb: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One SGD step on float images xb (B, C, H, W) and labels yb (B,), at the rate in opt.lr.
    Returns 0-dim tensors (loss, correct predictions, loss + L1 penalty), still on the device."""
    # no autocast weight cache: it would keep casts made while a CUDA graph records, outside its memory
    with autocast(xb.device, cfg.bf16, cache=False):
        logits = model(xb)
        loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
    total = loss + cfg.l1 * l1_penalty(model) if cfg.l1 > 0 else loss
    opt.step(torch.autograd.grad(total, opt.params, allow_unused=True, materialize_grads=True))
    return loss.detach(), (logits.argmax(1) == yb).sum(), total.detach()


StepFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class CudaGraphStep:
    """train_step recorded once per batch shape as a CUDA graph and replayed: one launch per step instead of
    several hundred small kernel launches, which bound this small net on a GPU (H100, measured: 1.6-2.0 s per
    epoch launched one by one, 0.28-0.34 s replayed). Same arithmetic as calling train_step.

    Recording needs a few warm-up steps first (cuDNN and autograd set themselves up); those steps would train,
    so the weights, BN statistics and momentum are copied before and put back after.
    """

    WARMUP_STEPS = 3

    def __init__(self, model: nn.Module, opt: OneCycleSGD, cfg: TrainParams):
        self.model, self.opt, self.cfg = model, opt, cfg
        self.graphs: dict[tuple, tuple] = {}  # batch shape -> (input x, input y, graph, outputs)

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        key = (tuple(xb.shape), xb.dtype)
        if key not in self.graphs:
            self.graphs[key] = self._record(xb, yb)
        sx, sy, graph, out = self.graphs[key]
        sx.copy_(xb)
        sy.copy_(yb)
        graph.replay()
        return out

    def _record(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple:
        sx, sy = xb.clone(), yb.clone()  # clone keeps the channels_last layout
        saved = [t.clone() for t in self._state()]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP_STEPS):
                train_step(self.model, self.opt, self.cfg, sx, sy)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for t, s in zip(self._state(), saved):
                t.copy_(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = train_step(self.model, self.opt, self.cfg, sx, sy)
        return sx, sy, graph, out

    def _state(self) -> list[torch.Tensor]:
        return list(self.model.state_dict().values()) + self.opt.bufs


def step_function(model: nn.Module, opt: OneCycleSGD, cfg: TrainParams) -> StepFn:
    """How a training step runs on the model's device: replayed from a CUDA graph on CUDA, called directly
    elsewhere."""
    if opt.lr.device.type == "cuda":
        return CudaGraphStep(model, opt, cfg)
    return lambda xb, yb: train_step(model, opt, cfg, xb, yb)


DIAGONAL_SHIFTS = ((1, 1), (-1, -1))  # (down, right) pixels: flip_shift's views (airbench's translate TTA)
GRID_SHIFTS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))  # 8 neighbours
# flip_diag's 8 positions besides the centre: 1 and 2 pixels along both diagonals, each way
DIAGONAL2_SHIFTS = tuple((k * dy, k * dx) for k in (1, 2) for dy in (-1, 1) for dx in (-1, 1))
EQUAL_WEIGHT_SHIFTS = {"flip_grid": GRID_SHIFTS, "flip_diag": DIAGONAL2_SHIFTS}  # modes weighing every view alike


def shifted_logits(model: nn.Module, views: tuple[torch.Tensor, ...], shifts: tuple[tuple[int, int], ...]
                   ) -> torch.Tensor:
    """Mean fp32 logits over every view (N, C, H, W) moved by every (down, right) shift (reflect-filled)."""
    n, dev = len(views[0]), views[0].device
    total = 0
    for dy, dx in shifts:
        sy, sx = (torch.full((n,), d, device=dev) for d in (dy, dx))
        total = total + sum(model(translate(v, sy, sx)).float() for v in views)
    return total / (len(views) * len(shifts))


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, tta: str, bf16: bool) -> torch.Tensor:
    """Logits (N, classes) in fp32 for uint8 images x, with test-time augmentation `tta`:
    none: the image alone; flip: mean of image and mirror logits;
    flip_shift: 2/3 of the flip mean plus 1/3 of the mean over image and mirror each shifted by one pixel
    diagonally both ways (4 more views; airbench's translate TTA). Measured on the committed models: +0.5 to
    +0.7 points over flip alone for every norm;
    flip_grid: equal-weight mean over image and mirror at all 9 positions within one pixel (18 views).
    Re-scored on 15 cached models (3 norms x 5 seeds): +0.25 points over flip_shift, every model better,
    for three times the forward passes;
    flip_diag: equal-weight mean over image and mirror at the centre and at the 8 diagonal shifts by 1 and 2
    pixels (18 views, flip_grid's cost). Re-scored on the same 15 models: +0.05 points over flip_grid, 12 of
    15 models better."""
    model.eval()
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].float()
        with autocast(x.device, bf16):
            logits = model(xb).float()
            if tta != "none":
                mirror = xb.flip(3)
                logits = 0.5 * (logits + model(mirror).float())
            if tta == "flip_shift":
                logits = (2 * logits + shifted_logits(model, (xb, mirror), DIAGONAL_SHIFTS)) / 3
            elif tta in EQUAL_WEIGHT_SHIFTS:
                shifts = EQUAL_WEIGHT_SHIFTS[tta]  # 2 unshifted views + 2 per shift, each weighed 1 / views
                views = 2 + 2 * len(shifts)
                logits = (2 * logits + (views - 2) * shifted_logits(model, (xb, mirror), shifts)) / views
        out.append(logits)
    return torch.cat(out)


PERCENTILES = (1, 20, 80, 99)  # of the feature distribution, as in the Group Normalization paper's figure


@torch.no_grad()
def feature_percentiles(model: nn.Module, x: torch.Tensor, bf16: bool) -> dict[str, float]:
    """Percentiles of every value of the last conv block's output (before global pooling) on the uint8
    images x, with the model in eval mode (as used at test time). Keys p1, p20, p80, p99."""
    model.eval()
    with autocast(x.device, bf16):
        f = model.forward_features(x.float()).float().flatten()
    q = torch.quantile(f, torch.tensor([p / 100 for p in PERCENTILES], device=f.device))
    return {f"p{p}": v.item() for p, v in zip(PERCENTILES, q)}


def loss_and_accuracy(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of logits (N, classes) against labels y (N,)."""
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def evaluate_split(model: nn.Module, split: Split, cfg: TrainParams, tta: str) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of the model on a split, with test-time augmentation `tta`."""
    return loss_and_accuracy(predict(model, split.x, cfg.batch_size, tta, cfg.bf16), split.y)


def train_epoch(model: nn.Module, data: Split, cfg: TrainParams, opt: OneCycleSGD, gen: torch.Generator,
                epoch: int, desc: str = "train", step: StepFn | None = None) -> tuple[float, float]:
    """One pass over the augmented, shuffled training set. `step`: from step_function (made here if not
    given; pass one to keep its CUDA graphs across epochs). Returns (mean train loss, train accuracy)."""
    step = step or step_function(model, opt, cfg)
    model.train()
    size = train_image_size(cfg, epoch, max(data.x.shape[-2:]))
    pad, square = augments(cfg, epoch)
    x = cutout(random_crop_flip(data.x, pad, gen), square, gen)
    order = torch.randperm(len(x), generator=gen, device=x.device)
    bs, steps = epoch_batches(len(x), cfg.batch_size)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    # First step (0-based) whose loss was NaN or inf, -1 while none: kept on the device and read once after the
    # epoch, because reading the loss every step would make a GPU wait for each step before queuing the next.
    bad_step = torch.full((), -1, device=x.device)
    for i in tqdm(range(steps), desc=f"{desc} epoch {epoch}/{cfg.epochs}", leave=False, disable=None):
        idx = order[i * bs:(i + 1) * bs]
        opt.next_lr()
        loss, right, total = step(downscale(x[idx].float(), size), data.y[idx])  # downscale: no-op at full size
        bad_step = torch.where((bad_step < 0) & ~torch.isfinite(total), i, bad_step)
        loss_sum += loss * bs
        correct += right
    if bad_step.item() >= 0:
        raise NonFiniteLoss(f"loss became NaN or inf at epoch {epoch}, step {bad_step.item() + 1}/{steps}; "
                            f"lower train.lr or check the data")
    n = steps * bs
    return loss_sum.item() / n, correct.item() / n


EpochHook = Callable[[int, dict, dict], None]


def fit(model: nn.Module, train: Split, test: Split | None, cfg: TrainParams, gen: torch.Generator,
        on_epoch: EpochHook | None = None, start_epoch: int = 0, opt_state: dict | None = None,
        desc: str = "train", probe: torch.Tensor | None = None) -> list[dict]:
    """Train for epochs start_epoch+1 .. cfg.epochs; returns one row per epoch trained here
    (epoch, train loss and accuracy, lr at the epoch's start, seconds of training, train_size: the training
    images' longer side in pixels; with `test`, the test loss and accuracy of the plain model (no test-time
    augmentation: one pass, and the learning curve of the model itself); with `probe`, a fixed batch of uint8
    images, the percentiles p1/p20/p80/p99 of the last block's features on it).

    `on_epoch(epoch, row, opt_state)` runs after each finished epoch (logs, resume checkpoints);
    `opt_state` (the optimizer's state_dict) passed back in lets an interrupted run continue exactly.
    """
    opt = make_optimizer(model, cfg, cfg.epochs * epoch_batches(len(train.x), cfg.batch_size)[1])
    if opt_state is not None:
        opt.load_state_dict(opt_state)
    step = step_function(model, opt, cfg)
    rows = []
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        lr = opt.lr_at(opt.steps_done)
        train_loss, train_acc = train_epoch(model, train, cfg, opt, gen, epoch, desc, step)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch, "train_loss": train_loss, "train_acc": train_acc, "lr": lr, "seconds": seconds,
               "train_size": train_image_size(cfg, epoch, max(train.x.shape[-2:]))}
        if test is not None:
            row["test_loss"], row["test_acc"] = evaluate_split(model, test, cfg, "none")
            if not math.isfinite(row["test_loss"]):
                raise NonFiniteLoss(f"test loss became {row['test_loss']} after epoch {epoch}; lower train.lr")
        if probe is not None:
            row.update(feature_percentiles(model, probe, cfg.bf16))
        rows.append(row)
        if on_epoch is not None:
            on_epoch(epoch, row, opt.state_dict())
    return rows

import pytest
import torch

from stages.augment import cutout, downscale, random_crop_flip, reflect_index, translate


def batch(n=16, c=3, h=8, w=8):
    return torch.randint(0, 256, (n, c, h, w), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def test_crop_flip_keeps_shape_dtype_and_order():
    x = batch()
    out = random_crop_flip(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    # each output is a translated (and maybe mirrored) copy of its own input: its centre pixels appear in it
    for i in range(len(x)):
        centre = out[i, :, 3:5, 3:5]
        assert any((x_[:, r:r + 2, c:c + 2] == centre).all() for x_ in (x[i], x[i].flip(2))
                   for r in range(1, 6) for c in range(1, 6))


def test_augmentation_is_deterministic_under_a_seeded_generator():
    x = batch()
    a = random_crop_flip(x, 2, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, 2, torch.Generator().manual_seed(5))
    c = random_crop_flip(x, 2, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_no_pad_only_flips():
    x = batch()
    out = random_crop_flip(x, 0, torch.Generator().manual_seed(0))
    for i in range(len(x)):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))


@pytest.mark.parametrize("size", [1, 4, 5])
def test_cutout_zeroes_one_size_by_size_square_per_image(size):
    x = torch.full((64, 3, 16, 16), 200, dtype=torch.uint8)
    out = cutout(x, size, torch.Generator().manual_seed(0))
    zeroed = (out == 0).all(1)  # (N, H, W): pixels zeroed in every channel
    assert torch.equal(torch.where(zeroed[:, None], x, out), x)  # every other pixel untouched (x has no zeros)
    rows, cols = zeroed.any(2), zeroed.any(1)  # (N, H), (N, W): which rows / columns hold zeros
    assert torch.equal(zeroed, rows[:, :, None] & cols[:, None, :])  # a rectangle
    h, w = rows.sum(1), cols.sum(1)
    assert ((h >= 1) & (h <= size) & (w >= 1) & (w <= size)).all()  # clipped at the border at most
    inside = (h == size) & (w == size)
    assert inside.sum() > len(x) // 2  # most squares lie wholly inside a 16x16 image: exactly size x size


def test_cutout_size_0_is_off():
    x = torch.full((4, 3, 16, 16), 200, dtype=torch.uint8)
    assert torch.equal(cutout(x, 0, torch.Generator()), x)


def padded_crop_flip(x, pad, gen):
    """Reference: reflect-pad the whole batch, then crop (the straightforward way, same random draws)."""
    n, _, h, w = x.shape
    xp = torch.nn.functional.pad(x.float(), (pad, pad, pad, pad), mode="reflect").to(torch.uint8)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    crops = torch.stack([xp[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], crops.flip(3), crops)


def test_crop_equals_reflect_pad_then_crop():
    x = batch(n=64, h=8, w=6)
    for pad in (1, 2, 5):  # reflect padding allows up to size - 1 = 5 pixels
        a = random_crop_flip(x, pad, torch.Generator().manual_seed(pad))
        b = padded_crop_flip(x, pad, torch.Generator().manual_seed(pad))
        assert torch.equal(a, b)


def test_reflect_index_mirrors_without_repeating_the_edge():
    i = torch.arange(-3, 8)
    assert reflect_index(i, 5).tolist() == [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]


def test_translate_moves_each_image_by_its_own_shift_with_reflected_borders():
    x = torch.arange(32.0).reshape(2, 1, 4, 4)
    out = translate(x, torch.tensor([1, -1]), torch.tensor([1, -1]))
    down_right, up_left = out[0, 0], out[1, 0]
    assert torch.equal(down_right[1:, 1:], x[0, 0, :3, :3])  # pixel (r, c) moves to (r + 1, c + 1)
    assert torch.equal(down_right[0, 1:], x[0, 0, 1, :3])  # the new top row mirrors row 1
    assert torch.equal(up_left[:3, :3], x[1, 0, 1:, 1:])
    assert torch.equal(up_left[3, :3], x[1, 0, 2, 1:])  # the new bottom row mirrors row 2
    assert torch.equal(translate(x, torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long)), x)


def test_downscale_shrinks_the_longer_side_and_keeps_the_layout():
    x = torch.full((4, 3, 32, 32), 100.0).contiguous(memory_format=torch.channels_last)
    out = downscale(x, 24)
    assert out.shape == (4, 3, 24, 24) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, torch.full_like(out, 100.0))  # a flat image stays flat
    assert downscale(torch.zeros(2, 3, 32, 16), 24).shape == (2, 3, 24, 12)  # aspect ratio kept


def test_downscale_averages_instead_of_aliasing():
    """A 1-pixel checkerboard halved: antialiased bilinear averages each 2x2 block to mid-grey, where plain
    subsampling would keep one colour."""
    board = ((torch.arange(32)[:, None] + torch.arange(32)[None, :]) % 2 * 255.0).expand(1, 3, 32, 32)
    out = downscale(board, 16)
    assert torch.allclose(out, torch.full_like(out, 127.5), atol=3.0)  # +-2.6 at the borders


def test_downscale_leaves_images_that_are_small_enough_alone():
    x = torch.rand(2, 3, 8, 8)
    assert downscale(x, 24) is x and downscale(x, 8) is x

"""Adapters: shapes for every layout pair, 'auto' choices from declared layouts, unbridgeable errors."""

import pytest
import torch
import torch.nn.functional as F

from featdistill import ADAPTERS, ShapeError, UnknownNameError
from featdistill.adapters import Layout, auto_kind, build_adapter, split_tokens

S_GRID = dict(student_prefix=1, student_grid=(4, 4))


@pytest.mark.parametrize(
    "student, teacher, kind, hints",
    [
        ((8, 4, 4), (8, 4, 4), "identity", {}),
        ((8, 4, 4), (16, 4, 4), "conv1x1", {}),
        ((8, 8, 8), (16, 4, 4), "conv1x1", {}),
        ((8, 3, 3), (16, 4, 4), "conv1x1", {}),  # non-integer factor: bilinear
        ((17, 32), (17, 64), "linear", {}),  # equal lengths: per-token projection, grid or not
        ((66, 32), (17, 64), "tokens", dict(student_prefix=2, student_grid=(8, 8), teacher_grid=(4, 4))),
        ((32,), (64,), "linear", {}),
        ((17, 32), (16, 4, 4), "tokens_to_map", S_GRID),
        ((8, 8, 8), (65, 48), "map_to_tokens", dict(teacher_prefix=1)),  # a prefix alone: the rest is a square
    ],
)
def test_auto_builds_an_adapter_that_matches_the_teacher(student, teacher, kind, hints):
    assert auto_kind(student, teacher, **hints) == kind
    adapter = build_adapter("auto", student, teacher, **hints)
    s, t = torch.randn(2, *student, requires_grad=True), torch.randn(2, *teacher)
    out, target = adapter(s), adapter.target(t)
    assert out.shape == target.shape
    out.sum().backward()  # adapters are differentiable end to end


def test_tokens_to_map_lays_tokens_on_their_grid():
    adapter = ADAPTERS.get("tokens_to_map")((5, 2), (2, 2, 2), student_grid=(2, 2))  # 1 class token + 2x2
    conv = adapter.proj[0]
    torch.nn.init.eye_(conv.weight.view(2, 2))
    adapter.eval()
    bn = adapter.proj[1]
    bn.running_mean.zero_(), bn.running_var.fill_(1 - bn.eps)
    tokens = torch.arange(10.0).view(1, 5, 2)  # token i = [2i, 2i+1]
    out = adapter(tokens)
    # patch tokens 1..4 in row-major order: channel 0 of position (0, 1) is token 2 -> value 4
    assert torch.allclose(out[0, 0], torch.tensor([[2.0, 4.0], [6.0, 8.0]]), atol=1e-5)


def test_map_to_tokens_drops_teacher_prefix():
    adapter = ADAPTERS.get("map_to_tokens")((8, 4, 4), (17, 12), teacher_grid=(4, 4))
    assert adapter.target(torch.randn(2, 17, 12)).shape == (2, 16, 12)
    assert adapter(torch.randn(2, 8, 4, 4)).shape == (2, 16, 12)


def test_split_tokens_reads_declarations_and_never_guesses():
    assert split_tokens(197, grid=(14, 14)) == (1, (14, 14))
    assert split_tokens(198, prefix=2) == (2, (14, 14))
    assert split_tokens(50, prefix=2, grid=(6, 8)) == (2, (6, 8))
    with pytest.raises(ShapeError, match="no declared patch grid.*student_grid"):
        split_tokens(197)  # 1 + 14x14 would fit, but nothing says these are patch tokens
    with pytest.raises(ShapeError, match="square grid"):
        split_tokens(3, prefix=0)
    with pytest.raises(ShapeError, match="not 1 prefix tokens plus a 4x4 grid"):
        split_tokens(18, prefix=1, grid=(4, 4))


def test_layouts_are_declared_not_guessed_from_a_bare_shape():
    # 128 text tokens are a sequence, not 7 prefix tokens plus an 11x11 grid
    assert Layout.of((128, 64)) == Layout("sequence")
    assert Layout.of((197, 64), grid=(14, 14)) == Layout("tokens", 1, (14, 14))
    assert Layout.of((8, 4, 4)).kind == "map" and Layout.of((8,)).kind == "vector"
    with pytest.raises(ShapeError, match="sequence lengths differ.*student_grid"):
        auto_kind((128, 64), (64, 64))
    with pytest.raises(ShapeError, match="no adapter maps a sequence to a map.*student_grid"):
        build_adapter("auto", (17, 32), (16, 4, 4))


def test_channel_free_auto_only_resizes():
    adapter = build_adapter("auto", (8, 8, 8), (32, 4, 4), channel_free=True)
    assert sum(p.numel() for p in adapter.parameters()) == 0
    assert adapter(torch.randn(1, 8, 8, 8)).shape == (1, 8, 4, 4)


def test_unbridgeable_shapes_print_both_and_what_to_try():
    with pytest.raises(ShapeError) as err:
        build_adapter("auto", (4, 4, 4, 4), (16, 4, 4))
    msg = str(err.value)
    assert "[4, 4, 4, 4]" in msg and "[16, 4, 4]" in msg and "select=" in msg and "--list-layers" in msg
    with pytest.raises(ShapeError, match="only the last dim"):
        build_adapter("linear", (17, 32), (65, 32))
    with pytest.raises(ShapeError, match="shapes differ"):
        build_adapter("identity", (8,), (9,))


def test_unknown_adapter_and_custom_factory():
    with pytest.raises(UnknownNameError, match="'conv1x1'"):
        build_adapter("conv1x2", (8, 4, 4), (16, 4, 4))
    adapter = build_adapter(lambda s, t: torch.nn.Conv2d(s[0], t[0], 3, padding=1), (8, 4, 4), (16, 4, 4))
    assert adapter(torch.randn(1, 8, 4, 4)).shape == (1, 16, 4, 4)


@pytest.mark.parametrize("s_grid, t_grid", [((4, 4), (8, 8)), ((8, 8), (4, 4)), ((3, 3), (5, 5)), ((6, 6), (4, 4))])
def test_token_adapters_equal_resize_then_project_on_either_grid(s_grid, t_grid):
    """The adapters project on the smaller grid; the map they compute is still ``linear(resize(x))`` written out."""
    torch.manual_seed(0)
    n_s, n_t = s_grid[0] * s_grid[1], t_grid[0] * t_grid[1]
    tokens = ADAPTERS.get("tokens")((2 + n_s, 16), (1 + n_t, 24), student_prefix=2, student_grid=s_grid,
                                    teacher_prefix=1, teacher_grid=t_grid)
    x = torch.randn(3, 2 + n_s, 16)
    grid = x[:, 2:].reshape(3, *s_grid, 16).permute(0, 3, 1, 2)
    mode = dict(mode="area") if s_grid[0] % t_grid[0] == 0 else dict(mode="bilinear", align_corners=False)
    resized = F.interpolate(grid, size=t_grid, **mode).flatten(2).transpose(1, 2)  # [B, n_t, 16]
    expected = resized @ tokens.proj.weight.T + tokens.proj.bias
    assert torch.allclose(tokens(x), expected, atol=1e-5)

    to_tokens = ADAPTERS.get("map_to_tokens")((16, *s_grid), (1 + n_t, 24), teacher_prefix=1, teacher_grid=t_grid)
    expected = F.interpolate(grid, size=t_grid, **mode).flatten(2).transpose(1, 2) @ to_tokens.proj.weight.T
    assert torch.allclose(to_tokens(grid), expected + to_tokens.proj.bias, atol=1e-5)


def test_tokens_compared_on_the_students_grid_average_the_teachers_tokens_per_student_patch():
    torch.manual_seed(0)
    adapter = ADAPTERS.get("tokens")((17, 16), (65, 24), student_grid=(4, 4), teacher_grid=(8, 8),
                                     compare_on="student")
    s, t = torch.randn(2, 17, 16), torch.randn(2, 65, 24)
    assert torch.allclose(adapter(s), s[:, 1:] @ adapter.proj.weight.T + adapter.proj.bias, atol=1e-6)
    patches = t[:, 1:].reshape(2, 4, 2, 4, 2, 24)  # teacher row = 2 * student row + dy, column likewise
    torch.testing.assert_close(adapter.target(t), patches.mean(dim=(2, 4)).reshape(2, 16, 24))
    with pytest.raises(ShapeError, match="compare_on='both' is not a grid"):
        ADAPTERS.get("tokens")((17, 16), (65, 24), student_grid=(4, 4), teacher_grid=(8, 8), compare_on="both")

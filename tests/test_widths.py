"""Hidden-width rules: timm's make_divisible with round_limit=0, the classic C // r, never 0."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given

import se_torch
from se_common import make_divisible, resolve_rd_channels

# timm SEModule widths, worked by hand from timm's make_divisible(C / 16, 8, round_limit=0.):
# max(8, int(C / 16 + 4) // 8 * 8). SE-ResNet-50's stages see C = 256, 512, 1024, 2048.
TIMM_SE_WIDTHS = {16: 8, 64: 8, 100: 8, 200: 16, 256: 16, 512: 32, 1024: 64, 2048: 128, 3: 8}


@pytest.mark.parametrize("channels,width", TIMM_SE_WIDTHS.items())
def test_default_width_is_timm_semodule(channels, width):
    assert resolve_rd_channels(channels) == width
    assert se_torch.SqueezeExcite(channels).rd_channels == width


def test_make_divisible_round_limit():
    assert make_divisible(10, 8) == 16  # 8 < 0.9 * 10, so timm's default bumps it up
    assert make_divisible(10, 8, round_limit=0.0) == 8
    assert make_divisible(3, 4, min_value=1, round_limit=0.0) == 4


@given(
    channels=st.integers(1, 4096),
    rd_ratio=st.floats(1e-4, 4.0),
    rd_divisor=st.integers(1, 64),
)
def test_width_properties(channels, rd_ratio, rd_divisor):
    width = resolve_rd_channels(channels, rd_ratio=rd_ratio, rd_divisor=rd_divisor)
    assert width >= 1 and width % rd_divisor == 0
    # the nearest multiple of rd_divisor, or rd_divisor itself when that rounds below it
    assert width == rd_divisor or abs(width - channels * rd_ratio) <= rd_divisor / 2 + 1e-9


@pytest.mark.parametrize("channel,reduction", [(64, 16), (50, 16), (16, 16), (7, 2)])
def test_classic_width_is_floor_division(channel, reduction):
    se = se_torch.SELayer(channel, reduction)
    assert se.fc[0].out_features == channel // reduction

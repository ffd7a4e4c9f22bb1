import pytest
import torch

from xnn_lab.metrics import mass_in_mask


def test_mass_in_mask_matches_a_per_pixel_sum():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 8, 8, generator=g)
    masks = torch.rand(3, 8, 8, generator=g) > 0.7
    got = mass_in_mask(maps, masks)
    for b in range(3):
        pos = [max(float(v), 0.0) for v in maps[b].flatten()]
        inside = [p for p, m in zip(pos, masks[b].flatten()) if m]
        assert got[b].item() == pytest.approx(sum(inside) / sum(pos), rel=1e-5)


def test_mass_in_mask_sums_channels_and_handles_empty_maps():
    maps = torch.zeros(2, 3, 4, 4)
    maps[0, :, 0, 0] = 1.0
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 0, 0] = True
    assert mass_in_mask(maps, masks).tolist() == [1.0, 0.0]


def test_mass_in_mask_errors_name_arguments():
    with pytest.raises(TypeError, match="masks must be a bool tensor"):
        mass_in_mask(torch.rand(1, 4, 4), torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="masks must have shape"):
        mass_in_mask(torch.rand(1, 4, 4), torch.ones(1, 4, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="attributions must have 3 or 4 dimensions"):
        mass_in_mask(torch.rand(4, 4), torch.ones(4, 4, dtype=torch.bool))

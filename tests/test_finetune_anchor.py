"""The fine-tuning anchor term leaves alone exactly the grid levels fine-tuning trains."""

import math

import torch

from benchbench.train.finetune import anchor_levels, anchor_loss

# The shipped digits models' grid: Karras et al. with σ_min = 0.002, σ_max = 90, ρ = 7, 16 levels, descending.
RHO, LEVELS = 7.0, 16
GRID = torch.tensor([(90 ** (1 / RHO) + i / (LEVELS - 1) * (0.002 ** (1 / RHO) - 90 ** (1 / RHO))) ** RHO
                     for i in range(LEVELS)])


class Recorder:
    """A stand-in consistency model that records the levels it is called at."""

    sigmas = GRID

    def __init__(self):
        self.calls = []

    def __call__(self, x, s):
        self.calls += [float(v) for v in s]
        return x * 0


def test_at_sigma_0_3_the_nearest_level_is_trained_and_not_anchored():
    target = 2 * 0.3
    nearest = min(range(LEVELS - 1), key=lambda k: abs(math.log(GRID[k]) - math.log(target)))
    above = max(k for k in range(LEVELS) if GRID[k] >= target)
    assert nearest != above  # σ = 0.3 is where the two rules part (0.51 below 0.6, 1.05 above)
    levels = anchor_levels(GRID, [0.3], "nearest")
    assert nearest not in levels and above in levels and LEVELS - 1 not in levels
    assert len(levels) == LEVELS - 2
    assert anchor_levels(GRID, [0.3], "topup") == [k for k in range(LEVELS - 1) if k != above]
    assert nearest not in anchor_levels(GRID, [0.3], "exact") and above not in anchor_levels(GRID, [0.3], "exact")

    model, base = Recorder(), Recorder()
    anchor_loss(model, base, torch.rand(400, 1, 2, 2), [0.3], lambda a, b: (a - b).flatten(1).pow(2).mean(1),
                torch.Generator().manual_seed(0), "nearest")
    called = {min(range(LEVELS), key=lambda k: abs(GRID[k].item() - s)) for s in model.calls}
    assert float(GRID[nearest]) not in model.calls and nearest not in called
    assert called == set(levels)  # 400 draws over 14 levels reach every one of them


def test_at_the_shipped_sigmas_the_nearest_level_is_the_next_one_up():
    # So the rule's fix changes no level the shipped settings (σ = 0.25, 0.5, 1, nearest) would anchor.
    assert anchor_levels(GRID, [0.25, 0.5, 1.0], "nearest") == anchor_levels(GRID, [0.25, 0.5, 1.0], "topup")


def test_nearest_log_trains_and_leaves_unanchored_only_the_level_nearest_in_ratio():
    # At σ = 0.75 (2σ = 1.5) the two nearest rules part: in ratio level 8, in absolute difference level 9.
    target = 2 * 0.75
    by_ratio = min(range(LEVELS - 1), key=lambda k: abs(math.log(GRID[k]) - math.log(target)))
    by_difference = min(range(LEVELS - 1), key=lambda k: abs(float(GRID[k]) - target))
    assert by_ratio != by_difference
    for mode, trained in (("nearest-log", by_ratio), ("nearest", by_difference)):
        assert anchor_levels(GRID, [0.75], mode) == [k for k in range(LEVELS - 1) if k != trained]

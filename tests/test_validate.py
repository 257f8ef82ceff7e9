"""The output rule, the majority vote, and the per-copy noise of stochastic purifiers."""

import pandas as pd
import pytest
import torch

from benchbench.cli import main
from benchbench.registry import register_purifier
from benchbench.results.rundir import tsv_name
from benchbench.smoothing.noise import CopyNoise, noise_generator
from benchbench.smoothing.contract import RANGE_MARGIN, OutputError, check_logits, check_purifier_output, majority_vote

X = torch.rand(4, 1, 8, 8)


def test_small_overshoot_is_clipped_and_other_scales_are_refused():
    out = check_purifier_output(X * 1.2 - 0.1, X)  # within the margin: clipped
    assert out.min() == 0 and out.max() <= 1
    assert torch.equal(out, (X * 1.2 - 0.1).clamp(0, 1))
    bad = X.clone()
    bad[2, 0, 3, 3] = 1 + RANGE_MARGIN + 0.01
    with pytest.raises(OutputError, match="outside") as info:
        check_purifier_output(bad, X)
    assert info.value.row == 2  # the input row to blame
    noisy = X + 2.0  # identity-like purifiers opt out of the range rule
    assert torch.equal(check_purifier_output(noisy, X, output_range=None), noisy)


def test_dtypes_devices_and_finiteness():
    assert check_purifier_output(X.double(), X).dtype == torch.float32
    with pytest.raises(OutputError, match="dtype uint8"):
        check_purifier_output((X * 255).to(torch.uint8), X)
    nan = X.clone()
    nan[3, 0, 0, 0] = float("nan")
    with pytest.raises(OutputError, match="NaN in 1 of 4 rows") as info:
        check_purifier_output(nan, X)
    assert info.value.row == 3
    with pytest.raises(OutputError, match="on meta"):
        check_purifier_output(X.to("meta"), X)
    with pytest.raises(OutputError, match="NaN logits"):
        check_logits(torch.tensor([[0.0, float("nan")]]), 1, 2)
    with pytest.raises(OutputError, match=r"shape \(1, 3\); expected \(1, 2\)"):
        check_logits(torch.zeros(1, 3), 1, 2)


def test_votes_shape_and_majority_with_ties_to_the_lowest_class():
    with pytest.raises(OutputError, match=r"expected \(12, 1, 8, 8\) \(3 votes per input\)"):
        check_purifier_output(X, X, votes=3)
    assert check_purifier_output(X.repeat_interleave(3, 0), X, votes=3).shape == (12, 1, 8, 8)
    labels = torch.tensor([2, 2, 1,   0, 1, 5,   3, 4, 4,   7, 7, 7])
    assert majority_vote(labels, 3, 10).tolist() == [2, 0, 4, 7]  # 0/1/5 tie → 0


def test_copy_noise_depends_on_the_copy_key_alone():
    a = CopyNoise(5, 0.5, [1, 1, 9], [0, 1, 0]).randn_like(torch.empty(3, 1, 4, 4))
    b = CopyNoise(5, 0.5, [9], [0]).randn_like(torch.empty(1, 1, 4, 4))
    assert torch.equal(a[2:], b)
    assert not torch.equal(a[0], a[1])
    noise = CopyNoise.for_copies(5, 0.5, 1, [0, 1])
    first, second = noise.randn_like(torch.empty(2, 3)), noise.randn_like(torch.empty(2, 3))
    assert not torch.equal(first, second)  # successive draws continue each stream
    votes = CopyNoise.for_copies(5, 0.5, 1, [0, 1]).repeat_interleave(3)
    drawn = votes.randn_like(torch.empty(6, 1, 4, 4))
    assert torch.equal(drawn[0], a[0]) and torch.equal(drawn[3], a[1])  # vote 0 is the copy's own stream
    assert len({tuple(r.flatten().tolist()) for r in drawn}) == 6
    # The certification noise is a function of its key alone.
    assert torch.equal(noise_generator(0, 7, 0.25).randn((3,)), noise_generator(0, 7, 0.25).randn((3,)))


class Voter:
    """Three noisy majority samples per input: blur-free identity plus per-vote noise, clipped."""

    networks = ()
    stochastic = True
    votes = 3

    def __init__(self, device: str = "cpu", dataset: str = "digits"):
        pass

    def __call__(self, x, sigma, noise):
        x = x.repeat_interleave(self.votes, 0)
        return (x + 0.3 * noise.repeat_interleave(self.votes).randn_like(x)).clamp(0, 1)


def test_a_voting_stochastic_purifier_runs_and_its_rows_do_not_depend_on_batch_size(tmp_path):
    register_purifier("test-voter")(Voter)
    args = ["run", "--purifiers", "test-voter", "--num-images", "2", "--sigmas", "0.5", "--n0", "8", "--n", "50"]
    assert main([*args, "--batch-size", "7", "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--batch-size", "64", "--out", str(tmp_path / "b")]) == 0
    name = tsv_name("test-voter", 0.5)
    a, b = (pd.read_csv(tmp_path / d / name, sep="\t").drop(columns="time") for d in "ab")
    pd.testing.assert_frame_equal(a, b)
    assert (a["nfe"] == 0).all() and len(a) == 2


class CountingVoter(Voter):
    """The Voter, recording how many rows each call returns."""

    rows: list[int] = []

    def __call__(self, x, sigma, noise):
        out = super().__call__(x, sigma, noise)
        CountingVoter.rows.append(len(out))
        return out


def test_a_voting_purifier_never_gives_the_networks_more_rows_than_the_batch_size(tmp_path):
    register_purifier("test-counting-voter")(CountingVoter)
    args = ["run", "--purifiers", "test-counting-voter", "--num-images", "2", "--sigmas", "0.5", "--n0", "8",
            "--n", "50", "--no-report"]
    CountingVoter.rows.clear()
    assert main([*args, "--batch-size", "64", "--out", str(tmp_path / "a")]) == 0
    # 64 noisy copies per batch, 3 votes each: at most 21 inputs (63 rows) per call, and every copy is purified.
    # + the pre-run check: 2 copies, then the memory probes on 2 and 8
    assert max(CountingVoter.rows) == 63 and sum(CountingVoter.rows) == 3 * (2 * 58 + 2 + 2 + 8)
    assert main([*args, "--batch-size", "2", "--out", str(tmp_path / "b")]) == 0  # fewer rows than votes: 1 input
    name = tsv_name("test-counting-voter", 0.5)
    a, b = (pd.read_csv(tmp_path / d / name, sep="\t").drop(columns="time") for d in "ab")
    pd.testing.assert_frame_equal(a, b)

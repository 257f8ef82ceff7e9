"""Checks at the boundary between the harness and the models it runs: nothing reaches a count unchecked.

Purifier outputs (the rule, also in the README):

* a ``torch.Tensor`` of a floating dtype (float16/bfloat16/float64 are cast to the input's dtype; an
  integer image such as uint8 0–255 is refused), on the input's device, shaped (B·votes, C, H, W) for an
  input (B, C, H, W), every value finite;
* values in [0, 1]: anything within ``RANGE_MARGIN`` outside is clipped to [0, 1] (an unclipped model
  output overshooting a little); anything further out is refused, since such an output is in another scale
  ([-1, 1], 0–255). A purifier that declares ``output_range = None`` (``identity``, whose noisy images
  legitimately leave [0, 1]) is not range-checked.

Classifier outputs: a floating tensor of logits shaped (rows, num_classes), finite.

A violation raises :class:`OutputError` with the first offending input row, so the caller can name the
image; the message never includes a traceback.
"""

from __future__ import annotations

from typing import Any

import torch

RANGE_MARGIN = 0.5


class OutputError(Exception):
    """``reason`` says what is wrong; ``row`` is the first offending input row (None when it is the whole
    output, e.g. a wrong type)."""

    def __init__(self, reason: str, row: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.row = row


def _describe(value: Any) -> str:
    if value is None:
        return "None"
    return f"a {type(value).__module__}.{type(value).__qualname__}".replace("builtins.", "")


def _first_bad_row(bad: torch.Tensor, per_input: int) -> int:
    rows = bad.reshape(len(bad), -1).any(1).nonzero()
    return int(rows[0]) // per_input


def check_purifier_output(out: Any, x_noisy: torch.Tensor, *, votes: int = 1,
                          output_range: tuple[float, float] | None = (0.0, 1.0)) -> torch.Tensor:
    """Return ``out`` checked (and cast/clipped by the rule above) as purified images for ``x_noisy``."""
    if not isinstance(out, torch.Tensor):
        raise OutputError(f"returned {_describe(out)}, not a torch.Tensor")
    expected = (len(x_noisy) * votes, *x_noisy.shape[1:])
    if tuple(out.shape) != expected:
        what = f" ({votes} votes per input)" if votes > 1 else ""
        raise OutputError(f"returned shape {tuple(out.shape)} for input {tuple(x_noisy.shape)}; expected "
                          f"{expected}{what}")
    if not out.is_floating_point():
        raise OutputError(f"returned dtype {str(out.dtype).replace('torch.', '')}; purified images are floating "
                          "point in [0, 1] (not 0–255 integers)")
    if out.device != x_noisy.device:
        raise OutputError(f"returned a tensor on {out.device} for an input on {x_noisy.device}")
    finite = torch.isfinite(out)
    if not bool(finite.all()):
        bad = ~finite
        kind = "NaN" if bool(torch.isnan(out).any()) else "inf"
        raise OutputError(f"returned {kind} in {int(bad.reshape(len(out), -1).any(1).sum())} of {len(out)} rows",
                          _first_bad_row(bad, votes))
    out = out.to(x_noisy.dtype)
    if output_range is None:
        return out
    low, high = output_range
    outside = (out < low - RANGE_MARGIN) | (out > high + RANGE_MARGIN)
    if bool(outside.any()):
        raise OutputError(f"returned values in [{out.min().item():.3g}, {out.max().item():.3g}], outside "
                          f"[{low:g}, {high:g}] by more than {RANGE_MARGIN:g}: purified images must be in [0, 1] "
                          "image scale (not [-1, 1] or 0–255)", _first_bad_row(outside, votes))
    return out.clamp(low, high)


def check_logits(logits: Any, rows: int, num_classes: int) -> torch.Tensor:
    """Return ``logits`` checked as a classifier's output for ``rows`` images of ``num_classes`` classes."""
    if not isinstance(logits, torch.Tensor):
        raise OutputError(f"returned {_describe(logits)}, not a torch.Tensor of logits")
    if tuple(logits.shape) != (rows, num_classes):
        raise OutputError(f"returned logits of shape {tuple(logits.shape)}; expected ({rows}, {num_classes})")
    if not logits.is_floating_point():
        raise OutputError(f"returned logits of dtype {str(logits.dtype).replace('torch.', '')}; expected floating")
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        kind = "NaN" if bool(torch.isnan(logits).any()) else "inf"
        raise OutputError(f"returned {kind} logits", _first_bad_row(~finite, 1))
    return logits


def majority_vote(labels: torch.Tensor, votes: int, num_classes: int) -> torch.Tensor:
    """Labels (B·votes,) → (B,): the most frequent of each input's ``votes`` consecutive labels, ties to the
    lowest class index (argmax returns the first maximum)."""
    if votes == 1:
        return labels
    counts = torch.nn.functional.one_hot(labels.reshape(-1, votes), num_classes).sum(1)
    return counts.argmax(1)


def checked_purify(purifier: Any, x_noisy: torch.Tensor, sigma: float, noise: Any) -> torch.Tensor:
    """Call ``purifier`` by its contract (:func:`benchbench.registry.purify`) and check its output by the
    rule above; exceptions of the purifier itself propagate, output violations raise OutputError."""
    from benchbench.registry import purify

    out = purify(purifier, x_noisy, sigma, noise)
    return check_purifier_output(out, x_noisy, votes=getattr(purifier, "votes", 1),
                                 output_range=getattr(purifier, "output_range", (0.0, 1.0)))

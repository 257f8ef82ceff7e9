"""The acceptance criteria `bench evaluate consistency` checks, all on the val split.

Plain constants, kept apart from :mod:`benchbench.train.acceptance` so that building the CLI's help does not
import torch and diffusers.
"""

CRITERIA = {  # what `bench evaluate consistency` checks, all on the val split
    "distilled_fd_within_2x_teacher": "FD(one-step samples of the distilled model) <= 2 x FD(teacher's "
                                      "25-step Heun PF-ODE samples), both against val",
    "finetuned_lpips_10pct_lower_at_every_sigma": "mean LPIPS-style distance(purified, clean) of the fine-tuned "
                                                  "model <= 0.9 x the distilled model's, at every σ",
    "finetuned_fd_within_1.5x_distilled": "FD(one-step, fine-tuned) <= 1.5 x FD(one-step, distilled)",
}

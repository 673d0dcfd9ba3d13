"""The learned correction network (PyTorch): how much each recent event counts, plus a bias.

The linear model blends the recent items' input vectors with one exponential recency curve.
The correction network replaces that curve with learned weights by position in the buffer
(newest first) and by age bucket (log2 seconds before the newest event), and adds a learned
multiple of each item's log popularity, folded into the inner product as one extra dimension:
the query becomes ``[sum_j w_j U_j, 1]`` and an item's index vector ``[V_i, beta log(1 + n_i)]``.

It is trained with full-softmax cross-entropy on held-out latest events (never seen by the linear
model it corrects), early-stopped on held-out users, and kept only when it measures better than
the plain curve on them (`interest.train`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from interest.recency import GAP_BUCKETS, LN2, CorrectionWeights


class DecayCorrection(nn.Module):
    def __init__(self, buffer_size: int, half_life_s: float) -> None:
        super().__init__()
        # Start from the exponential curve the linear model chose: softplus^-1 of its weights.
        ages = np.array([0.0] + [2.0 ** (b - 1) for b in range(1, GAP_BUCKETS)])
        start = np.ones_like(ages) if math.isinf(half_life_s) else np.exp(-LN2 * ages / half_life_s)
        start = np.log(np.expm1(np.clip(start, 1e-6, None)))
        self.gap = nn.Parameter(torch.tensor(start, dtype=torch.float32))
        self.position = nn.Parameter(torch.zeros(buffer_size))
        self.popularity_scale = nn.Parameter(torch.zeros(()))

    def forward(
        self,
        u_recent: torch.Tensor,
        positions: torch.Tensor,
        gaps: torch.Tensor,
        event_weight: torch.Tensor,
        v: torch.Tensor,
        log_popularity: torch.Tensor,
    ) -> torch.Tensor:
        """Logits over items for a batch of buffers.

        u_recent (B, N, r): input vectors of buffer events (zeros for padding, whose
        event_weight is 0); positions/gaps (B, N) int; v (items, r); log_popularity (items,).
        """
        w = nn.functional.softplus(self.position[positions] + self.gap[gaps]) * event_weight
        query = torch.einsum("bn,bnr->br", w, u_recent)
        return query @ v.T + self.popularity_scale * log_popularity[None, :]

    def export(self) -> CorrectionWeights:
        return CorrectionWeights(
            position=self.position.detach().numpy().astype(np.float64),
            gap=self.gap.detach().numpy().astype(np.float64),
            popularity_scale=float(self.popularity_scale.detach()),
        )

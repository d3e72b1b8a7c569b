"""VGGT camera head: iterative refinement of a 9-number pose encoding per view from the
aggregator's camera tokens.

Dimension legend:
    b  batch (scenes)
    s  views per scene
    n  aggregator tokens per view (the camera token is first)
    c  head width (= 2 x aggregator width: frame and global features concatenated)
    e  pose-encoding numbers (9: translation 3, quaternion xyzw 4, fov_h, fov_w)
    i  refinement iterations
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gen_nvs.models.layers import Block, Mlp


class CameraHead(nn.Module):
    """Estimates `[t, quaternion, fov_h, fov_w]` for every view (pose-free use).

    Each iteration embeds the current estimate (a learned "empty" pose at the start), turns
    it into adaLN shift/scale/gate for the normalised camera tokens, runs a transformer trunk
    across the views, and adds a predicted delta. Translation and quaternion are returned
    as is, the two fields of view through ReLU. Submodule names follow the official VGGT
    checkpoint (`camera_head.*`).
    """

    def __init__(
        self,
        *,
        dim: int = 2048,
        num_heads: int = 16,
        trunk_depth: int = 4,
        mlp_ratio: float = 4.0,
        layer_scale_init: float = 0.01,
        pose_dim: int = 9,
    ) -> None:
        super().__init__()
        self.token_norm = nn.LayerNorm(dim)
        self.trunk = nn.Sequential(
            *(
                Block(
                    dim, num_heads=num_heads, mlp_ratio=mlp_ratio, layer_scale_init=layer_scale_init
                )
                for _ in range(trunk_depth)
            )
        )
        self.trunk_norm = nn.LayerNorm(dim)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, pose_dim))
        self.embed_pose = nn.Linear(pose_dim, dim)
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 3 * dim))
        self.adaln_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.pose_branch = Mlp(dim, hidden_dim=dim // 2, out_dim=pose_dim)

    @staticmethod
    def activate(pose_enc: Tensor) -> Tensor:
        """Raw estimate [... e] -> pose encoding [... e]: ReLU on the fields of view."""
        return torch.cat((pose_enc[..., :7], F.relu(pose_enc[..., 7:])), dim=-1)

    def forward(
        self, aggregator_tokens: Tensor, *, num_iterations: int = 4, return_all: bool = False
    ) -> Tensor:
        """aggregator_tokens [(b) s n c] -> pose encodings [(b) s e] after the last iteration,
        or [i (b) s e] for every iteration when `return_all` (for a per-iteration loss).

        The estimate is detached between iterations, so each delta learns on its own.
        """
        if aggregator_tokens.ndim not in (3, 4):
            raise ValueError(
                f"expected aggregator tokens [s, n, c] or [b, s, n, c], "
                f"got {tuple(aggregator_tokens.shape)}"
            )
        if num_iterations < 1:
            raise ValueError(f"num_iterations must be at least 1, got {num_iterations}")
        unbatched = aggregator_tokens.ndim == 3
        tokens = aggregator_tokens[None] if unbatched else aggregator_tokens
        pose_tokens = self.token_norm(tokens[:, :, 0])  # (b, s, c)
        estimate = None
        outputs = []
        for _ in range(num_iterations):
            if estimate is None:
                pose_input = self.empty_pose_tokens.expand(*pose_tokens.shape[:2], -1)
            else:
                estimate = estimate.detach()
                pose_input = estimate
            shift, scale, gate = self.poseLN_modulation(self.embed_pose(pose_input)).chunk(3, -1)
            modulated = gate * (self.adaln_norm(pose_tokens) * (1 + scale) + shift)
            features = self.trunk(modulated + pose_tokens)  # (b, s, c)
            delta = self.pose_branch(self.trunk_norm(features))  # (b, s, e)
            estimate = delta if estimate is None else estimate + delta
            outputs.append(self.activate(estimate))
        result = torch.stack(outputs) if return_all else outputs[-1]
        if unbatched:
            result = result[:, 0] if return_all else result[0]
        return result

"""What the networks take in: square images of at least `MIN_RESOLUTION` pixels a side.

The one place of the rule, for `model embed`, `model.embed.embed_collection` and the training config
alike (a run embeds with `embed_collection` too, so a smaller size would only fail at its end). Kept
apart from the networks, without a JAX import, so that a configuration is checked before anything heavy
loads.
"""

from __future__ import annotations

# Every backbone halves the image five times (an overall stride of 32): at 32 px its last feature map is
# a single position, the least a pooled signature is computed from.
MIN_RESOLUTION = 32


def check_resolution(resolution: int) -> int:
    """`resolution` if the networks can embed images of that size, else a ValueError saying what to pass."""
    if resolution < MIN_RESOLUTION:
        raise ValueError(
            f"resolution {resolution} is too small: the networks downsample by 32; use a resolution of at "
            f"least {MIN_RESOLUTION}."
        )
    return resolution

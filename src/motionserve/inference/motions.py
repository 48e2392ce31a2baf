"""The camera motions that have a motion LoRA checkpoint (guoyww's AnimateDiff motion LoRAs). A leaf.

Both the checkpoint map (`weights.py`: one hub repo per motion) and the tiny-model builder (`tiny.py`: one
random LoRA per motion) list them; they live here so that neither of those modules imports the other's
constants.
"""

from __future__ import annotations

MOTIONS: tuple[str, ...] = (
    "zoom-in",
    "zoom-out",
    "pan-left",
    "pan-right",
    "tilt-up",
    "tilt-down",
    "rolling-clockwise",
    "rolling-anticlockwise",
)

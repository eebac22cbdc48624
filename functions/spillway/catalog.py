"""The services Spillway runs, as data: what each needs from a GPU.

A service's VRAM need grows with the image: a base for the model weights plus working memory
per megapixel. The API prices a job with it, the pollers pack jobs onto GPUs with it.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field


class Service(BaseModel, frozen=True):
    name: str
    description: str
    steps: tuple[str, ...] = Field(description="model steps the agent runs, in order")
    vram_base_mb: int = Field(gt=0, description="weights and runtime, whatever the image")
    vram_per_megapixel_mb: int = Field(ge=0, description="activations, per megapixel of input")
    max_megapixels: float = Field(gt=0, description="larger inputs are refused at submit")

    def vram_mb(self, width: int, height: int) -> int:
        megapixels = width * height / 1_000_000
        return self.vram_base_mb + math.ceil(self.vram_per_megapixel_mb * megapixels)


SERVICES: dict[str, Service] = {
    s.name: s
    for s in (
        Service(
            name="remove_furniture",
            description="Empty a room: find the furniture and paint the room back in where it stood.",
            steps=("detect_furniture", "inpaint"),
            vram_base_mb=2_000,
            vram_per_megapixel_mb=1_500,
            max_megapixels=40,
        ),
        Service(
            name="upscale_2x",
            description="Double the resolution of a photo, with edge-preserving sharpening.",
            steps=("upscale",),
            vram_base_mb=1_000,
            vram_per_megapixel_mb=3_000,
            max_megapixels=12,
        ),
    )
}

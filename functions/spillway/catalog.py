"""The services Spillway runs, as data: what each needs from a GPU.

A service's needs grow with the image: VRAM, a base for the model weights plus working memory per
megapixel; compute, a share of a GPU's streaming multiprocessors, in units where a whole reference GPU
is `GPU_COMPUTE` (an SM%). The API sizes a job with them once, at submit; the pollers pack jobs onto
GPUs by both (see `placement`).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, Field

GPU_COMPUTE = 100  # a whole reference GPU's compute: a GPU's default capacity, and the most one run uses


class Service(BaseModel, frozen=True):
    name: str
    description: str
    steps: tuple[str, ...] = Field(description="model steps the agent runs, in order")
    vram_base_mb: int = Field(gt=0, description="weights and runtime, whatever the image")
    vram_per_megapixel_mb: int = Field(ge=0, description="activations, per megapixel of input")
    max_megapixels: float = Field(gt=0, description="larger inputs are refused at submit")
    compute_base: int = Field(gt=0, le=GPU_COMPUTE, description="SM% a run keeps busy, whatever the image")
    compute_per_megapixel: float = Field(ge=0, description="SM% more per megapixel of input")

    def vram_mb(self, width: int, height: int) -> int:
        return self.vram_base_mb + math.ceil(self.vram_per_megapixel_mb * _megapixels(width, height))

    def compute(self, width: int, height: int) -> int:
        """Its share of a GPU's compute for this image; a run never uses more than a whole GPU."""
        return min(GPU_COMPUTE, self.compute_base + math.ceil(self.compute_per_megapixel * _megapixels(width, height)))


def _megapixels(width: int, height: int) -> float:
    return width * height / 1_000_000


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
            compute_base=25,  # detection and inpainting: memory-bound, a big image adds little
            compute_per_megapixel=5,
        ),
        Service(
            name="upscale_2x",
            description="Double the resolution of a photo, with edge-preserving sharpening.",
            steps=("upscale",),
            vram_base_mb=1_000,
            vram_per_megapixel_mb=3_000,
            max_megapixels=12,
            compute_base=20,  # convolution over every output pixel: grows fast with the image
            compute_per_megapixel=10,
        ),
    )
}

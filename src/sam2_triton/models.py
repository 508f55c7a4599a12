"""The SAM2.1 model sizes sam2-triton knows: Meta's config, checkpoint file and URL for each."""

from __future__ import annotations

from dataclasses import dataclass

#: Meta's release folder for the SAM2.1 checkpoints (September 2024).
CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824"

#: Side of the square image the encoder takes (SAM2's ``image_size``).
IMAGE_SIZE = 1024
#: Side of the low-resolution mask logits the decoder returns (``IMAGE_SIZE / 4``).
LOW_RES_MASK_SIZE = 256
#: Channels and side of ``image_embeddings`` and of the two high-resolution feature maps.
EMBED_DIM = 256
EMBED_SIZE = 64
HIGH_RES_FEATS = ((32, 256), (64, 128))


@dataclass(frozen=True)
class ModelSize:
    """One SAM2.1 size: how Meta names its config and checkpoint."""

    name: str
    config: str  # hydra config name inside the ``sam2`` package
    checkpoint_file: str

    @property
    def url(self) -> str:
        return f"{CHECKPOINT_BASE_URL}/{self.checkpoint_file}"


MODEL_SIZES: dict[str, ModelSize] = {
    size.name: size
    for size in (
        ModelSize("tiny", "configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt"),
        ModelSize("small", "configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt"),
        ModelSize("base_plus", "configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt"),
        ModelSize("large", "configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"),
    )
}


class UserError(Exception):
    """A mistake the user can fix (bad flag, missing file, wrong checkpoint).

    Entry points print its message as one line and exit non-zero, without a traceback.
    """


def get_model_size(name: str) -> ModelSize:
    """Return the :class:`ModelSize` called ``name`` or raise :class:`UserError`."""
    try:
        return MODEL_SIZES[name]
    except KeyError:
        known = ", ".join(MODEL_SIZES)
        raise UserError(f"unknown model size {name!r}; choose one of: {known}") from None

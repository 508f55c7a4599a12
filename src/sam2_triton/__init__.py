"""sam2-triton: serve Meta's SAM2.1 on NVIDIA Triton Inference Server."""

from sam2_triton.models import MODEL_SIZES, ModelSize, UserError, get_model_size

__all__ = ["MODEL_SIZES", "ModelSize", "UserError", "get_model_size"]
__version__ = "0.1.0"

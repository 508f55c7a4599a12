#!/usr/bin/env python3
"""How many runs the benchmark's clicks' masks have, for a checkpoint: Meta's predictor on
the benchmark's 1920x1080 photo (``sam2_triton.bench.sessions``), each click's best mask,
single and multimask. A ``mask_rle`` answer is 4 bytes a run; random weights give speckle,
``make_random_checkpoint.py --smooth-masks`` several times fewer (still more than a real
object's outline).

    python scripts/gpu/mask_runs.py --model base_plus --checkpoint C [--device cuda]
"""

from __future__ import annotations

import argparse
import io
import json

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="base_plus")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    import torch
    from PIL import Image
    from sam2.build_sam import build_sam2
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    from sam2_triton.bench.sessions import clicks, photo_jpeg
    from sam2_triton.models import get_model_size
    from sam2_triton.sessions.image import masks_to_rle

    config = get_model_size(args.model).config
    model = build_sam2(config, ckpt_path=args.checkpoint, device=args.device, mode="eval")
    predictor = SAM2ImagePredictor(model)
    image = np.array(Image.open(io.BytesIO(photo_jpeg())).convert("RGB"))
    predictor.set_image(image)
    rows = []
    for click in clicks(image.shape[:2]):
        for multimask in (False, True):
            masks, iou, _ = predictor.predict(
                click["point_coords"], click["point_labels"], multimask_output=multimask
            )
            best = torch.from_numpy(masks[int(np.argmax(iou))] > 0)
            rows.append((len(masks_to_rle([best])[0]), round(float(best.float().mean()), 4)))
    runs = [r for r, _ in rows]
    print(
        json.dumps(
            {
                "model": args.model,
                "checkpoint": args.checkpoint,
                "runs": runs,
                "area": [a for _, a in rows],
                "median_runs": int(np.median(runs)),
                "max_bytes": 4 * max(runs),
            }
        )
    )


if __name__ == "__main__":
    main()

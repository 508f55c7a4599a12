"""perf_analyzer's input folders hold what a real request holds.

perf_analyzer itself is not installable here (it ships in NVIDIA's SDK image), so the test
reads the folders the way it does (one raw file per input, batch dimension added, dynamic
dims from the printed --shape flags) and sends them to the real embedded server.
"""

from __future__ import annotations

import re

import numpy as np
import tritonclient.http as httpclient
from conftest import run_script

from sam2_triton.model_config import read_config


def test_inputs_make_valid_requests(triton_server, tmp_path):
    out = tmp_path / "perf_inputs"
    proc = run_script("perf_analyzer_inputs.py", "--url", triton_server.http_url, "--out", out)
    lines = [line.strip() for line in proc.stdout.splitlines() if "perf_analyzer " in line]
    assert len(lines) == 5
    client = httpclient.InferenceServerClient(triton_server.http_url)
    for line in lines:
        model = re.search(r"-m (\S+)", line).group(1)
        folder = re.search(r"--input-data (\S+)", line).group(1)
        shapes = dict(re.findall(r"--shape (\w+):(\S+)", line))
        config = read_config(triton_server.repository / model / "configs" / "cpu.pbtxt")
        lead = [1] if config.max_batch_size > 0 else []  # what perf_analyzer adds
        inputs = []
        for spec in config.input:
            dims = [int(d) for d in shapes[spec.name].split(",")] if spec.name in shapes else []
            dims = dims or list(spec.dims)
            raw = tmp_path / folder / spec.name if not folder.startswith("/") else None
            data = np.fromfile(raw or f"{folder}/{spec.name}", "<f4")
            assert data.size == np.prod(dims), (model, spec.name)
            t = httpclient.InferInput(spec.name, [*lead, *dims], "FP32")
            t.set_data_from_numpy(data.reshape(*lead, *dims))
            inputs.append(t)
        result = client.infer(model, inputs)
        for spec in config.output:
            assert np.isfinite(result.as_numpy(spec.name)).all(), (model, spec.name)
        if model == "sam2_decoder_prompts":  # 8 clicks on one image, one answer each
            masks = result.as_numpy("masks")
            assert masks.shape == (8, 1, 256, 256)
            assert np.abs(masks[0] - masks[-1]).max() > 1e-3

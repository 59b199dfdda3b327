"""A PyTorch MLP that runs on CUDA when the replica was given a GPU, on the CPU otherwise.

The weights are random with a fixed seed (nothing is downloaded). A request is either explicit rows,
{"inputs": [[512 floats], ...]}, or a size for benchmarks, {"random_rows": 32, "seed": 0}.
"""

import os

import torch

INPUT_FEATURES = 512
CLASSES = 10


class PythonPredictor:
    def __init__(self, config):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.manual_seed(0)
        hidden, layers = int(config.get("hidden", 1024)), int(config.get("layers", 2))
        blocks, width = [], INPUT_FEATURES
        for _ in range(layers):
            blocks += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
            width = hidden
        blocks.append(torch.nn.Linear(width, CLASSES))
        self.model = torch.nn.Sequential(*blocks).to(self.device).eval()
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
        print(f"mlp on {name} (CUDA_VISIBLE_DEVICES={visible})", flush=True)

    def predict(self, payload):
        if "inputs" in payload:
            inputs = torch.tensor(payload["inputs"], dtype=torch.float32)
        else:
            generator = torch.Generator().manual_seed(int(payload.get("seed", 0)))
            inputs = torch.randn(int(payload.get("random_rows", 1)), INPUT_FEATURES, generator=generator)
        if inputs.ndim != 2 or inputs.shape[1] != INPUT_FEATURES:
            raise ValueError(
                f"inputs must be rows of {INPUT_FEATURES} numbers, got shape {tuple(inputs.shape)}"
            )
        with torch.inference_mode():
            classes = self.model(inputs.to(self.device)).argmax(dim=1)
        return {"classes": classes.cpu().tolist(), "device": self.device.type}

"""An ImageNet-sized MobileNetV2 (224x224x3, 1000 classes) with seeded weights, for timing only.

The architecture is MobileNetV2 1.0 (Sandler et al. 2018: 17 inverted-residual blocks, ReLU6,
3.5 M parameters, about 300 M multiply-adds per image). The weights are *not trained*: convolutions
get seeded Kaiming initialisation, and batch-norm statistics are then measured on real images (the
first 256 Fashion-MNIST training images, upscaled to 224x224 and repeated over 3 channels) so the
activations have the scale of a trained network's. So this model measures how calibration cost
grows with an ImageNet-sized workload; no accuracy claim is made on it.

    pip install torch==2.13.0 && apt-get install -y dataset-fashion-mnist
    python benchmarks/models/make_mobilenetv2.py        # -> benchmarks/data/mobilenetv2/

Writes ``model.onnx`` (batch-norm folded into the convolutions, opset 17, dynamic batch) and
``calib.npy``: ``--samples`` (default 1024) further training images, preprocessed to float32
NCHW 3x224x224 (pixels / 255, ImageNet mean/std), the exact tensors every tool is fed.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
OUT = HERE.parent / "data" / "mobilenetv2"
FASHION_TRAIN = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")
SEED = 0
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# (expansion t, output channels c, repeats n, first stride s), Table 2 of the MobileNetV2 paper.
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def conv_bn(inp: int, out: int, kernel: int, stride: int, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(out)]
    if relu:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        layers = [] if expand == 1 else [conv_bn(inp, hidden, 1, 1)]
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), conv_bn(hidden, out, 1, 1, relu=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    def __init__(self, classes: int = 1000):
        super().__init__()
        layers, channels = [conv_bn(3, 32, 3, 2)], 32
        for expand, out, repeats, stride in SETTINGS:
            for i in range(repeats):
                layers.append(InvertedResidual(channels, out, stride if i == 0 else 1, expand))
                channels = out
        layers.append(conv_bn(channels, 1280, 1, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def fashion_images(start: int, count: int) -> np.ndarray:
    """Training images ``start .. start+count`` as float32 NCHW 3x224x224, ImageNet-normalised."""
    with gzip.open(FASHION_TRAIN, "rb") as handle:
        raw = np.frombuffer(handle.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)
    x = torch.from_numpy(raw[start:start + count].astype(np.float32) / 255).unsqueeze(1)
    x = nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x = (x - torch.from_numpy(MEAN)[:, None, None]) / torch.from_numpy(STD)[:, None, None]
    return x.numpy().astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=1024, help="calibration images to write")
    args = parser.parse_args()
    torch.manual_seed(SEED)
    model = MobileNetV2()
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
        elif isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the statistics batches
    model.train()
    with torch.no_grad():
        stats = fashion_images(50_000, 256)
        for i in range(0, len(stats), 32):
            model(torch.from_numpy(stats[i:i + 32]))
    model.eval()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), OUT / "model.onnx", input_names=["image"],
                      output_names=["logits"], opset_version=17,
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)
    np.save(OUT / "calib.npy", fashion_images(0, args.samples))
    print(f"wrote {OUT / 'model.onnx'} and {OUT / 'calib.npy'} ({args.samples} images)")


if __name__ == "__main__":
    main()

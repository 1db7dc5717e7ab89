"""Train quantlab's embedded default model on real Fashion-MNIST and write its package data.

Run from the repository root (needs ``apt-get install dataset-fashion-mnist`` and
``pip install torch==2.13.0``):

    python datasets/fashion_mnist/make_default.py

Writes, into ``quantlab/defaults/``:
  * ``fashion_mnist_cnn.onnx`` - a MobileNet-style CNN (depthwise-separable inverted residual
    blocks with residual adds, ReLU6), trained with a fixed seed; input ``image`` is
    float32 [N, 1, 28, 28] in [0, 1] (normalisation is folded into the first layer).
  * ``calib-images-idx3-ubyte.gz`` / ``calib-labels-idx1-ubyte.gz`` - 512 training images, the
    embedded calibration set.
  * ``heldout-images-idx3-ubyte.gz`` / ``heldout-labels-idx1-ubyte.gz`` - 1000 test-split images,
    the embedded held-out set (never used for calibration or training).

Depthwise convolutions and residual adds are chosen on purpose: they are where INT8 ranges
matter, so the calibration methods give visibly different results on this model.
"""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from quantlab.data import read_idx  # noqa: E402

SOURCE = Path("/usr/share/datasets/fashion-mnist")
OUT = ROOT / "quantlab" / "defaults"
SEED = 20261127
MEAN, STD = 0.2860, 0.3530


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_residual else y


class FashionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
            InvertedResidual(16, 24, 2, 3),
            InvertedResidual(24, 24, 1, 3),
            InvertedResidual(24, 32, 2, 3),
            InvertedResidual(32, 32, 1, 3),
            InvertedResidual(32, 32, 1, 3),
            nn.Conv2d(32, 96, 1, bias=False), nn.BatchNorm2d(96), nn.ReLU6(),
        )
        self.classifier = nn.Linear(96, 10)

    def forward(self, x):
        x = (x - MEAN) / STD
        x = self.features(x)
        x = x.mean(dim=(2, 3))
        return self.classifier(x)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.GzipFile(path, "wb", mtime=0) as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def strip_identity_initializers(path: Path) -> None:
    """Drop the Identity nodes the TorchScript exporter puts after folded weights."""
    import onnx

    model = onnx.load(path)
    inits = {init.name: init for init in model.graph.initializer}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits:
            inits[node.input[0]].name = node.output[0]
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def main() -> None:
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    train_x = read_idx(SOURCE / "train-images-idx3-ubyte.gz")
    train_y = read_idx(SOURCE / "train-labels-idx1-ubyte.gz")
    test_x = read_idx(SOURCE / "t10k-images-idx3-ubyte.gz")
    test_y = read_idx(SOURCE / "t10k-labels-idx1-ubyte.gz")

    # The calibration subset comes from the training split; the held-out subset from the test split.
    calib_idx = np.sort(rng.choice(len(train_x), 512, replace=False))
    heldout_idx = np.sort(rng.choice(len(test_x), 1000, replace=False))

    model = FashionNet()
    x = torch.from_numpy(train_x.astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(train_y.astype(np.int64))
    epochs = 5
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * (len(x) // 128))
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x))
        for step in range(len(x) // 128):
            idx = perm[step * 128:(step + 1) * 128]
            batch = x[idx]
            if torch.rand(()) < 0.5:
                batch = batch.flip(3)
            opt.zero_grad()
            loss = loss_fn(model(batch), y[idx])
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            tx = torch.from_numpy(test_x.astype(np.float32) / 255.0).unsqueeze(1)
            acc = (model(tx).argmax(1).numpy() == test_y).mean()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}, test top-1 {acc:.4f}", flush=True)

    OUT.mkdir(parents=True, exist_ok=True)
    model.eval()
    torch.onnx.export(
        model, torch.zeros(1, 1, 28, 28), OUT / "fashion_mnist_cnn.onnx",
        input_names=["image"], output_names=["logits"], opset_version=17,
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False,
    )
    strip_identity_initializers(OUT / "fashion_mnist_cnn.onnx")
    write_idx(OUT / "calib-images-idx3-ubyte.gz", train_x[calib_idx])
    write_idx(OUT / "calib-labels-idx1-ubyte.gz", train_y[calib_idx])
    write_idx(OUT / "heldout-images-idx3-ubyte.gz", test_x[heldout_idx])
    write_idx(OUT / "heldout-labels-idx1-ubyte.gz", test_y[heldout_idx])
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

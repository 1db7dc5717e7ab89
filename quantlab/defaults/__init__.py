"""The embedded default: a small real model and real data shipped inside the package.

``fashion_mnist_cnn.onnx`` is a MobileNet-style CNN (depthwise-separable inverted residual
blocks, residual adds, ReLU6) that quantlab trained itself on Fashion-MNIST with
``datasets/fashion_mnist/make_default.py`` (fixed seed). Input ``image``: float32
[N, 1, 28, 28] in [0, 1]; output ``logits`` [N, 10].

The data are real Fashion-MNIST images (MIT licence, see LICENSE-fashion-mnist.txt), in the
original IDX format: 512 images of the training split for calibration and 1000 images of the
test split held out for evaluation.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = HERE / "fashion_mnist_cnn.onnx"
# The bytes the committed reports (reports/fashion_mnist_cnn) were made with.
MODEL_SHA256 = "e8e056b413e1c8f7db1221ca043b4a7fa7012a5e804821016149dae4c6e9b98a"
CALIBRATION_DATA = HERE / "calib-images-idx3-ubyte.gz"
HELDOUT_DATA = HERE / "heldout-images-idx3-ubyte.gz"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

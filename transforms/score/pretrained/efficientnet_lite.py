"""EfficientNet-Lite0 (ImageNet-1k) rebuilt in Keras 3 from its PyTorch state dict.

EfficientNet-Lite is EfficientNet for mobile accelerators: no squeeze-and-excitation, ReLU6
instead of swish, and the stem (32 channels) and head (1280) kept fixed when scaling. Lite0 has
the B0 layout: seven stages of MBConv blocks (expansion 1x1 conv, depthwise conv, projection 1x1
conv, each followed by batch normalisation; ReLU6 after the first two; identity skip when the
stride is 1 and the width unchanged), convolutions padded as TensorFlow's ``SAME``. The model
takes RGB 224 x 224 scaled ``(x - 127) / 128`` (done inside the model: input float32 pixels in
[0, 255]) and returns the 1280-d globally pooled ``embedding`` and the 1000 ImageNet ``logits``::

    weights = torch_checkpoint.load_state_dict("efficientnet-lite0-57934424.pth")
    model = build(weights)                      # keras.Model: (N, 224, 224, 3) -> [(N, 1280), (N, 1000)]

The state dict uses the names of lukemelas/EfficientNet-PyTorch (``_conv_stem``, ``_bn0``,
``_blocks.<i>._expand_conv``, ``_depthwise_conv``, ``_project_conv``, ``_bn0/1/2``,
``_conv_head``, ``_bn1``, ``_fc``); batch normalisation epsilon 1e-3 as in the TF original.

References
----------
Tan & Le (2019), EfficientNet: Rethinking Model Scaling for CNNs, ICML; Liu (2020),
"Higher accuracy on vision models with EfficientNet-Lite", TensorFlow blog, and
``tensorflow/tpu/models/official/efficientnet/lite/efficientnet_lite_builder.py`` (Apache-2.0).
"""
from typing import Dict

import numpy as np

INPUT_SIZE = 224
EMBEDDING_DIM = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
INPUT_MEAN, INPUT_STD = 127.0, 128.0
#: (repeats, kernel, first stride, expansion, output channels) of the seven stages (B0 = Lite0).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))


def _conv(layers, x, w, stride, name, depthwise=False):
    """A bias-free convolution with PyTorch weights ``(out, in, k, k)`` (depthwise: ``(c, 1, k, k)``)."""
    k = w.shape[-1]
    if depthwise:
        layer = layers.DepthwiseConv2D(k, strides=stride, padding="same", use_bias=False, name=name)
        x = layer(x)
        layer.set_weights([w.transpose(2, 3, 0, 1)])  # (k, k, c, 1)
    else:
        layer = layers.Conv2D(w.shape[0], k, strides=stride, padding="same", use_bias=False, name=name)
        x = layer(x)
        layer.set_weights([w.transpose(2, 3, 1, 0)])  # (k, k, in, out)
    return x


def _bn(layers, x, weights, prefix, name):
    layer = layers.BatchNormalization(epsilon=BN_EPSILON, name=name)
    x = layer(x)
    layer.set_weights([weights[f"{prefix}.weight"], weights[f"{prefix}.bias"],
                       weights[f"{prefix}.running_mean"], weights[f"{prefix}.running_var"]])
    return x


def build(weights: Dict[str, np.ndarray], name: str = "efficientnet_lite0", input_size=(INPUT_SIZE, INPUT_SIZE)):
    """The Keras model of EfficientNet-Lite0 with the given PyTorch weights.

    Parameters
    ----------
    weights : dict of str to ndarray
        The state dict (see :func:`transforms.score.pretrained.torch_checkpoint.load_state_dict`).
    name : str
        The Keras model's name.
    input_size : (int, int)
        ``(height, width)`` of the input in pixels: 224 x 224, what the weights were trained on
        and what set-up converts; any other size works as a feature extractor.

    Returns
    -------
    keras.Model
        Input float32 ``(N, height, width, 3)`` RGB pixels in [0, 255]; outputs ``[embedding
        float32 (N, 1280), logits float32 (N, 1000)]``.

    Raises
    ------
    KeyError
        If a weight of the architecture is missing from ``weights``.
    ValueError
        If a weight has the wrong shape.
    """
    import keras
    from keras import layers

    relu6 = lambda n: layers.ReLU(6.0, name=n)  # noqa: E731
    inputs = keras.Input((int(input_size[0]), int(input_size[1]), 3), dtype="float32", name="pixels")
    x = layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="scale")(inputs)
    x = _conv(layers, x, weights["_conv_stem.weight"], 2, "stem_conv")
    x = relu6("stem_relu")(_bn(layers, x, weights, "_bn0", "stem_bn"))
    block, channels = 0, 32
    for repeats, _, first_stride, expansion, out in STAGES:
        for r in range(repeats):
            stride = first_stride if r == 0 else 1
            p = f"_blocks.{block}"
            y = x
            if expansion != 1:
                y = _conv(layers, y, weights[f"{p}._expand_conv.weight"], 1, f"block{block}_expand")
                y = relu6(f"block{block}_expand_relu")(_bn(layers, y, weights, f"{p}._bn0", f"block{block}_expand_bn"))
            y = _conv(layers, y, weights[f"{p}._depthwise_conv.weight"], stride, f"block{block}_dw", depthwise=True)
            y = relu6(f"block{block}_dw_relu")(_bn(layers, y, weights, f"{p}._bn1", f"block{block}_dw_bn"))
            y = _conv(layers, y, weights[f"{p}._project_conv.weight"], 1, f"block{block}_project")
            y = _bn(layers, y, weights, f"{p}._bn2", f"block{block}_project_bn")
            if stride == 1 and channels == out:
                y = layers.Add(name=f"block{block}_add")([x, y])
            x, channels, block = y, out, block + 1
    x = _conv(layers, x, weights["_conv_head.weight"], 1, "head_conv")
    x = relu6("head_relu")(_bn(layers, x, weights, "_bn1", "head_bn"))
    embedding = layers.GlobalAveragePooling2D(name="embedding")(x)
    fc = layers.Dense(NUM_CLASSES, name="logits")
    logits = fc(embedding)
    fc.set_weights([weights["_fc.weight"].T, weights["_fc.bias"]])
    return keras.Model(inputs, [embedding, logits], name=name)

"""Converted weights give the reference implementation's outputs (the proof of the converters).

For every variant and every reference it declares (torchvision, timm, Keras 3 on JAX): build
the reference with random weights, random BatchNorm scales, offsets and running statistics
(deep residual networks: measured on other random images, see CONDITIONED), convert its arrays
with ``jaxcnn.weights``, and compare outputs on random inputs in eval mode and in train mode
(BatchNorm on batch statistics; dropout and stochastic depth switched off on both sides, since
their random masks cannot agree). Relative error = max |ours - reference| / max |reference|
with ours in float32 must stay below 1e-4. Run with ``-s`` to see each conversion's errors.
"""

import os

import jax
import numpy as np
import pytest
from flax import linen as nn

import jaxcnn
from jaxcnn import convert, weights
from conftest import (BRANCH_SCALE, CALIBRATION_BATCH, NUM_CLASSES, assert_batch_stats_moved,
                      keras_calls, numpy_keras_initialisers, random_images,
                      randomize_keras_batchnorm, torch_reference)

pytestmark = pytest.mark.parity

TOLERANCE = 1e-4
# Residual networks at random initialisation are chaotic: a float32 rounding error grows block
# after block, so that torch's own float32 ResNet-101 differs from its float64 by 2.6e-4 in
# train mode (Wide-ResNet-50: our float32 is 8e-5 from torch's float64), and with arbitrary
# running statistics eval-mode logits reach 1e8. There a comparison cannot tell a converter bug
# from rounding. So the residual networks of 50 layers and more, and Keras EfficientNet B3-B7,
# are conditioned the way networks are trained from scratch: the last BatchNorm (ResNet v2:
# conv) of each residual branch starts at 0.2x (Goyal et al. 2017, "zero-gamma"
# initialisation), and the running statistics are the batch statistics of a forward pass over
# 32 other random images; four images are compared. BatchNorm scales and offsets stay random.
# Measured for ResNet-101: torch float32 vs float64 went from 2.6e-4 to 1.8e-6. Every array
# still holds random values, so a misplaced or mistransposed array shows.
CONDITIONED = {
    "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "wide_resnet101_2",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d",
    "seresnet50", "seresnet101", "seresnet152", "seresnext50_32x4d", "seresnext101_32x4d",
    "senet154", "resnet50_keras", "resnet101_keras", "resnet152_keras",
    "resnet50_v2", "resnet101_v2", "resnet152_v2",
    "efficientnet_b3_keras", "efficientnet_b4_keras", "efficientnet_b5_keras",
    "efficientnet_b6_keras", "efficientnet_b7_keras",
}
# Keras: ResNet v1 and EfficientNet branches end in a BatchNorm, ResNet v2 ones in a conv.
BRANCH_ENDS_KERAS = ("_3_bn", "_project_bn", "_3_conv")
CASES = [(name, conv) for name in jaxcnn.list_models() for conv in convert.converters_for(name)]
# Inputs the reference cannot take at our default small size (Keras' flattening VGG head).
PARITY_SIZE = {("vgg16", "keras"): 224, ("vgg19", "keras"): 224}
# Inception v3 at its minimum (75) ends on a 1x1 grid where train-mode BatchNorm over two
# values amplifies rounding (torch's own float32 differs from float64 by 19% there).
PARITY_SIZE.update({("inception_v3", "torchvision"): 139, ("inception_v3", "timm"): 139,
                    ("inception_v3_keras", "keras"): 139})
# At 139 px its last grid is 3x3, and with 2 images the train-mode BatchNorms there still
# average 18 values: our float32 was 1.1e-4 from the float64 reference on a 2-core AVX2
# machine (8e-7 in eval mode), against 5e-5 for torch's own float32. Four images halve that
# amplification, as for the conditioned networks.
PARITY_BATCH = {"inception_v3": 4, "inception_v3_keras": 4, **{n: 4 for n in CONDITIONED}}


def _size(name, conv):
    info = jaxcnn.model_info(name)
    return PARITY_SIZE.get((name, conv.source), max(info.min_size, min(64, info.input_shape[0])))


def _torch_outputs(model, x):
    """The reference's outputs, computed in float64 from the float32 arrays we convert.

    Against the exact result the error is our float32 rounding alone; against torch's own
    float32 it would be the sum of two roundings (torch's float32 Inception v3 is itself 5e-5
    off in train mode).
    """
    import torch

    # The state is taken before the train-mode pass, which updates the running statistics.
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    model = model.double()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float64))
    with torch.no_grad():
        model.eval()
        eval_out = model(xt)
        model.train()
        train_out = model(xt)
    train_out = train_out[0] if isinstance(train_out, tuple) else train_out
    train_out = getattr(train_out, "logits", train_out)
    return eval_out.numpy(), train_out.numpy(), state


def _keras_reference(conv, size, calibration):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    # Unnamed Keras layers are numbered per session (conv2d, conv2d_1, ...); the converters
    # expect the numbering of a fresh session.
    keras.backend.clear_session()
    with numpy_keras_initialisers():
        model = getattr(keras.applications, conv.reference)(
            weights=None, classes=NUM_CLASSES, input_shape=(size, size, 3),
            classifier_activation=None, **dict(conv.reference_kwargs),
        )
    bns = randomize_keras_batchnorm(model)
    for layer in model.layers:
        if calibration is not None and layer.name.endswith(BRANCH_ENDS_KERAS):
            for w in layer.trainable_weights:
                w.assign(w.numpy() * BRANCH_SCALE)
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    if calibration is not None:  # moving statistics := the calibration batch's statistics
        momenta = [l.momentum for l in bns]
        for layer in bns:
            layer.momentum = 0.0
        [(_, moved)] = keras_calls(model, calibration, True)
        for variable, value in zip(model.non_trainable_variables, moved):
            variable.assign(value)
        for layer, momentum in zip(bns, momenta):
            layer.momentum = momentum
    return model


def _keras_outputs(model, x):
    state = {w.path: np.array(w.numpy()) for w in model.weights}
    (eval_out, _), (train_out, _) = keras_calls(model, x, False, True)
    return np.asarray(eval_out), np.asarray(train_out), state


def _no_dropout(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dropout):
        return args[0]
    return next_fun(*args, **kwargs)


def _rel_err(ours, ref):
    return float(np.max(np.abs(np.asarray(ours) - ref)) / max(np.max(np.abs(ref)), 1e-12))


@pytest.mark.parametrize("name,conv", CASES, ids=[f"{n}-{c.source}" for n, c in CASES])
def test_converted_weights_match_reference(name, conv):
    model = jaxcnn.create_model(name, num_classes=NUM_CLASSES)
    size, conditioned = _size(name, conv), name in CONDITIONED
    pixels = getattr(model, "input_normalization", False)
    x = random_images(1, PARITY_BATCH.get(name, 2), size, pixels)
    calibration = random_images(2, CALIBRATION_BATCH, size, pixels) if conditioned else None
    if conv.source == "keras":
        pytest.importorskip("keras")
        ref_eval, ref_train, state = _keras_outputs(_keras_reference(conv, size, calibration), x)
    else:
        pytest.importorskip("torch")
        ref_eval, ref_train, state = _torch_outputs(torch_reference(conv, calibration), x)

    template = jaxcnn.init_shapes(model, x.shape)
    variables = weights.convert(state, template, conv)

    # Compiled once for both modes: op-by-op dispatch of a deep network costs several times
    # the compilation.
    def both(v, x):
        eval_out = model.apply(v, x, train=False)
        with nn.intercept_methods(_no_dropout):
            train_out, updates = model.apply(v, x, train=True, mutable=["batch_stats"],
                                             rngs={"dropout": jax.random.key(0)})
        return eval_out, train_out, updates

    eval_out, train_out, updates = jax.jit(both)(variables, x)
    errors = {"eval": _rel_err(eval_out, ref_eval), "train": _rel_err(train_out, ref_train)}
    print(f"{name} <- {conv.source}:{conv.reference} max relative error {errors}")
    assert errors["eval"] < TOLERANCE and errors["train"] < TOLERANCE, errors
    # The train step's BatchNorm state: the same tree, moved by this batch (test_models runs
    # the converted networks in the edit-test loop only and leaves this check to here).
    assert_batch_stats_moved(variables.get("batch_stats"), updates)

"""ResNet family against its reference implementations, through the declared converters.

Each test builds a shallow member of a reference family (one or two blocks per stage, so it runs
in seconds where tests/test_parity.py builds the full networks), converts its weights with the
rename table the variants declare, and compares outputs in eval and train mode at an odd input
size, where padding, stride placement and ceil-mode pooling all show.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxcnn
from jaxcnn import conv, convert, resnet, weights
from conftest import randomize_keras_batchnorm, randomize_torch_batchnorm

NUM_CLASSES = 11
TOLERANCE = 1e-4


def _converter(name):
    (converter,) = convert.converters_for(name)
    return converter


def _image(size, batch=2, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, size, size, 3)).astype(np.float32)


def _compare(module, state, converter, x, ref_eval, ref_train):
    variables = weights.convert(state, jaxcnn.init_shapes(module, x.shape), converter)
    ours_eval = module.apply(variables, x, train=False)
    ours_train, _ = module.apply(variables, x, train=True, mutable=["batch_stats"])
    for ours, ref in ((ours_eval, ref_eval), (ours_train, ref_train)):
        err = float(np.max(np.abs(np.asarray(ours) - ref)) / np.max(np.abs(ref)))
        assert err < TOLERANCE, err


def _torch_run(model, x):
    import torch

    randomize_torch_batchnorm(model)
    with torch.no_grad():
        state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        ref_eval = model.eval()(xt).numpy()
        ref_train = model.train()(xt).numpy()
    return state, ref_eval, ref_train


@pytest.mark.parity
@pytest.mark.parametrize("kind", ["basic", "bottleneck_grouped"])
def test_matches_torchvision(kind):
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision.models.resnet")
    torch.manual_seed(0)
    if kind == "basic":
        ref = tv.ResNet(tv.BasicBlock, [1, 1, 1, 1], num_classes=NUM_CLASSES)
        ours = resnet.ResNet(stage_sizes=(1, 1, 1, 1), block=resnet.BasicBlock,
                             num_classes=NUM_CLASSES)
    else:
        ref = tv.ResNet(tv.Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=8,
                        num_classes=NUM_CLASSES)
        ours = resnet.ResNet(stage_sizes=(1, 1, 1, 1), groups=4, base_width=8,
                             num_classes=NUM_CLASSES)
    x = _image(37)
    state, ref_eval, ref_train = _torch_run(ref, x)
    _compare(ours, state, _converter("resnet50"), x, ref_eval, ref_train)


@pytest.mark.parity
@pytest.mark.parametrize("name", ["seresnet50", "seresnext50_32x4d", "senet154"])
def test_matches_timm_legacy_senet(name):
    torch = pytest.importorskip("torch")
    senet = pytest.importorskip("timm.models.senet")
    torch.manual_seed(0)
    block, kwargs = {
        "seresnet50": (senet.SEResNetBottleneck, dict(groups=1)),
        "seresnext50_32x4d": (senet.SEResNeXtBottleneck, dict(groups=32)),
        "senet154": (senet.SEBottleneck, dict(groups=64, inplanes=128, input_3x3=True,
                                              downsample_kernel_size=3, downsample_padding=1)),
    }[name]
    ref = senet.SENet(block, (1, 1, 1, 1), reduction=16, drop_rate=0.0,
                      num_classes=NUM_CLASSES, **kwargs)
    ours = jaxcnn.create_model(name, num_classes=NUM_CLASSES).clone(
        stage_sizes=(1, 1, 1, 1), dropout_rate=0.0)
    x = _image(35)  # odd after the stem: ceil-mode pooling differs from padded pooling here
    state, ref_eval, ref_train = _torch_run(ref, x)
    _compare(ours, state, _converter(name), x, ref_eval, ref_train)


@pytest.mark.parity
@pytest.mark.parametrize("name", ["resnet50_keras", "resnet50_v2"])
def test_matches_keras_applications(name):
    keras = pytest.importorskip("keras")
    from keras.src.applications import resnet as keras_resnet

    keras.utils.set_random_seed(0)
    preact = name.endswith("v2")
    if preact:  # Keras' V2 stacks need two blocks: the first projects, the last strides.
        def stack_fn(x):
            x = keras_resnet.stack_residual_blocks_v2(x, 64, 2, name="conv2")
            return keras_resnet.stack_residual_blocks_v2(x, 128, 2, stride1=1, name="conv3")
        sizes = (2, 2)
    else:
        def stack_fn(x):
            x = keras_resnet.stack_residual_blocks_v1(x, 64, 2, stride1=1, name="conv2")
            return keras_resnet.stack_residual_blocks_v1(x, 128, 1, name="conv3")
        sizes = (2, 1)
    size = 35
    ref = keras_resnet.ResNet(stack_fn, preact, True, weights=None, input_shape=(size, size, 3),
                              classes=NUM_CLASSES, classifier_activation=None)
    randomize_keras_batchnorm(ref)
    state = {w.path: np.array(w.numpy()) for w in ref.weights}
    x = _image(size)
    ref_eval = np.asarray(ref(x, training=False))
    ref_train = np.asarray(ref(x, training=True))
    ours = jaxcnn.create_model(name, num_classes=NUM_CLASSES).clone(stage_sizes=sizes)
    _compare(ours, state, _converter(name), x, ref_eval, ref_train)


def test_basic_block_rejects_resnext_options():
    model = resnet.ResNet(stage_sizes=(2, 2, 2, 2), block=resnet.BasicBlock, groups=32,
                          base_width=4)
    with pytest.raises(ValueError, match="BasicBlock"):
        jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                       jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))


def test_stride_placement_changes_macs_not_parameters():
    """Caffe's stride on the first 1x1 (SE-ResNet) against torchvision's on the 3x3 (v1.5)."""
    caffe = jaxcnn.create_model("seresnet50").clone(se_reduction=0, stem_pool_ceil=False)
    v15 = jaxcnn.create_model("resnet50")
    shape = (1, 224, 224, 3)
    assert jaxcnn.param_count(caffe, shape) == jaxcnn.param_count(v15, shape)
    assert jaxcnn.macs(caffe, shape) < jaxcnn.macs(v15, shape)


def _heavy_inputs_per_loop_fusion(program: str) -> list[int]:
    """For each elementwise (kLoop) fusion of a compiled program's entry computation, how many
    distinct outputs of heavy instructions (convolutions, products, custom fusions) it reads."""
    entry = program[program.rindex("ENTRY"):].splitlines()
    define = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*? ([\w\-]+)\((.*)$")
    heavy, fusions = set(), []
    for line in entry:
        m = define.match(line)
        if not m:
            continue
        name, op, rest = m.groups()
        if op in ("convolution", "dot", "custom-call") or (
                op == "fusion" and re.search(r"kind=k(Custom|Output)", line)):
            heavy.add(name)
        elif op == "fusion" and "kind=kLoop" in line:
            fusions.append(set(re.findall(r"%([\w.\-]+)", rest.split("), ")[0])))
    return [len(operands & heavy) for operands in fusions]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a CPU fusion")
def test_the_residual_stream_is_computed_once():
    """XLA's CPU fusion copied the elementwise residual sum of every earlier block into each
    block's sum (batch norm, add, ReLU: cheap to duplicate one at a time), so the k-th block
    re-added the k-1 before it: ResNet-101's inference step at 224 px spent 470 of 1,900 ms in
    those sums. With the stream kept (jaxcnn.conv.kept_on_cpu), a block's sum reads its own
    convolution and the stream: two heavy inputs, whatever the depth."""
    model = resnet.ResNet(stage_sizes=(1, 1, 8, 1), num_classes=NUM_CLASSES)
    x = jnp.zeros((2, 32, 32, 3))
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    program = conv.jit(model.apply).lower(variables, x).compile().as_text()
    counts = _heavy_inputs_per_loop_fusion(program)
    assert counts and max(counts) <= 2, sorted(counts)[-5:]

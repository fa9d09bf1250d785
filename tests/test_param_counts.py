"""Every variant's size against published figures (shapes only, via jax.eval_shape).

The figures were typed in from the sources named beside them (docs/sources.md says what each
source name means); none was produced by jaxcnn. Conventions: "params" = learnable parameters
(torchvision ``num_params``, timm, Cadene, imgclsmob); "keras" = Keras' "Total params" (params +
BatchNorm moving statistics, + 7 numbers of the Normalization layer in Keras' EfficientNet).
"""

import functools

import pytest
from conftest import DEEPER_SIBLINGS

import jaxcnn

TV = "torchvision 0.29.1 <Model>_Weights.IMAGENET1K_V1 meta num_params"
KA = "keras.io Applications table (exact-integer revision)"
# (variant, overrides, figure, convention, source)
PUBLISHED = [
    # LeNet-5
    ("lenet5_1998", {}, 60_000, "params", "LeCun et al. 1998, sec. II-B: '60,000 trainable free parameters'"),
    ("lenet5", {}, 61_706, "params", "computed from the modern LeNet-5's layer sizes; Keras' model.summary() of it (docs/sources.md sec. 3.6)"),
    ("lenet5_caffe", {}, 431_080, "params", "computed from Caffe's examples/mnist/lenet_train_test.prototxt: 20x(5x5x1+1) + 50x(5x5x20+1) + 500x(800+1) + 10x(500+1); Deep Compression Table 3: 431K"),
    ("lenet_300_100", {}, 266_610, "params", "computed from LeCun et al. 1998's 784-300-100-10: 300x785 + 100x301 + 10x101; Deep Compression Table 2: 266K"),
    # AlexNet, ZFNet
    ("alexnet_paper", {}, 60_965_224, "params", "HewlettPackard dlcookbook-dlbs models table (Caffe bvlc_alexnet, groups=2)"),
    ("alexnet", {}, 61_100_840, "params", TV),
    ("alexnet", {"num_classes": 10}, 57_044_810, "params", "computed: 61,100,840 - 990 x 4,097 (torchvision alexnet's classifier input is 4,096)"),
    ("zfnet", {}, 62_357_608, "params", "osmr/imgclsmob gluon/README.md, ZFNet"),
    # VGG
    ("vgg11", {}, 132_863_336, "params", TV),
    ("vgg11_bn", {}, 132_868_840, "params", TV),
    ("vgg13", {}, 133_047_848, "params", TV),
    ("vgg13_bn", {}, 133_053_736, "params", TV),
    ("vgg16", {}, 138_357_544, "params", TV),
    ("vgg16", {}, 138_357_544, "keras", KA + ", VGG16"),
    ("vgg16", {"num_classes": 10}, 134_301_514, "params", "computed: 138,357,544 - 990 x 4,097 (torchvision vgg16's classifier input is 4,096)"),
    ("vgg16_bn", {}, 138_365_992, "params", TV),
    ("vgg19", {}, 143_667_240, "params", TV),
    ("vgg19", {}, 143_667_240, "keras", KA + ", VGG19"),
    ("vgg19_bn", {}, 143_678_248, "params", TV),
    # GoogLeNet
    ("googlenet", {}, 6_624_904, "params", TV + " (aux heads dropped)"),
    ("googlenet", {"aux_logits": True}, 13_004_888, "params", "computed from torchvision 0.29.1 GoogLeNet(aux_logits=True) (docs/sources.md sec. 3.4)"),
    ("googlenet_paper", {}, 6_998_552, "params", "HewlettPackard dlcookbook-dlbs models table (BVLC Caffe GoogLeNet)"),
    ("googlenet_paper", {"aux_logits": True}, 13_378_280, "params", "computed from BVLC bvlc_googlenet train_val.prototxt with loss1/loss2 heads (docs/sources.md sec. 3.4)"),
    # Inception v3
    ("inception_v3", {"aux_logits": True}, 27_161_264, "params", TV),
    ("inception_v3", {}, 23_869_000, "keras", "apache/mxnet docs/api/python/gluon/model_zoo.md, inceptionv3 (docs/sources.md sec. 3.5)"),
    ("inception_v3", {}, 23_834_568, "params", "osmr/imgclsmob gluon/README.md, InceptionV3 (no aux; docs/sources.md sec. 3.5)"),
    ("inception_v3_keras", {}, 23_851_784, "keras", KA + ", InceptionV3"),
    ("inception_v3_keras", {}, 23_817_352, "params", "Keras 3.15.1 keras.applications.InceptionV3(weights=None) trainable"),
    # ResNet v1.5 (torchvision), Wide ResNet
    ("resnet18", {}, 11_689_512, "params", TV),
    ("resnet18", {"num_classes": 10}, 11_181_642, "params", "computed: 11,689,512 - 990 x 513 (torchvision resnet18's classifier input is 512)"),
    ("resnet34", {}, 21_797_672, "params", TV),
    ("resnet50", {}, 25_557_032, "params", TV),
    ("resnet50", {"num_classes": 10}, 23_528_522, "params", "computed: 25,557,032 - 990 x 2,049 (torchvision resnet50's classifier input is 2,048)"),
    ("resnet101", {}, 44_549_160, "params", TV),
    ("resnet152", {}, 60_192_808, "params", TV),
    ("wide_resnet50_2", {}, 68_883_240, "params", TV),
    ("wide_resnet101_2", {}, 126_886_696, "params", TV),
    # Keras ResNet (v1 with conv biases) and ResNetV2
    ("resnet50_keras", {}, 25_636_712, "keras", KA + ", ResNet50"),
    ("resnet50_keras", {}, 25_583_592, "params", "Keras 3.15.1 keras.applications.ResNet50(weights=None) trainable"),
    ("resnet101_keras", {}, 44_707_176, "keras", KA + ", ResNet101"),
    ("resnet101_keras", {}, 44_601_832, "params", "Keras 3.15.1 keras.applications.ResNet101(weights=None) trainable"),
    ("resnet152_keras", {}, 60_419_944, "keras", KA + ", ResNet152"),
    ("resnet152_keras", {}, 60_268_520, "params", "Keras 3.15.1 keras.applications.ResNet152(weights=None) trainable"),
    ("resnet50_v2", {}, 25_613_800, "keras", KA + ", ResNet50V2"),
    ("resnet50_v2", {}, 25_568_360, "params", "Keras 3.15.1 keras.applications.ResNet50V2(weights=None) trainable"),
    ("resnet101_v2", {}, 44_675_560, "keras", KA + ", ResNet101V2"),
    ("resnet152_v2", {}, 60_380_648, "keras", KA + ", ResNet152V2"),
    # ResNeXt, SE
    ("resnext50_32x4d", {}, 25_028_904, "params", TV),
    ("resnext101_32x8d", {}, 88_791_336, "params", TV),
    ("resnext101_64x4d", {}, 83_455_272, "params", TV),
    ("seresnet50", {}, 28_088_024, "params", "osmr/imgclsmob gluon/README.md, SE-ResNet-50"),
    ("seresnet101", {}, 49_326_872, "params", "computed from timm 1.0.31 legacy_seresnet101"),
    ("seresnet152", {}, 66_821_848, "params", "computed from timm 1.0.31 legacy_seresnet152"),
    ("seresnext50_32x4d", {}, 27_559_896, "params", "osmr/imgclsmob gluon/README.md, SE-ResNeXt-50 (32x4d)"),
    ("seresnext101_32x4d", {}, 48_955_416, "params", "computed from timm 1.0.31 legacy_seresnext101_32x4d"),
    ("senet154", {}, 115_088_984, "params", "osmr/imgclsmob gluon/README.md, SENet-154"),
    # MobileNet
    ("mobilenet_v1", {}, 4_231_976, "params", "osmr/imgclsmob gluon/README.md, MobileNet 1.0 (= timm mobilenetv1_100)"),
    ("mobilenet_v1_keras", {}, 4_253_864, "keras", KA + ", MobileNet"),
    ("mobilenet_v1_keras", {}, 4_231_976, "params", "Keras 3.15.1 keras.applications.MobileNet(weights=None) trainable"),
    ("mobilenet_v1_075_keras", {}, 2_601_976, "keras", "Keras 3.15.1 keras.applications.MobileNet(alpha=0.75, weights=None) total (docs/sources.md sec. 3.1)"),
    ("mobilenet_v1_050_keras", {}, 1_342_536, "keras", "Keras 3.15.1 keras.applications.MobileNet(alpha=0.5, weights=None) total (docs/sources.md sec. 3.1)"),
    ("mobilenet_v1_025_keras", {}, 475_544, "keras", "Keras 3.15.1 keras.applications.MobileNet(alpha=0.25, weights=None) total (docs/sources.md sec. 3.1)"),
    ("mobilenet_v2", {}, 3_504_872, "params", TV),
    ("mobilenet_v2_keras", {}, 3_538_984, "keras", KA + ", MobileNetV2"),
    ("mobilenet_v2_keras", {}, 3_504_872, "params", "Keras 3.15.1 keras.applications.MobileNetV2(weights=None) trainable (= torchvision)"),
    ("mobilenet_v3_large", {}, 5_483_032, "params", TV),
    ("mobilenet_v3_large", {}, 5_507_432, "keras", "computed: Keras 3.15.1 keras.applications.MobileNetV3Large(weights=None) total (docs/sources.md sec. 3.6)"),
    ("mobilenet_v3_small", {}, 2_542_856, "params", TV),
    ("mobilenet_v3_small", {}, 2_554_968, "keras", "computed: Keras 3.15.1 keras.applications.MobileNetV3Small(weights=None) total (docs/sources.md sec. 3.6)"),
    # EfficientNet
    ("efficientnet_b0", {}, 5_288_548, "params", TV),
    ("efficientnet_b1", {}, 7_794_184, "params", TV),
    ("efficientnet_b2", {}, 9_109_994, "params", TV),
    ("efficientnet_b3", {}, 12_233_232, "params", TV),
    ("efficientnet_b4", {}, 19_341_616, "params", TV),
    ("efficientnet_b5", {}, 30_389_784, "params", TV),
    ("efficientnet_b6", {}, 43_040_704, "params", TV),
    ("efficientnet_b7", {}, 66_347_960, "params", TV),
    ("efficientnet_b0_keras", {}, 5_330_571, "keras", KA + ", EfficientNetB0"),
    ("efficientnet_b1_keras", {}, 7_856_239, "keras", KA + ", EfficientNetB1"),
    ("efficientnet_b2_keras", {}, 9_177_569, "keras", KA + ", EfficientNetB2"),
    ("efficientnet_b3_keras", {}, 12_320_535, "keras", KA + ", EfficientNetB3"),
    ("efficientnet_b4_keras", {}, 19_466_823, "keras", KA + ", EfficientNetB4"),
    ("efficientnet_b5_keras", {}, 30_562_527, "keras", KA + ", EfficientNetB5"),
    ("efficientnet_b6_keras", {}, 43_265_143, "keras", KA + ", EfficientNetB6"),
    ("efficientnet_b7_keras", {}, 66_658_687, "keras", KA + ", EfficientNetB7"),
    *((f"efficientnet_b{i}_keras", {}, params, "params", f"Keras 3.15.1 keras.applications.EfficientNetB{i}(weights=None) trainable (= torchvision)")
      for i, params in enumerate((5_288_548, 7_794_184, 9_109_994, 12_233_232, 19_341_616, 30_389_784, 43_040_704, 66_347_960))),
    # Small networks of the CIFAR/MNIST papers
    ("nin_cifar10", {}, 966_986, "params", "osmr/imgclsmob gluon/README.md, NIN (nin_cifar10)"),
    ("allcnn_c", {}, 1_369_738, "params", "computed from Springenberg et al. 2015, Table 2, All-CNN-C (docs/sources.md sec. 3.6)"),
    ("stn_mnist", {}, 27_360, "params", "computed from pytorch/tutorials spatial_transformer_tutorial.py (docs/sources.md sec. 3.6)"),
    # SqueezeNet, DenseNet
    ("squeezenet1_0", {}, 1_248_424, "params", "Iandola et al. 2016, Table 1; " + TV),
    ("squeezenet1_1", {}, 1_235_496, "params", TV),
    ("densenet121", {}, 7_978_856, "params", TV),
    ("densenet121", {}, 8_062_504, "keras", KA + ", DenseNet121"),
    ("densenet169", {}, 14_149_480, "params", TV),
    ("densenet169", {}, 14_307_880, "keras", KA + ", DenseNet169"),
    ("densenet201", {}, 20_013_928, "params", TV),
    ("densenet201", {}, 20_242_984, "keras", KA + ", DenseNet201"),
]

# GMACs at torchvision's evaluation crop: the "_ops" field of its Weights meta (rounded to 3
# decimals there), which counts convolutions and matrix products, batch 1.
TV_OPS = [
    ("alexnet", 224, 0.714),
    ("vgg11", 224, 7.609),
    ("vgg16", 224, 15.470),
    ("googlenet", 224, 1.498),
    ("inception_v3", 299, 5.713),
    ("resnet18", 224, 1.814),
    ("resnet34", 224, 3.664),
    ("resnet50", 224, 4.089),
    ("resnet101", 224, 7.801),
    ("resnet152", 224, 11.514),
    ("resnext50_32x4d", 224, 4.230),
    ("wide_resnet50_2", 224, 11.398),
    ("mobilenet_v2", 224, 0.301),
    ("mobilenet_v3_large", 224, 0.217),
    ("mobilenet_v3_small", 224, 0.057),
    ("efficientnet_b0", 224, 0.386),
    ("efficientnet_b1", 240, 0.687),
    ("efficientnet_b7", 600, 37.746),
    ("squeezenet1_0", 224, 0.819),
    ("squeezenet1_1", 224, 0.349),
    ("densenet121", 224, 2.834),
]


@functools.lru_cache(maxsize=None)
def _shapes(name, overrides):
    """The variables' shapes at the variant's default input; rows of one variant share them."""
    overrides = dict(overrides)
    num_classes = overrides.pop("num_classes", None)
    model = jaxcnn.create_model(name, num_classes=num_classes, **overrides)
    return jaxcnn.init_shapes(model, (1, *jaxcnn.model_info(name).input_shape))


def _id(row):
    name, overrides, _, convention, _ = row
    extra = ",".join(f"{k}={v}" for k, v in overrides.items())
    return f"{name}[{extra}]-{convention}" if extra else f"{name}-{convention}"


def _cases(rows, ids, unpack):
    """One case a row, the deeper siblings' marked slow (tracing EfficientNet-B7 takes
    seconds): the fast subset counts their shallower siblings."""
    return [pytest.param(*(row if unpack else (row,)), id=i,
                         marks=pytest.mark.slow if row[0] in DEEPER_SIBLINGS else ())
            for row, i in zip(rows, ids)]


@pytest.mark.parametrize("row", _cases(PUBLISHED, map(_id, PUBLISHED), unpack=False))
def test_parameter_count_matches_published(row):
    name, overrides, figure, convention, source = row
    got = jaxcnn.count_params(_shapes(name, tuple(sorted(overrides.items()))), convention)
    assert got == figure, f"{name} {overrides}: {got:,} != {figure:,} ({convention}, {source})"


@pytest.mark.parametrize("name,size,gmacs", _cases(TV_OPS, [r[0] for r in TV_OPS], unpack=True))
def test_macs_match_torchvision_ops(name, size, gmacs):
    model = jaxcnn.create_model(name)
    got = jaxcnn.macs(model, (1, size, size, 3))
    assert round(got / 1e9, 3) == pytest.approx(gmacs, abs=1e-9), f"{name}: {got / 1e9:.4f} GMACs"


def test_every_registered_family_is_in_the_table():
    """A new variant without a published figure should be a decision, not an oversight."""
    covered = {row[0] for row in PUBLISHED}
    missing = [n for n in jaxcnn.list_models() if n not in covered and n not in NO_PUBLISHED_FIGURE]
    assert not missing, f"variants with no published figure in this table: {missing}"


# Variants for which no source publishes a parameter count (see the model docstrings).
# cnn_mnist and stn_cnn_mnist: this library's sizes (their counts are checked by hand in
# tests/test_stn.py).
NO_PUBLISHED_FIGURE = {"whatwhere_mnist", "whatwhere_mnist_soft", "cnn_mnist", "stn_cnn_mnist"}


def _registry_counts():
    """(variant, overrides, figure, convention, rounded) of every count model_info publishes."""
    conventions = {"params": "params", "keras_total": "keras"}
    for name in jaxcnn.list_models():
        for fig in jaxcnn.model_info(name).published:
            if fig.metric in conventions:
                overrides = tuple(sorted(dict(fig.overrides).items()))
                yield name, overrides, fig.value, conventions[fig.metric], fig.rounded


def _table_keys():
    return {(name, tuple(sorted(overrides.items())), figure, convention)
            for name, overrides, figure, convention, _ in PUBLISHED}


def test_every_exact_count_in_the_registry_is_asserted_here():
    """model_info's exact counts (which README's table shows) are rows of PUBLISHED, so each
    is compared with the network above; a figure typed into a family file alone is not."""
    table = _table_keys()
    unchecked = [row[:4] for row in _registry_counts() if not row[4] and row[:4] not in table]
    assert not unchecked, f"add these to PUBLISHED (or mark them rounded): {unchecked}"


def test_rounded_counts_are_never_asserted_as_exact():
    rounded = [row[:4] for row in _registry_counts() if row[4]]
    assert rounded, "the paper's rounded MobileNet figures should be marked rounded"
    assert not set(rounded) & _table_keys()

"""Every variant's size against published figures (shapes only, via jax.eval_shape).

The figures were typed in from the sources named beside them (collected, with the
conventions explained, in ../shared/reference/published_params.md); none was produced by jaxcnn.
Conventions: "params" = learnable parameters (torchvision ``num_params``, timm, Cadene,
imgclsmob); "keras" = Keras' "Total params" (params + BatchNorm moving statistics, + 7 numbers of
the Normalization layer in Keras' EfficientNet).
"""

import pytest

import jaxcnn

TV = "torchvision 0.29.1 Weights meta num_params"
KA = "keras.io Applications table (exact-integer revision)"
# (variant, overrides, figure, convention, source)
PUBLISHED = [
    # LeNet-5
    ("lenet5_1998", {}, 60_000, "params", "LeCun et al. 1998, sec. II-B: '60,000 trainable free parameters'"),
    ("lenet5", {}, 61_706, "params", "Keras/torchsummary outputs of the modern LeNet-5 (published_params sec. 1)"),
    # AlexNet, ZFNet
    ("alexnet_paper", {}, 60_965_224, "params", "DLBS models table (Caffe bvlc_alexnet, groups=2)"),
    ("alexnet", {}, 61_100_840, "params", TV),
    ("alexnet", {"num_classes": 10}, 57_044_810, "params", "torchvision alexnet(num_classes=10)"),
    ("zfnet", {}, 62_357_608, "params", "imgclsmob gluon README, ZFNet"),
    # VGG
    ("vgg11", {}, 132_863_336, "params", TV),
    ("vgg11_bn", {}, 132_868_840, "params", TV),
    ("vgg13", {}, 133_047_848, "params", TV),
    ("vgg13_bn", {}, 133_053_736, "params", TV),
    ("vgg16", {}, 138_357_544, "params", TV),
    ("vgg16", {}, 138_357_544, "keras", KA + ", VGG16"),
    ("vgg16", {"num_classes": 10}, 134_301_514, "params", "torchvision vgg16(num_classes=10)"),
    ("vgg16_bn", {}, 138_365_992, "params", TV),
    ("vgg19", {}, 143_667_240, "params", TV),
    ("vgg19", {}, 143_667_240, "keras", KA + ", VGG19"),
    ("vgg19_bn", {}, 143_678_248, "params", TV),
    # GoogLeNet
    ("googlenet", {}, 6_624_904, "params", TV + " (aux heads dropped)"),
    ("googlenet", {"aux_logits": True}, 13_004_888, "params", "torchvision GoogLeNet(aux_logits=True)"),
    ("googlenet_paper", {}, 6_998_552, "params", "DLBS models table (BVLC Caffe GoogLeNet)"),
    ("googlenet_paper", {"aux_logits": True}, 13_378_280, "params", "BVLC GoogLeNet with both aux classifiers (published_params sec. 4)"),
    # Inception v3
    ("inception_v3", {"aux_logits": True}, 27_161_264, "params", TV),
    ("inception_v3", {}, 23_834_568, "params", "imgclsmob / timm inception_v3 (no aux)"),
    ("inception_v3_keras", {}, 23_851_784, "keras", KA + ", InceptionV3"),
    ("inception_v3_keras", {}, 23_817_352, "params", "Keras InceptionV3 trainable params"),
    # ResNet v1.5 (torchvision), Wide ResNet
    ("resnet18", {}, 11_689_512, "params", TV),
    ("resnet18", {"num_classes": 10}, 11_181_642, "params", "torchvision resnet18(num_classes=10)"),
    ("resnet34", {}, 21_797_672, "params", TV),
    ("resnet50", {}, 25_557_032, "params", TV),
    ("resnet50", {"num_classes": 10}, 23_528_522, "params", "torchvision resnet50(num_classes=10)"),
    ("resnet101", {}, 44_549_160, "params", TV),
    ("resnet152", {}, 60_192_808, "params", TV),
    ("wide_resnet50_2", {}, 68_883_240, "params", TV),
    ("wide_resnet101_2", {}, 126_886_696, "params", TV),
    # Keras ResNet (v1 with conv biases) and ResNetV2
    ("resnet50_keras", {}, 25_636_712, "keras", KA + ", ResNet50"),
    ("resnet50_keras", {}, 25_583_592, "params", "Keras ResNet50 trainable params"),
    ("resnet101_keras", {}, 44_707_176, "keras", KA + ", ResNet101"),
    ("resnet152_keras", {}, 60_419_944, "keras", KA + ", ResNet152"),
    ("resnet50_v2", {}, 25_613_800, "keras", KA + ", ResNet50V2"),
    ("resnet50_v2", {}, 25_568_360, "params", "Keras ResNet50V2 trainable params"),
    ("resnet101_v2", {}, 44_675_560, "keras", KA + ", ResNet101V2"),
    ("resnet152_v2", {}, 60_380_648, "keras", KA + ", ResNet152V2"),
    # ResNeXt, SE
    ("resnext50_32x4d", {}, 25_028_904, "params", TV),
    ("resnext101_32x8d", {}, 88_791_336, "params", TV),
    ("resnext101_64x4d", {}, 83_455_272, "params", TV),
    ("seresnet50", {}, 28_088_024, "params", "imgclsmob README / timm / Cadene se_resnet50"),
    ("seresnet101", {}, 49_326_872, "params", "timm legacy_seresnet101 / Cadene se_resnet101"),
    ("seresnet152", {}, 66_821_848, "params", "timm legacy_seresnet152 / Cadene se_resnet152"),
    ("seresnext50_32x4d", {}, 27_559_896, "params", "imgclsmob / timm / Cadene se_resnext50_32x4d"),
    ("seresnext101_32x4d", {}, 48_955_416, "params", "timm legacy_seresnext101_32x4d / Cadene"),
    ("senet154", {}, 115_088_984, "params", "imgclsmob / timm / Cadene senet154"),
    # MobileNet
    ("mobilenet_v1", {}, 4_231_976, "params", "timm mobilenetv1_100 / imgclsmob / Keras MobileNet trainable"),
    ("mobilenet_v1_keras", {}, 4_253_864, "keras", KA + ", MobileNet"),
    ("mobilenet_v1_075_keras", {}, 2_601_976, "keras", "keras.applications.MobileNet(alpha=0.75, weights=None), Keras 3.15.1; paper Table 6: 2.6M"),
    ("mobilenet_v1_050_keras", {}, 1_342_536, "keras", "keras.applications.MobileNet(alpha=0.5, weights=None), Keras 3.15.1; paper Table 6: 1.3M"),
    ("mobilenet_v1_025_keras", {}, 475_544, "keras", "keras.applications.MobileNet(alpha=0.25, weights=None), Keras 3.15.1; paper Table 6: 0.5M"),
    ("mobilenet_v2", {}, 3_504_872, "params", TV),
    ("mobilenet_v2_keras", {}, 3_538_984, "keras", KA + ", MobileNetV2"),
    ("mobilenet_v3_large", {}, 5_483_032, "params", TV),
    ("mobilenet_v3_large", {}, 5_507_432, "keras", "Keras MobileNetV3Large() total (published_params sec. 9)"),
    ("mobilenet_v3_small", {}, 2_542_856, "params", TV),
    ("mobilenet_v3_small", {}, 2_554_968, "keras", "Keras MobileNetV3Small() total (published_params sec. 9)"),
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
    ("efficientnet_b0_keras", {}, 5_288_548, "params", "Keras EfficientNetB0 trainable (= torchvision)"),
    # Small networks of the CIFAR/MNIST papers
    ("nin_cifar10", {}, 966_986, "params", "imgclsmob nin_cifar10"),
    ("allcnn_c", {}, 1_369_738, "params", "Springenberg et al. 2015 Model All-CNN-C; published Keras summaries"),
    ("stn_mnist", {}, 27_360, "params", "PyTorch spatial transformer tutorial network"),
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


def _id(row):
    name, overrides, _, convention, _ = row
    extra = ",".join(f"{k}={v}" for k, v in overrides.items())
    return f"{name}[{extra}]-{convention}" if extra else f"{name}-{convention}"


@pytest.mark.parametrize("row", PUBLISHED, ids=[_id(r) for r in PUBLISHED])
def test_parameter_count_matches_published(row):
    name, overrides, figure, convention, source = row
    overrides = dict(overrides)
    num_classes = overrides.pop("num_classes", None)
    model = jaxcnn.create_model(name, num_classes=num_classes, **overrides)
    shape = (1, *jaxcnn.model_info(name).input_shape)
    got = jaxcnn.param_count(model, shape, convention=convention)
    assert got == figure, f"{name} {overrides}: {got:,} != {figure:,} ({convention}, {source})"


@pytest.mark.parametrize("name,size,gmacs", TV_OPS, ids=[r[0] for r in TV_OPS])
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
NO_PUBLISHED_FIGURE = {"whatwhere_mnist"}

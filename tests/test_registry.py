"""The registry and summaries: names, errors, model_info, summaries."""

import pytest

import jaxcnn


def test_unknown_name_lists_close_names():
    with pytest.raises(jaxcnn.UnknownModelError, match="resnet50") as err:
        jaxcnn.create_model("resnet5O")
    assert "list_models()" in str(err.value)


def test_unknown_name_without_close_match_still_points_to_the_list():
    with pytest.raises(jaxcnn.UnknownModelError, match="list_models"):
        jaxcnn.create_model("transformer")


def test_senet_alias_resolves():
    assert jaxcnn.model_info("senet").name == "seresnet50"
    assert jaxcnn.model_info("SE-ResNet50".replace("SE-", "se")).name == "seresnet50"


def test_bad_override_names_accepted_fields():
    with pytest.raises(TypeError, match="Fields this model accepts"):
        jaxcnn.create_model("resnet18", not_a_field=3)


def test_list_models_pattern():
    names = jaxcnn.list_models("vgg*")
    assert names == sorted(names)
    assert {"vgg11", "vgg16_bn", "vgg19"} <= set(names)
    assert all(n.startswith("vgg") for n in names)


@pytest.mark.parametrize("name", jaxcnn.list_models())
def test_model_info_is_complete(name):
    info = jaxcnn.model_info(name)
    assert len(info.input_shape) == 3 and info.num_classes > 0
    assert info.reference.strip()
    assert 1 <= info.min_size <= info.input_shape[0]
    for fig in info.published:
        assert fig.metric in {"params", "keras_total", "gmacs", "top1", "top5"}
        assert fig.source.strip()


def test_published_params_in_model_info_match_the_model():
    """The figures model_info reports are the ones the network has (spot check on ResNet-50)."""
    info = jaxcnn.model_info("resnet50")
    figures = {p.value for p in info.published if p.metric == "params" and not p.overrides}
    assert 25_557_032 in figures  # torchvision ResNet50_Weights meta num_params
    assert jaxcnn.param_count("resnet50") == 25_557_032


def test_summary_rows_and_totals():
    text = jaxcnn.summary("resnet18", print_fn=None)
    assert "params (learnable): 11,689,512" in text  # torchvision num_params
    assert "1.814 G" in text  # torchvision ResNet18_Weights meta _ops (GMACs)
    rows = jaxcnn.layer_rows("resnet18")
    assert rows[0].output_shape[1:3] == (112, 112)  # stem conv 7x7/2 on 224
    assert sum(r.params for r in rows) == 11_689_512


def test_count_params_conventions():
    variables = jaxcnn.init_shapes("mobilenet_v2")
    assert jaxcnn.count_params(variables, "params") == 3_504_872  # torchvision num_params
    assert jaxcnn.count_params(variables, "keras") == 3_504_872 + 34_112  # + BN statistics
    with pytest.raises(ValueError, match="convention"):
        jaxcnn.count_params(variables, "flops")


@pytest.mark.slow
def test_readme_table_lists_every_variant_with_its_published_figure():
    import pathlib

    from jaxcnn import zoo

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    block = readme.split(zoo.START, 1)[1].split(zoo.END, 1)[0].strip()
    assert block == zoo.markdown_table(), "README table is stale: run python -m jaxcnn.zoo"
    for name in jaxcnn.list_models():
        assert f"| `{name}` |" in block
    # Exact counts only in the count columns (Keras 3.15.1 MobileNet(alpha=0.25, weights=None):
    # 470,072 trainable, 475,544 total); the paper's rounded 0.5M (Howard et al. 2017, Table 6)
    # is shown as rounded.
    assert ("| `mobilenet_v1_025_keras` | 224x224x3 | 470,072 | 475,544 | 0.5M params (rounded) |"
            in block)

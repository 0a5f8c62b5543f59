import pytest
from _helpers import toy_image_data
from torch import nn

from mmcompress.errors import RecipeError
from mmcompress.selection import select_modules, tower_of


class TwoTower(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.vision = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
        self.text = nn.ModuleDict({"emb": nn.Embedding(10, 4), "proj": nn.Linear(4, 4)})
        self.head = nn.Linear(4, 2)


TOWERS = {"vision": ["vision"], "text": ["text"]}


def names(targets=None, ignore=(), kinds=(nn.Linear,)):
    return list(select_modules(TwoTower(), TOWERS, kinds, targets, ignore))


def test_default_targets_every_tower_but_not_outside():
    assert names() == ["vision.0", "vision.2", "text.proj"]


def test_tower_regex_and_exact_names():
    assert names(["text"], kinds=(nn.Linear, nn.Embedding)) == ["text.emb", "text.proj"]
    assert names(["re:\\.2$"]) == ["vision.2"]
    assert names(["head"]) == ["head"]


def test_ignore_removes_modules():
    assert names(["vision", "text"], ignore=["re:^vision\\.0$", "text"]) == ["vision.2"]


def test_unknown_target_is_an_error_naming_it():
    with pytest.raises(RecipeError, match="'visoin'"):
        names(["visoin"])


def test_bad_regex_is_an_error():
    with pytest.raises(RecipeError, match="invalid regex"):
        names(["re:("])


def test_tower_of():
    assert tower_of("text.proj", TOWERS) == "text"
    assert tower_of("head", TOWERS) is None


def test_layers_inside_multihead_attention_are_never_selected():
    """nn.MultiheadAttention reads out_proj's weights without calling it: a replaced out_proj
    would never run, so it is not a candidate."""
    model = nn.ModuleDict({"head": nn.MultiheadAttention(8, 2), "fc": nn.Linear(8, 8)})
    chosen = select_modules(model, {"all": [""]}, (nn.Linear,))
    assert list(chosen) == ["fc"]


def test_a_stage_left_with_no_layer_is_refused(tiny_clip):
    """`ignore: ['re:.*']` quantized nothing, and the run reported success."""
    from mmcompress.methods import METHODS, StageContext
    from mmcompress.recipe import load_recipe

    stage = load_recipe({"stages": [{"quantize": {"method": "rtn", "bits": 8,
                                                  "ignore": ["re:."]}}]}).stages[0]
    with pytest.raises(RecipeError, match="no Linear/Conv2d/Embedding layer of this model is "
                                          r"left to take \(targets: every tower; ignore: re:\.\)"):
        METHODS[("quantize", "rtn")].apply(tiny_clip, stage.config, StageContext(progress=False))


def test_a_mistyped_target_is_refused_before_the_evaluation_runs(tiny_clip, monkeypatch):
    """A typo in a later stage's targets was found only when that stage ran."""
    import mmcompress
    import mmcompress.api as api
    from mmcompress.methods.base import check_targets
    from mmcompress.recipe import load_recipe

    def no_evaluation(*args, **kwargs):
        raise AssertionError("evaluated before checking the targets")

    monkeypatch.setattr(api, "evaluate_adapter", no_evaluation)
    recipe = {"stages": [{"prune": {"method": "magnitude", "sparsity": 0.5}},
                         {"quantize": {"method": "rtn", "targets": ["vison"]}}]}
    with pytest.raises(RecipeError, match=r"stage 1 \(quantize: rtn\) targets entry 'vison'"):
        mmcompress.compress(tiny_clip, recipe, data=toy_image_data(), progress=False)
    # a module a stage may create inside an existing one is left for that stage to find
    check_targets(tiny_clip, load_recipe({"stages": [{"quantize": {
        "method": "rtn", "targets": ["text_model.encoder.layers.0.mlp.fc1.up"]}}]}).stages)

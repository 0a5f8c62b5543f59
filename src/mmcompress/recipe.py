"""Recipes: YAML validated strictly; errors name the key, its path and its line."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError
from torch import nn

from .errors import RecipeError
from .evaluation.config import CalibrationConfig, EvaluateConfig
from .methods import METHODS, STAGE_KINDS, MethodConfig, methods_for
from .methods.base import LAYER_ORDER
from .methods.training_hooks import TRAINING_KINDS
from .training.gradual import check_schedulable


@dataclass
class Stage:
    kind: str
    config: MethodConfig

    def to_dict(self, given: bool = False) -> dict[str, Any]:
        """Every setting (`given`: only those the recipe gave)."""
        return {self.kind: self.config.model_dump(exclude_unset=given)}


@dataclass
class Recipe:
    stages: list[Stage]
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def to_dict(self, given: bool = False) -> dict[str, Any]:
        """Every setting, defaults included (`given`: only those the recipe gave; some
        settings are refused beside others, e.g. text_tokens beside a number of samples)."""
        return {
            "stages": [s.to_dict(given) for s in self.stages],
            "calibration": self.calibration.model_dump(exclude_unset=given),
            "evaluate": self.evaluate.model_dump(exclude_unset=given),
        }

    def to_yaml(self) -> str:
        """The recipe as given, in YAML: it reads back as the same recipe."""
        return yaml.dump(self.to_dict(given=True), Dumper=RecipeDumper, sort_keys=False)


class RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader reading values as YAML 1.2 does: ``1e-4`` is the number it is (YAML
    1.1 wants a dot: ``1.0e-4``) and only ``true``/``false`` are booleans (``yes``, ``on``,
    ``no``, ``off`` stay text, which a boolean setting refuses); a quoted ``'4'`` stays text,
    which a numeric setting refuses."""


class RecipeDumper(yaml.SafeDumper):
    """YAML's safe dumper quoting text that `RecipeLoader` would read as a number, and text
    YAML 1.1 readers would read as a boolean (``'yes'``)."""


_BOOL = "tag:yaml.org,2002:bool"
RecipeLoader.yaml_implicit_resolvers = {  # YAML 1.1's booleans out (yes, no, on, off, ...)
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
RecipeLoader.add_implicit_resolver(  # the dumper keeps 1.1's: it quotes 'yes' for any reader
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
for _yaml_class in (RecipeLoader, RecipeDumper):
    _yaml_class.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
        list("-+0123456789."))


def plain_values(data: Any) -> Any:
    """`data` with the containers and numbers Python callers pass made plain: tuples as lists,
    numpy scalars as Python numbers (settings are read strictly, as YAML gives them)."""
    if isinstance(data, dict):
        return {k: plain_values(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [plain_values(v) for v in data]
    item = getattr(data, "item", None)
    if callable(item) and type(data).__module__ == "numpy":
        return item()
    return data


def _line_of(node: yaml.Node | None, path: tuple) -> int | None:
    """1-based line of the deepest key or item on `path` present in the YAML tree."""
    line = None
    for key in path:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(key)), None)
            if match is None:
                break
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _where(path: tuple, root: yaml.Node | None) -> str:
    dotted = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    line = _line_of(root, path) if root is not None else None
    return f"{dotted} (line {line})" if line else dotted


def _fail(msg: str, path: tuple, root: yaml.Node | None) -> RecipeError:
    return RecipeError(f"recipe {_where(path, root)}: {msg}")


def _validate(model: type[BaseModel], data: Any, path: tuple, root: yaml.Node | None) -> Any:
    if not isinstance(data, dict):
        raise _fail(f"expected a mapping, got {type(data).__name__}", path, root)
    for key, value in data.items():  # pydantic would read true as 1 and false as 0
        if isinstance(value, bool) and key in model.model_fields and not _takes_bool(model, key):
            raise _fail(f"takes a value, not {str(value).lower()}", path + (key,), root)
    try:
        return model.model_validate(plain_values(data))
    except ValidationError as exc:
        errors = exc.errors()
        err = errors[0]
        if err["type"] == "extra_forbidden":
            allowed = ", ".join(_model_at(model, err["loc"][:-1]).model_fields)
            raise _fail(f"unknown key {err['loc'][-1]!r} (allowed: {allowed})",
                        path + tuple(err["loc"]), root) from None
        loc = _data_path(data, err["loc"])
        # a value several types could take (a number or 'auto') fails once per type
        messages = dict.fromkeys(e["msg"].removeprefix("Value error, ") for e in errors
                                 if _data_path(data, e["loc"]) == loc)
        got = err.get("input")
        shown = f", got {got!r}" if isinstance(got, int | float | str) and not isinstance(
            got, bool) and "got " not in err["msg"] else ""
        raise _fail(" or ".join(messages) + shown, path + loc, root) from None


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel]:
    """The settings class nested in `model` at `loc` (``schedule``, ``budget``, ``student``),
    whose keys an unknown key there should be told."""
    for key in loc:
        field = model.model_fields.get(key) if isinstance(key, str) else None
        if field is None:
            break
        inner = [a for a in (field.annotation, *get_args(field.annotation))
                 if isinstance(a, type) and issubclass(a, BaseModel)]
        if not inner:
            break
        model = inner[0]
    return model


def _takes_bool(model: type[BaseModel], key: str) -> bool:
    """Whether field `key` admits a boolean: in its type (directly, in a union or an
    annotation), or through a validator that reads the raw value first (``swaps: true``)."""
    def admits(annotation: Any) -> bool:
        return annotation is bool or annotation is Any or any(map(admits, get_args(annotation)))

    raw = any(key in d.info.fields and d.info.mode != "after"
              for d in model.__pydantic_decorators__.field_validators.values())
    return raw or admits(model.model_fields[key].annotation)


def _data_path(data: Any, loc: tuple) -> tuple:
    """The part of a validation error's location that names keys and items of `data`
    (pydantic appends the type it tried, e.g. ``literal['auto']`` or ``constrained-int``)."""
    out: list = []
    for key in loc:
        listed = isinstance(data, list) and isinstance(key, int) and key < len(data)
        if not (listed or (isinstance(data, dict) and key in data)):
            break
        data = data[key]
        out.append(key)
    return tuple(out) if out else tuple(loc[:1])


def _check_training_follows(stages: list[Stage], root: yaml.Node | None) -> None:
    """A stage that finishes during training (``qat``, ``schedule``) needs a later one, with no
    other compression stage in between (it would take the layers in training for plain ones)."""
    for i, stage in enumerate(stages):
        option = stage.config.trains_later()
        if not option:
            continue
        where = ("stages", i, stage.kind, option)
        if option == "schedule":
            try:
                check_schedulable(stage.config)
            except RecipeError as exc:
                raise _fail(str(exc), where, root) from None
        trains = next((j for j, s in enumerate(stages) if j > i and s.kind in TRAINING_KINDS
                       and s.config.runs_trainer), None)
        if trains is None:
            raise _fail(f"{option!r} works while a later stage trains; add a finetune or "
                        "distill stage after this one", where, root)
        between = next((j for j in range(i + 1, trains) if stages[j].kind not in
                        TRAINING_KINDS), None)
        if between is not None:
            raise _fail(f"{option!r} works while stage {trains} trains, but stage {between} "
                        f"({stages[between].kind}) comes in between and would replace the "
                        "layers in training; move it after the training stage or before this "
                        "one", where, root)


def _check_layer_order(stages: list[Stage], root: yaml.Node | None) -> None:
    """Refuse, before any work, a stage that cannot take what an earlier stage made of the same
    layers (`LAYER_ORDER`): both act on every tower (no targets, the earlier ignoring nothing)
    or on the same targets and ignores, and replace layers of a common type. Stages on other
    targets are checked when they run, on the model's layers."""
    for j, later in enumerate(stages):
        b = later.config.layer_order
        for i, earlier in enumerate(stages[:j]):
            a, cfg = earlier.config.layer_order, earlier.config
            if a is None or b is None or b > a or (b == a and LAYER_ORDER[a] != "quantization"):
                continue
            if not _covers(cfg, later.config) or not set(cfg.kinds()) & set(later.config.kinds()):
                continue
            why = ("each layer is quantized once" if a == b else
                   f"{LAYER_ORDER[b]} cannot take the layers {LAYER_ORDER[a]} made")
            raise _fail(f"comes after stage {i} ({earlier.kind}: {cfg.method}) on the same "
                        f"layers, but {why}; stages that replace layers go "
                        f"{', '.join(LAYER_ORDER[:-1])}, then {LAYER_ORDER[-1]}: reorder them "
                        "or give them different targets", ("stages", j, later.kind), root)


def _covers(earlier: Any, later: Any) -> bool:
    """Whether stage config `earlier` acts on every layer `later` acts on (as far as the recipe
    alone can tell: both on every tower, or the same targets and ignores)."""
    return (earlier.targets is None and not earlier.ignore and later.targets is None) \
        or (earlier.targets, earlier.ignore) == (later.targets, later.ignore)


def _check_qat_has_layers(stages: list[Stage], root: yaml.Node | None) -> None:
    """Refuse QAT on the layers an earlier unstructured pruning stage makes sparse (at a
    sparsity above 0): QAT trains plain linear and convolution layers only, so it would find
    nothing to train after the training stages before it."""
    sparse = LAYER_ORDER.index("unstructured pruning")
    for j, later in enumerate(stages):
        if not getattr(later.config, "qat", False):
            continue
        for i, earlier in enumerate(stages[:j]):
            if earlier.config.layer_order == sparse and _covers(earlier.config, later.config) \
                    and {nn.Linear, nn.Conv2d} <= set(earlier.config.kinds()) \
                    and earlier.config.target_sparsity > 0:
                raise _fail(f"qat trains plain linear and convolution layers, but stage {i} "
                            f"(prune: {earlier.config.method}) makes the same layers sparse "
                            "(not trained); prune with method 'structured' instead, or give "
                            "the stages different targets", ("stages", j, later.kind, "qat"),
                            root)


def parse_recipe(data: Any, root: yaml.Node | None = None) -> Recipe:
    """Validate a recipe mapping (as loaded from YAML)."""
    if not isinstance(data, dict):
        raise RecipeError("recipe must be a mapping with a top-level 'stages:' list")
    unknown = set(data) - {"stages", "calibration", "evaluate"}
    if unknown:
        key = sorted(map(str, unknown))[0]
        raise _fail(f"unknown key {key!r} (allowed: stages, calibration, evaluate)", (key,), root)
    stages_data = data.get("stages")
    if not isinstance(stages_data, list) or not stages_data:
        raise _fail("expected a non-empty list of stages", ("stages",), root)
    stages = []
    for i, item in enumerate(stages_data):
        path: tuple = ("stages", i)
        if not isinstance(item, dict) or len(item) != 1:
            raise _fail(
                f"each stage is a one-key mapping {{{'|'.join(STAGE_KINDS)}: {{...}}}}", path, root
            )
        kind, cfg = next(iter(item.items()))
        if kind not in STAGE_KINDS:
            raise _fail(f"unknown stage {kind!r} (allowed: {', '.join(STAGE_KINDS)})", path, root)
        if not isinstance(cfg, dict) or "method" not in cfg:
            raise _fail("expected a mapping with a 'method' key", path + (kind,), root)
        method = METHODS.get((kind, str(cfg["method"])))
        if method is None:
            avail = ", ".join(methods_for(kind)) or "none yet"
            raise _fail(
                f"unknown {kind} method {cfg['method']!r} (available: {avail})",
                path + (kind, "method"),
                root,
            )
        stages.append(Stage(kind, _validate(method.config_cls, cfg, path + (kind,), root)))
    _check_training_follows(stages, root)
    _check_layer_order(stages, root)
    _check_qat_has_layers(stages, root)
    calibration = _validate(
        CalibrationConfig, _section(data, "calibration"), ("calibration",), root
    )
    evaluate = _validate(EvaluateConfig, _section(data, "evaluate"), ("evaluate",), root)
    return Recipe(stages, calibration, evaluate)


def _section(data: dict, key: str) -> Any:
    """A top-level section, {} when absent or empty (`calibration:` alone); anything else as
    given, so that `calibration: false` is refused as not a mapping rather than read as {}."""
    value = data.get(key)
    return {} if value is None else value


def check_recipe_file(path: Path) -> None:
    """Refuse a recipe path that is missing or a folder, saying which."""
    if not path.is_file():
        raise RecipeError(f"recipe file {path} " + ("is a folder, not a file"
                                                   if path.is_dir() else "not found"))


MAX_DEPTH = 50  # a recipe nests four or five levels
MAX_VALUES = 100_000  # values once YAML aliases are expanded


def load_recipe(source: str | Path | dict | Recipe) -> Recipe:
    """A recipe from a YAML file path (any `Path`; a string ending in .yaml/.yml or naming a
    file), YAML text, a mapping, or a `Recipe`."""
    if isinstance(source, Recipe):
        return source
    if isinstance(source, dict):
        return parse_recipe(plain_values(source))  # a tuple of stages is a list, say
    text = str(source)
    if not text.strip():
        raise RecipeError("the recipe is empty: give a YAML file, YAML text or a mapping")
    path = Path(text).expanduser()
    if isinstance(source, Path) or (
            "\n" not in text and (path.suffix in (".yaml", ".yml") or path.exists())):
        check_recipe_file(path)
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise RecipeError(f"recipe file {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        root = yaml.compose(text, Loader=RecipeLoader)
        _check_tree(root)
        data = yaml.load(text, Loader=RecipeLoader)  # a SafeLoader: no Python objects
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"recipe is not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise RecipeError(f"recipe values are nested more than {MAX_DEPTH} deep") from None
    return parse_recipe(data, root)


def _check_tree(root: yaml.Node | None) -> None:
    """Refuse what YAML accepts but a recipe cannot mean: a key given twice in one mapping
    (YAML keeps the last without a word), a key that is not plain text, an alias inside the
    value it names, values nested too deep, and aliases expanding to a huge tree."""
    visits = 0

    def walk(node: yaml.Node, ancestors: tuple[int, ...]) -> None:
        nonlocal visits
        visits += 1
        line = node.start_mark.line + 1
        if visits > MAX_VALUES:
            raise RecipeError(f"recipe expands to more than {MAX_VALUES:,} values (its aliases "
                              "repeat what they name)")
        if id(node) in ancestors:
            raise RecipeError(f"recipe line {line}: an alias names a value holding it")
        if len(ancestors) > MAX_DEPTH:
            raise RecipeError(f"recipe line {line}: values nested more than {MAX_DEPTH} deep")
        inside = (*ancestors, id(node))
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode):
                    raise RecipeError(f"recipe line {key.start_mark.line + 1}: a key must be "
                                      "plain text, not a list or mapping")
                if key.value in seen:
                    raise RecipeError(f"recipe line {key.start_mark.line + 1}: key "
                                      f"{key.value!r} is given twice in the same mapping")
                seen.add(key.value)
                walk(value, inside)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item, inside)

    if root is not None:
        walk(root, ())

"""One selection grammar for every method: tower names, module names and `re:` regexes.

A token selects modules as follows:
- a tower name (``vision``, ``text``, ``audio``, ``fusion``, ``projector``) selects every module
  of that tower;
- ``re:PATTERN`` selects modules whose dotted name matches ``re.search(PATTERN, name)``;
- anything else is an exact module name and selects that module and everything below it.

``targets`` defaults to every tower; ``ignore`` removes modules from the selection.
Layers inside an ``nn.MultiheadAttention`` (SigLIP's pooling head) are never candidates: that
module reads its ``out_proj`` weights directly instead of calling it, so a replacement would
never run.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from torch import nn

from .errors import RecipeError


def _under(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def token_pattern(token: str) -> re.Pattern | None:
    """The compiled regex of a ``re:`` token (None for other tokens).

    Raises:
        RecipeError: if the pattern is not a valid regular expression.
    """
    if not token.startswith("re:"):
        return None
    try:
        return re.compile(token[3:])
    except re.error as exc:
        raise RecipeError(f"invalid regex in selection {token!r}: {exc}") from None


def _match_token(token: str, names: Sequence[str], towers: Mapping[str, Sequence[str]]) -> set[str]:
    if token in towers:
        return {n for n in names if any(_under(n, p) for p in towers[token])}
    pattern = token_pattern(token)
    if pattern is not None:
        return {n for n in names if pattern.search(n)}
    return {n for n in names if _under(n, token)}


def _unmatched(what: str, token: str, towers: Mapping[str, Sequence[str]]) -> RecipeError:
    return RecipeError(f"{what} {token!r} matches no tower or module; towers are "
                       f"{', '.join(towers)} (use 'inspect' to list module names)")


def check_tokens(model: nn.Module, towers: Mapping[str, Sequence[str]], tokens: Iterable[str],
                 what: str) -> None:
    """Refuse, before anything changes the model, a token naming neither a tower nor a module
    at its first dotted part (a typo): stages add modules only inside existing ones, so a
    later stage's token is judged by that part alone; regexes are left to `select_modules`."""
    tops = {n.split(".")[0] for n, _ in model.named_modules() if n}
    for token in tokens:
        if not (token in towers or token.startswith("re:") or token.split(".")[0] in tops):
            raise _unmatched(what, token, towers)


def ignored_names(model: nn.Module, towers: Mapping[str, Sequence[str]],
                  ignore: Iterable[str]) -> set[str]:
    """Names of the modules `ignore` leaves out.

    Raises:
        RecipeError: if an entry names nothing at all.
    """
    all_names = [n for n, _ in model.named_modules() if n]
    out: set[str] = set()
    for token in ignore:
        hit = _match_token(token, all_names, towers)
        if not hit:
            raise _unmatched("ignore entry", token, towers)
        out |= hit
    return out


def select_modules(
    model: nn.Module,
    towers: Mapping[str, Sequence[str]],
    kinds: tuple[type[nn.Module], ...],
    targets: Iterable[str] | None = None,
    ignore: Iterable[str] = (),
) -> dict[str, nn.Module]:
    """Return ``{name: module}`` for the modules of `kinds` chosen by `targets` minus `ignore`.

    Raises:
        RecipeError: if a token selects nothing at all (a typo, most likely).
    """
    all_names = [n for n, _ in model.named_modules() if n]
    inside_mha = {f"{n}.{c}" for n, m in model.named_modules()
                  if isinstance(m, nn.MultiheadAttention) for c, _ in m.named_modules() if c}
    candidates = {n: m for n, m in model.named_modules()
                  if n and isinstance(m, kinds) and n not in inside_mha}
    chosen: set[str] = set()
    target_list = list(towers) if targets is None else list(targets)
    for token in target_list:
        hit = _match_token(token, all_names, towers)
        if not hit:
            raise _unmatched("target", token, towers)
        chosen |= hit & candidates.keys()
    chosen -= ignored_names(model, towers, ignore)
    return {n: candidates[n] for n in sorted(chosen, key=all_names.index)}


def tower_of(name: str, towers: Mapping[str, Sequence[str]]) -> str | None:
    """Name of the tower a module belongs to, or None."""
    for tower, prefixes in towers.items():
        if any(_under(name, p) for p in prefixes):
            return tower
    return None

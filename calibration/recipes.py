"""The int8 recipes a bundle starts from, and reading one from what ``--recipe`` names."""

from __future__ import annotations

import json
from pathlib import Path

from dcssa.calibration.int8 import Int8Recipe
from dcssa.calibration.transformer import transformer_recipe
from dcssa.runtime.contract import manifest as mf
from dcssa.runtime.errors import DcssaError

# The recipe the search chose on the structured demo model (see README, "Precision"): used when
# no search is asked for. A trained checkpoint deserves its own search (--recipe search).
DEFAULT_RECIPE = Int8Recipe(
    method="entropy",
    blocks=["stem_pools", "attention.proj", "Mixed_7a", "Mixed_7c", "Mixed_7b", "Mixed_6e", "Mixed_6d", "Mixed_6c"],
)
# ARNet (ViT): the transformer recipe (issue 34) -- only the blocks' weight MatMuls, per-channel
# symmetric weights; residual Adds, LayerNorms, Softmax, GELU, the score path, the final norm and
# the head stay float. MinMax ranges: the calibrator measured on ViT-B (docs/results/arnet.md; the
# histogram calibrators cost minutes and gigabytes there, and only the MatMul inputs need ranges);
# `--recipe search` compares the calibrators on your checkpoint.
ARNET_RECIPE = transformer_recipe("minmax")
DEFAULT_RECIPES = {mf.DCSSA: DEFAULT_RECIPE, mf.ARNET: ARNET_RECIPE}


def load_recipe(spec: str | Path | Int8Recipe | None, family: str = mf.DCSSA) -> Int8Recipe | None:
    """``None``/"search" -> None (search), "default" -> the family's default recipe, a recipe -> itself,
    else a JSON file: a recipe, a ``search.json`` (its chosen recipe) or a manifest (its int8 recipe).
    """
    if isinstance(spec, Int8Recipe):
        return spec
    if spec is None or str(spec) == "search":
        return None
    if str(spec) == "default":
        return Int8Recipe.from_dict(DEFAULT_RECIPES[family].to_dict())  # a copy: its lists are the caller's
    path = Path(spec)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DcssaError(f"cannot read the recipe ({exc})", path=path, hint="pass search, default or a recipe JSON file") from None
    for key in ("chosen", "calibration"):
        if isinstance(doc, dict) and key in doc:
            doc = doc[key].get("recipe", doc[key].get("int8", {}).get("recipe", doc[key]))
    if isinstance(doc, dict) and doc.get("quantiser") == "nncf":
        # an NNCF graph's record: the recipe whose float blocks were its ignored scope, if any
        if not isinstance(doc.get("ignored_recipe"), dict):
            raise DcssaError("that int8 graph was made by NNCF on every layer: it has no recipe of blocks", path=path,
                             hint="pass --recipe all with --quantiser nncf, or default / a recipe JSON file")
        doc = doc["ignored_recipe"]
    if not isinstance(doc, dict) or "blocks" not in doc:
        raise DcssaError("not a recipe (no 'blocks')", path=path, hint="pass search, default or a recipe JSON file")
    return Int8Recipe.from_dict(doc)


def load_search_record(spec: str | Path | Int8Recipe | None) -> dict | None:
    """The search record (methods, sensitivity, curve) when ``spec`` is a ``search.json``."""
    if spec is None or isinstance(spec, Int8Recipe) or str(spec) in ("search", "default"):
        return None
    try:
        doc = json.loads(Path(spec).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "curve" in doc and "chosen" in doc else None

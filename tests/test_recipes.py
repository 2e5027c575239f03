"""Every recipe in yaml/ opens with its command and parses with LLaMA-Factory's own argument classes."""

from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT

RECIPES = sorted(p for p in (REPO_ROOT / "yaml").rglob("*.yaml") if p.parent.name != "eval")  # yaml/eval: lf-ext eval configs


def test_there_are_recipes():
    assert RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_recipe_parses_and_documents_its_command(recipe: Path):
    from llamafactory.hparams.parser import _TRAIN_ARGS
    from transformers import HfArgumentParser

    from lf_ext.config import parse_bgobj_args, split_bgobj_args

    text = recipe.read_text()
    assert "llamafactory-cli" in text.split("\n\n")[0], "the header comment must give the exact command"
    assert "Reads:" in text.split("\n\n")[0], "the header must say which stage output it reads"
    rest, found = split_bgobj_args(yaml.safe_load(text))
    parse_bgobj_args(found)
    if "deepspeed" in rest:  # GPU recipes: the config must exist; parse the keys on this CPU without it
        assert (REPO_ROOT / rest.pop("deepspeed")).is_file()
    rest["bf16"] = False
    HfArgumentParser(_TRAIN_ARGS).parse_dict(rest, allow_extra_keys=False)

"""Strict ``bgobj_*`` keys: splitting, validation, coercion and the listing."""

import pytest

from lf_ext.config import BgObjConfigError, describe_keys, parse_bgobj_args, split_bgobj_args, valid_keys


def test_split_dict_keeps_input_untouched():
    args = {"model_name_or_path": "m", "bgobj_mask_provider": "none", "template": "qwen2_vl"}
    rest, found = split_bgobj_args(args)
    assert rest == {"model_name_or_path": "m", "template": "qwen2_vl"}
    assert found == {"bgobj_mask_provider": "none"}
    assert "bgobj_mask_provider" in args  # run_exp reuses the same dict for a second parse


@pytest.mark.parametrize(
    "argv",
    [["--template", "x", "--bgobj_mask_provider", "none"], ["--bgobj_mask_provider=none", "--template", "x"]],
)
def test_split_argv(argv):
    rest, found = split_bgobj_args(argv)
    assert found == {"bgobj_mask_provider": "none"}
    assert rest == ["--template", "x"]


def test_split_argv_missing_value():
    with pytest.raises(BgObjConfigError, match="needs a value"):
        split_bgobj_args(["--bgobj_mask_provider", "--template", "x"])


def test_misspelt_key_lists_valid_keys_and_suggests():
    with pytest.raises(BgObjConfigError) as err:
        parse_bgobj_args({"bgobj_mask_provdier": "none"})
    message = str(err.value)
    assert "bgobj_mask_provdier" in message
    assert "Did you mean 'bgobj_mask_provider'" in message
    for key in valid_keys():
        assert key in message


def test_unknown_choice_is_rejected_with_choices():
    with pytest.raises(BgObjConfigError, match="not one of: dataset, entropy, motion, none, reference, yolo"):
        parse_bgobj_args({"bgobj_mask_provider": "sam"})


def test_wrong_type_is_rejected():
    with pytest.raises(BgObjConfigError, match="expects a str"):
        parse_bgobj_args({"bgobj_mask_provider": 3})


def test_defaults_and_listing():
    settings = parse_bgobj_args({})
    assert settings.bgobj_mask_provider == "none"
    listing = describe_keys()
    for key in valid_keys():
        assert key in listing
    assert "'none'" in listing and "Mask provider" in listing

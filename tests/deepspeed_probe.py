"""Run by tests/test_deepspeed.py in a fresh interpreter (DeepSpeed state is process-wide).

``python deepspeed_probe.py configs CONFIG...``: each DeepSpeed config resolves through transformers'
``TrainingArguments`` (the "auto" values filled in); prints one JSON line per config.
``python deepspeed_probe.py zero3-init TINY_CHECKPOINT``: a one-rank gloo group, a tiny Qwen2-VL with a bgobj
spec (prefusion layer, split projectors) built under ``deepspeed.zero.Init``, then lf_ext's first-load
initialisation; prints a JSON summary.
"""

from __future__ import annotations

import json
import os
import socket
import sys


def configs(paths: list[str]) -> None:
    from transformers import TrainingArguments

    for path in paths:
        args = TrainingArguments(output_dir=os.environ.get("TMPDIR", "/tmp"), deepspeed=path, report_to="none",
                                 per_device_train_batch_size=4, gradient_accumulation_steps=4)  # fmt: skip
        config = args.hf_deepspeed_config.config
        print(json.dumps({"path": path, "stage": config["zero_optimization"]["stage"],
                          "zero3": args.hf_deepspeed_config.is_zero3(),
                          "micro_batch": config["train_micro_batch_size_per_gpu"],
                          "accumulation": config["gradient_accumulation_steps"]}))  # fmt: skip


def zero3_init(checkpoint: str) -> None:
    import deepspeed
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText
    from transformers.integrations import HfDeepSpeedConfig

    from lf_ext.families import family_of
    from lf_ext.models.attach import initialize_new_modules
    from lf_ext.models.modules import init_separators_from, make_spec

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    deepspeed.init_distributed("gloo")
    zero3 = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "train_batch_size": 1,
             "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}  # fmt: skip
    keep = HfDeepSpeedConfig(zero3)  # noqa: F841  (transformers reads it through a weak reference)

    config = AutoConfig.from_pretrained(checkpoint)
    family = family_of(config)
    vocab = config.text_config.vocab_size
    spec = make_spec([vocab - 4, vocab - 3, vocab - 2, vocab - 1], family.text_config(config), 1, True)
    setattr(family.spec_holder(config), "bgobj", spec)
    model = AutoModelForImageTextToText.from_pretrained(checkpoint, config=config, dtype=torch.float32)
    modules, owner = family.modules(model), family.modules_owner(model)
    projector = family.projector_of(owner)
    partitioned = all(hasattr(p, "ds_id") for p in modules.parameters())
    initialize_new_modules(model, family)
    llm_layer = family.language_model(model).layers[0]
    with deepspeed.zero.GatheredParameters(list(modules.parameters()) + list(projector.parameters())
                                           + list(model.get_input_embeddings().parameters())
                                           + list(llm_layer.parameters())):  # fmt: skip
        merger = {k: v.clone() for k, v in projector.state_dict().items()}
        same = all(torch.equal(merger[k], v) for part in (modules.merger_background, modules.merger_object)
                   for k, v in part.state_dict().items())  # fmt: skip
        start, end = family.delimiter_ids(config)
        weights = model.get_input_embeddings().weight
        separators = modules.separators.weight
        expected = torch.nn.Module()
        expected.separators = torch.nn.Embedding(*separators.shape)
        init_separators_from(expected, weights[start].detach().clone(), weights[end].detach().clone())
        separators_from_delimiters = bool(torch.equal(separators, expected.separators.weight))
        shapes = {name: list(p.shape) for name, p in modules.named_parameters()}
        llm = llm_layer.state_dict()
        prefusion_from_llm = all(torch.equal(v, llm[k]) for k, v in modules.prefusion.layers[0].state_dict().items())
    print(json.dumps({"partitioned": partitioned, "ds_shapes": {n: list(p.ds_shape) for n, p in modules.named_parameters()},
                      "gathered_shapes": shapes, "split_projectors_equal_merger": same,
                      "separators_from_delimiters": separators_from_delimiters,
                      "prefusion_from_llm": prefusion_from_llm}))  # fmt: skip


if __name__ == "__main__":
    {"configs": lambda: configs(sys.argv[2:]), "zero3-init": lambda: zero3_init(sys.argv[2])}[sys.argv[1]]()

"""Medusa-1 and Medusa-2 (Cai et al. 2024, arXiv 2401.10774): K extra decoding heads on the
backbone's last hidden state propose candidates for the next K+1 tokens; the candidates, laid
out as a tree of top-k choices per head, are verified in one forward with a tree mask.

heads.py: the heads, Medusa-2's LoRA delta and the artifact folder; trees.py: candidate trees
and how they are chosen; drafter.py: the drafter on the one speculative loop and the two
decoders; train.py: ``accbench train``; tune.py: ``accbench tune`` (the tree for the device).
"""

from accbench.methods import register
from accbench.methods.medusa.drafter import Medusa1Decoder, Medusa2Decoder, MedusaDecoder, MedusaDrafter
from accbench.methods.medusa.heads import (
    CONFIG_FILE,
    DELTA_FILE,
    HEADS_FILE,
    LORA_TARGETS,
    LoRALinear,
    MedusaHeads,
    ResBlock,
    add_lora,
    lm_head_sub,
    load_artifact,
    lora_delta,
    merge_delta,
)
from accbench.methods.medusa.trees import (
    TREE_FILE,
    MedusaTree,
    best_tree,
    chain_tree,
    device_tag,
    expected_accepted,
    normalize_paths,
    path_weights,
    resolve_tree,
    tree_default_key,
)

register(Medusa1Decoder)
register(Medusa2Decoder)

__all__ = ["CONFIG_FILE", "DELTA_FILE", "HEADS_FILE", "LORA_TARGETS", "TREE_FILE", "LoRALinear", "Medusa1Decoder",
           "Medusa2Decoder", "MedusaDecoder", "MedusaDrafter", "MedusaHeads", "MedusaTree", "ResBlock", "add_lora",
           "best_tree", "chain_tree", "device_tag", "expected_accepted", "lm_head_sub", "load_artifact", "lora_delta",
           "merge_delta", "normalize_paths", "path_weights", "resolve_tree", "tree_default_key"]

import pytest
import torch
from torch import nn

from layerfreeze import count_parameters, layer_groups, tiny_model
from layerfreeze.core.layers import shared_parameters
from layerfreeze.core.layers import find_blocks_path

HEAD_MODULES = {  # what "head" means per family (classification models)
    "bert": {"bert.pooler", "dropout", "classifier"},
    "distilbert": {"pre_classifier", "classifier", "dropout"},
    "roberta": {"classifier"},
    "gpt2": {"transformer.ln_f", "score"},
    "llama": {"model.norm", "score"},  # model.rotary_emb runs before the blocks: embeddings
}
BLOCK_PATHS = {"bert": "bert.encoder.layer", "distilbert": "distilbert.transformer.layer",
               "roberta": "roberta.encoder.layer", "gpt2": "transformer.h", "llama": "model.layers"}


def test_groups_of_each_family(family_model):
    family, model = family_model
    groups = layer_groups(model)
    assert [g.name for g in groups] == ["embeddings", "block.0", "block.1", "block.2", "head"]
    assert find_blocks_path(model) == BLOCK_PATHS[family]
    assert set(groups[-1].modules) == HEAD_MODULES[family]
    assert groups[0].num_params > 0 and groups[-1].num_params > 0
    # every parameter lands in exactly one group
    owned = [id(p) for g in groups for p in g.parameters.values()]
    assert len(owned) == len(set(owned)) == len(list(model.parameters()))


def test_embeddings_hold_the_token_embeddings(family_model):
    _, model = family_model
    embeddings = layer_groups(model)[0]
    assert model.get_input_embeddings().weight in list(embeddings.parameters.values())


class Custom(nn.Module):
    """No known family: an input layer, a stack of blocks, an output layer."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.stages = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])
        self.blocks = nn.ModuleList([nn.Sequential(nn.Linear(8, 8), nn.ReLU()) for _ in range(5)])
        self.out = nn.Linear(8, 2)


def test_generic_rule_takes_the_longest_modulelist():
    groups = layer_groups(Custom())
    assert [g.name for g in groups][1:6] == [f"block.{i}" for i in range(5)]
    assert set(groups[0].modules) == {"stem", "stages"}
    assert set(groups[-1].modules) == {"out"}


def test_explicit_blocks_path():
    groups = layer_groups(Custom(), blocks="stages")
    assert [g.name for g in groups] == ["embeddings", "block.0", "block.1", "head"]
    with pytest.raises(ValueError, match="lists found: stages, blocks"):
        layer_groups(Custom(), blocks="out")


def test_no_blocks_is_a_clear_error_with_a_hint():
    with pytest.raises(ValueError, match=r"blocks='encoder.layers'.*children are: 0, 1"):
        layer_groups(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))


def test_tied_embeddings_are_reported_and_counted_once():
    model = tiny_model("gpt2", task="causal-lm", num_layers=2)
    assert shared_parameters(model) == [["transformer.wte.weight", "lm_head.weight"]]
    groups = layer_groups(model)
    assert groups[0].parameters["transformer.wte.weight"] is groups[-1].parameters["lm_head.weight"]
    _, total = count_parameters(model)
    with_twins = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert total == with_twins - model.lm_head.weight.numel()


def test_untied_model_has_no_shared_parameters():
    assert shared_parameters(tiny_model("gpt2", task="causal-lm", tie_word_embeddings=False)) == []


def test_a_block_reused_twice_is_one_group_with_a_warning_and_a_note():
    model = Custom()
    model.blocks[3] = model.blocks[1]
    assert ["blocks.1.0.weight", "blocks.3.0.weight"] in shared_parameters(model)
    with pytest.warns(UserWarning, match="4 distinct block.s. as 5 layers: the layers share weights"):
        groups = layer_groups(model)
    assert [g.name for g in groups] == ["embeddings"] + [f"block.{i}" for i in range(4)] + ["head"]
    assert groups[2].note == "runs 2 times per forward pass: its layers share these weights."


def test_parameter_on_the_root_goes_where_torch_lists_it_without_a_trace():
    model = Custom()  # no input embedding, so no trace: every group follows registration order
    model.scale = nn.Parameter(torch.ones(1))  # torch lists a module's own parameters before its children's
    groups = layer_groups(model)
    assert groups[0].parameters["scale"] is model.scale
    assert all("scale" not in g.parameters for g in groups[1:])


# --- the hidden edges of issue 23: tiny random models of three more families, built from their configs offline ----

def _xlnet():
    import transformers as tf
    config = tf.XLNetConfig(vocab_size=100, d_model=16, n_layer=2, n_head=2, d_inner=32)
    return tf.XLNetForSequenceClassification(config)


def _esm():
    import transformers as tf
    config = tf.EsmConfig(vocab_size=33, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=32, pad_token_id=1, mask_token_id=32, max_position_embeddings=64)
    return tf.EsmForSequenceClassification(config)


def _funnel():
    import transformers as tf
    config = tf.FunnelConfig(vocab_size=100, d_model=16, n_head=2, d_head=8, d_inner=32, block_sizes=[2, 2],
                             num_decoder_layers=1)
    return tf.FunnelForSequenceClassification(config)


def _owner(groups, name):
    (owner,) = [g for g in groups if name in g.parameters]
    return owner


def test_xlnet_mask_embedding_never_runs_and_its_group_says_so():
    from layerfreeze.core.layers import layer_groups as groups_of
    groups = groups_of(_xlnet())
    assert [g.name for g in groups] == ["embeddings", "block.0", "block.1", "head"]
    owner = _owner(groups, "transformer.mask_emb")  # only used with target_mapping (XLNet's pretraining)
    assert owner.name == "embeddings"
    assert "transformer.mask_emb: not used in a forward pass" in owner.note


def test_esm_contact_head_never_runs_and_goes_to_the_head_with_a_note():
    from layerfreeze.core.layers import layer_groups as groups_of
    groups = groups_of(_esm())
    owner = _owner(groups, "esm.contact_head.regression.weight")  # only with return_contacts / predict_contacts
    assert owner.name == "head"
    assert "esm.contact_head: not used in a forward pass" in owner.note
    assert "not used" not in groups[0].note


def test_funnel_stages_are_the_blocks_in_the_order_they_run():
    from layerfreeze.core.layers import find_blocks_paths, layer_groups as groups_of, module_run_order
    model = _funnel()
    assert find_blocks_paths(model) == ["funnel.encoder.blocks.0", "funnel.encoder.blocks.1"]
    groups = groups_of(model)
    assert [g.name for g in groups] == ["embeddings", "encoder.0", "encoder.1", "encoder.2", "encoder.3", "head"]
    order = module_run_order(model)
    blocks = [next(iter(g.modules)) for g in groups[1:-1]]
    assert blocks == sorted(blocks, key=order.index)
    assert set(groups[-1].modules) == {"classifier"}  # the classification model is the encoder alone
    owned = [id(p) for g in groups for p in g.parameters.values()]
    assert len(owned) == len(set(owned)) == len(list(model.parameters()))


@pytest.mark.parametrize("build", [_xlnet, _esm, _funnel])
def test_every_parameter_of_the_three_families_lands_in_exactly_one_group(build):
    from layerfreeze.core.layers import layer_groups as groups_of
    model = build()
    owned = [id(p) for g in groups_of(model) for p in g.parameters.values()]
    assert len(owned) == len(set(owned)) == len(list(model.parameters()))

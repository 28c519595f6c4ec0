

def test_lisa_shares_count_each_tensor_once_and_match_a_hand_count():
    from layerfreeze.core.layers import layer_groups
    from layerfreeze.core.memory import lisa_shares
    from layerfreeze.base.models import tiny_model

    model = tiny_model("gpt2", num_layers=4)  # GPT-2 ties its output layer to the token embeddings
    total = sum(p.numel() for p in model.parameters())
    groups = layer_groups(model)
    block = sum(p.numel() for p in groups[1].parameters.values())
    shares = lisa_shares(model, gamma=2)
    assert shares["blocks"] == 4 and shares["parameters (M)"] * 1e6 == total
    assert abs(shares["one block"] - block / total) < 1e-12
    assert abs(shares["LISA trains"] - (1 - 2 * block / total)) < 1e-12  # all but two of the four blocks


def test_real_sizes_come_from_configs_on_the_meta_device():
    from layerfreeze.core.memory import REAL_CONFIGS, meta_model

    qwen = meta_model(*REAL_CONFIGS["Qwen2.5-0.5B"][:1], **REAL_CONFIGS["Qwen2.5-0.5B"][1])
    assert {p.device.type for p in qwen.parameters()} == {"meta"}
    assert round(sum(p.numel() for p in qwen.parameters()) / 1e6) == 494  # the published size

"""Parameter counts of the presets, from shapes alone (the 7B is never allocated)."""

import pytest

from lmlib.models import Gpt2Config, LlamaConfig, num_params


@pytest.mark.parametrize("config, expected", [
    (Gpt2Config.small(), 124_439_808),  # tied embeddings, as published
    (Gpt2Config.medium(), 354_823_168),
    (Gpt2Config.large(), 774_030_080),
    (Gpt2Config.xl(), 1_557_611_200),
    (LlamaConfig.llama2_7b(), 6_738_415_616),
    (LlamaConfig.teenytinyllama_160m(), 162_417_408),
])
def test_parameter_counts_match_the_published_models(config, expected):
    assert num_params(config) == expected

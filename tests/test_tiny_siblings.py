"""Every large recipe has a tiny sibling that trains on a CPU: one step each, in this process."""

import pytest

from experiments.tiny import SIBLINGS
from lmlib import experiment
from lmlib.experiment import registry
from lmlib.train.loop import Trainer
from lmlib.train.run import Run


def test_every_large_recipe_has_a_sibling():
    large = [name for name, cls in registry().items() if name not in SIBLINGS.values()
             and (cls().trainer().num_train_steps >= 10_000 or "7B" in name)]
    assert sorted(SIBLINGS) == sorted(large)


@pytest.mark.parametrize("recipe", sorted(SIBLINGS))
def test_the_tiny_sibling_trains_one_step_with_the_recipes_features(recipe):
    config = experiment.with_tokenizer(experiment.resolve(
        SIBLINGS[recipe], ["trainer.num_train_steps=1"]))
    big = experiment.resolve(recipe, [], num_devices=4, num_processes=1)
    assert type(config.model) is type(big.model) and config.optimizer == big.optimizer
    assert config.trainer.precision == big.trainer.precision
    assert (config.trainer.num_microbatches > 1) == (big.trainer.num_microbatches > 1)
    # One compiled step, no hooks (the eval loss has tests of its own); a loss that is not
    # finite would stop it (TrainingDiverged).
    state = Trainer(Run(config), hooks=lambda run: []).train()
    assert int(state.step) == 1

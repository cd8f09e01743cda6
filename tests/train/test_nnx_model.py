"""`nnx:MODULE:FUNCTION` models: the constructor's lookup, the choices they refuse, and what each
method trains (written out from the model's layout)."""

import pytest
from flax import traverse_util

from adapters_jax.config.schema import run_config, smoke
from adapters_jax.models.registry import ModelNotFoundError
from adapters_jax.train import engine
from adapters_jax.train.experiment import build_experiment
from adapters_jax.train.nnx_model import build_nnx, load_constructor
from adapters_jax.train.run_data import load_run_task
from tests.nnx.text_classifier import SITES, make_classifier
from tests.train import vmap_runs

MODEL = 'nnx:tests.nnx.text_classifier:make_classifier'


def _config(**changes):
  config = run_config()
  config.model = MODEL
  config.method = 'lora'
  config.method_options.sites = SITES
  config.update(changes)
  return config


def _trained(mask) -> set[str]:
  return {p for p, m in traverse_util.flatten_dict(mask, sep='/').items() if m}


@pytest.mark.parametrize('name, message', [
    ('nnx:tests.nnx.text_classifier', 'an NNX model is nnx:MODULE:FUNCTION'),
    ('nnx:tests.nnx.no_such_module:make', "cannot import 'tests.nnx.no_such_module'"),
    ('nnx:tests.nnx.text_classifier:make_nothing', "has no function 'make_nothing'"),
])
def test_a_constructor_that_is_not_there_is_one_line_naming_the_form(name, message):
  with pytest.raises(ModelNotFoundError, match=message):
    load_constructor(name)
  assert load_constructor(MODEL) is make_classifier


def test_choices_an_nnx_model_does_not_take_are_refused_by_name():
  with pytest.raises(ValueError, match=r"\['remat', 'frozen_dtype'\] do not apply to an nnx: model"):
    build_nnx(_config(remat=True, frozen_dtype='bfloat16'), spec=None, adapter_name='a')
  with pytest.raises(ValueError, match="task_kind='causal_lm'"):
    build_nnx(_config(task_kind='causal_lm'), spec=None, adapter_name='a')


def test_what_each_method_trains():
  config = _config()
  spec = load_run_task(config).spec
  lora = build_experiment(config, spec)
  adapter = {f'layers/{i}/attn/{s}/adapters/rotten_tomatoes/{leaf}' for i in (0, 1)
             for s in ('query', 'value') for leaf in ('lora_a', 'lora_b')}
  head = {'classifier/kernel', 'classifier/bias'}
  assert lora.adapter_name == 'rotten_tomatoes'
  assert _trained(lora.mask) == adapter | head
  assert _trained(build_experiment(_config(train_head=False), spec).mask) == adapter
  assert _trained(build_experiment(_config(method='head'), spec).mask) == head
  full = build_experiment(_config(method='full'), spec)
  flat = traverse_util.flatten_dict(full.mask, sep='/')
  assert all(flat.values()) and 'embed/embedding' in flat and full.adapter_name is None
  assert lora.params['embed']['embedding'].shape == (len(lora.pretrained.tokenizer), 16)


@pytest.mark.slow
def test_a_vmapped_group_of_nnx_runs_ends_as_its_runs_trained_alone(tmp_path):
  # Bug caught: an apply that closes over one member's arrays (every member trains the same), or
  # RNG state that the vmapped step cannot carry per member.
  configs = [smoke(_config(learning_rate=lr), num_train_steps=4) for lr in (1e-3, 3e-2)]
  grouped = [str(tmp_path / f'group_{i}') for i in range(2)]
  alone = [str(tmp_path / f'alone_{i}') for i in range(2)]
  results = engine.train_runs(configs, grouped, vmapped=True)
  assert [r['vmapped_members'] for r in results] == [2, 2]
  for config, workdir in zip(configs, alone, strict=True):
    engine.train_runs([config], [workdir], vmapped=False)
  for group_dir, alone_dir in zip(grouped, alone, strict=True):
    vmap_runs.assert_same_run(group_dir, alone_dir)
  first, second = vmap_runs.best_leaves(grouped[0]), vmap_runs.best_leaves(grouped[1])
  assert any(abs(first[p] - second[p]).max() > 1e-4 for p in first)

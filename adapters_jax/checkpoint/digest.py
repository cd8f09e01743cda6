"""A checkpoint directory's file digest: sha256 of every file, recorded beside them in `DIGEST_FILE`.

Training checkpoints (`checkpoint.training`) and adapter checkpoints (`checkpoint.save`, e.g. a
run's `best/`) record one when saved and compare it before Orbax reads the files: Orbax reading a
damaged file fails halfway and leaves reads pending on a closed event loop (tracebacks at exit),
while a digest mismatch is found before any read starts and reported in one line.

Example:
  write_digests('/runs/rte/best')
  differing_files('/runs/rte/best')  # [] when intact; ['params/d/0.0'] when a file changed
"""

from __future__ import annotations

import hashlib
import json
import os

DIGEST_FILE = 'files.sha256.json'


def file_digests(directory: str) -> dict[str, str]:
  """sha256 of every file under `directory` (but the digest file), by relative path."""
  digests = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      relative = os.path.relpath(path, directory)
      if relative == DIGEST_FILE or name.startswith(f'.{DIGEST_FILE}'):
        continue
      digest = hashlib.sha256()
      with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
          digest.update(chunk)
      digests[relative] = digest.hexdigest()
  return digests


def write_digests(directory: str) -> None:
  """Records the digest of `directory`'s files in `directory/DIGEST_FILE` (atomically)."""
  tmp = os.path.join(directory, f'.{DIGEST_FILE}.tmp')
  with open(tmp, 'w') as f:
    json.dump(file_digests(directory), f, indent=1, sort_keys=True)
  os.replace(tmp, os.path.join(directory, DIGEST_FILE))


def differing_files(directory: str) -> list[str] | None:
  """The relative paths whose file is missing, added or changed since the digest was recorded
  (sorted; empty when all match), or None when `directory` has no digest (saved before digests,
  or killed before it was written).

  Raises:
    ValueError: the digest file itself cannot be parsed.
  """
  path = os.path.join(directory, DIGEST_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    recorded = json.load(f)
  if not isinstance(recorded, dict):
    raise ValueError(f'{path} is not a JSON object')
  found = file_digests(directory)
  return sorted(p for p in set(recorded) | set(found) if recorded.get(p) != found.get(p))

"""A checkpoint directory's file digest finds every changed, missing and added file."""

import hashlib
import json

import pytest

from adapters_jax.checkpoint.digest import DIGEST_FILE, differing_files, write_digests


def _files(tmp_path):
  (tmp_path / 'params' / 'd').mkdir(parents=True)
  (tmp_path / 'params' / 'd' / 'chunk').write_bytes(b'\x00\x01' * 1000)
  (tmp_path / 'record').mkdir()
  (tmp_path / 'record' / 'metadata').write_text('{"format": 1}')
  return tmp_path


def test_the_recorded_digest_is_the_sha256_of_each_file(tmp_path):
  # Bug caught: the digest file hashing itself, or paths recorded absolute (a moved copy fails).
  write_digests(str(_files(tmp_path)))
  recorded = json.loads((tmp_path / DIGEST_FILE).read_text())
  assert recorded == {'params/d/chunk': hashlib.sha256(b'\x00\x01' * 1000).hexdigest(),
                      'record/metadata': hashlib.sha256(b'{"format": 1}').hexdigest()}
  assert differing_files(str(tmp_path)) == []


def test_changed_missing_and_added_files_differ(tmp_path):
  # Bugs caught: only recorded files compared (an added file passes), a missing file skipped.
  write_digests(str(_files(tmp_path)))
  (tmp_path / 'params' / 'd' / 'chunk').write_bytes(b'\x00\x01' * 999)  # truncated
  (tmp_path / 'record' / 'metadata').unlink()
  (tmp_path / 'stray').write_text('x')
  assert differing_files(str(tmp_path)) == ['params/d/chunk', 'record/metadata', 'stray']


def test_no_digest_is_none_and_an_unparseable_one_raises(tmp_path):
  assert differing_files(str(_files(tmp_path))) is None  # saved before digests: not checked
  (tmp_path / DIGEST_FILE).write_text('{"params/d/chu')
  with pytest.raises(ValueError):
    differing_files(str(tmp_path))

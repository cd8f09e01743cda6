r"""Picks a seeded random sample of mutmut's mutants per module, and tallies a run's outcome by module.

A full mutation run of the core is a few thousand mutants at 5-15 s each on two cores; a sample per
module gives each module's kill rate with a known sampling error in a fraction of that time:

  .venv/bin/mutmut run --max-children 1 "adapters_jax.splicing.trainable*"   # once: generates all mutants
  nice -n 19 .venv/bin/mutmut run --max-children 2 \
      $(.venv/bin/python scripts/mutation_sample.py pick --per_module=40 --seed=0)
  .venv/bin/python scripts/mutation_sample.py tally --per_module=40 --seed=0

`pick` prints mutant names; `tally` prints killed / checked per module for the same sample (a
timeout counts as killed, as mutmut counts it; "no tests" counts as survived) with the 95% Wilson
interval, and lists the survivors. Modules are grouped as `docs/testing.md` reports them:
`methods/` and the data loaders each as one group.
"""

from __future__ import annotations

import argparse
import collections
import math
import random
import re
import subprocess
import sys

GROUPS = (('adapters_jax.methods', 'methods/'), ('adapters_jax.data', 'data loaders'))
KILLED = {'killed', 'timeout'}
PENDING = {'not checked'}


def group_of(mutant: str) -> str:
  """`adapters_jax.splicing.splice.x_add_adapter__mutmut_3` -> `adapters_jax.splicing.splice`, or the group
  name."""
  module = re.split(r'\.x_|\.x\u01c1', mutant, maxsplit=1)[0]
  for prefix, name in GROUPS:
    if module == prefix or module.startswith(prefix + '.'):
      return name
  return module


def all_mutants(mutmut: str) -> dict[str, str]:
  """Every mutant's name -> status, from `mutmut results --all true`."""
  out = subprocess.run([mutmut, 'results', '--all', 'true'], check=True, capture_output=True,
                       text=True).stdout
  statuses = {}
  for line in out.splitlines():
    name, sep, status = line.strip().partition(': ')
    if sep:
      statuses[name] = status.strip()
  return statuses


def sample(names: list[str], per_module: int, seed: int) -> dict[str, list[str]]:
  """Up to `per_module` names of each group, drawn without replacement by a seeded generator."""
  by_group = collections.defaultdict(list)
  for name in sorted(names):
    by_group[group_of(name)].append(name)
  rng = random.Random(seed)
  return {g: sorted(rng.sample(ns, min(per_module, len(ns)))) for g, ns in sorted(by_group.items())}


def wilson(killed: int, total: int, z: float = 1.96) -> tuple[float, float]:
  """The 95% Wilson score interval of a proportion `killed / total`."""
  if total == 0:
    return 0.0, 1.0
  p = killed / total
  centre = (p + z * z / (2 * total)) / (1 + z * z / total)
  half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
  return max(0.0, centre - half), min(1.0, centre + half)


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('action', choices=('pick', 'tally'))
  parser.add_argument('--per_module', type=int, default=40)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--mutmut', default='.venv/bin/mutmut')
  parser.add_argument('--only', default='', help='Comma-separated groups to pick (default: all).')
  args = parser.parse_args(argv)
  statuses = all_mutants(args.mutmut)
  picked = sample(list(statuses), args.per_module, args.seed)
  if args.only:
    picked = {g: ns for g, ns in picked.items() if g in args.only.split(',')}
  if args.action == 'pick':
    print('\n'.join(n for ns in picked.values() for n in ns))
    return
  print(f'{"module":32} {"killed":>7} {"checked":>8} {"pending":>8}  rate   95% interval')
  for group, names in picked.items():
    outcome = collections.Counter(statuses[n] for n in names)
    pending = sum(outcome[s] for s in PENDING)
    killed = sum(outcome[s] for s in KILLED)
    checked = len(names) - pending
    low, high = wilson(killed, checked)
    rate = f'{killed / checked:5.0%}' if checked else '    -'
    print(f'{group:32} {killed:7d} {checked:8d} {pending:8d}  {rate}  {low:.0%}-{high:.0%}')
    for name in names:
      if statuses[name] not in KILLED | PENDING:
        print(f'    {statuses[name]:12} {name}')


if __name__ == '__main__':
  main(sys.argv[1:])

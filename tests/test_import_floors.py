"""The package has floors: no module imports, directly or through others, a module that imports it.

The graph is read from the source with `ast` (nothing is imported): module-level and function-level
imports, `import a.b`, `from a import b` (an edge to `a.b` when `b` is a module, else to `a`) and
relative imports.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_files(package_dir: str) -> dict[str, str]:
  """`{dotted module name: file path}` for every `.py` file under a package directory."""
  top = os.path.basename(os.path.normpath(package_dir))
  parent = os.path.dirname(os.path.normpath(package_dir))
  modules = {}
  for folder, _, files in os.walk(package_dir):
    for file in files:
      if not file.endswith('.py'):
        continue
      path = os.path.join(folder, file)
      parts = os.path.relpath(path, parent)[:-3].split(os.sep)
      if parts[-1] == '__init__':
        parts = parts[:-1]
      modules['.'.join(parts)] = path
  assert top in modules, f'{package_dir} has no __init__.py'
  return modules


def import_graph(package_dir: str) -> dict[str, set[str]]:
  """`{module: modules of the package it imports}`, anywhere in the file (functions included)."""
  modules = module_files(package_dir)
  graph: dict[str, set[str]] = {}
  for name, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), filename=path)
    is_package = os.path.basename(path) == '__init__.py'
    here = name if is_package else name.rpartition('.')[0]
    edges = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          anchor = here.split('.')
          anchor = anchor[:len(anchor) - (node.level - 1)]
          base = '.'.join(anchor + ([base] if base else []))
        targets = []
        for alias in node.names:
          candidate = f'{base}.{alias.name}'
          targets.append(candidate if candidate in modules else base)
      else:
        continue
      for target in targets:
        # `import a.b.c` reaches the deepest module of the package it names.
        while target and target not in modules:
          target = target.rpartition('.')[0]
        if target and target != name:
          edges.add(target)
    graph[name] = edges
  return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One cycle (`[a, b, ..., a]`) per strongly connected group of modules that import each other."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  groups: list[set[str]] = []

  def connect(node):  # Tarjan's algorithm
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(graph.get(node, ())):
      if nxt not in index:
        connect(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      group = set()
      while True:
        member = stack.pop()
        on_stack.discard(member)
        group.add(member)
        if member == node:
          break
      if len(group) > 1:
        groups.append(group)

  for node in sorted(graph):
    if node not in index:
      connect(node)
  return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
  """A shortest path from the group's first module back to itself, inside the group."""
  start = min(group)
  paths = {start: [start]}
  frontier = [start]
  while frontier:
    following = []
    for node in frontier:
      for nxt in sorted(graph[node] & group):
        if nxt == start:
          return paths[node] + [start]
        if nxt not in paths:
          paths[nxt] = paths[node] + [nxt]
          following.append(nxt)
    frontier = following
  raise AssertionError(f'no cycle through {start} in {group}')


def test_adapters_jax_has_no_import_cycle():
  graph = import_graph(os.path.join(ROOT, 'adapters_jax'))
  # The reader sees the library: the floors named in the design are all there.
  for module in ('adapters_jax.splicing.tree', 'adapters_jax.splicing.splice',
                 'adapters_jax.splicing.interception', 'adapters_jax.splicing.composition',
                 'adapters_jax.train.loop', 'adapters_jax.sweeps'):
    assert module in graph, module
  assert 'adapters_jax.splicing.tree' in graph['adapters_jax.splicing.composition']
  cycles = find_cycles(graph)
  assert not cycles, 'Import cycles (each module imports the next):\n  ' + '\n  '.join(
      ' -> '.join(cycle) for cycle in cycles)


def test_cycles_are_found_through_functions_relative_and_module_imports(tmp_path):
  """The checker itself: a package with three kinds of cycles, and one that only looks like one."""
  package = tmp_path / 'pkg'
  (package / 'sub').mkdir(parents=True)
  files = {
      '__init__.py': 'from pkg import low\n',
      'low.py': 'X = 1\n',
      # A cycle through a function-level import.
      'a.py': 'from pkg import b\n',
      'b.py': 'def f():\n  from pkg.a import g\n  return g\n',
      # A cycle through a relative `from . import module` and an `import x.y`.
      'sub/__init__.py': '',
      'sub/c.py': 'from . import d\n',
      'sub/d.py': 'import pkg.sub.c\n',
      # Not a cycle: `e` imports a name from the package `__init__`'s module `low`, and `low` imports
      # nothing.
      'e.py': 'from pkg.low import X\n',
  }
  for relative, text in files.items():
    (package / relative).write_text(text)
  graph = import_graph(str(package))
  assert graph['pkg.b'] == {'pkg.a'} and graph['pkg.sub.c'] == {'pkg.sub.d'}
  assert graph['pkg.e'] == {'pkg.low'}
  cycles = sorted(find_cycles(graph))
  assert cycles == [['pkg.a', 'pkg.b', 'pkg.a'], ['pkg.sub.c', 'pkg.sub.d', 'pkg.sub.c']]

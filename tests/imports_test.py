"""The package's layers: analysis loads no JAX, no import cycles, the engine knows no sweep."""

import ast
import os
import subprocess
import sys

import pytest
from repo import ROOT

PACKAGE = os.path.join(ROOT, 'unet_jax')


def _modules() -> dict[str, str]:
  """Module name -> file, for every module of the package."""
  out = {}
  for folder, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
        out['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  return out


def _type_checking(node) -> bool:
  return isinstance(node, ast.If) and 'TYPE_CHECKING' in ast.unparse(node.test)


def _statements(tree: ast.Module, inside_functions: bool):
  """The import statements a module runs: at load time, or also inside its functions
  (``if TYPE_CHECKING`` blocks are never run)."""
  todo = list(tree.body)
  while todo:
    node = todo.pop()
    if _type_checking(node):
      continue
    yield node
    if inside_functions:
      todo.extend(ast.iter_child_nodes(node))


def _imports_at_load(path: str, modules: dict[str, str], inside_functions: bool = False
                     ) -> set[str]:
  """unet_jax modules a file imports when it is loaded (not inside functions or
  ``if TYPE_CHECKING``), or with ``inside_functions`` whenever any of its code runs."""
  found = set()
  for node in _statements(ast.parse(open(path).read()), inside_functions):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('unet_jax'):
      for alias in node.names:  # `from unet_jax.x import y`: y may be a module
        child = f'{node.module}.{alias.name}'
        found.add(child if child in modules else node.module)
    elif isinstance(node, ast.Import):
      found |= {a.name for a in node.names if a.name.startswith('unet_jax')}
  return found & set(modules)


@pytest.mark.parametrize('inside_functions', [False, True])
def test_no_import_cycles(inside_functions):
  """None at load time, and none through imports deferred into functions either (a
  deferred import that closes a cycle hides a layering problem)."""
  modules = _modules()
  graph = {m: _imports_at_load(p, modules, inside_functions) - {m} for m, p in modules.items()}
  state: dict[str, int] = {}

  def visit(m, trail):
    if state.get(m) == 1:
      raise AssertionError('import cycle: ' + ' -> '.join(trail + [m]))
    if state.get(m) == 2:
      return
    state[m] = 1
    for n in sorted(graph[m]):
      visit(n, trail + [m])
    state[m] = 2

  for m in sorted(graph):
    visit(m, [])


@pytest.mark.parametrize('package, forbidden', [
    ('unet_jax.engine', ('unet_jax.sweep', 'unet_jax.analysis')),
    # The analysis reads what the sweep writes through records and workdir, below both;
    # it runs no network (JAX), not even inside a function.
    ('unet_jax.analysis', ('unet_jax.engine', 'unet_jax.sweep', 'unet_jax.model',
                           'unet_jax.layers', 'unet_jax.unet', 'unet_jax.decoder')),
    ('unet_jax.records', ('unet_jax.sweep', 'unet_jax.analysis', 'unet_jax.engine')),
    ('unet_jax.workdir', ('unet_jax.sweep', 'unet_jax.analysis', 'unet_jax.engine')),
])
def test_layers_import_only_downwards(package, forbidden):
  modules = _modules()
  for name, path in modules.items():
    if name.startswith(package):
      imported = _imports_at_load(path, modules, inside_functions=True)
      wrong = [m for m in imported if m.startswith(forbidden)]
      assert not wrong, f'{name} imports {wrong}'


def test_reading_results_loads_no_jax():
  code = ('import sys; import unet_jax.analysis, unet_jax.analysis.report, '
          'unet_jax.analysis.findings, unet_jax.records, unet_jax.workdir, unet_jax.encoders; '
          "print(sorted(m for m in ('jax', 'flax', 'optax', 'orbax') if m in sys.modules))")
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                       check=True, cwd=ROOT).stdout
  assert out.strip() == '[]'

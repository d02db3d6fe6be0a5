"""Layers point one way: dnnlib/torch_utils <- networks (training/) <- sampling <- metrics <- scripts.

Walks every import (module level and inside functions) of every first-party module and fails on one that
points to a higher layer or that closes a cycle between modules.
"""

import ast
import os

from conftest import REPO_ROOT

# Lower number = lower layer. A module may import its own layer or lower ones, never higher ones.
LAYER_OF_PACKAGE = {
    'dnnlib': 0,
    'torch_utils': 0,
    'training': 1,
    'legacy': 1,       # the network loader (NVlabs' top-level legacy.py): part of the networks layer
    'sampling': 2,
    'metrics': 3,
}
SCRIPTS_LAYER = 4      # top-level scripts and their support packages (paper_tables/, demos/, benchmarks/)
LAYER_NAMES = {0: 'dnnlib/torch_utils', 1: 'networks (training/, legacy.py)', 2: 'sampling', 3: 'metrics',
               4: 'scripts'}
NOT_WALKED = {'tests', 'docs', 'slurm', 'pretrained'}


def _first_party_modules():
    """Map dotted module name -> file path for every first-party .py file outside tests/."""
    modules = {}
    for dirpath, dirnames, filenames in os.walk(REPO_ROOT):
        rel = os.path.relpath(dirpath, REPO_ROOT)
        parts = [] if rel == '.' else rel.split(os.sep)
        if parts and (parts[0] in NOT_WALKED or any(p.startswith('.') or p == '__pycache__' for p in parts)):
            dirnames[:] = []
            continue
        if parts and not os.path.isfile(os.path.join(dirpath, '__init__.py')) and parts[0] != 'benchmarks':
            dirnames[:] = []
            continue
        for name in filenames:
            if not name.endswith('.py'):
                continue
            stem = name[:-3]
            dotted = parts + ([] if stem == '__init__' else [stem])
            modules['.'.join(dotted)] = os.path.join(dirpath, name)
    return modules


def layer_of(module):
    return LAYER_OF_PACKAGE.get(module.split('.')[0], SCRIPTS_LAYER)


def _imports(module, path, modules):
    """Yield (line, imported first-party module) for every import statement anywhere in the file."""
    with open(path, encoding='utf-8') as f:
        tree = ast.parse(f.read(), filename=path)
    is_package = path.endswith('__init__.py')
    package = module.split('.') if is_package else module.split('.')[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _longest_known(alias.name, modules)
                if target is not None:
                    yield node.lineno, target
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                base_name = '.'.join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module
            for alias in node.names:
                target = _longest_known(f'{base_name}.{alias.name}', modules)
                if target is None:
                    target = _longest_known(base_name, modules)
                if target is not None:
                    yield node.lineno, target


def _longest_known(dotted, modules):
    parts = dotted.split('.')
    for end in range(len(parts), 0, -1):
        name = '.'.join(parts[:end])
        if name in modules:
            return name
    return None


def _import_graph():
    modules = _first_party_modules()
    graph = {}
    for module, path in modules.items():
        graph[module] = [(line, target) for line, target in _imports(module, path, modules) if target != module]
    return modules, graph


def test_walk_finds_every_layer():
    modules, graph = _import_graph()
    layers = {layer_of(m) for m in modules}
    assert layers == set(LAYER_NAMES), layers
    # The walk sees imports inside functions too: sampling/cli.py loads networks lazily.
    assert 'legacy' in {target for _, target in graph['sampling.cli']}


def test_no_upward_import():
    modules, graph = _import_graph()
    upward = []
    for module, edges in sorted(graph.items()):
        for line, target in edges:
            if layer_of(target) > layer_of(module):
                rel = os.path.relpath(modules[module], REPO_ROOT)
                upward.append(f'{rel}:{line} imports {target} '
                              f'({LAYER_NAMES[layer_of(module)]} -> {LAYER_NAMES[layer_of(target)]})')
    assert not upward, 'imports that point to a higher layer:\n' + '\n'.join(upward)


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted({t for _, t in graph[root]})))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted({t for _, t in graph[child]}))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def test_cycle_detector_finds_a_cycle():
    graph = {'a': [(1, 'b')], 'b': [(1, 'c')], 'c': [(1, 'a')], 'd': [(1, 'a')]}
    assert _cycles(graph) == [['a', 'b', 'c']]
    assert _cycles({'a': [(1, 'b')], 'b': []}) == []


def test_no_import_cycle():
    _, graph = _import_graph()
    cycles = _cycles(graph)
    assert not cycles, 'modules that import each other in a circle:\n' + '\n'.join(' <-> '.join(c) for c in cycles)

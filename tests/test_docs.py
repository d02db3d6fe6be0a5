"""The docs match the tree: README "Layout" and docs/architecture.md name every package and script, every
docs/*.md that the code cites exists, and the .py files share one section-rule style."""

import os
import re

from conftest import REPO_ROOT


def _read(*parts):
    with open(os.path.join(REPO_ROOT, *parts), encoding='utf-8') as f:
        return f.read()


def _tree():
    """Top-level packages (folders with __init__.py) and top-level .py files."""
    names = sorted(os.listdir(REPO_ROOT))
    packages = [n for n in names if os.path.isfile(os.path.join(REPO_ROOT, n, '__init__.py'))]
    scripts = [n for n in names if n.endswith('.py')]
    return packages, scripts


def _readme_layout():
    readme = _read('README.md')
    start = readme.index('## Layout\n')
    end = readme.find('\n## ', start + 1)
    return readme[start:] if end < 0 else readme[start:end]


def test_readme_layout_and_architecture_name_every_package_and_script():
    packages, scripts = _tree()
    assert 'sampling' in packages and 'generate.py' in scripts
    for where, text in (('README.md Layout', _readme_layout()), ('docs/architecture.md', _read('docs', 'architecture.md'))):
        missing = [f'{p}/' for p in packages if f'{p}/' not in text] + [s for s in scripts if s not in text]
        assert not missing, f'{where} does not mention: {", ".join(missing)}'


def _modules(package):
    folder = os.path.join(REPO_ROOT, package)
    return sorted(n[:-3] for n in os.listdir(folder) if n.endswith('.py') and n != '__init__.py')


def test_readme_layout_and_architecture_name_every_module():
    """Every module of the product packages is named, and the sampling/ entry of the Layout names no module that
    is gone (a module name is a word outside parentheses)."""
    layout, architecture = _readme_layout(), _read('docs', 'architecture.md')
    for package in ('dnnlib', 'torch_utils', 'training', 'sampling', 'metrics', 'paper_tables', 'demos',
                    'classifier_training'):
        for module in _modules(package):
            for where, text in (('README.md Layout', layout), ('docs/architecture.md', architecture)):
                assert re.search(rf'\b{module}\b', text), f'{where} does not mention {package}/{module}.py'
    entry = re.search(r'^sampling/ +(.*?)\n(?=\S)', layout, re.M | re.S).group(1)
    named = re.findall(r'[a-z_]+', re.sub(r'\([^)]*\)', '', entry))
    assert named and set(named) <= set(_modules('sampling')), sorted(set(named) - set(_modules('sampling')))


def test_cited_docs_exist():
    cited = set()
    for dirpath, dirnames, filenames in os.walk(REPO_ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith('.') and d != '__pycache__']
        for name in filenames:
            if name.endswith(('.py', '.md')):
                with open(os.path.join(dirpath, name), encoding='utf-8', errors='replace') as f:
                    cited.update(re.findall(r'\bdocs/([A-Za-z0-9_.-]+\.md)\b', f.read()))
    assert 'nvlabs-compat.md' in cited
    missing = sorted(name for name in cited if not os.path.isfile(os.path.join(REPO_ROOT, 'docs', name)))
    assert not missing, f'cited but missing: {missing}'


SECTION_RULE = '# ' + '-' * 76


def test_one_section_rule_style():
    others = []
    for dirpath, dirnames, filenames in os.walk(REPO_ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith('.') and d != '__pycache__']
        for name in filenames:
            if name.endswith('.py'):
                path = os.path.join(dirpath, name)
                with open(path, encoding='utf-8') as f:
                    for number, line in enumerate(f, 1):
                        if re.match(r'\s*#\s*[-=]{10,}\s*$', line) and line.rstrip('\n') != SECTION_RULE:
                            others.append(f'{os.path.relpath(path, REPO_ROOT)}:{number}')
    assert not others, f'section rules other than "{SECTION_RULE[:12]}...": {others[:10]}'

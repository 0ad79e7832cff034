"""Package metadata, read from settings.ini (the nbdev 2 convention).

Differs from nbdev's generated setup.py in two ways: the Python classifiers are derived from
`min_python` instead of a fixed list (the fixed list breaks on 3.11), and the `cuda` extra
carries the CUDA-only `adam-atan2` so CPU installs never try to compile it, and the `cluster` extra carries submitit
(Slurm submission of grid cells), optional for everyone else.
"""
from configparser import ConfigParser
from pathlib import Path

import setuptools

here = Path(__file__).parent
config = ConfigParser(delimiters=['='])
config.read(here / 'settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

expected = ['version', 'description', 'keywords', 'author', 'author_email', 'license', 'lib_name',
            'min_python', 'git_url', 'status']
missing = [k for k in expected if k not in cfg]
if missing: raise SystemExit(f'settings.ini is missing: {missing}')

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable',
            '6 - Mature', '7 - Inactive']
major, minor = (int(v) for v in cfg['min_python'].split('.'))
py_versions = [f'{major}.{m}' for m in range(minor, 14)]
lic = licenses[cfg['license']]

def _reqs(key): return cfg.get(key, '').split()

setuptools.setup(
    name=cfg['lib_name'],
    version=cfg['version'],
    license=lic[0],
    classifiers=[f'Development Status :: {statuses[int(cfg["status"]) - 1]}',
                 f'Intended Audience :: {cfg["audience"]}',
                 f'License :: {lic[1]}',
                 f'Natural Language :: {cfg["language"]}'] +
                [f'Programming Language :: Python :: {v}' for v in py_versions],
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=[cfg['lib_name'], f'{cfg["lib_name"]}.*']),
    include_package_data=True,
    install_requires=_reqs('requirements'),
    extras_require={'dev': _reqs('dev_requirements'), 'cuda': _reqs('cuda_requirements'),
                    'cluster': _reqs('cluster_requirements')},
    python_requires=f'>={cfg["min_python"]}',
    description=cfg['description'],
    long_description=(here / 'README.md').read_text(encoding='utf-8') if (here / 'README.md').exists() else '',
    long_description_content_type='text/markdown',
    author=cfg['author'],
    author_email=cfg['author_email'],
    keywords=cfg['keywords'],
    zip_safe=False,
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f'{cfg["lib_path"]}={cfg["lib_path"]}._modidx:d']},
)

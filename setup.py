"""Package list for setuptools; everything else is in pyproject.toml.

The repository keeps the shipped models and the Zeek package at its root (``models/``,
``zeek-scripts/scripts/``); a wheel carries them inside the ``zeekml`` package so that
``zeekml/_core/resources.py`` finds them with importlib.resources after a plain ``pip install``.
pyproject.toml cannot map directories into a package beside a package search, hence this file.
"""
from setuptools import find_namespace_packages, setup

# Package-data-only "packages" (no __init__.py) and the root directories they are built from.
SHIPPED = {
    "zeekml._shipped.models": "models",
    "zeekml._shipped.zeek_scripts": "zeek-scripts/scripts",
}

setup(
    # find_namespace_packages: what pyproject's `packages.find` found before (namespaces=true).
    packages=find_namespace_packages(include=["zeekml", "zeekml.*"]) + list(SHIPPED),
    package_dir=SHIPPED,
)

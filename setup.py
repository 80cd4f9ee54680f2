"""Kept for users who run `python setup.py develop` / `pip install -e .` out of habit; metadata lives in pyproject.toml."""
from setuptools import setup

setup()

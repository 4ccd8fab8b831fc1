"""The one thing pyproject.toml cannot say without an experimental table: the compiled plane
transform. It is optional: without a C compiler the install goes on, and planes.py uses NumPy."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("thrifty.compress._planes", ["src/thrifty/compress/_planes.c"],
                             extra_compile_args=["-O3"], optional=True)])

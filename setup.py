"""Only the optional C extension lives here; everything else is in pyproject.toml.

harvester.core._jsoncheck validates JSON bodies in C at memory speed; when no compiler
is there, the build goes on without it and harvester.core.body uses ijson instead.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("harvester.core._jsoncheck", ["harvester/core/_jsoncheck.c"], optional=True,
                             extra_compile_args=["-O2"])])

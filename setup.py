"""Only the C part of the build; everything else is in pyproject.toml.

streams/_state_codec.c is the users table's codec in C (streams/state.py says
why). It assumes a little-endian host, like the columns it packs; elsewhere it
is not built and the Python codec does the work.
"""

import sys

from setuptools import Extension, setup

extensions = []
if sys.byteorder == "little":
    extensions.append(Extension("streams._state_codec", ["streams/_state_codec.c"], extra_compile_args=["-O2"]))

setup(ext_modules=extensions)

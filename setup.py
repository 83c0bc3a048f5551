"""Only the C part of the build; everything else is in pyproject.toml.

topology/_routing.c is Kafka's default partitioner (murmur2) in C, for routing
each friend update to its receiver's partition; topology/routing.py falls
back to aiokafka's Python murmur2 where it is not built.

streams/_state_codec.c is the users table's codec in C (streams/state_codec.py says
why). It assumes a little-endian host, like the columns it packs; elsewhere it
is not built and the Python codec does the work. A failed build (no C
compiler) does not stop the install either: the worker then logs a warning
and runs about a fifth slower, and the test suite fails on it
(tests/streams/test_state_codec_native.py), so CI cannot miss it.
"""

import sys

from setuptools import Extension, setup

extensions = []
if sys.byteorder == "little":
    extensions.append(Extension("streams._state_codec", ["streams/_state_codec.c"], extra_compile_args=["-O2", "-ffp-contract=off"], optional=True))
# Kafka's default partitioner (murmur2) in C: byte order does not matter to it.
extensions.append(Extension("topology._routing", ["topology/_routing.c"], extra_compile_args=["-O2"], optional=True))

setup(ext_modules=extensions)

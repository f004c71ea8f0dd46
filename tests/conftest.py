import os
import tempfile

import pytest
import torch

# One thread: test tensors are tiny, and spin-waiting threads on a shared 2-core machine
# slow them 10x or more.
torch.set_num_threads(1)

# The tests never touch the user's real cache: one private, initially empty cache folder for the
# whole session (set before any test imports jestkit's stages, inherited by every subprocess), so
# the suite meets what a new user meets and two suites on one machine cannot block each other.
_CACHE = tempfile.mkdtemp(prefix="jestkit-test-cache-")
os.environ["JESTKIT_CACHE"] = _CACHE


@pytest.fixture
def gen():
    g = torch.Generator()
    g.manual_seed(0)
    return g

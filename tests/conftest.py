import os

import pytest
import torch

# Two cores: keep test processes from oversubscribing them.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def gen():
    g = torch.Generator()
    g.manual_seed(0)
    return g

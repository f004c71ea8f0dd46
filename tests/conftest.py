import pytest
import torch

# One thread: test tensors are tiny, and spin-waiting threads on a shared 2-core machine
# slow them 10x or more.
torch.set_num_threads(1)


@pytest.fixture
def gen():
    g = torch.Generator()
    g.manual_seed(0)
    return g

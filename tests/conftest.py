import os

# Set before anything imports triton: on a machine without a GPU Triton kernels run only in its interpreter.
os.environ.setdefault('TRITON_INTERPRET', '1')
os.environ.setdefault('NO_ALBUMENTATIONS_UPDATE', '1')

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get('PYTEST_XDIST_WORKER'):
    torch.set_num_threads(1)  # one thread per xdist worker: the workers already use every core


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason='needs a CUDA device')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip_cuda)

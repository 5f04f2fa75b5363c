"""What the lent accelerator machine's image already holds, so the GPU kit carries only the rest.

Copied from the device tool's description of the image 'cuda' (its package list as read on a machine
on 2026-11-17, and one session's ``pip list`` there in 2026-11): Python 3.12.3 at
``/opt/torch/.venv/bin/python3``, torch 2.11.0+cu130, transformers 5.17.0, no ``redis-server``.
Nothing can be fetched on that machine, so a package missing from this list must travel in the kit.
"""

from __future__ import annotations

import re

#: The image's Python, for which the kit's wheels are downloaded.
PYTHON_VERSION = "3.12"
#: Its patch release, which some requirement markers compare (``python_full_version < "3.11.3"``).
PYTHON_FULL_VERSION = "3.12.3"

#: Versions the image is known to hold (the session's ``pip list``); the dry run installs these where it can.
KNOWN_VERSIONS = {
    "torch": "2.11.0",
    "transformers": "5.17.0",
    "huggingface-hub": "1.33.0",
    "tokenizers": "0.23.2",
    "safetensors": "0.8.0",
    "numpy": "2.5.2",
}

#: Packages that never travel: the image's own CUDA build of torch and what it is built with.
NEVER_CARRIED = frozenset({"torch", "triton", "numpy"})

_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
"""


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (``Typing_Extensions`` → ``typing-extensions``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


#: Every distribution the image holds, by normalized name.
IMAGE_PACKAGES = frozenset(normalize(name) for name in _PACKAGES.split())

"""Session settings for the test suite: one torch thread per process.

pytest-xdist runs two workers, and their tests start further processes (searches, trainings, study runs, torchrun
ranks). With torch's default of one thread per core these oversubscribe the cores, and OpenMP's spinning threads then
slow every process several times over. ``OMP_NUM_THREADS`` is inherited by the processes the tests start; set it
before running pytest to choose another count.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after the variable, which torch reads when it starts its thread pool)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Decoded image folders are cached in NAS_CACHE_DIR (default ~/.cache/nas); the suite keeps its own, in a fresh
# temporary folder that it removes at exit, so that it never reads or leaves files in the user's cache.
if "NAS_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="nas-test-cache-")
    os.environ["NAS_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, True)

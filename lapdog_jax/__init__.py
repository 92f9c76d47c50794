"""lapdog_jax: LAPDOG (T5 reader + Contriever retriever) in JAX/Flax, trained with GRPO."""

import logging as _logging
import os as _os
import time as _time

# When the package was first imported: the trainer's start-up time counts from here.
IMPORT_TIME = _time.perf_counter()

# Quiet start-ups. transformers says "PyTorch was not found" on every import without torch; we
# never need it (our models are Flax; torch is a test-only dependency). faiss logs at INFO which
# CPU instruction set it tried to load.
_os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
_logging.getLogger("faiss.loader").setLevel(_logging.WARNING)

__version__ = "0.1.0"

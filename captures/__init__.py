"""The loadtape capture format: schema, journal, Parquet writer and reader, importers."""

import os

# numpy's bundled OpenBLAS starts a thread per core on import, and they spin: measured, a
# one-request replay took 0.41 s of CPU, 0.31 s with one thread. loadtape does no linear
# algebra. Every entry point (the CLI, the capture addon and its worker) imports this package
# before numpy; a value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

"""digitlab: handwritten-digit recognition, from the Keras MNIST tutorial to a tool you can use."""

import os

# JAX is the fastest Keras backend for the tutorial's model on a CPU (docs/performance.md).
# setdefault: a user who exports KERAS_BACKEND keeps their choice.
os.environ.setdefault("KERAS_BACKEND", "jax")

__version__ = "0.1.0"


class DigitlabError(Exception):
    """A problem the user can fix (bad input, missing data, a bad run folder).

    The command line prints its message as one line and exits non-zero; the web service
    answers it with a 4xx status.
    """


__all__ = ["DigitlabError", "__version__"]

"""The storage layer: a chunked zarr expression store (``expression``) and a per-run results store (``results``).

Both are plain directories on a local or shared file system; the input readers they build
on are ``flashscenic.io``.
"""

from ..errors import MissingFileError
from .expression import (
    DEFAULT_MEMORY_BUDGET,
    EXPRESSION_FORMAT,
    ExpressionStore,
    ingest_expression,
    is_expression_store,
    open_expression_store,
)
from .results import (
    RESULTS_FORMAT,
    STAGES,
    ResultsStore,
    create_results_store,
    open_results_store,
)


__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "EXPRESSION_FORMAT",
    "RESULTS_FORMAT",
    "STAGES",
    "ExpressionStore",
    "ResultsStore",
    "ingest_expression",
    "open_expression_store",
    "is_expression_store",
    "create_results_store",
    "open_results_store",
    "MissingFileError",
]

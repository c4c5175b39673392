"""Datasets for sessions: ``data_requirement.json`` -> cached, read-only folders.

* :func:`read_requirements` reads a repository's declarations into
  :class:`DataEntry` objects (:mod:`.requirement`);
* fetchers (:mod:`.fetchers`) download one entry each (http(s) files and
  archives, Zenodo, OSF, S3, Google Drive, sandboxed Python code);
* :class:`DataCache` (:mod:`.cache`) fetches each ``projectName`` folder once,
  publishes it atomically and hands out the folders to mount at
  ``/home/jovyan/data/<projectName>``.
"""

from .cache import CachedDataset, DataCache, DatasetFolder
from .fetchers import DataFetcher, FetchContext
from .requirement import DataConfigError, DataEntry, parse_requirements, read_requirements

__all__ = [
    "CachedDataset",
    "DataCache",
    "DataConfigError",
    "DataEntry",
    "DataFetcher",
    "DatasetFolder",
    "FetchContext",
    "parse_requirements",
    "read_requirements",
]

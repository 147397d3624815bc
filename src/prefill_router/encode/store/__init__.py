"""The feature store: an on-disk, content-addressed cache of pooled encoder features.

Encoding a dataset takes minutes; reading its features back should take milliseconds. The store
keys features by everything that changes them (:class:`FeatureKey`) plus the prompt texts, keeps
them as float16 ``.npy`` files (float32 for encoders whose activations exceed float16's range) and
hands them back memory-mapped. Layout under ``root``::

    features/<key digest[:16]>/
        key.json                     the FeatureKey, for people and for clear()
        chunks/<chunk digest>.npy    (n, n_poolings, n_layers, hidden) in the key's storage dtype
        chunks/<chunk digest>.json   manifest: rows, shape, sha256 of the .npy, token counts
        views/<order digest>.npy     every chunk of one prompt list, in order, as one array
        views/<order digest>.json    manifest of the view, with totals over all prompts

A chunk's digest covers the key digest and its prompt texts, so a run over the first N prompts
reuses every full chunk of a later run over all of them (and the other way round). Every file is
written atomically and a manifest is written only after its ``.npy``: the manifest is the commit
marker, so a killed run resumes at the first chunk without one. Writers of one key take its lock
(``features/<key>/.lock``, an advisory ``flock``), so two runs never interleave a ``.npy`` and
another run's manifest. A view is served only after its sha256 and finiteness were checked once
for the file as it is on disk (its size, times and inode are recorded then; any later write to it
changes them and brings the check back). Pure numpy and stdlib on purpose:
the store never needs the encoder, only a callback that computes features for a list of prompts.

Modules, one concern each: :mod:`~.key` (FeatureKey and the digests that address the files),
:mod:`~.job` (plan / missing / commit / finish of one prompt list), :mod:`~.chunks` (a computed
chunk's checks and files), :mod:`~.views` (the assembled array and StoredFeatures, its reader),
:mod:`~.files` (bytes on disk: .npy/JSON writers, key.json, the lock) and :mod:`~.cache`
(FeatureStore and the default cache folder).

Example::

    store = FeatureStore(default_cache_dir())
    stored = store.get_or_compute(key, prompts, encoder_callback)
    X = stored.pooled("mean")[:, -1]  # (N, hidden), last stored layer
"""

from prefill_router.encode.identity import DEFAULT_STORAGE, STORAGE_DTYPES, EncoderIdentity
from prefill_router.encode.store.cache import FeatureStore, default_cache_dir
from prefill_router.encode.store.chunks import ChunkResult, check_chunk_result
from prefill_router.encode.store.job import Chunk, FeatureJob, superset_keys
from prefill_router.encode.store.key import STORE_FORMAT_VERSION, FeatureKey
from prefill_router.encode.store.views import StoredFeatures

__all__ = [
    "DEFAULT_STORAGE",
    "STORAGE_DTYPES",
    "STORE_FORMAT_VERSION",
    "Chunk",
    "ChunkResult",
    "EncoderIdentity",
    "FeatureJob",
    "FeatureKey",
    "FeatureStore",
    "StoredFeatures",
    "check_chunk_result",
    "default_cache_dir",
    "superset_keys",
]

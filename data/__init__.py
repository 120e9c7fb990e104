"""The collection: images, known connections, validation, splits and the input pipeline.

`data` imports nothing from `model`, `train` or `cluster`: everything else reads collections through it.
"""

from data.collection import Collection, CollectionError, Connection, ImageRecord, load_collection
from data.signatures import Signatures, load_signatures, save_signatures

__all__ = [
    "Collection",
    "CollectionError",
    "Connection",
    "ImageRecord",
    "Signatures",
    "load_collection",
    "load_signatures",
    "save_signatures",
]

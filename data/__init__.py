"""The collection: images, known connections, validation, splits and the input pipeline.

`data` imports nothing from `model`, `train` or `cluster`: everything else reads collections through it.
Import from the modules (`data.collection`, `data.signatures`, `data.image`, ...); the package itself
exports nothing, so that `import data.atomic` does not load the collection reader too.
"""

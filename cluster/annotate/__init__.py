"""The annotation web app: an expert confirms or rejects proposed clusters, one at a time.

- `app`: the flask application (`create_app`);
- `store`: the server's writer of `annotations.jsonl` (every decision fsynced before the reply);
- `cli`: the `python -m cluster annotate` command.

What the app shares with the rest of `cluster/` lives there: the log's format and reader
(`cluster.annotations`), the review order and the edges a decision implies (`cluster.review`).
"""

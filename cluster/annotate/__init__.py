"""The annotation web app: an expert confirms or rejects proposed clusters, one at a time.

- `store`: the append-only `annotations.jsonl` log (every decision fsynced before the reply);
- `queue`: which cluster to show next (largest-new-first) and the edges a decision implies;
- `app`: the flask application (`create_app`);
- `cli`: the `python -m cluster annotate` command.
"""

"""What accepted decisions change for the next training round, said by `python -m cluster accept`.

Why: one "confirm, reject the rest" on a 55-image cluster once wrote 414 NEGATIVE pairs, and the next round
went from 4 to 210 steps per epoch without a word. Training now takes annotated NEGATIVE pairs as mining
candidates with a bounded share of each anchor's negatives (train/mining.py), so only the POSITIVE pairs of
the train split drive the number of steps; accept shows both counts before -> after, so that the cost of the
next round is known before it starts (`python -m train ... --plan` gives the exact steps).

Counted with data/ only (cluster/ never imports train/), by the rules training uses: POSITIVE pairs usable
in the train split (`data.splits`, with the collection's saved splits.json, so a held-out group stays held
out), and the NEGATIVE pairs `data.splits.usable_negatives` gives training's mining too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from data.collection import Collection, Connection
from data.splits import assign_splits, load_previous, usable_negatives


@dataclass(frozen=True)
class TrainingPairs:
    positives: int  # POSITIVE pairs the train split uses
    negatives: int  # annotated NEGATIVE pairs training can use
    held_out: int = 0  # POSITIVE pairs of the val and test splits: they measure a round, never train it


def training_pairs(collection: Collection, previous: dict[str, str] | None) -> TrainingPairs:
    """The pairs the next training round takes from `collection` (see the module docstring)."""
    split = assign_splits(collection, previous)
    negatives = usable_negatives(collection, split.split_of, groups=split.group_of())
    return TrainingPairs(len(split.connections("train")), len(negatives),
                         len(split.connections("val")) + len(split.connections("test")))


@dataclass(frozen=True)
class TrainingEffect:
    before: TrainingPairs
    after: TrainingPairs

    def lines(self) -> list[str]:
        b, a = self.before, self.after
        return [
            "for the next training run (train split; `python -m train ... --plan` gives its exact steps):",
            f"  training POSITIVE pairs: {b.positives} -> {a.positives} (they drive the steps per epoch: each "
            f"gives 2 x num_negatives triplets)",
            f"  annotated NEGATIVE pairs training can use: {b.negatives} -> {a.negatives} (mining candidates, at "
            f"most annotated_negative_share of each image's negatives: they add no steps)",
        ] + ([f"  held-out POSITIVE pairs (val, test): {b.held_out} -> {a.held_out} (a link that touches a val or "
              f"test group joins it, so that no held-out image moves into training: these pairs measure the next "
              f"round, they do not train it)"] if a.held_out != b.held_out else [])


def training_effect(collection: Collection, rows: list[Connection]) -> TrainingEffect:
    """Training pairs of `collection` as it is, and with `rows` as its connections (what accept writes).

    A damaged splits.json raises the ValueError of `data.splits.load_splits` (it names the file)."""
    previous = load_previous(collection)
    after = dataclasses.replace(collection, connections=list(rows))
    return TrainingEffect(training_pairs(collection, previous), training_pairs(after, previous))

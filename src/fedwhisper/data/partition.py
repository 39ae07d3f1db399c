"""Clients as groups of speakers: every federated task partitions its training split this way."""

from __future__ import annotations

import numpy as np

from fedwhisper.errors import FedwhisperError


def speaker_partitioner(train_split, num_clients: int, seed: int = 0):
    """flwr-datasets partitioner over ``num_clients`` offices, each a fixed group of training speakers.

    Speakers are shuffled with ``seed`` and dealt round-robin, so offices differ in size by at most one
    speaker; flwr-datasets' NaturalIdPartitioner then serves office ``i`` as partition ``i``.
    """
    from flwr_datasets.partitioner import NaturalIdPartitioner

    speakers = sorted(set(train_split["speaker_id"]))
    if len(speakers) < num_clients:
        raise FedwhisperError(f"{num_clients} clients need at least as many training speakers; the corpus has {len(speakers)}")
    order = np.random.default_rng(seed).permutation(len(speakers))
    office_of = {speakers[index]: rank % num_clients for rank, index in enumerate(order)}
    with_offices = train_split.map(lambda row: {"office": office_of[row["speaker_id"]]}, desc="assign offices")
    partitioner = NaturalIdPartitioner(partition_by="office")
    partitioner.dataset = with_offices
    return partitioner

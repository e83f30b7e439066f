"""GMF at ML-1M scale on generated data: does the upstream model learn, and does it beat popularity?

Generates a dataset of ML-1M's shape (6,040 users x 3,706 items, about 1M interactions; SYNTHETIC,
seeded), splits it leave-one-out, trains GMF (numpy, float32, early stopping on a validation
interaction per user) and prints, for a sample of users, the held-out item's full-catalogue HR@10
(ties count against it) for GMF, popularity and a random order, with the training loss against the
base-rate loss and the wall time of each stage.

Usage: .venv/bin/python benchmarks/gmf_bench.py [--seed 1] [--users 3000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from worker.evaluation.candidates import leave_one_out, pick_users
from worker.evaluation.datasets import synthetic
from worker.evaluation.gmf import GMFConfig, hit_rate_full, popularity_counts, train_gmf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--users", type=int, default=3000, help="users whose held-out item is ranked")
    args = parser.parse_args()

    t0 = time.perf_counter()
    data = synthetic(6040, 3706, seed=args.seed, mean_interactions=165)
    inter = data.interactions
    t1 = time.perf_counter()
    print(
        f"generated (SYNTHETIC) {inter.n_users} users x {inter.n_items} items, {len(inter)} interactions "
        f"in {t1 - t0:.1f} s"
    )
    split = leave_one_out(data)
    config = GMFConfig(seed=args.seed, batch_size=8192)
    model = train_gmf(split.train_user, split.train_item, inter.n_users, inter.n_items, config)
    t2 = time.perf_counter()
    print(
        f"split and GMF trained in {t2 - t1:.1f} s: {len(model.losses)} epochs (best validation epoch "
        f"{model.best_epoch}), final loss {model.losses[-1]:.4f} against the base-rate loss "
        f"{model.base_rate_loss:.4f}"
    )
    users = pick_users(split, args.users, args.seed)
    gmf = hit_rate_full(model, split.seen, split.held_out, users, 10)
    pop = hit_rate_full(
        None,
        split.seen,
        split.held_out,
        users,
        10,
        popularity=popularity_counts(split.train_item, inter.n_items),
    )
    chance = hit_rate_full(model, split.seen, split.held_out, users, 10, rng=np.random.default_rng(args.seed))
    print(
        f"full-catalogue HR@10 over {len(users)} users: GMF {gmf:.4f}, popularity {pop:.4f}, "
        f"random {chance:.4f}"
    )


if __name__ == "__main__":
    main()

"""How a cohort's slides are divided among array tasks: a static share versus a share plus work stealing.

A discrete-event simulation of :meth:`pcamlab.slide.cohort.Cohort.claim` (no slides are read; it runs in
well under a second): ``--slides`` slides whose processing times are lognormal with mean 1 (unit: the mean
slide's time) and spread ``--sigma`` (an assumption: whole-slide tissue area, and so the number of tiles,
varies several-fold between slides of one cohort), ``--workers`` array tasks. Three situations: all tasks
start at once; the tasks start spread over the first ``--stagger`` units (a busy queue); one task is
killed a quarter into its share (its lock taken over ``--takeover`` units later: at once on its own node,
``stale_after`` on another). Printed: when the last slide is done, relative to the ideal total / workers,
and how many slides a static share leaves undone until someone resubmits.

    python scripts/cohort_schedule.py --slides 400 --workers 16
"""

from __future__ import annotations

import argparse
import heapq

import numpy as np


def simulate(times: np.ndarray, workers: int, *, steal: bool, starts: np.ndarray, killed: int | None = None,
             kill_at: float = np.inf, takeover: float = 0.0) -> tuple[float, int]:
    """(time the last slide is done, slides never done) for one division of the work."""
    slides = len(times)
    shares = [list(range(index, slides, workers)) for index in range(workers)]
    orders = []
    for index in range(workers):
        order = list(shares[index])
        if steal:  # each other share from its end, the nearest following share first (Cohort.claim)
            for offset in range(1, workers):
                order += shares[(index + offset) % workers][::-1]
        orders.append(order)
    remaining = times.astype(float).copy()
    free_at = np.zeros(slides)  # when a slide's lock can be taken (after a killed holder's takeover delay)
    taken = np.zeros(slides, bool)
    done = np.zeros(slides, bool)
    events = [(float(starts[index]), index) for index in range(workers)]
    heapq.heapify(events)
    finish = 0.0
    while events:
        now, worker = heapq.heappop(events)
        pick = next((slide for slide in orders[worker] if not taken[slide] and free_at[slide] <= now), None)
        if pick is None:
            waiting = [free_at[slide] for slide in orders[worker] if not taken[slide]]
            if waiting:  # a slide whose lock becomes free later: look again then
                heapq.heappush(events, (min(waiting), worker))
            continue
        taken[pick] = True
        end = now + remaining[pick]
        if worker == killed and end > kill_at:
            remaining[pick] = end - kill_at  # the partial result is kept: whoever resumes does the rest
            taken[pick] = False
            free_at[pick] = kill_at + takeover
            continue  # the task is gone
        done[pick] = True
        finish = max(finish, end)
        heapq.heappush(events, (end, worker))
    return finish, int((~done).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=400)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--sigma", type=float, default=0.8, help="lognormal spread of slide times (default 0.8)")
    parser.add_argument("--stagger", type=float, default=5.0, help="tasks start within this many units (default 5)")
    parser.add_argument("--takeover", type=float, default=1.0, help="units until a killed task's lock is taken")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rows = {}
    for seed in range(args.repeats):
        random = np.random.default_rng(seed)
        times = random.lognormal(-args.sigma ** 2 / 2, args.sigma, args.slides)  # mean 1
        ideal = times.sum() / args.workers
        together = np.zeros(args.workers)
        staggered = random.uniform(0, args.stagger, args.workers)
        share_time = times[0::args.workers].sum()
        for name, starts, kill in (("all tasks start together", together, None),
                                   (f"tasks start within {args.stagger:g} units", staggered, None),
                                   ("one task killed 1/4 into its share", together, 0)):
            for steal in (False, True):
                finish, undone = simulate(times, args.workers, steal=steal, starts=starts, killed=kill,
                                          kill_at=share_time / 4, takeover=args.takeover)
                rows.setdefault((name, steal), []).append((finish / ideal, undone))
    print(f"{args.slides} slides (lognormal times, sigma {args.sigma:g}), {args.workers} tasks, "
          f"{args.repeats} draws; last slide done / ideal (total / tasks), slides left undone")
    for (name, steal), values in rows.items():
        ratios, undone = np.array([value[0] for value in values]), np.array([value[1] for value in values])
        print(f"  {name:<38} {'share + stealing' if steal else 'static share':<17} "
              f"{ratios.mean():.2f}x (worst {ratios.max():.2f}x), undone {undone.mean():.1f}")


if __name__ == "__main__":
    main()

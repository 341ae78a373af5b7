#!/usr/bin/env python3
"""The service's interface: set up the database, report statistics, draw plots."""

import argparse
import json
import sqlite3
import statistics
import time
from datetime import datetime
from pathlib import Path


DB = Path(__file__).resolve().parent / "service.db"  # /golem/run/service.db, made when the image is built
PLOTS = Path("/golem/out")


def connect() -> sqlite3.Connection:
    return sqlite3.connect(DB)


def init() -> None:
    with connect() as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS observations (id INTEGER PRIMARY KEY, val REAL NOT NULL, time_added REAL NOT NULL)"
        )
    print("database ready")


def observations() -> list[tuple[float, float]]:
    with connect() as connection:
        return connection.execute("SELECT time_added, val FROM observations ORDER BY id").fetchall()


def stats() -> None:
    values = [v for _, v in observations()]
    if len(values) < 2:
        print(json.dumps({"count": len(values)}))
        return
    print(json.dumps({
        "count": len(values),
        "min": min(values),
        "max": max(values),
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "variance": statistics.variance(values),
    }))


def plot(kind: str) -> None:
    """A PNG with axes, labels and a title: the values over time, or their distribution."""
    import matplotlib.pyplot as plt  # only here: the other commands stay quick

    rows = observations()
    path = str(PLOTS / f"plot_{kind}_{int(time.time() * 1000)}.png")
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    if kind == "time":
        axes.plot([datetime.fromtimestamp(t) for t, _ in rows], [v for _, v in rows], marker=".", linewidth=1)
        axes.set(title=f"Observations over time ({len(rows)})", xlabel="time", ylabel="value")
        figure.autofmt_xdate()
    else:
        axes.hist([v for _, v in rows], bins=20, edgecolor="black")
        axes.set(title=f"Distribution of observations ({len(rows)})", xlabel="value", ylabel="count")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    print(json.dumps(path))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--init", action="store_true")
    group.add_argument("--stats", action="store_true")
    group.add_argument("--plot", choices=["time", "dist"])
    group.add_argument("--dump", action="store_true")
    args = parser.parse_args()
    if args.init:
        init()
    elif args.stats:
        stats()
    elif args.plot:
        plot(args.plot)
    else:
        print(json.dumps(observations()))

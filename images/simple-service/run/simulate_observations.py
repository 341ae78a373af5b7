#!/usr/bin/env python3
"""Stands in for an external data source: stores one random observation per interval."""

import random
import sqlite3
import sys
import time
from pathlib import Path

DB = Path(__file__).resolve().parent / "service.db"  # beside the scripts, as simple_service.py keeps it


def main(interval: float) -> None:
    connection = sqlite3.connect(DB)
    while True:
        value = random.gauss(50.0, 12.0)
        connection.execute("INSERT INTO observations (val, time_added) VALUES (?, ?)", (value, time.time()))
        connection.commit()
        time.sleep(interval)


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 0.5)

"""Rebuilding a recovered site's old Info Mart: pg_rewind against a base backup.

A site lost in a disaster and recovered on its old disks brings back an Info Mart on the
timeline its promoted standby left. `transfer` rebuilds it as that standby's standby, by
copying everything (`basebackup`) or only what changed since the fork (`rewind`). This
measures both through the product's own procedure (`Operator.transfer`, over the WAN
proxy), on an Info Mart of `--rows` filler rows with `--changed` rows written after the
fork, interleaved run by run so machine noise hits both alike.

Prints one JSON object: per method, the median wall seconds of the copy and the median
bytes through the WAN proxy, and the ratios rewind / basebackup.

    python bench/rebuild.py [--runs 3] [--rows 1000000] [--changed 10000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

from testbed.backends.local import LocalBackend
from testbed.deployment import bring_up
from testbed.operations.dr import Operator
from testbed.topology import INFOMART_DATABASE, load_topology

METHODS = ("basebackup", "rewind")


def one_rebuild(method: str, rows: int, changed: int) -> dict[str, float]:
    """A fresh two-site deployment: fill, lose site 1, promote site 2, write past the
    fork, recover site 1 on its disks, rebuild its Info Mart with `method`."""
    with (
        tempfile.TemporaryDirectory(prefix="bench-rebuild-", dir="/var/tmp") as home,
        LocalBackend(home=home) as backend,
    ):
        deployment = bring_up(load_topology("active-standby"), backend)
        operator = Operator(deployment)
        primary, standby = deployment.server("infomart1"), deployment.server("infomart2")
        primary.execute(
            "CREATE TABLE filler AS SELECT g, md5(g::text) AS a FROM generate_series(1, %s) g",
            (rows,),
            dbname=INFOMART_DATABASE,
        )
        # A production server checkpoints every few minutes: the last one before the
        # fork (common to both timelines) is where pg_rewind goes back to.
        primary.execute("CHECKPOINT")
        primary.wait_for_catchup(standby, timeout=300)
        operator.fail_site("site1")
        operator.promote("site2")
        standby.execute(
            "UPDATE filler SET a = md5(a) WHERE g <= %s", (changed,), dbname=INFOMART_DATABASE
        )
        operator.recover_site("site1", disks="kept")
        facts = operator.transfer("site2", "site1", method=method)
        return {"wall_s": facts["copy_wall_s"], "wan_bytes": facts.get("wan_bytes", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000, help="~65 MB of table data")
    parser.add_argument("--changed", type=int, default=10_000, help="rows updated past the fork")
    args = parser.parse_args()
    samples: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    for _ in range(args.runs):
        for method in METHODS:
            samples[method].append(one_rebuild(method, args.rows, args.changed))
    medians = {
        method: {key: statistics.median(s[key] for s in runs) for key in ("wall_s", "wan_bytes")}
        for method, runs in samples.items()
    }
    base, rewind = medians["basebackup"], medians["rewind"]
    print(
        json.dumps(
            {
                "runs": args.runs,
                "rows": args.rows,
                "changed_rows": args.changed,
                "median": medians,
                "rewind_over_basebackup": {
                    key: round(rewind[key] / base[key], 3) if base[key] else None
                    for key in ("wall_s", "wan_bytes")
                },
                "samples": samples,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

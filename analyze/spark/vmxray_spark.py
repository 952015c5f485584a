#!/usr/bin/env python3
"""Scan a fleet of KVM traces on Spark with `vmxray scan --shard K/N`, into one Parquet dataset.

The driver lists the fleet's traces (to size and report the job), then spreads N shards over
the executors. Each task runs `vmxray scan ROOT --shard K/N --out OUT` on its executor: vmxray
discovers the same inputs everywhere (trace ids are paths relative to ROOT, so ROOT must be
the same mount point on every executor) and keeps the traces whose stable hash falls in shard
K, so the N tasks cover every trace exactly once and write disjoint files into OUT: the five
tables of `vmxray scan` (exits, events, anomalies, summary, traces) in the hive layout
`OUT/table=T/trace=ID/part-N.parquet`. Spark SQL, DuckDB and Trino then query OUT directly.

    spark-submit --master yarn --files /usr/local/bin/vmxray \\
        analyze/spark/vmxray_spark.py /mnt/traces/fleet /mnt/results/scan --shards 64
    python3 analyze/spark/vmxray_spark.py fleet/ out/ --master 'local[2]' --queries

`--queries` then runs the example queries of `QUERIES` with Spark SQL and prints them.
Exit status: 0 when every shard ran (vmxray's own status 0 or 1: 1 only means anomalies were
found), 2 when a shard failed.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

# Files vmxray scan skips while walking directories (its DEFAULT_EXCLUDES), so that the
# driver's count matches what the shards scan.
SKIPPED_SUFFIXES = (".json", ".jsonl", ".md", ".toml", ".rs", ".py", ".sh", ".parquet", ".csv")

# The example queries, run by --queries (and by the test against a plain `vmxray scan`).
QUERIES = {
    # The most severe anomalies of each host: rank rules per host by severity, then count.
    "top_anomalies_per_host": """
        SELECT host, rule, worst, n FROM (
            SELECT host, rule, max(severity_rank) AS worst, count(*) AS n,
                   row_number() OVER (PARTITION BY host
                                      ORDER BY max(severity_rank) DESC, count(*) DESC, rule) AS r
            FROM anomalies GROUP BY host, rule)
        WHERE r <= 3 ORDER BY host, worst DESC, n DESC, rule""",
    # Exit rate per kernel: exits over the summed trace durations (nanosecond clocks only).
    "exits_per_second_by_kernel": """
        SELECT coalesce(kernel, concat('>= ', kernel_at_least)) AS kernel,
               count(*) AS traces, sum(exits) AS exits,
               round(sum(exits) / (sum(duration_ns) / 1e9), 1) AS exits_per_s
        FROM traces WHERE status = 'ok' AND time_unit = 'ns' AND duration_ns > 0
        GROUP BY 1 ORDER BY 1""",
    # Which hosts show a rule firing, and on how many of their traces.
    "hosts_with_a_rule_firing": """
        SELECT rule, host, count(DISTINCT trace) AS traces, count(*) AS anomalies
        FROM anomalies GROUP BY rule, host ORDER BY rule, host""",
}

TABLES = ("exits", "events", "anomalies", "summary", "traces")


def list_traces(root):
    """The files under root that vmxray scan would consider (hidden and skipped names out)."""
    if os.path.isfile(root):
        return [root]
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or name.endswith(SKIPPED_SUFFIXES):
                continue
            found.append(os.path.join(dirpath, name))
    return found


def run_shard(vmxray, root, out, shard, shards, jobs):
    """One task: `vmxray scan --shard`. Returns a JSON-able record of how it went."""
    exe = vmxray
    if not os.path.exists(exe):
        # Shipped with spark-submit --files: the executor's copy.
        from pyspark import SparkFiles

        exe = SparkFiles.get(os.path.basename(vmxray))
    cmd = [exe, "scan", root, "--shard", f"{shard}/{shards}", "--out", out, "--quiet",
           "--jobs", str(jobs)]
    started = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return {
        "shard": shard,
        "status": proc.returncode,
        "seconds": round(time.time() - started, 3),
        "summary": proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "",
        "stderr": proc.stderr[-2000:],
    }


def register_views(spark, out):
    """One temporary view per table. Each file carries its `trace` column, so the hive
    directories are read as plain files (recursiveFileLookup) rather than as partitions."""
    for table in TABLES:
        path = os.path.join(out, f"table={table}")
        if os.path.isdir(path):
            spark.read.option("recursiveFileLookup", "true").parquet(path) \
                .createOrReplaceTempView(table)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="the fleet: a directory (host=NAME/vm=NAME/... paths)")
    ap.add_argument("out", help="the dataset directory (shared by all executors)")
    ap.add_argument("--shards", type=int, default=0,
                    help="shards (tasks); default: 2 per default parallelism slot")
    ap.add_argument("--vmxray", default=shutil.which("vmxray") or "vmxray",
                    help="the vmxray executable on the executors")
    ap.add_argument("--jobs", type=int, default=1, help="threads per vmxray scan (default 1)")
    ap.add_argument("--master", default=None, help="Spark master (default: spark-submit's)")
    ap.add_argument("--queries", action="store_true", help="run and print the example queries")
    ap.add_argument("--report", help="write the job's report (shards, counts, queries) as JSON")
    args = ap.parse_args(argv)

    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("vmxray-fleet-scan").config(
        "spark.ui.showConsoleProgress", "false")
    if args.master:
        builder = builder.master(args.master)
    spark = builder.getOrCreate()
    sc = spark.sparkContext
    sc.setLogLevel("WARN")
    # The tasks call run_shard from this module: ship it to the executors.
    sc.addPyFile(os.path.abspath(__file__))
    try:
        root = os.path.abspath(args.root)
        out = os.path.abspath(args.out)
        os.makedirs(out, exist_ok=True)
        traces = list_traces(root)
        shards = args.shards or max(1, 2 * sc.defaultParallelism)
        shards = min(shards, max(1, len(traces)))
        print(f"vmxray-spark: {len(traces)} traces under {root}, {shards} shards", file=sys.stderr)
        vmxray, jobs = os.path.abspath(args.vmxray) if os.path.exists(args.vmxray) else args.vmxray, args.jobs
        results = (
            sc.parallelize(range(1, shards + 1), shards)
            .map(lambda k: run_shard(vmxray, root, out, k, shards, jobs))
            .collect()
        )
        failed = [r for r in results if r["status"] not in (0, 1)]
        for r in sorted(results, key=lambda r: r["shard"]):
            print(f"  shard {r['shard']}/{shards}: status {r['status']} in {r['seconds']} s: "
                  f"{r['summary']}", file=sys.stderr)
            if r["status"] not in (0, 1):
                print(r["stderr"], file=sys.stderr)
        report = {"traces_listed": len(traces), "shards": results, "queries": {}}
        register_views(spark, out)
        report["rows"] = {
            t: spark.table(t).count() for t in TABLES if spark.catalog.tableExists(t)
        }
        if args.queries:
            for name, sql in QUERIES.items():
                df = spark.sql(sql)
                print(f"\n== {name}", file=sys.stderr)
                df.show(40, truncate=False)
                report["queries"][name] = [
                    {k: (str(v) if v is not None else None) for k, v in row.asDict().items()}
                    for row in df.collect()
                ]
        if args.report:
            with open(args.report, "w") as f:
                json.dump(report, f, indent=1)
        return 2 if failed else 0
    finally:
        spark.stop()


if __name__ == "__main__":
    sys.exit(main())

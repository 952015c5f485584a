#!/usr/bin/env python3
"""End-to-end check of vmxray_spark.py in Spark local mode (run by tests/it/spark.rs).

Builds a fleet of >= 200 traces under host=NAME/vm=NAME/ paths (copies of the bundled
simulated and lab-recorded samples), scans it once with a plain `vmxray scan` and once with
the Spark job (local[2], several shards), and checks with DuckDB that every table of the two
datasets holds exactly the same rows, and that the example queries give the same answers on
Spark (from the job) and on DuckDB (over the plain scan).

usage: test_spark_fleet.py VMXRAY SAMPLES_DIR WORK_DIR [TRACES]
"""

import json
import os
import shutil
import subprocess
import sys
import time

import duckdb

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import vmxray_spark  # noqa: E402


def build_fleet(samples, fleet, count):
    sources = sorted(
        [os.path.join(samples, "sim", f) for f in os.listdir(os.path.join(samples, "sim"))
         if f.endswith(".txt")]
        + [os.path.join(samples, "lab", f) for f in os.listdir(os.path.join(samples, "lab"))])
    hosts, vms = 10, 4
    for i in range(count):
        src = sources[i % len(sources)]
        host, vm = f"h{i % hosts:02d}", f"vm{(i // hosts) % vms}"
        d = os.path.join(fleet, f"host={host}", f"vm={vm}")
        os.makedirs(d, exist_ok=True)
        shutil.copyfile(src, os.path.join(d, f"{i:04d}-{os.path.basename(src)}"))
    return len(sources)


def read(con, out, table):
    path = os.path.join(out, f"table={table}", "*", "*.parquet")
    return f"read_parquet('{path}', hive_partitioning = false)"


def normal(v):
    """A query cell as a comparable value: numbers as floats rounded, the rest as text."""
    if v is None:
        return None
    try:
        return round(float(v), 1)
    except (TypeError, ValueError):
        return str(v)


def main():
    vmxray, samples, work = sys.argv[1], sys.argv[2], sys.argv[3]
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 200
    shutil.rmtree(work, ignore_errors=True)
    fleet, plain, spark_out = (os.path.join(work, d) for d in ("fleet", "plain", "spark"))
    sources = build_fleet(samples, fleet, count)
    print(f"fleet: {count} traces from {sources} samples", file=sys.stderr)

    started = time.time()
    proc = subprocess.run([vmxray, "scan", fleet, "--out", plain, "--quiet"],
                          capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr
    plain_s = time.time() - started

    started = time.time()
    report_path = os.path.join(work, "report.json")
    status = vmxray_spark.main([fleet, spark_out, "--vmxray", vmxray, "--master", "local[2]",
                                "--shards", "4", "--queries", "--report", report_path])
    spark_s = time.time() - started
    assert status == 0, f"spark job exit status {status}"
    with open(report_path) as f:
        report = json.load(f)
    assert report["traces_listed"] == count, report["traces_listed"]
    assert sorted(r["shard"] for r in report["shards"]) == [1, 2, 3, 4]

    con = duckdb.connect()
    for table in vmxray_spark.TABLES:
        a, b = read(con, plain, table), read(con, spark_out, table)
        n_plain = con.execute(f"SELECT count(*) FROM {a}").fetchone()[0]
        n_spark = con.execute(f"SELECT count(*) FROM {b}").fetchone()[0]
        only_plain = con.execute(f"SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b})").fetchone()[0]
        only_spark = con.execute(f"SELECT count(*) FROM (SELECT * FROM {b} EXCEPT ALL SELECT * FROM {a})").fetchone()[0]
        print(f"table {table}: plain {n_plain} rows, spark {n_spark}, differing {only_plain}/{only_spark}",
              file=sys.stderr)
        assert n_plain == n_spark and only_plain == 0 and only_spark == 0, table
        assert report["rows"][table] == n_spark, (table, report["rows"][table], n_spark)
    traces = con.execute(f"SELECT count(*) FROM {read(con, plain, 'traces')}").fetchone()[0]
    assert traces == count, traces

    # The example queries: Spark over the job's dataset == DuckDB over the plain scan.
    for table in vmxray_spark.TABLES:
        con.execute(f"CREATE VIEW {table} AS SELECT * FROM {read(con, plain, table)}")
    for name, sql in vmxray_spark.QUERIES.items():
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description]
        duck = [[normal(v) for v in row] for row in cur.fetchall()]
        spark = [[normal(row[c]) for c in cols] for row in report["queries"][name]]
        assert duck == spark, f"{name}:\nduckdb {duck[:5]}\nspark  {spark[:5]}"
        assert duck, f"{name} returned no rows"
        print(f"query {name}: {len(duck)} rows, equal", file=sys.stderr)
    print(f"plain scan {plain_s:.1f} s, spark job (local[2], 4 shards) {spark_s:.1f} s",
          file=sys.stderr)
    print("1 passed, 0 failed")


if __name__ == "__main__":
    main()

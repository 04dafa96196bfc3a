#!/usr/bin/env python3
"""The machine a bench runs on, from /proc/cpuinfo: the CPU's name, family and model, a pretty
name for figures ("Intel Xeon (family 6, model 167)") and the <cpu> part of the bench files'
names ("intel-xeon-f6m167"). bench_server.py and bench_kv.py put it in their JSON; the Makefile
names build/bench/<date>-<cpu>-bench*.json with `tools/bench_machine.py --slug`.

usage: tools/bench_machine.py [--slug | --pretty | --json]
"""

import json
import os
import re
import sys


def cpu_info(path="/proc/cpuinfo"):
    name, family, model = None, None, None
    try:
        with open(path) as f:
            for line in f:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "model name" and name is None:
                    name = val
                elif key == "cpu family" and family is None:
                    family = int(val) if val.isdigit() else None
                elif key == "model" and model is None:
                    model = int(val) if val.isdigit() else None
    except OSError:
        pass
    name = name or "unknown CPU"
    return {"cpu": name, "cpu_family": family, "cpu_model": model, "online_cpus": os.cpu_count(),
            "cpu_pretty": pretty(name, family, model), "cpu_slug": slug(name, family, model)}


def short_name(name):
    """'Intel(R) Xeon(R) Processor' -> 'Intel Xeon'; 'AMD EPYC 9B14 96-Core Processor' ->
    'AMD EPYC 9B14'."""
    s = re.sub(r"\((R|TM|tm|r)\)", "", name)
    s = re.sub(r"@.*$", "", s)
    s = re.sub(r"\b(\d+-Core|Processor|CPU)\b", "", s)
    return " ".join(s.split()) or "unknown CPU"


def pretty(name, family, model):
    fm = f" (family {family}, model {model})" if family is not None and model is not None else ""
    return short_name(name) + fm


def slug(name, family, model):
    s = re.sub(r"[^a-z0-9]+", "-", short_name(name).lower()).strip("-")
    return s + (f"-f{family}m{model}" if family is not None and model is not None else "")


def main(argv):
    info = cpu_info()
    if argv[1:] == ["--slug"]:
        print(info["cpu_slug"])
    elif argv[1:] == ["--pretty"]:
        print(info["cpu_pretty"])
    elif argv[1:] in ([], ["--json"]):
        print(json.dumps(info))
    else:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

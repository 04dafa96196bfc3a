"""End-to-end: the operations side of a real server: `adaptree --version` and GET /version (the
build and the kernels in use)."""

import subprocess

import e2e
from e2e import check, eq

suite = e2e.Suite("ops", budget=180)
KEY = "ops-key"
S = None  # --api-key KEY


def setup():
    global S
    S = suite.server(["--api-key", KEY], name="server")
    S.start()


def version_lines(args):
    out = subprocess.run([e2e.ADAPTREE] + args, capture_output=True, text=True, timeout=30,
                         check=True).stdout
    first, *rest = out.splitlines()
    fields = dict(line.split(": ", 1) for line in rest)
    return first, fields


@suite.test
def version_command():
    first, f = version_lines(["--version"])
    check(first.startswith("adaptree "), f"first line {first!r}")
    for k in ("commit", "compiler", "optimization", "sanitizers", "cflags", "kernels"):
        check(f.get(k), f"--version has no {k}: {f}")
    check("OpenBLAS" in f["kernels"], f"kernels {f['kernels']!r}")
    eq(version_lines(["version"]), (first, f), "adaptree version")


@suite.test
def version_route():
    r = S.req("GET", "/version")
    eq(r.status, 401, "GET /version without the key (a key is needed as for /metrics)")
    r = S.req("GET", "/version", key=KEY)
    eq(r.status, 200, "GET /version")
    j = r.json()
    first, f = version_lines(["--version"])
    eq(j["version"], first.split()[1], "version")
    for k in ("commit", "compiler", "optimization", "cflags"):
        eq(j[k] or "none", f[k], k)
    eq(",".join(j["sanitizers"]) or "none", f["sanitizers"], "sanitizers")
    eq(j["kernels"], f["kernels"], "kernels")
    check(j["cpu"] in ("none", "AVX2", "AVX-512", "AVX-512 VNNI"), f"cpu {j['cpu']!r}")
    check(j["kernels"].startswith(j["cpu"] + ", OpenBLAS "), f"kernels {j['kernels']!r}")


if __name__ == "__main__":
    import sys

    sys.exit(suite.main(setup))

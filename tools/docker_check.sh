#!/usr/bin/env bash
# Verifies the Dockerfile on a machine without a Docker engine: replays it in debootstrapped
# Debian 12 roots, then checks the resulting runtime root the way `docker run` would use it.
#
# usage: tools/docker_check.sh [--ref REF] [-f FILE] [--fresh] [-v]   (as root; make docker-check)
#   --ref REF   take the build context, Dockerfile and .dockerignore from git REF (git archive)
#               instead of the working tree (useful while others edit the tree)
#   -f FILE     check FILE instead of the context's Dockerfile (the context stays the project)
#   --fresh     debootstrap the base again instead of reusing the cached tarball
#   -v          stream every RUN step's output (otherwise it goes to the log files only)
# environment: DOCKER_CHECK_DIR (default build/docker-root), DOCKER_CHECK_MIRROR
#   (default http://deb.debian.org/debian), DOCKER_CHECK_HEALTH_WAIT (seconds, default 90)
#
# What it does, in order:
#  1. Re-executes itself in private mount + PID namespaces (unshare), so every mount it makes is
#     invisible outside and vanishes with it, and every process it starts dies with it, even if it
#     is killed with SIGKILL; a trap also unmounts on a normal exit or an interrupt.
#  2. Parses the Dockerfile: a small interpreter for FROM, RUN, COPY [--from], WORKDIR, USER, ENV,
#     EXPOSE, HEALTHCHECK, ENTRYPOINT and CMD. Any other instruction, flag, variable
#     substitution, heredoc or glob is refused with the line number.
#  3. Stages the build context from the working tree (or --ref) through .dockerignore, with
#     Docker's pattern rules (**, !exceptions, a match on a parent directory excludes it).
#  4. For each stage, unpacks a fresh root from a cached `debootstrap --variant=minbase bookworm`
#     tarball, configured like the official debian:12 image (deb822 sources with bookworm,
#     -updates and -security; policy-rc.d; apt docker-clean); debian:12-slim additionally gets
#     the slim image's dpkg path excludes (docs, man pages, locales). RUN steps execute as
#     /bin/sh -c in a chroot as the stage's USER, in its WORKDIR, with only its ENV, stdin from
#     /dev/null, /proc, a minimal /dev, a read-only /sys and the host's resolv.conf mounted
#     (unmounted after each step). COPY copies from the staged context or another stage's root
#     and makes the files root-owned, as Docker does.
#  5. In the final root: `ldd` of the entrypoint (nothing "not found"), `--help` and a short
#     greedy `generate` as the image's USER, the model's sha256, and, if the binary has the
#     `serve` subcommand, ENTRYPOINT + CMD started as that user as PID 1 of fresh PID, mount and
#     network namespaces (so the CMD's port is free and used unchanged), the HEALTHCHECK command
#     polled until it passes, a check that the server listens on all addresses (what
#     `docker run -p` needs), and a SIGTERM stop as `docker stop` sends it.
#
# Deliberate differences from a Docker engine: RUN steps use the host's network (Docker's build
# network is a bridge); where this host trusts extra CAs (/usr/local/share/ca-certificates, e.g.
# a TLS-intercepting egress proxy), RUN steps get the host's CA bundle through PIP_CERT,
# SSL_CERT_FILE, REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE, from a file outside the stage's root
# that is never part of it; the base is today's bookworm, not the digest Docker Hub serves; no
# layer cache, no cgroup limits, no seccomp profile. The HEALTHCHECK is polled every second (its
# --interval is only reported).
# shellcheck disable=SC2016  # single-quoted scripts for sh -c / bash -c are meant literally
set -euo pipefail
umask 022

PROJ=$(cd "$(dirname "$0")/.." && pwd)
case " $* " in
*" -h "* | *" --help "*) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
esac

if [ "${_DOCKER_CHECK_NS:-}" != 1 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "docker-check: must run as root (debootstrap, chroot and mount need it)" >&2
        exit 1
    fi
    missing=""
    command -v debootstrap >/dev/null || missing="$missing debootstrap"
    command -v ip >/dev/null || missing="$missing iproute2"
    command -v unshare >/dev/null && command -v nsenter >/dev/null || missing="$missing util-linux"
    command -v python3 >/dev/null || missing="$missing python3"
    if [ -n "$missing" ]; then
        echo "docker-check: installing:$missing"
        # shellcheck disable=SC2086  # $missing is a word list
        if ! apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1; then
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
        fi
    fi
    export _DOCKER_CHECK_NS=1
    exec unshare --mount --pid --fork --mount-proc --propagation private --kill-child \
        -- bash "$0" "$@"
fi

# ---- from here on: PID 1 of a private PID namespace, in a private mount namespace ------------

REF="" FRESH=0 VERBOSE=0 DFILE=""
while [ $# -gt 0 ]; do
    case $1 in
    --ref) REF=${2:?--ref needs a git ref}; shift 2 ;;
    --ref=*) REF=${1#--ref=}; shift ;;
    --fresh) FRESH=1; shift ;;
    -f | --file) DFILE=$(realpath "${2:?-f needs a file}"); shift 2 ;;
    -v) VERBOSE=1; shift ;;
    *) echo "docker-check: unknown option $1" >&2; exit 2 ;;
    esac
done

WORK=${DOCKER_CHECK_DIR:-$PROJ/build/docker-root}
MIRROR=${DOCKER_CHECK_MIRROR:-http://deb.debian.org/debian}
HEALTH_WAIT=${DOCKER_CHECK_HEALTH_WAIT:-90}
case $WORK in
/*) ;;
*) WORK=$PROJ/$WORK ;;
esac
case $WORK in
*[[:space:]]*) echo "docker-check: DOCKER_CHECK_DIR must not contain spaces: $WORK" >&2; exit 2 ;;
esac
CACHE=$WORK/cache
LOGS=$WORK/logs
BASE_TAR=$CACHE/bookworm-minbase.tar
DEFAULT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
T0=$(date +%s)

mkdir -p "$WORK" "$CACHE"
exec 9>"$WORK/.lock"
if ! flock -n 9; then
    echo "docker-check: another docker-check is running on $WORK" >&2
    exit 1
fi
rm -rf "$LOGS" && mkdir -p "$LOGS"
exec 3>&1 4>&2

# ---- results -------------------------------------------------------------------------------

RESULTS=()  # "STATUS<TAB>what<TAB>detail"
NFAIL=0 NWARN=0 NSKIP=0 NPASS=0
result() { # STATUS WHAT DETAIL...
    local st=$1 what=$2
    shift 2
    RESULTS+=("$st"$'\t'"$what"$'\t'"$*")
    case $st in
    PASS) NPASS=$((NPASS + 1)) ;;
    FAIL) NFAIL=$((NFAIL + 1)) ;;
    WARN) NWARN=$((NWARN + 1)) ;;
    SKIP) NSKIP=$((NSKIP + 1)) ;;
    esac
    printf '%-4s  %s: %s\n' "$st" "$what" "$*"
}
elapsed() { echo $(($(date +%s) - $1)); }

summary() {
    local total
    total=$(elapsed "$T0")
    echo
    echo "== docker-check summary ($(basename "${DOCKERFILE_SRC:-Dockerfile}")${REF:+ at $REF}, $WORK) =="
    local r st what detail
    for r in "${RESULTS[@]}"; do
        IFS=$'\t' read -r st what detail <<<"$r"
        printf '%-4s  %-28s %s\n' "$st" "$what" "$detail"
    done
    if [ "$NFAIL" -eq 0 ]; then
        echo "RESULT: PASS ($NPASS passed, $NSKIP skipped, $NWARN warnings) in ${total} s"
    else
        echo "RESULT: FAIL ($NFAIL failed, $NPASS passed, $NSKIP skipped, $NWARN warnings)" \
            "in ${total} s; logs in $LOGS"
    fi
}

fatal() { # WHAT DETAIL [LOGFILE]: record, show the log's tail, stop
    result FAIL "$1" "$2"
    if [ -n "${3:-}" ] && [ -s "$3" ]; then
        echo "---- last 40 lines of $3"
        tail -n 40 "$3"
        echo "----"
    fi
    exit 1
}

# ---- mounts and cleanup --------------------------------------------------------------------

SERVE_UPID=""
umount_under() { # ROOT: every mount at or below ROOT, deepest first
    local m
    awk -v p="$1" '$2 == p || index($2, p "/") == 1 { print $2 }' /proc/self/mounts |
        sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m"
    done
}
cleanup() {
    local rc=$?
    trap - EXIT INT TERM HUP
    exec 1>&3 2>&4 # a signal may arrive while a step's output goes to its log
    # PID 1 of our own PID namespace: kill -1 reaches exactly the processes this run started.
    if [ $$ -eq 1 ]; then
        kill -KILL -1 2>/dev/null || true
        sleep 0.3
    fi
    umount_under "$WORK" || true
    if [ "${SUMMARY_DONE:-0}" = 0 ] && [ "${#RESULTS[@]}" -gt 0 ]; then
        [ "$rc" -ne 0 ] && [ "$NFAIL" -eq 0 ] && result FAIL "docker-check" "stopped (status $rc)"
        summary
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Long commands run as a background job that the script waits for: a trapped signal (Ctrl-C,
# SIGTERM) interrupts `wait` at once, whereas with a foreground command bash would wait for it to
# end first, and a child that handles SIGINT itself (apt-get does) would let the run go on.
run_bg() {
    local pid rc=0
    "$@" &
    pid=$!
    wait "$pid" || rc=$?
    return "$rc"
}

mount_fs() { # ROOT: what a container sees besides its image
    local r=$1 n
    mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
    mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$r/sys"
    mount -t tmpfs -o mode=755,nosuid,size=65536k tmpfs "$r/dev"
    for n in null zero full random urandom tty; do
        : >"$r/dev/$n"
        mount --bind "/dev/$n" "$r/dev/$n"
    done
    mkdir -p "$r/dev/pts" "$r/dev/shm"
    mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts "$r/dev/pts" 2>/dev/null &&
        ln -s pts/ptmx "$r/dev/ptmx"
    mount -t tmpfs -o mode=1777,nosuid,nodev,size=65536k shm "$r/dev/shm"
    ln -s /proc/self/fd "$r/dev/fd"
    ln -s /proc/self/fd/0 "$r/dev/stdin"
    ln -s /proc/self/fd/1 "$r/dev/stdout"
    ln -s /proc/self/fd/2 "$r/dev/stderr"
    for n in resolv.conf hosts; do
        if [ -L "$r/etc/$n" ]; then rm -f "$r/etc/$n"; fi
        [ -e "$r/etc/$n" ] || : >"$r/etc/$n"
        mount --bind "/etc/$n" "$r/etc/$n"
    done
}

# ---- python helpers (parsing, .dockerignore, paths, users) ---------------------------------

py() { python3 - "$@"; }

parse_dockerfile() { # FILE OUT -> OUT: one shell-quoted record per instruction, NUL-separated
    py "$1" "$2" <<'PY'
import json, re, shlex, sys

path = sys.argv[1]
records = []
def fail(n, msg):
    sys.stderr.write("%s:%d: %s\n" % (path, n, msg)); sys.exit(3)
def out(*f):
    records.append(" ".join(shlex.quote(str(x)) for x in f))
def no_vars(n, kw, s):
    if "$" in s:
        fail(n, "%s: variable substitution ($) is not implemented by this checker" % kw)

def duration(n, s):
    m = re.fullmatch(r"((?:\d+(?:\.\d+)?(?:ms|s|m|h))+)", s)
    if not m:
        fail(n, "bad duration %r" % s)
    mult = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(v) * mult[u] for v, u in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", s))

def flags(n, kw, rest, allowed):
    got = {}
    while True:
        m = re.match(r"--([a-z-]+)(?:=(\S*))?(?:\s+|$)", rest)
        if not m:
            return got, rest
        if m.group(1) not in allowed:
            fail(n, "%s --%s is not supported by this checker" % (kw, m.group(1)))
        if not m.group(2):
            fail(n, "%s --%s needs a value" % (kw, m.group(1)))
        got[m.group(1)] = m.group(2)
        rest = rest[m.end():]

def command(n, kw, rest):
    r = rest.strip()
    if not r:
        fail(n, "%s without a command" % kw)
    if r.startswith("["):
        try:
            v = json.loads(r)
            if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
                return v
        except ValueError:
            pass
        sys.stderr.write("%s:%d: warning: %s is not a JSON array; Docker runs it as a shell command\n"
                         % (path, n, kw))
    return ["/bin/sh", "-c", r]

# lines -> instructions (continuations joined, comments dropped)
instrs, buf, start, top = [], None, 0, True
for n, line in enumerate(open(path, encoding="utf-8").read().split("\n"), 1):
    line = line.rstrip("\r")
    if top:
        m = re.match(r"#\s*([A-Za-z]+)\s*=\s*(\S*)\s*$", line)
        if m:
            if m.group(1).lower() == "escape" and m.group(2) != "\\":
                fail(n, "only the default escape character (\\) is supported")
            continue
        top = False
    s = line.strip()
    if buf is None:
        if not s or s.startswith("#"):
            continue
        buf, start = "", n
    elif not s or s.startswith("#"):
        continue
    if re.search(r"\\\s*$", line):
        buf += re.sub(r"\\\s*$", "", line)
        continue
    instrs.append((start, buf + line))
    buf = None
if buf is not None:
    fail(start, "the file ends inside a line continuation")

stages = []
for n, text in instrs:
    m = re.match(r"\s*([A-Za-z]+)(?:\s+(.*))?$", text, re.S)
    if not m:
        fail(n, "cannot read this line")
    kw, rest = m.group(1).upper(), (m.group(2) or "").strip()
    if kw != "FROM" and not stages:
        fail(n, "%s before the first FROM" % kw)
    if kw == "FROM":
        _, rest = flags(n, kw, rest, ())
        no_vars(n, kw, rest)
        t = rest.split()
        if len(t) == 1:
            name = ""
        elif len(t) == 3 and t[1].lower() == "as":
            name = t[2].lower()
            if name in stages:
                fail(n, "duplicate stage name %r" % name)
        else:
            fail(n, "FROM IMAGE [AS NAME] expected")
        if t[0].lower() in stages:
            fail(n, "FROM an earlier stage is not supported by this checker")
        if re.sub(r"^docker\.io/library/", "", t[0]) not in (
                "debian:12", "debian:bookworm", "debian:12-slim", "debian:bookworm-slim"):
            fail(n, "FROM %s: only debian:12 and debian:12-slim (bookworm) are known to this checker"
                 % t[0])
        stages.append(name or "#%d" % len(stages))
        out("FROM", n, t[0], name)
    elif kw == "RUN":
        _, rest = flags(n, kw, rest, ())
        if re.search(r"<<-?\s*([\"']?)[A-Za-z_][A-Za-z0-9_]*\1", rest):
            fail(n, "RUN heredocs are not supported by this checker")
        out("RUN", n, *command(n, kw, rest))
    elif kw == "COPY":
        f, rest = flags(n, kw, rest, ("from",))
        no_vars(n, kw, rest)
        if "<<" in rest:
            fail(n, "COPY heredocs are not supported by this checker")
        if rest.startswith("["):
            args = json.loads(rest)
        else:
            args = rest.split()
        if len(args) < 2:
            fail(n, "COPY SRC... DEST expected")
        src, dest = args[:-1], args[-1]
        for s in src:
            if re.search(r"[*?\[]", s):
                fail(n, "COPY source %r: wildcards are not supported by this checker" % s)
            if re.match(r"[a-z]+://", s):
                fail(n, "COPY cannot take a URL (%r)" % s)
        frm = f.get("from", "")
        if frm:
            frm = frm.lower()
            if frm.isdigit():
                if int(frm) >= len(stages) - 1:
                    fail(n, "COPY --from=%s: no such earlier stage" % frm)
                frm = stages[int(frm)]
            elif frm not in stages[:-1]:
                fail(n, "COPY --from=%s: not an earlier stage of this file (images are not supported)"
                     % frm)
        out("COPY", n, frm, dest, *src)
    elif kw == "WORKDIR":
        no_vars(n, kw, rest)
        if not rest:
            fail(n, "WORKDIR needs a path")
        out("WORKDIR", n, rest)
    elif kw == "USER":
        no_vars(n, kw, rest)
        if not re.fullmatch(r"[A-Za-z0-9_.-]+(:[A-Za-z0-9_.-]+)?", rest):
            fail(n, "USER user[:group] expected")
        out("USER", n, rest)
    elif kw == "ENV":
        no_vars(n, kw, rest)
        first = rest.split(None, 1)[0] if rest else ""
        if "=" in first:
            for w in shlex.split(rest):
                if "=" not in w:
                    fail(n, "ENV: %r is not KEY=VALUE" % w)
                k, v = w.split("=", 1)
                out("ENV", n, k, v)
        else:
            p = rest.split(None, 1)
            if len(p) != 2:
                fail(n, "ENV KEY=VALUE expected")
            out("ENV", n, p[0], p[1].strip())
    elif kw == "EXPOSE":
        no_vars(n, kw, rest)
        for p in rest.split():
            if not re.fullmatch(r"\d+(/(tcp|udp))?", p):
                fail(n, "EXPOSE: bad port %r" % p)
            out("EXPOSE", n, p)
    elif kw == "HEALTHCHECK":
        f, rest = flags(n, kw, rest, ("interval", "timeout", "start-period", "start-interval",
                                      "retries"))
        if rest.upper() == "NONE":
            out("HEALTHCHECK", n, "NONE")
            continue
        m2 = re.match(r"CMD\s+(.*)$", rest, re.S | re.I)
        if not m2:
            fail(n, "HEALTHCHECK [options] CMD command expected")
        retries = f.get("retries", "3")
        if not retries.isdigit():
            fail(n, "HEALTHCHECK --retries must be a number")
        out("HEALTHCHECK", n, duration(n, f.get("interval", "30s")),
            duration(n, f.get("timeout", "30s")), duration(n, f.get("start-period", "0s")),
            retries, *command(n, kw, m2.group(1)))
    elif kw in ("CMD", "ENTRYPOINT"):
        out(kw, n, *command(n, kw, rest))
    else:
        fail(n, "instruction %s is not supported by this checker" % kw)
with open(sys.argv[2], "w") as f:
    f.write("".join(r + "\0" for r in records))
PY
}

stage_context() { # SRC DST IGNOREFILE SKIPDIR -> prints "FILES BYTES TOPLEVEL..."
    py "$@" <<'PY'
import os, re, shutil, sys

src, dst, ignore, skip = sys.argv[1:5]

def compile_pattern(p):
    r, i = "^", 0
    while i < len(p):
        c = p[i]
        if c == "*":
            if i + 1 < len(p) and p[i + 1] == "*":
                i += 1
                if i + 1 < len(p) and p[i + 1] == "/":
                    i += 1
                r += ".*" if i + 1 >= len(p) else "(.*/)?"
            else:
                r += "[^/]*"
        elif c == "?":
            r += "[^/]"
        elif c == "\\":
            i += 1
            if i >= len(p):
                sys.exit(".dockerignore: pattern %r ends with a backslash" % p)
            r += re.escape(p[i])
        elif c == "[":
            j = p.find("]", i + 1)
            if j < 0:
                sys.exit(".dockerignore: unterminated [ in %r" % p)
            cls = p[i + 1:j]
            r += "[" + ("^" + cls[1:] if cls.startswith(("!", "^")) else cls) + "]"
            i = j
        else:
            r += re.escape(c)
        i += 1
    return re.compile(r + "$")

pats = []
if os.path.exists(ignore):
    for line in open(ignore, encoding="utf-8"):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        if neg:
            line = line[1:].strip()
        p = os.path.normpath(line).lstrip("/")
        if p in ("", "."):
            continue
        pats.append((neg, compile_pattern(p)))
has_neg = any(neg for neg, _ in pats)

def excluded(rel):  # moby patternmatcher.MatchesOrParentMatches
    parts = rel.split("/")
    parents = ["/".join(parts[:k]) for k in range(1, len(parts))]
    matched = False
    for neg, rx in pats:
        if neg != matched:
            continue
        if rx.match(rel) or any(rx.match(q) for q in parents):
            matched = not neg
    return matched

nfiles = nbytes = 0
top = set()
os.makedirs(dst, exist_ok=True)
for dirpath, dirnames, filenames in os.walk(src):
    reld = os.path.relpath(dirpath, src)
    reld = "" if reld == "." else reld
    keep = []
    for d in sorted(dirnames):
        rel = os.path.join(reld, d)
        full = os.path.join(dirpath, d)
        if os.path.realpath(full) == os.path.realpath(skip):
            continue
        if os.path.islink(full):
            filenames.append(d)
            continue
        if excluded(rel) and not has_neg:
            continue
        keep.append(d)
        if not excluded(rel):
            os.makedirs(os.path.join(dst, rel), exist_ok=True)
            shutil.copystat(full, os.path.join(dst, rel))
    dirnames[:] = keep
    for f in sorted(filenames):
        rel = os.path.join(reld, f)
        if excluded(rel):
            continue
        s, t = os.path.join(dirpath, f), os.path.join(dst, rel)
        os.makedirs(os.path.dirname(t), exist_ok=True)
        if os.path.islink(s):
            os.symlink(os.readlink(s), t)
        else:
            shutil.copy2(s, t)
            nbytes += os.path.getsize(s)
        nfiles += 1
        top.add(rel.split("/")[0])
print(nfiles, nbytes, " ".join(sorted(top)))
PY
}

in_root() { # ROOT PATH [nofollow] -> host path of PATH inside ROOT, symlinks resolved in ROOT
    py "$@" <<'PY'
import os, sys
root, path = sys.argv[1], sys.argv[2]
parts = [p for p in path.split("/") if p not in ("", ".")]
cur, hops = [], 0
while parts:
    p = parts.pop(0)
    if p == "..":
        cur = cur[:-1]
        continue
    cand = os.path.join(root, *cur, p)
    if os.path.islink(cand):
        hops += 1
        if hops > 40:
            sys.exit("too many symlinks in " + path)
        t = os.readlink(cand)
        if t.startswith("/"):
            cur = []
        parts = [x for x in t.split("/") if x not in ("", ".")] + parts
        continue
    cur.append(p)
print(os.path.join(root, *cur))
PY
}

resolve_user() { # ROOT SPEC -> "UID GID GROUPS HOME" as Docker resolves USER
    py "$@" <<'PY'
import sys
root, spec = sys.argv[1], sys.argv[2] or "root"
def table(name):
    try:
        return [l.rstrip("\n").split(":") for l in open(root + "/etc/" + name) if ":" in l]
    except OSError:
        return []
pw, gr = table("passwd"), table("group")
u, _, g = spec.partition(":")
ent = next((e for e in pw if e[0] == u or (u.isdigit() and e[2] == u)), None)
if ent:
    uid, gid, name, home = int(ent[2]), int(ent[3]), ent[0], ent[5] or "/"
elif u.isdigit():
    uid, gid, name, home = int(u), 0, None, "/"
else:
    sys.exit("USER %s: no such user in the image's /etc/passwd" % u)
groups = []
if g:
    ge = next((e for e in gr if e[0] == g or (g.isdigit() and e[2] == g)), None)
    if ge:
        gid = int(ge[2])
    elif g.isdigit():
        gid = int(g)
    else:
        sys.exit("USER %s: no such group in the image's /etc/group" % spec)
elif name:
    groups = [int(e[2]) for e in gr if len(e) > 3 and name in e[3].split(",")]
allg = [gid] + [x for x in groups if x != gid]
print(uid, gid, ",".join(map(str, allg)), home)
PY
}

# ---- the base root ------------------------------------------------------------------------

ensure_base() {
    if [ "$FRESH" = 0 ] && [ -s "$BASE_TAR" ]; then
        echo "base: reusing $BASE_TAR ($(cat "$BASE_TAR.info" 2>/dev/null || echo "undated"))"
        return
    fi
    local t tmp=$CACHE/debootstrap.tmp
    t=$(date +%s)
    rm -rf "$tmp" "$BASE_TAR" "$BASE_TAR.info"
    echo "base: debootstrap --variant=minbase bookworm from $MIRROR (log: $LOGS/debootstrap.log)"
    if ! run_bg nice -n 10 debootstrap --variant=minbase bookworm "$tmp" "$MIRROR" \
        >"$LOGS/debootstrap.log" 2>&1; then
        umount_under "$tmp" || true
        fatal "base image" "debootstrap failed (can this machine reach $MIRROR?)" \
            "$LOGS/debootstrap.log"
    fi
    umount_under "$tmp"
    # Configured like the official debian:12 image (debuerreotype): an empty /dev (the engine
    # provides one), deb822 sources with -updates and -security, no daemons started by
    # maintainer scripts, no .debs or package lists kept.
    rm -rf "${tmp:?}"/dev/*
    rm -f "$tmp/etc/apt/sources.list"
    cat >"$tmp/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
    chmod 755 "$tmp/usr/sbin/policy-rc.d"
    cat >"$tmp/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$tmp/etc/apt/apt.conf.d/docker-no-languages"
    echo 'APT::AutoRemove::SuggestsImportant "false";' \
        >"$tmp/etc/apt/apt.conf.d/docker-autoremove-suggests"
    echo 'force-unsafe-io' >"$tmp/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
    rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/archives/*.deb \
        "$tmp"/var/cache/apt/*.bin "$tmp"/var/log/*.log "$tmp"/etc/hostname
    tar -C "$tmp" --numeric-owner --xattrs --xattrs-include='*' -cf "$BASE_TAR.tmp" .
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    echo "debootstrap $(date -u +%Y-%m-%dT%H:%MZ), $(du -sm "$tmp" | cut -f1) MB" >"$BASE_TAR.info"
    rm -rf "$tmp"
    echo "base: cached $BASE_TAR in $(elapsed "$t") s"
}

slimify() { # ROOT: what debian:12-slim removes and keeps out (debuerreotype --slimify)
    local r=$1 d
    cat >"$r/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# debian:12-slim: keep documentation, man pages and translations out of the image
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/man/*
EOF
    find "$r/usr/share/doc" -mindepth 1 ! -type d ! -path "$r/usr/share/doc/*/copyright" -delete
    find "$r/usr/share/doc" -mindepth 1 -type d -empty -delete
    for d in groff info linda lintian/overrides man; do
        [ -d "$r/usr/share/$d" ] && find "$r/usr/share/$d" -mindepth 1 -delete
    done
    [ -d "$r/usr/share/locale" ] &&
        find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    return 0
}

# ---- one stage ----------------------------------------------------------------------------

declare -A STAGE_ROOT=() STAGE_WD=() COPIED_FROM=()
ROOT="" STAGE="" SIDX=-1 WD=/ USERSPEC="" CMD_SET=0 HC_NONE=0
ENV_KEYS=() ENTRY=() CMDV=() HC=() EXPOSED=()
declare -A ENVV=()
HOST_CA=""
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null &&
    [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    HOST_CA=/etc/ssl/certs/ca-certificates.crt
fi

env_list() { # USER_HOME -> NAME=VALUE words for env -i
    local k have_home=0 have_path=0
    for k in "${ENV_KEYS[@]}"; do
        [ "$k" = HOME ] && have_home=1
        [ "$k" = PATH ] && have_path=1
        printf '%s=%s\0' "$k" "${ENVV[$k]}"
    done
    [ "$have_path" = 1 ] || printf 'PATH=%s\0' "$DEFAULT_PATH"
    [ "$have_home" = 1 ] || printf 'HOME=%s\0' "$1"
}

# mkcmd ROOT USERSPEC WORKDIR EXTRA_ENV_FILE ARGV... -> CARGV, the command line that runs ARGV
# as the image would: host `env -i` sets exactly the image's environment, host
# `chroot --userspec --groups` enters the root as the resolved USER, then the image's /bin/sh
# changes to WORKDIR and execs ARGV. Every step execs the next, so ARGV's process is the one the
# caller starts (PID 1 of a PID namespace, when the caller makes one).
CARGV=()
mkcmd() {
    local r=$1 spec=$2 wd=$3 extra=$4 uid gid groups home envs=() more=()
    shift 4
    if ! read -r uid gid groups home < <(resolve_user "$r" "$spec" 2>"$LOGS/user.err"); then
        fatal "stage ${STAGE:-?}" "USER '$spec': $(cat "$LOGS/user.err")"
    fi
    mapfile -d '' envs < <(env_list "$home")
    if [ -n "$extra" ]; then
        mapfile -d '' more <"$extra"
        envs+=("${more[@]}")
    fi
    CARGV=(env -i "${envs[@]}" chroot --userspec="$uid:$gid" --groups="$groups" "$r"
        /bin/sh -c 'cd -- "$0" && exec "$@"' "$wd" "$@")
}

start_stage() { # LINE IMAGE NAME
    local line=$1 image=$2 name=$3 variant t
    SIDX=$((SIDX + 1))
    STAGE=${name:-$SIDX}
    STAGE_IMAGE=$image
    case $image in
    debian:12 | debian:bookworm | docker.io/library/debian:12 | docker.io/library/debian:bookworm)
        variant=minbase ;;
    debian:12-slim | debian:bookworm-slim | docker.io/library/debian:12-slim | \
        docker.io/library/debian:bookworm-slim)
        variant=slim ;;
    *) fatal "stage $STAGE" "line $line: FROM $image: only debian:12 and debian:12-slim are known" ;;
    esac
    ROOT=$WORK/stages/$SIDX-${name:-stage}
    t=$(date +%s)
    rm -rf "$ROOT" && mkdir -p "$ROOT"
    tar -C "$ROOT" --numeric-owner --xattrs --xattrs-include='*' -xpf "$BASE_TAR"
    [ "$variant" = slim ] && slimify "$ROOT"
    STAGE_ROOT[$STAGE]=$ROOT
    [ -n "$name" ] || STAGE_ROOT["#$SIDX"]=$ROOT
    WD=/ USERSPEC="" CMD_SET=0 HC_NONE=0
    ENV_KEYS=(PATH) ENTRY=() CMDV=() HC=() EXPOSED=()
    ENVV=([PATH]=$DEFAULT_PATH)
    STAGE_T0=$t
    STAGE_RUNS=0 STAGE_COPIES=0
    echo "[$STAGE] FROM $image: fresh root $ROOT (bookworm $variant)"
}

finish_stage() {
    [ "$SIDX" -ge 0 ] || return 0
    STAGE_WD[$STAGE]=$WD
    result PASS "stage $STAGE ($STAGE_IMAGE)" "$STAGE_RUNS RUN, $STAGE_COPIES COPY in" \
        "$(elapsed "$STAGE_T0") s; root $(du -sm "$ROOT" | cut -f1) MB"
}

do_run() { # LINE ARGV...
    local line=$1 t rc log extra=""
    shift
    STAGE_RUNS=$((STAGE_RUNS + 1))
    log=$LOGS/$SIDX-$STAGE-line$line.log
    t=$(date +%s)
    local shown="$*"
    [ $# -eq 3 ] && [ "$1" = /bin/sh ] && [ "$2" = -c ] && shown=$3
    printf '[%s] line %s RUN %s\n' "$STAGE" "$line" "$(printf '%s' "$shown" | tr -s ' \n' ' ' |
        cut -c1-100)"
    mount_fs "$ROOT"
    if [ -n "$HOST_CA" ]; then
        cp "$HOST_CA" "$WORK/host-ca.pem"
        mkdir -p "$ROOT/run/docker-check"
        : >"$ROOT/run/docker-check/ca.pem"
        mount --bind -o ro "$WORK/host-ca.pem" "$ROOT/run/docker-check/ca.pem"
        extra=$WORK/host-ca.env
        printf '%s=/run/docker-check/ca.pem\0' PIP_CERT SSL_CERT_FILE REQUESTS_CA_BUNDLE \
            CURL_CA_BUNDLE >"$extra"
    fi
    mkcmd "$ROOT" "$USERSPEC" "$WD" "$extra" "$@"
    set +e
    if [ "$VERBOSE" = 1 ]; then
        run_bg nice -n 10 "${CARGV[@]}" </dev/null > >(tee "$log") 2>&1
        rc=$?
    else
        run_bg nice -n 10 "${CARGV[@]}" </dev/null >"$log" 2>&1
        rc=$?
    fi
    set -e
    umount_under "$ROOT"
    rm -rf "$ROOT/run/docker-check"
    if [ "$rc" -ne 0 ]; then
        fatal "stage $STAGE" "line $line: RUN exited with status $rc" "$log"
    fi
    echo "[$STAGE]   ok in $(elapsed "$t") s (log: $log)"
}

do_copy() { # LINE FROM DEST SRC...
    local line=$1 from=$2 dest=$3 srcroot what s hs target dest_dir=0
    shift 3
    STAGE_COPIES=$((STAGE_COPIES + 1))
    if [ -n "$from" ]; then
        srcroot=${STAGE_ROOT[$from]:-}
        [ -n "$srcroot" ] || fatal "stage $STAGE" "line $line: COPY --from=$from: unknown stage"
        what="stage $from"
    else
        srcroot=$CTX
        what="the build context"
    fi
    case $dest in /*) ;; *) dest=${WD%/}/$dest ;; esac
    case $dest in */) dest_dir=1 ;; esac
    dest=$(realpath -m -s "$dest")
    [ "$dest_dir" = 0 ] || dest=${dest%/}/
    [ $# -gt 1 ] && dest_dir=1
    echo "[$STAGE] line $line COPY ${from:+--from=$from }$* -> $dest"
    for s in "$@"; do
        if [ -z "$from" ]; then
            case /$s/ in */../*) fatal "stage $STAGE" "line $line: COPY $s leaves the context" ;; esac
        fi
        hs=$(in_root "$srcroot" "$s")
        if [ ! -e "$hs" ]; then
            fatal "stage $STAGE" "line $line: COPY $s: not found in $what"
        fi
        if [ -d "$hs" ]; then
            target=$(in_root "$ROOT" "$dest")
            mkdir -p "$target"
            tar -C "$hs" --owner=0 --group=0 --numeric-owner -cf - . |
                tar -C "$target" --numeric-owner -xpf -
        else
            if [ "$dest_dir" = 1 ] || [ -d "$(in_root "$ROOT" "$dest")" ]; then
                target=$(in_root "$ROOT" "$dest")
                mkdir -p "$target"
                target=$target/$(basename "$hs")
            else
                mkdir -p "$(in_root "$ROOT" "$(dirname "$dest")")"
                target=$(in_root "$ROOT" "$dest")
            fi
            rm -f "$target"
            cp --preserve=mode,timestamps "$hs" "$target"
            chown 0:0 "$target"
            [ -z "$from" ] || COPIED_FROM[${target#"$ROOT"}]="$from:$s"
        fi
    done
}

do_workdir() { # LINE PATH
    local p=$2 h uid gid rest
    case $p in /*) WD=$p ;; *) WD=${WD%/}/$p ;; esac
    WD=$(realpath -m -s "$WD")
    h=$(in_root "$ROOT" "$WD")
    mkdir -p "$h"
    if [ -n "$USERSPEC" ]; then # BuildKit creates it as the current USER
        read -r uid gid rest < <(resolve_user "$ROOT" "$USERSPEC")
        chown "$uid:$gid" "$h"
    fi
    echo "[$STAGE] line $1 WORKDIR $WD"
}

# ---- 1. parse -----------------------------------------------------------------------------

SRCDIR=$PROJ
if [ -n "$REF" ]; then
    SRCDIR=$WORK/git-tree
    rm -rf "$SRCDIR" && mkdir -p "$SRCDIR"
    git -C "$PROJ" archive --format=tar "$REF" | tar -C "$SRCDIR" -xf - ||
        fatal "context" "git archive $REF failed"
fi
DOCKERFILE_SRC=${DFILE:-$SRCDIR/Dockerfile}
[ -f "$DOCKERFILE_SRC" ] || fatal "parse" "no Dockerfile in $SRCDIR"
if ! parse_dockerfile "$DOCKERFILE_SRC" "$LOGS/plan" 2>"$LOGS/parse.err"; then
    fatal "parse" "$(grep -v ': warning: ' "$LOGS/parse.err" | tail -n 1)"
fi
grep ': warning: ' "$LOGS/parse.err" || true
mapfile -d '' PLAN <"$LOGS/plan"
NSTAGES=0
for rec in "${PLAN[@]}"; do
    case $rec in FROM\ *) NSTAGES=$((NSTAGES + 1)) ;; esac
done
result PASS "parse" "${#PLAN[@]} instructions in $NSTAGES stages, all understood"

# ---- 2. build context ---------------------------------------------------------------------

CTX=$WORK/context
rm -rf "$CTX"
stage_context "$SRCDIR" "$CTX" "$SRCDIR/.dockerignore" "$WORK" >"$LOGS/context.txt" ||
    fatal "context" "staging the build context failed"
read -r CTX_FILES CTX_BYTES CTX_TOP <"$LOGS/context.txt"
result PASS "context" "$CTX_FILES files, $((CTX_BYTES / 1024)) KiB after .dockerignore" \
    "($CTX_TOP)${REF:+ from git $REF}"

# ---- 3. stages ----------------------------------------------------------------------------

ensure_base
for rec in "${PLAN[@]}"; do
    eval "set -- $rec"
    kw=$1 line=$2
    shift 2
    case $kw in
    FROM) finish_stage; start_stage "$line" "$1" "$2" ;;
    RUN) do_run "$line" "$@" ;;
    COPY) do_copy "$line" "$@" ;;
    WORKDIR) do_workdir "$line" "$1" ;;
    USER) USERSPEC=$1; echo "[$STAGE] line $line USER $1" ;;
    ENV)
        [ -n "${ENVV[$1]+x}" ] || ENV_KEYS+=("$1")
        ENVV[$1]=$2
        echo "[$STAGE] line $line ENV $1=$2"
        ;;
    EXPOSE) EXPOSED+=("$1") ;;
    HEALTHCHECK)
        if [ "$1" = NONE ]; then HC=() HC_NONE=1; else HC=("$@") HC_NONE=0; fi ;;
    ENTRYPOINT) ENTRY=("$@"); [ "$CMD_SET" = 1 ] || CMDV=() ;;
    CMD) CMDV=("$@") CMD_SET=1 ;;
    *) fatal "plan" "internal: unknown record $kw" ;;
    esac
done
finish_stage

# ---- 4. the runtime root ------------------------------------------------------------------

R=$ROOT
MAIN=("${ENTRY[@]}" "${CMDV[@]}")
[ "${#MAIN[@]}" -gt 0 ] || fatal "image" "no ENTRYPOINT or CMD"
BIN=${MAIN[0]}
case $BIN in
/*) ;;
*) fatal "image" "the entrypoint $BIN is not an absolute path; this checker wants one" ;;
esac
read -r RUID RGID RGROUPS RHOME < <(resolve_user "$R" "$USERSPEC") ||
    fatal "user" "USER '$USERSPEC' does not resolve in the final root"
if [ "$RUID" -eq 0 ]; then
    result FAIL "user" "the image runs as root (USER '${USERSPEC:-unset}')"
else
    result PASS "user" "USER $USERSPEC -> uid $RUID gid $RGID (groups $RGROUPS), home $RHOME"
fi

pkgs=$(chroot "$R" dpkg-query -W -f '${Package}\n' | wc -l)
build_pkgs=$(chroot "$R" dpkg-query -W -f '${Package}\n' |
    grep -E -e '-dev$' -e '^(gcc|g\+\+|cpp)(-[0-9]+)?$' -e '^(make|binutils|build-essential)$' \
        -e '^python3' | tr '\n' ' ' || true)
if [ -z "$build_pkgs" ]; then
    result PASS "runtime packages" "$pkgs packages, none for building (no -dev, compiler," \
        "make, python3); root $(du -sm "$R" | cut -f1) MB"
else
    result FAIL "runtime packages" "build-time packages in the runtime root: $build_pkgs"
fi

mount_fs "$R"
log=$LOGS/ldd.log
if env -i PATH=$DEFAULT_PATH chroot "$R" ldd "$BIN" >"$log" 2>&1 && ! grep -q "not found" "$log"
then
    result PASS "ldd $BIN" "$(grep -c '=>' "$log") libraries, none missing:" \
        "$(awk '$2 == "=>" { print $1 }' "$log" | grep -v -E '^lib(c|m|gcc_s|pthread|quadmath)\.' |
            tr '\n' ' ')"
else
    result FAIL "ldd $BIN" "$(grep 'not found' "$log" | tr -s '\t\n' '  ' | cut -c1-200)"
    cat "$log"
fi

# The libraries the Makefile links (LDLIBS): each one's SONAME, read in the build stage, must be
# in the runtime root's ld.so.cache, even those the binary does not need yet (the linker drops
# unused ones, so ldd alone cannot see them).
linked_libs_check() {
    local src=${COPIED_FROM[$BIN]:-} bstage broot bwd ldlibs l so soname ok="" bad=""
    if [ -z "$src" ]; then
        result SKIP "LDLIBS sonames" "$BIN was not copied from a build stage"
        return
    fi
    bstage=${src%%:*} broot=${STAGE_ROOT[${src%%:*}]} bwd=${STAGE_WD[${src%%:*}]}
    if [ ! -f "$broot$bwd/Makefile" ]; then
        result SKIP "LDLIBS sonames" "no Makefile in stage $bstage's WORKDIR $bwd"
        return
    fi
    ldlibs=$(env -i PATH=$DEFAULT_PATH chroot "$broot" make -s --no-print-directory -C "$bwd"         --eval 'docker-check-ldlibs: ; @echo $(LDLIBS)' docker-check-ldlibs 2>/dev/null) || true
    for l in $ldlibs; do
        case $l in -lc | -lm | -lpthread | -ldl | -lrt) continue ;; -l*) ;; *) continue ;; esac
        so=$(env -i PATH=$DEFAULT_PATH chroot "$broot" gcc -print-file-name="lib${l#-l}.so")
        soname=$(env -i PATH=$DEFAULT_PATH chroot "$broot" objdump -p "$so" 2>/dev/null |
            awk '$1 == "SONAME" { print $2 }')
        if [ -z "$soname" ]; then
            bad="$bad ${l#-l}(no SONAME in the build stage)"
        elif env -i PATH=$DEFAULT_PATH chroot "$R" ldconfig -p |
            awk -v s="$soname" '$1 == s { f = 1 } END { exit !f }'; then
            ok="$ok $soname"
        else
            bad="$bad $soname"
        fi
    done
    if [ -z "$ldlibs" ]; then
        result SKIP "LDLIBS sonames" "could not read LDLIBS from $bwd/Makefile in stage $bstage"
    elif [ -z "$bad" ]; then
        result PASS "LDLIBS sonames" "all in the runtime root:$ok"
    else
        result FAIL "LDLIBS sonames" "missing in the runtime root:$bad (present:$ok)"
    fi
}
linked_libs_check

log=$LOGS/help.log
mkcmd "$R" "$USERSPEC" "$WD" "" "$BIN" --help
if "${CARGV[@]}" </dev/null >"$log" 2>&1 && grep -q "usage: adaptree" "$log"; then
    result PASS "--help as uid $RUID" "exit 0, $(grep -c . "$log") lines of usage" \
        "(commands: $(awk '/^commands:/ { c = 1; next } c && /^  [a-z]/ { print $1 }' "$log" |
            tr '\n' ' '))"
else
    result FAIL "--help as uid $RUID" "$(tail -n 3 "$log" | tr '\n' ' ')"
fi

MODEL=""
for ((i = 0; i < ${#MAIN[@]} - 1; i++)); do
    case ${MAIN[i]} in -m | --model) MODEL=${MAIN[i + 1]} ;; esac
done
if [ -n "$MODEL" ]; then
    want=$(sed -n 's/^SHA256="\([0-9a-f]*\)".*/\1/p' "$CTX/tools/fetch_model.sh" 2>/dev/null || true)
    case $MODEL in /*) mpath=$MODEL ;; *) mpath=${WD%/}/$MODEL ;; esac
    have=$(sha256sum "$(in_root "$R" "$mpath")" 2>/dev/null | cut -d' ' -f1 || true)
    if [ -n "$want" ] && [ "$have" = "$want" ]; then
        result PASS "model" "$MODEL, sha256 ${have:0:12}... as tools/fetch_model.sh expects"
    else
        result FAIL "model" "$MODEL: sha256 '${have:-file missing}', expected '$want'"
    fi
    log=$LOGS/generate.log
    t=$(date +%s)
    mkcmd "$R" "$USERSPEC" "$WD" "" "$BIN" generate -m "$MODEL" --chat -n 16 --temperature 0 \
        -p "What is the capital of France? Answer in one sentence."
    if run_bg timeout 300 nice -n 10 "${CARGV[@]}" </dev/null >"$log" 2>"$log.err" &&
        grep -q Paris "$log"; then
        result PASS "generate as uid $RUID" "\"$(tr -s '\n' ' ' <"$log" | cut -c1-60)\"" \
            "in $(elapsed "$t") s"
    else
        result FAIL "generate as uid $RUID" \
            "$(tail -q -n 3 "$log" "$log.err" | tr '\n' ' ' | cut -c1-200)"
    fi
else
    result SKIP "model" "no -m/--model in ENTRYPOINT/CMD"
fi

# ---- 5. serve -----------------------------------------------------------------------------

serve_check() {
    local log=$LOGS/serve.log hlog=$LOGS/healthcheck.log port="" i t cpid="" ok=0 st=0 hex
    # Does this binary have the subcommand at all?
    mkcmd "$R" "$USERSPEC" "$WD" "" "$BIN" serve --help
    timeout -k 2 15 "${CARGV[@]}" </dev/null >"$LOGS/serve-help.log" 2>&1 || true
    if grep -q "unknown command 'serve'" "$LOGS/serve-help.log"; then
        result SKIP "serve" "not available in this build, skipped"
        return
    fi
    if [ "$HC_NONE" = 1 ] || [ "${#HC[@]}" -eq 0 ]; then
        result FAIL "healthcheck" "the image has no HEALTHCHECK"
        return
    fi
    for ((i = 0; i < ${#MAIN[@]} - 1; i++)); do
        case ${MAIN[i]} in --port) port=${MAIN[i + 1]} ;; esac
    done
    [ -n "$port" ] || [ "${#EXPOSED[@]}" -eq 0 ] || port=${EXPOSED[0]%/*}
    echo "serve: ${MAIN[*]}"
    echo "serve: as uid $RUID, PID 1 of its own PID, mount and network namespaces (log: $log)"
    t=$(date +%s)
    # The container: a fresh /proc for its PID namespace, loopback up, then exec the image's
    # ENTRYPOINT + CMD (unchanged: the port is free in a new network namespace).
    mkcmd "$R" "$USERSPEC" "$WD" "" "${MAIN[@]}"
    unshare --net --pid --mount --fork --kill-child -- bash -c '
        set -e; r=$1; shift
        mount -t proc -o nosuid,nodev,noexec proc "$r/proc"
        ip link set lo up
        exec "$@"' docker-check "$R" "${CARGV[@]}" </dev/null >"$log" 2>&1 &
    SERVE_UPID=$!
    for ((i = 0; i < 100; i++)); do
        cpid=$(pgrep -P "$SERVE_UPID" | head -n 1 || true)
        [ -n "$cpid" ] && break
        sleep 0.1
    done
    [ -n "$cpid" ] || { result FAIL "serve" "the container process did not start"; return; }
    # The HEALTHCHECK command, polled every second, as the image's USER, in the container's
    # network namespace, with the HEALTHCHECK's --timeout.
    local hc_int=${HC[0]%.*} hc_to=${HC[1]%.*} hc_sp=${HC[2]%.*} hc_ret=${HC[3]}
    local hc_cmd=("${HC[@]:4}")
    mkcmd "$R" "$USERSPEC" "$WD" "" "${hc_cmd[@]}"
    : >"$hlog"
    for ((i = 0; i < HEALTH_WAIT; i++)); do
        if ! kill -0 "$SERVE_UPID" 2>/dev/null; then
            wait "$SERVE_UPID" || st=$?
            SERVE_UPID=""
            result FAIL "serve" "exited with status $st before it was healthy:" \
                "$(tail -n 2 "$log" | tr '\n' ' ' | cut -c1-200)"
            echo "---- last 30 lines of $log"
            tail -n 30 "$log"
            return
        fi
        if timeout -k 2 "${hc_to:-30}" nsenter --target "$cpid" --net -- "${CARGV[@]}" \
            </dev/null >>"$hlog" 2>&1; then
            ok=1
            break
        fi
        sleep 1
    done
    if [ "$ok" = 1 ]; then
        result PASS "healthcheck" "'${hc_cmd[*]: -1}' passed ${i} s after start" \
            "(HEALTHCHECK interval ${hc_int}s, timeout ${hc_to}s, start period ${hc_sp}s," \
            "retries $hc_ret)"
    else
        result FAIL "healthcheck" "'${hc_cmd[*]: -1}' did not pass in $HEALTH_WAIT s:" \
            "$(tail -n 2 "$hlog" | tr '\n' ' ' | cut -c1-160)"
        echo "---- last 30 lines of $log"
        tail -n 30 "$log"
    fi
    if [ -n "$port" ]; then
        hex=$(printf '%04X' "$port")
        if nsenter --target "$cpid" --net -- cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
            awk -v h=":$hex" '$4 == "0A" && ($2 == "00000000" h ||
                $2 == "00000000000000000000000000000000" h) { f = 1 } END { exit !f }'; then
            result PASS "listen" "on all addresses, port $port (what docker run -p needs)"
        else
            result FAIL "listen" "nothing listens on 0.0.0.0:$port or [::]:$port;" \
                "docker run -p $port:$port would not reach the server"
        fi
    fi
    # docker stop: SIGTERM to PID 1, SIGKILL 10 s later.
    t=$(date +%s)
    kill -TERM "$cpid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$SERVE_UPID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$SERVE_UPID" 2>/dev/null; then
        kill -KILL "$cpid" 2>/dev/null || true
        wait "$SERVE_UPID" 2>/dev/null || true
        result WARN "stop" "PID 1 ignored SIGTERM for 10 s (docker stop would SIGKILL it);" \
            "the server needs a SIGTERM handler"
    else
        wait "$SERVE_UPID" || st=$?
        result PASS "stop" "SIGTERM to PID 1: exited with status $st after $(elapsed "$t") s"
    fi
    SERVE_UPID=""
}
serve_check
umount_under "$R"

SUMMARY_DONE=1
summary
[ "$NFAIL" -eq 0 ]

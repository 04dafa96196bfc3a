#!/usr/bin/env bash
# Builds the Dockerfile with buildah and checks the built image; no Docker engine, no registry.
#
# usage: tools/image.sh build    (make image)          as root
#        tools/image.sh check    (make docker-check)   as root, after build
# environment:
#   IMAGE                   the tag to build and check (default adaptree:latest)
#   BUILDAH_ISOLATION       buildah's RUN isolation (default chroot: needs no OCI runtime and
#                           works inside a container; oci needs runc or crun)
#   BUILDAH_STORAGE_DRIVER  containers-storage driver (default overlay; vfs where the kernel or
#                           the backing filesystem cannot do overlay: slower, several GB)
#   IMAGE_FRESH=1           debootstrap the base images again (otherwise made once, then reused)
#   DEBIAN_MIRROR           where debootstrap fetches from (default: this host's apt mirror)
#   HEALTH_WAIT             seconds the HEALTHCHECK may take to pass (default 90)
#
# build: the Dockerfile's FROM images (debian:12, debian:12-slim) cannot be pulled here, so the
# first run debootstraps bookworm (minbase) from the host's Debian mirror, configures it like the
# official image (slim: without docs, man pages, locales) and commits it into buildah's local
# storage under the FROM names; later runs reuse it. Then `buildah build --format docker
# --layers --pull=never` on the unchanged Dockerfile (docker format keeps HEALTHCHECK).
# check: reads the built image's config (User, WorkingDir, Env, Entrypoint, Cmd, ExposedPorts,
# Healthcheck) and runs its checks in a working container made from it with `buildah run`, which
# applies User, WorkingDir and Env itself; the server runs in a private network namespace, so
# its CMD and HEALTHCHECK keep port 8080 unchanged.
# shellcheck disable=SC2016  # single-quoted $(...) and ${...} are meant literally (make, dpkg-query)
set -euo pipefail
umask 022
PROJ=$(cd "$(dirname "$0")/.." && pwd)
cd "$PROJ"
IMAGE=${IMAGE:-adaptree:latest}
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
BUILDAH_STORAGE_DRIVER=${BUILDAH_STORAGE_DRIVER:-overlay}
WORK=$PROJ/build/image
mkdir -p "$WORK"
bh() { buildah --storage-driver "$BUILDAH_STORAGE_DRIVER" "$@"; }
now() { date +%s; }
T0=$(now)

if [ "$(id -u)" -ne 0 ]; then
    echo "image: must run as root (buildah's storage, debootstrap)" >&2
    exit 1
fi
need=""
command -v buildah >/dev/null || need="$need buildah"
command -v debootstrap >/dev/null || need="$need debootstrap"
command -v ip >/dev/null || need="$need iproute2"
command -v curl >/dev/null || need="$need curl"
if [ -n "$need" ]; then
    echo "image: installing:$need"
    # shellcheck disable=SC2086  # a word list
    if ! apt-get install -y -qq --no-install-recommends $need >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
    fi
fi
exec 9>"$WORK/.lock"
flock -n 9 || { echo "image: another tools/image.sh is running" >&2; exit 1; }

# ---- build ---------------------------------------------------------------------------------

host_mirror() { # the first Debian (non-security) URI this host's apt uses
    local u
    u=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | grep -v '^\s*#' |
        grep -o -E 'https?://[^ ]+/debian/?( |$)' | head -n 1 | tr -d ' ') || true
    echo "${u%/}"
}

configure_root() { # ROOT MIRROR: like the official debian:12 image (debuerreotype)
    local r=$1 m=$2
    rm -rf "${r:?}"/dev/* "$r/etc/apt/sources.list" "$r/etc/hostname"
    cat >"$r/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $m
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${m%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
    printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
    chmod 755 "$r/usr/sbin/policy-rc.d"
    cat >"$r/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    echo 'Acquire::Languages "none";' >"$r/etc/apt/apt.conf.d/docker-no-languages"
    echo 'APT::AutoRemove::SuggestsImportant "false";' \
        >"$r/etc/apt/apt.conf.d/docker-autoremove-suggests"
    echo 'force-unsafe-io' >"$r/etc/dpkg/dpkg.cfg.d/docker-apt-speedup"
    rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/archives/*.deb "$r"/var/cache/apt/*.bin \
        "$r"/var/log/*.log
}

slimify() { # ROOT: what debian:12-slim leaves out
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
        [ ! -d "$r/usr/share/$d" ] || find "$r/usr/share/$d" -mindepth 1 -delete
    done
    [ ! -d "$r/usr/share/locale" ] ||
        find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
}

umount_under() { # DIR: what debootstrap may have left mounted below DIR (an interrupted run)
    findmnt -rn -o TARGET | { grep "^$1/" || true; } | sort -r | xargs -r umount -l
}

ensure_bases() { # debian:12 and debian:12-slim in local storage, debootstrapped once
    local names=() n missing=0 t mirror root=$WORK/rootfs ctr mnt
    mapfile -t names < <(awk 'toupper($1) == "FROM" { print $2 }' Dockerfile | sort -u)
    for n in "${names[@]}"; do
        case ${n#docker.io/library/} in
        debian:12 | debian:bookworm | debian:12-slim | debian:bookworm-slim) ;;
        *) echo "image: FROM $n: only debian:12[-slim] can be made offline here" >&2; exit 1 ;;
        esac
        bh inspect --type image "docker.io/library/${n#docker.io/library/}" >/dev/null 2>&1 ||
            missing=1
    done
    if [ "$missing" = 0 ] && [ "${IMAGE_FRESH:-0}" != 1 ]; then
        echo "image: base images present (${names[*]}; IMAGE_FRESH=1 makes them again)"
        return
    fi
    mirror=${DEBIAN_MIRROR:-$(host_mirror)}
    mirror=${mirror:-http://deb.debian.org/debian}
    t=$(now)
    echo "image: debootstrap --variant=minbase bookworm from $mirror (log: $WORK/debootstrap.log)"
    umount_under "$root"
    rm -rf "$root"
    if ! nice -n 10 debootstrap --variant=minbase bookworm "$root" "$mirror" \
        >"$WORK/debootstrap.log" 2>&1; then
        tail -n 30 "$WORK/debootstrap.log"
        echo "image: debootstrap failed (can this machine reach $mirror?)" >&2
        exit 1
    fi
    umount_under "$root"
    configure_root "$root" "$mirror"
    echo "image: debootstrap done in $(($(now) - t)) s, $(du -sm "$root" | cut -f1) MB"
    for variant in full slim; do
        bh rm "adaptree-base-$variant" >/dev/null 2>&1 || true # left by an interrupted run
        ctr=$(bh from --pull=never --name "adaptree-base-$variant" scratch)
        mnt=$(bh mount "$ctr")
        cp -a "$root/." "$mnt/"
        [ "$variant" = full ] || slimify "$mnt"
        bh umount "$ctr" >/dev/null
        bh config --os linux --arch "$(dpkg --print-architecture)" --cmd bash \
            --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --label "org.adaptree.base=debootstrap minbase bookworm $(date -u +%Y-%m-%d) $mirror" \
            "$ctr"
        if [ "$variant" = full ]; then
            bh commit -q --rm --format docker "$ctr" docker.io/library/debian:12 >/dev/null
            bh tag docker.io/library/debian:12 docker.io/library/debian:bookworm
        else
            bh commit -q --rm --format docker "$ctr" docker.io/library/debian:12-slim >/dev/null
            bh tag docker.io/library/debian:12-slim docker.io/library/debian:bookworm-slim
        fi
    done
    rm -rf "$root"
    echo "image: base images debian:12 and debian:12-slim committed in $(($(now) - t)) s"
}

build() {
    local extra=() t
    ensure_bases
    # Behind a TLS-intercepting egress proxy (extra CAs trusted here), pip in the build stage
    # needs this host's CA bundle: RUN steps get a scratch /root (bind-mounted over the image's
    # own, so no mount point is left in a layer) whose pip.conf points at a copy of the bundle.
    if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
        rm -rf "$WORK/root" && mkdir -p "$WORK/root/.config/pip" && chmod 700 "$WORK/root"
        cp /etc/ssl/certs/ca-certificates.crt "$WORK/root/host-ca.pem"
        printf '[global]\ncert = /root/host-ca.pem\n' >"$WORK/root/.config/pip/pip.conf"
        extra=(-v "$WORK/root:/root")
    fi
    t=$(now)
    echo "image: buildah build --format docker --layers -t $IMAGE (isolation $BUILDAH_ISOLATION," \
        "storage $BUILDAH_STORAGE_DRIVER)"
    bh build --format docker --layers --pull=never --isolation "$BUILDAH_ISOLATION" \
        "${extra[@]}" -t "$IMAGE" -f Dockerfile .
    echo "image: $IMAGE built in $(($(now) - t)) s ($(($(now) - T0)) s in all):"
    bh images --format '{{.Name}}:{{.Tag}} {{.ID}} {{.Size}} {{.CreatedAtRaw}}' "$IMAGE"
}

case ${1:-} in
build) build; exit 0 ;;
check) ;;
*) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac

# ---- check ---------------------------------------------------------------------------------

NFAIL=0 NPASS=0 RESULTS=()
result() { # PASS|FAIL WHAT DETAIL...
    local st=$1 what=$2
    shift 2
    RESULTS+=("$(printf '%-4s  %-22s %s' "$st" "$what" "$*")")
    if [ "$st" = PASS ]; then NPASS=$((NPASS + 1)); else NFAIL=$((NFAIL + 1)); fi
    printf '%-4s  %s: %s\n' "$st" "$what" "$*"
}
NS=adaptree-check-$$ CTR="" SRV="" HCC="" SERVE_PID=""
cleanup() {
    local rc=$? r
    trap - EXIT INT TERM
    [ -z "$SERVE_PID" ] || kill -KILL "$SERVE_PID" 2>/dev/null || true
    for p in $(ip netns pids "$NS" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    ip netns del "$NS" 2>/dev/null || true
    for r in $CTR $SRV $HCC; do bh rm "$r" >/dev/null 2>&1 || true; done
    echo
    echo "== docker-check of $IMAGE ($(bh images --format '{{.ID}}' "$IMAGE" 2>/dev/null)) =="
    for r in "${RESULTS[@]}"; do echo "$r"; done
    if [ "$NFAIL" -eq 0 ] && [ "$rc" -eq 0 ]; then
        echo "RESULT: PASS ($NPASS checks) in $(($(now) - T0)) s"
    else
        [ "$rc" -ne 0 ] || rc=1
        echo "RESULT: FAIL ($NFAIL failed, $NPASS passed, exit $rc); logs in $WORK" >&2
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bh inspect --type image "$IMAGE" >/dev/null 2>&1 ||
    { result FAIL image "no $IMAGE in buildah's storage: run make image"; exit 1; }
# The image's config as shell variables (Docker format: Healthcheck is kept only there).
eval "$(bh inspect --type image "$IMAGE" | python3 -c '
import json, shlex, sys
c = json.load(sys.stdin)["Docker"].get("config") or {}
hc = c.get("Healthcheck") or {}
t = hc.get("Test") or []
if t[:1] == ["CMD-SHELL"]:
    t = ["/bin/sh", "-c", " ".join(t[1:])]
elif t[:1] == ["CMD"]:
    t = t[1:]
else:
    t = []
def arr(name, v):
    print("%s=(%s)" % (name, " ".join(shlex.quote(x) for x in (v or []))))
print("C_USER=%s C_WD=%s" % (shlex.quote(c.get("User") or ""), shlex.quote(c.get("WorkingDir") or "/")))
arr("C_ENV", c.get("Env"))
arr("C_MAIN", (c.get("Entrypoint") or []) + (c.get("Cmd") or []))
arr("C_PORTS", sorted(c.get("ExposedPorts") or {}))
arr("C_HC", t)
print("C_HC_TIMEOUT=%d" % ((hc.get("Timeout") or 30 * 10**9) // 10**9))
print("C_HC_DESC=%s" % shlex.quote("interval %ds, timeout %ds, start period %ds, retries %d" % tuple(
    (hc.get(k) or 0) // d for k, d in (("Interval", 10**9), ("Timeout", 10**9),
                                       ("StartPeriod", 10**9), ("Retries", 1)))))
')"
BIN=${C_MAIN[0]:-}
PORT=${C_PORTS[0]:-}
PORT=${PORT%/*}
desc="USER ${C_USER:-unset}, WORKDIR $C_WD, ENTRYPOINT+CMD ${C_MAIN[*]:-none}, EXPOSE ${C_PORTS[*]:-none}"
if [ -n "$BIN" ] && [ -n "$PORT" ] && [ "${#C_HC[@]}" -gt 0 ]; then
    result PASS config "$desc, HEALTHCHECK, ${#C_ENV[@]} ENV"
else
    result FAIL config "$desc, HEALTHCHECK ${C_HC[*]:-none} (built as OCI?)"
fi
CTR=$(bh from --pull=never --name "adaptree-check-$$" "$IMAGE")
brun() { bh run --isolation "$BUILDAH_ISOLATION" "$@"; } # as the image's USER, WORKDIR, ENV

# uid: buildah run applies the image's USER; it must not be root.
uid=$(brun "$CTR" -- id -u 2>"$WORK/id.err") || uid=""
wd=$(brun "$CTR" -- pwd 2>/dev/null) || wd=""
if [ -n "$uid" ] && [ "$uid" != 0 ] && [ "$wd" = "$C_WD" ]; then
    result PASS user "runs as uid $uid (USER $C_USER), in WORKDIR $wd"
else
    result FAIL user "uid '${uid:-?}' (USER '${C_USER:-unset}'), pwd '$wd' (WORKDIR $C_WD)" \
        "$(cat "$WORK/id.err")"
fi

# Nothing build-only installed in the runtime image.
pk=$(brun --user 0:0 "$CTR" -- dpkg-query -W -f '${Package}\n')
bad=$(echo "$pk" | grep -E -e '-dev$' -e '^(gcc|g\+\+|cpp)(-[0-9]+)?$' \
    -e '^(make|binutils|build-essential)$' -e '^python3' | tr '\n' ' ' || true)
if [ -z "$bad" ]; then
    result PASS packages "$(echo "$pk" | wc -l) packages, none for building (-dev, compiler," \
        "make, python3)"
else
    result FAIL packages "build-time packages in the runtime image: $bad"
fi

# ldd: every library of the entrypoint resolves.
if brun "$CTR" -- ldd "$BIN" >"$WORK/ldd.log" 2>&1 && ! grep -q 'not found' "$WORK/ldd.log"; then
    result PASS ldd "$BIN: $(grep -c '=>' "$WORK/ldd.log") libraries, none missing"
else
    result FAIL ldd "$BIN: $(grep -E 'not found|rror' "$WORK/ldd.log" | tr -s '\t\n' '  ')"
fi

# Every library the Makefile links (LDLIBS) has its SONAME in the image's ld.so.cache, even
# those the linker dropped as unused (ldd cannot see them). SONAMEs from this host's -dev
# packages (Debian 12, the same as the build stage's).
cache=$(brun --user 0:0 "$CTR" -- /sbin/ldconfig -p)
ok="" miss=""
for l in $(make -s --no-print-directory --eval 'print-ldlibs: ; @echo $(LDLIBS)' print-ldlibs); do
    case $l in -lc | -lm | -lpthread | -ldl | -lrt | -l) continue ;; -l*) ;; *) continue ;; esac
    so=$(objdump -p "$(gcc -print-file-name="lib${l#-l}.so")" 2>/dev/null |
        awk '$1 == "SONAME" { print $2 }')
    if [ -n "$so" ] && echo "$cache" | awk -v s="$so" '$1 == s { f = 1 } END { exit !f }'; then
        ok="$ok $so"
    else
        miss="$miss ${so:-lib${l#-l}(no SONAME on this host)}"
    fi
done
if [ -n "$ok" ] && [ -z "$miss" ]; then
    result PASS "LDLIBS sonames" "all in the image:$ok"
else
    result FAIL "LDLIBS sonames" "missing:${miss:- (could not read LDLIBS)} (present:$ok)"
fi

if brun "$CTR" -- "$BIN" --help >"$WORK/help.log" 2>&1 && grep -q 'usage: adaptree' "$WORK/help.log"
then
    result PASS "--help" "exit 0, $(grep -c . "$WORK/help.log") lines of usage"
else
    result FAIL "--help" "$(tail -n 3 "$WORK/help.log" | tr '\n' ' ')"
fi

MODEL=""
for ((i = 0; i < ${#C_MAIN[@]} - 1; i++)); do
    case ${C_MAIN[i]} in -m | --model) MODEL=${C_MAIN[i + 1]} ;; esac
done
want=$(sed -n 's/^SHA256="\([0-9a-f]*\)".*/\1/p' tools/fetch_model.sh)
have=$(brun "$CTR" -- sha256sum "$MODEL" 2>/dev/null | cut -d' ' -f1) || have=""
if [ -n "$MODEL" ] && [ "$have" = "$want" ]; then
    result PASS model "$MODEL, sha256 ${have:0:12}... as tools/fetch_model.sh expects"
else
    result FAIL model "'$MODEL': sha256 '${have:-missing}', expected '$want'"
fi

t=$(now)
if timeout 300 buildah --storage-driver "$BUILDAH_STORAGE_DRIVER" run --isolation \
    "$BUILDAH_ISOLATION" "$CTR" -- "$BIN" generate -m "$MODEL" --chat -n 16 --temperature 0 \
    -p "What is the capital of France? Answer in one sentence." \
    </dev/null >"$WORK/generate.log" 2>"$WORK/generate.err" &&
    grep -q Paris "$WORK/generate.log"; then
    result PASS generate "\"$(tr -s '\n' ' ' <"$WORK/generate.log" | cut -c1-60)\"" \
        "in $(($(now) - t)) s"
else
    result FAIL generate "$(tail -q -n 3 "$WORK/generate.log" "$WORK/generate.err" | tr '\n' ' ' |
        cut -c1-200)"
fi

# The server: ENTRYPOINT + CMD unchanged, in a network namespace of its own (chroot isolation
# shares the caller's network), so port 8080 is free and the HEALTHCHECK's URL is right as is.
[ "${#C_HC[@]}" -gt 0 ] && [ -n "$BIN" ] || exit 1
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
inns() { ip netns exec "$NS" "$@"; }
echo "serve: ${C_MAIN[*]} (network namespace $NS; log $WORK/serve.log)"
# One working container per concurrent `buildah run` (concurrent runs in one container make
# buildah 1.28's cleanup fail): SRV for the server, HCC for the HEALTHCHECK command.
SRV=$(bh from --pull=never --name "adaptree-serve-$$" "$IMAGE")
HCC=$(bh from --pull=never --name "adaptree-health-$$" "$IMAGE")
inns buildah --storage-driver "$BUILDAH_STORAGE_DRIVER" run --isolation "$BUILDAH_ISOLATION" \
    "$SRV" -- "${C_MAIN[@]}" </dev/null >"$WORK/serve.log" 2>&1 &
RUN_PID=$!
healthy=""
: >"$WORK/healthcheck.log"
for ((i = 0; i < ${HEALTH_WAIT:-90}; i++)); do
    kill -0 "$RUN_PID" 2>/dev/null || break
    if inns timeout -k 2 "$C_HC_TIMEOUT" buildah --storage-driver "$BUILDAH_STORAGE_DRIVER" run \
        --isolation "$BUILDAH_ISOLATION" "$HCC" -- "${C_HC[@]}" >>"$WORK/healthcheck.log" 2>&1; then
        healthy=$i
        break
    fi
    sleep 1
done
if [ -n "$healthy" ]; then
    result PASS healthcheck "'${C_HC[*]: -1}' passed $healthy s after start ($C_HC_DESC)"
else
    result FAIL healthcheck "'${C_HC[*]: -1}' did not pass in ${HEALTH_WAIT:-90} s:" \
        "$(grep -v -e '^Error' -e 'subprocess exited' "$WORK/healthcheck.log" | tail -n 1);" \
        "server: $(tail -n 1 "$WORK/serve.log" | cut -c1-200)"
fi
SERVE_PID=$(for p in $(ip netns pids "$NS"); do
    [ "$(readlink "/proc/$p/exe" 2>/dev/null)" != "$(readlink -f /proc/$RUN_PID/exe)" ] &&
        [ "$(cat "/proc/$p/comm" 2>/dev/null)" = "$(basename "$BIN")" ] && echo "$p"
done | head -n 1)

hex=$(printf '%04X' "${PORT:-0}")
if [ -n "$PORT" ] && inns cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
    awk -v h=":$hex" '$4 == "0A" && ($2 == "00000000" h ||
        $2 == "00000000000000000000000000000000" h) { f = 1 } END { exit !f }'; then
    result PASS listen "on all addresses, EXPOSEd port $PORT (what docker run -p needs)"
else
    result FAIL listen "nothing listens on 0.0.0.0 or [::] at the EXPOSEd port '${PORT:-none}'"
fi

t=$(now)
body='{"messages":[{"role":"user","content":"What is the capital of France? Answer in one sentence."}],"max_tokens":16,"temperature":0}'
if inns curl -fsS -m 120 -H 'Content-Type: application/json' -d "$body" \
    "http://127.0.0.1:${PORT:-8080}/v1/chat/completions" >"$WORK/http.json" 2>"$WORK/http.err" &&
    grep -q Paris "$WORK/http.json"; then
    result PASS "HTTP generate" "POST 127.0.0.1:$PORT/v1/chat/completions:" \
        "\"$(python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["message"]["content"][:60])' \
            <"$WORK/http.json" | tr -s '\n' ' ')\" in $(($(now) - t)) s"
else
    result FAIL "HTTP generate" "$(cat "$WORK/http.err" "$WORK/http.json" | tr -s '\n' ' ' | cut -c1-200)"
fi

# docker stop: SIGTERM to the server, SIGKILL 10 s later.
t=$(now)
if [ -z "$SERVE_PID" ]; then
    result FAIL stop "no $(basename "$BIN") process found in the network namespace"
else
    kill -TERM "$SERVE_PID"
    for ((i = 0; i < 100; i++)); do
        kill -0 "$RUN_PID" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$RUN_PID" 2>/dev/null; then
        kill -KILL "$SERVE_PID" 2>/dev/null || true
        result FAIL stop "still running 10 s after SIGTERM (docker stop would SIGKILL it)"
    else
        st=0
        wait "$RUN_PID" || st=$?
        if [ "$st" -eq 0 ]; then
            result PASS stop "SIGTERM: exited with status 0 after $(($(now) - t)) s"
        else
            result FAIL stop "SIGTERM: exited with status $st: $(tail -n 2 "$WORK/serve.log")"
        fi
    fi
    SERVE_PID=""
fi

#!/bin/sh
# The module-direction rule of DESIGN.md §1: server -> adapters -> core, never back.
set -u
bad=0
if grep -nE '#include *"(\.\./)?(adapters|server)/' core/*.c core/*.h 2>/dev/null; then
    echo "lint: core/ must not include adapters/ or server/ headers"; bad=1
fi
if grep -nE '#include *"(\.\./)?server/' adapters/*.c adapters/*.h 2>/dev/null; then
    echo "lint: adapters/ must not include server/ headers"; bad=1
fi
if grep -nE '#include *<(uv|microhttpd|cJSON|cjson/cJSON)\.h>' core/*.c core/*.h 2>/dev/null; then
    echo "lint: core/ depends on libc, libm and OpenBLAS only"; bad=1
fi
# core's only threads are its kernel pool (core/pool.h says why); nothing else in core starts any.
if grep -nE '#include *<pthread\.h>' core/*.c core/*.h 2>/dev/null | grep -v '^core/pool\.c:'; then
    echo "lint: core/ threads live in core/pool.c only"; bad=1
fi
if grep -nE '#include *<(microhttpd)\.h>' adapters/*.c adapters/*.h 2>/dev/null; then
    echo "lint: adapters/ must not use HTTP"; bad=1
fi
[ $bad -eq 0 ] && echo "lint: module directions ok"
exit $bad

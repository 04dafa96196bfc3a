#!/bin/sh
# The module-direction rules (docs/ARCHITECTURE.md, "Layers"):
#   server -> adapters -> core, never back;
#   inside core: format/ and text/ never include kernels/ or model/ (text/ may read format/);
#   nothing outside core includes a core internal header (*_internal.h), but core's own tests,
#   fuzz targets and benchmark; the same for adapters;
#   core depends on libc, libm and OpenBLAS only, and its only threads are its kernel pool.
set -u
bad=0
core=$(find core -name '*.[ch]')
adapters=$(find adapters -name '*.[ch]')
fail() {
    echo "lint: $1"
    bad=1
}
grep -nE '#include *"(\.\./)?(adapters|server)/' $core && fail "core/ must not include adapters/ or server/ headers"
grep -nE '#include *"(\.\./)?server/' $adapters && fail "adapters/ must not include server/ headers"
grep -nE '#include *"core/(kernels|model)/' $(find core/format core/text -name '*.[ch]') &&
    fail "core/format and core/text must not include core/kernels or core/model"
grep -nE '#include *"core/text/' $(find core/format -name '*.[ch]') &&
    fail "core/format must not include core/text"
outside=$(find adapters server tools tests -name '*.[ch]' ! -path 'tests/unit/core/*' ! -path 'tests/bench/*' \
    ! -path 'tests/fuzz/*' 2>/dev/null)
grep -nE '#include *"core/.*_internal\.h"' $outside && fail "only core (and its tests) include core's internal headers"
outside=$(find server tools tests -name '*.[ch]' ! -path 'tests/unit/adapters/*' ! -path 'tests/fuzz/*' \
    2>/dev/null)
grep -nE '#include *"adapters/.*_internal\.h"' $outside &&
    fail "only adapters (and its tests) include adapters' internal headers"
grep -nE '#include *<(uv|microhttpd|cJSON|cjson/cJSON)\.h>' $core && fail "core/ depends on libc, libm and OpenBLAS only"
# core's only threads are its kernel pool (core/kernels/pool_internal.h says why); nothing else starts any.
grep -nE '#include *<pthread\.h>' $core | grep -v '^core/kernels/pool\.c:' &&
    fail "core/ threads live in core/kernels/pool.c only"
grep -nE '#include *<(microhttpd)\.h>' $adapters && fail "adapters/ must not use HTTP"
[ $bad -eq 0 ] && echo "lint: module directions ok"
exit $bad

/* Probe for tests/unit/core/kernels/test_blas.c: runs core_blas_ensure_kernel as adaptree's main()
 * does, then prints what OpenBLAS ended up with, so the test can see a real re-exec from outside.
 * Output: "core=<core> reexec=<ADAPTREE_BLAS_REEXEC or -> rc=<result>" and "msg=<message>". */
#include <stdio.h>
#include <stdlib.h>

#include "core/kernels/blas.h"

int main(int argc, char **argv)
{
    char msg[256] = "";
    int rc = core_blas_ensure_kernel(argc, argv, msg, sizeof(msg));
    const char *reexec = getenv("ADAPTREE_BLAS_REEXEC");
    printf("core=%s reexec=%s rc=%d\n", core_blas_corename(), reexec ? reexec : "-", rc);
    printf("msg=%s\n", msg);
    return 0;
}

/* adaptree: one binary, several subcommands (docs/ARCHITECTURE.md §1). main() makes sure OpenBLAS
 * runs its real kernels (re-executing itself if needed) and dispatches. */
#include <stdio.h>
#include <string.h>

#include "core/kernels/blas.h"
#include "server/cli.h"
#include "server/strbuf.h"
#include "server/version.h"

static void usage(FILE *out)
{
    fprintf(out,
            "usage: adaptree COMMAND [options]\n"
            "\n"
            "commands:\n"
            "  serve     [--host H] [--port P] [-m MODEL] [--registry DIR] ...\n"
            "                                  the OpenAI-compatible HTTP server (default\n"
            "                                  127.0.0.1:8080, the default model, registry/)\n"
            "  generate  -m MODEL -p PROMPT [-n N] [--chat] [--temperature T] [--top-p P]\n"
            "            [--seed S] ...        run one prompt and stream the text\n"
            "  inspect   MODEL.gguf            print metadata, tensor types and the BLAS core\n"
            "  merge     -m MODEL --registry DIR (--select ID | --adapter ID[:S]...) -o OUT.gguf\n"
            "            [--outtype f32|f16]   write a GGUF with the adapters merged in\n"
            "  version                         version, git commit, build flags and the CPU\n"
            "                                  kernels in use (also --version)\n"
            "\n"
            "'adaptree COMMAND --help' lists a command's options.\n");
}

int main(int argc, char **argv)
{
    char msg[256] = "";
    int rc = core_blas_ensure_kernel(argc, argv, msg, sizeof msg);
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        srv_buf b;
        srv_buf_init(&b);
        srv_version_text(&b);
        int ok = srv_buf_ok(&b) && fputs(b.data, stdout) >= 0;
        srv_buf_deinit(&b);
        return ok ? 0 : 1;
    }
    /* Say what happened to the BLAS core only when something did (or failed). */
    if (rc <= 0 && msg[0])
        fprintf(stderr, "%s\n", msg);
    const char *cmd = argv[1];
    if (!strcmp(cmd, "serve"))
        return srv_cli_serve(argc - 1, argv + 1);
    if (!strcmp(cmd, "generate"))
        return srv_cli_generate(argc - 1, argv + 1);
    if (!strcmp(cmd, "inspect"))
        return srv_cli_inspect(argc - 1, argv + 1);
    if (!strcmp(cmd, "merge"))
        return srv_cli_merge(argc - 1, argv + 1);
    fprintf(stderr, "adaptree: unknown command '%s'\n", cmd);
    usage(stderr);
    return 2;
}

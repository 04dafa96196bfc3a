/* Golden tokenizer test over llama.cpp's tokenizer test vocabularies (make vocab puts them in
 * models/vocab): for each ggml-vocab-NAME.gguf, every case of NAME.gguf.inp (texts separated by
 * "\n__ggml_vocab_test__\n") must tokenize, without BOS and without parsing special tokens, to
 * exactly the ids of the same line of NAME.gguf.out (made by llama.cpp from Hugging Face's
 * tokenizer), and decode back to its text. Prints "NAME: N/N cases" and every mismatch with both
 * sides. A vocabulary whose tokenizer.ggml.model or .pre we refuse is skipped with the refusal;
 * a vocabulary file this list does not know is reported as skipped too, never passed. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/format/gguf.h"
#include "core/text/tokenizer.h"
#include "tests/test.h"

#define VOCAB_DIR "models/vocab"
#define SEP "\n__ggml_vocab_test__\n"

/* Cuts the .inp text into cases (each ends with SEP, except perhaps a last one, as in
 * gemma-4's file); returns their number. */
static size_t split_cases(char *inp, char **cases, size_t *lens, size_t max)
{
    size_t n = 0;
    char *p = inp, *q;
    for (; n < max && (q = strstr(p, SEP)); p = q + strlen(SEP)) {
        cases[n] = p;
        lens[n++] = (size_t)(q - p);
    }
    if (*p && n < max) {
        cases[n] = p;
        lens[n++] = strlen(p);
    }
    return n;
}

/* Parses one .out line of space-separated ids into ids (max cap); returns the count. */
static size_t parse_ids(const char *line, int32_t *ids, size_t cap)
{
    size_t n = 0;
    char *end;
    for (const char *p = line; *p && *p != '\n' && n < cap; p = end) {
        long v = strtol(p, &end, 10);
        if (end == p)
            break;
        ids[n++] = (int32_t)v;
    }
    return n;
}

static void print_escaped(const char *label, const char *s, size_t n)
{
    printf("      %s \"", label);
    for (size_t i = 0; i < n && i < 160; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            printf("\\n");
        else if (c == '\t')
            printf("\\t");
        else if (c < 0x20 || c == '"' || c == '\\')
            printf("\\x%02x", c);
        else
            putchar(c);
    }
    printf("%s\"\n", n > 160 ? "..." : "");
}

static void print_ids(const char *label, const int32_t *ids, size_t n)
{
    printf("      %s [", label);
    for (size_t i = 0; i < n; i++)
        printf("%s%d", i ? " " : "", ids[i]);
    printf("]\n");
}

/* Checks one case; prints it and returns false on a mismatch of ids or of the round trip. */
static bool check_case(const core_tokenizer *t, size_t k, const char *text, size_t len,
                       const char *out_line)
{
    int32_t want[4096];
    size_t n_want = parse_ids(out_line, want, sizeof want / sizeof want[0]);
    int32_t *got = NULL;
    size_t n_got = 0;
    if (core_tokenize(t, text, len, false, &got, &n_got) < 0) {
        printf("    case %zu: core_tokenize failed\n", k);
        return false;
    }
    bool ok = n_got == n_want && memcmp(got, want, n_got * sizeof *got) == 0;
    char *back = NULL;
    size_t n_back = 0;
    bool round = ok && core_detokenize(t, got, n_got, false, &back, &n_back) == 0 &&
                 n_back == len && memcmp(back, text, len) == 0;
    if (!ok || !round) {
        printf("    case %zu: %s\n", k, ok ? "decodes to other text" : "ids differ");
        print_escaped("text    ", text, len);
        print_ids("expected", want, n_want);
        print_ids("got     ", got, n_got);
        if (ok && back)
            print_escaped("decoded ", back, n_back);
    }
    free(back);
    free(got);
    return ok && round;
}

/* Runs every case of one vocabulary; skips when it is missing or its tokenizer is refused. */
static void run_vocab(const char *name)
{
    char path[256], inp_path[272], out_path[272], err[512] = "";
    snprintf(path, sizeof path, VOCAB_DIR "/ggml-vocab-%s.gguf", name);
    snprintf(inp_path, sizeof inp_path, "%s.inp", path);
    snprintf(out_path, sizeof out_path, "%s.out", path);
    if (access(path, R_OK) != 0 || access(inp_path, R_OK) != 0 || access(out_path, R_OK) != 0)
        TEST_SKIP("%s missing (run make vocab)", path);
    core_gguf *g = core_gguf_open(path, err, sizeof err);
    CHECK_MSG(g, "%s: %s", path, err);
    core_tokenizer *t = core_tokenizer_new(g, err, sizeof err);
    core_gguf_close(g);
    if (!t && strstr(err, "is not supported"))
        TEST_SKIP("%s: %s", name, err);
    CHECK_MSG(t, "%s: %s", name, err);

    size_t inp_len = 0, out_len = 0, n_lines = 0;
    char *inp = test_read_file(inp_path, &inp_len), *out = test_read_file(out_path, &out_len);
    char *cases[512], *lines[512];
    size_t lens[512];
    size_t n = inp ? split_cases(inp, cases, lens, 512) : 0;
    for (char *p = out; p && *p && n_lines < 512; p = strchr(p, '\n') + 1) {
        lines[n_lines++] = p;
        if (!strchr(p, '\n'))
            break;
    }
    size_t passed = 0;
    for (size_t k = 0; k < n && k < n_lines; k++)
        passed += check_case(t, k, cases[k], lens[k], lines[k]);
    printf("    %s: %zu/%zu cases\n", name, passed, n);
    core_tokenizer_free(t);
    free(inp);
    free(out);
    CHECK_MSG(n > 0 && n == n_lines, "%s: %zu cases in .inp, %zu lines in .out", name, n, n_lines);
    CHECK_MSG(passed == n, "%s: %zu of %zu cases differ", name, n - passed, n);
}

/* The vocabularies make vocab fetches (each a test of its own, so a skip names it). */
static const char *const known[] = {
    "llama-spm", "phi-3",     "llama-bpe", "qwen2",  "qwen35",  "gpt-2",          "starcoder",
    "refact",    "command-r", "mpt",       "falcon", "gemma-4", "deepseek-coder", "deepseek-llm",
};

#define VOCAB_TEST(fn, name)                                                                       \
    TEST(fn)                                                                                       \
    {                                                                                              \
        run_vocab(name);                                                                           \
    }

VOCAB_TEST(vocab_llama_spm, "llama-spm")
VOCAB_TEST(vocab_phi_3, "phi-3")
VOCAB_TEST(vocab_llama_bpe, "llama-bpe")
VOCAB_TEST(vocab_qwen2, "qwen2")
VOCAB_TEST(vocab_qwen35, "qwen35")
VOCAB_TEST(vocab_gpt_2, "gpt-2")
VOCAB_TEST(vocab_starcoder, "starcoder")
VOCAB_TEST(vocab_refact, "refact")
VOCAB_TEST(vocab_command_r, "command-r")
VOCAB_TEST(vocab_mpt, "mpt")
VOCAB_TEST(vocab_falcon, "falcon")
VOCAB_TEST(vocab_gemma_4, "gemma-4")
VOCAB_TEST(vocab_deepseek_coder, "deepseek-coder")
VOCAB_TEST(vocab_deepseek_llm, "deepseek-llm")

/* Any other ggml-vocab-*.gguf in models/vocab is reported, not silently passed. */
TEST(vocab_unknown_files)
{
    DIR *d = opendir(VOCAB_DIR);
    if (!d)
        TEST_SKIP(VOCAB_DIR " missing (run make vocab)");
    char unknown[512] = "";
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (strncmp(e->d_name, "ggml-vocab-", 11) != 0 || l < 16 ||
            strcmp(e->d_name + l - 5, ".gguf") != 0)
            continue;
        bool found = false;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            found |= strlen(known[i]) == l - 16 && strncmp(e->d_name + 11, known[i], l - 16) == 0;
        if (!found && strlen(unknown) + l + 2 < sizeof unknown)
            snprintf(unknown + strlen(unknown), sizeof unknown - strlen(unknown), " %s", e->d_name);
    }
    closedir(d);
    if (unknown[0])
        TEST_SKIP("vocabularies this test does not know (add them to it):%s", unknown);
}

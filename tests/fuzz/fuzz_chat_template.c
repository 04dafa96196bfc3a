/* libFuzzer target for the chat-template interpreter (core/text/jinja_*.c): the input is a
 * template's text, compiled and rendered on a fixed conversation.
 *
 * Invariants checked (abort() on violation): compiling either succeeds or fails with -ENOTSUP
 * (or -ENOMEM) and a message; rendering either gives a NUL-terminated text within the output
 * bound or fails with -EINVAL, -E2BIG or -ENOMEM and a message; rendering twice gives the same
 * result (no state leaks between renders). The bounds keep every input fast: a hostile template
 * ends with -E2BIG, never a hang or an exhausted memory. `make fuzz` adds the real templates of
 * models/vocab/templates (make vocab) to the corpus when they are there.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/text/jinja_internal.h"
#include "core/text/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const core_chat_msg MSGS[] = {
    {"system", "Be brief."}, {"user", "Grüße {{ x }} 🌍"}, {"assistant", " ok \n"}, {"user", ""}};

static int render(const core_chat_template *ct, char **out, char *err, size_t errlen)
{
    core_chat_opts o = {
        .add_generation_prompt = true, .bos_token = "<s>", .eos_token = "</s>", .now = 1};
    return core_chat_template_render(ct, MSGS, 4, &o, out, err, errlen);
}

static void check_result(int rc, const char *out, const char *err)
{
    if (rc == 0 && (!out || strlen(out) > JINJA_MAX_OUTPUT))
        abort();
    if (rc != 0 && (out || !err[0] || (rc != -EINVAL && rc != -E2BIG && rc != -ENOMEM)))
        abort(); /* every failure says why */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *src = malloc(size + 1);
    if (!src)
        return 0;
    memcpy(src, data, size);
    src[size] = '\0';
    char err[256] = "", err2[256] = "", *out = NULL, *out2 = NULL;
    core_chat_template *ct = NULL;
    int rc = core_chat_template_new(src, &ct, err, sizeof err);
    free(src);
    if (rc != 0) {
        if (ct || !err[0] || (rc != -ENOTSUP && rc != -ENOMEM))
            abort();
        return 0;
    }
    rc = render(ct, &out, err, sizeof err);
    check_result(rc, out, err);
    int rc2 = render(ct, &out2, err2, sizeof err2);
    if (rc2 != rc || (rc == 0 && strcmp(out, out2) != 0) || (rc != 0 && strcmp(err, err2) != 0))
        abort();
    free(out);
    free(out2);
    core_chat_template_free(ct);
    return 0;
}

/* Chat templates: a GGUF's tokenizer.chat_template (or a file given instead) compiled once by
 * the Jinja-subset interpreter (jinja_parse.c, jinja_eval.c) and rendered per request with the
 * variables Hugging Face transformers' apply_chat_template passes. This file checks the messages,
 * carries the options and words the errors; the interpreter does the rest.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/base.h"
#include "core/text/jinja_internal.h"
#include "core/text/tokenizer.h"

struct core_chat_template {
    jinja_tmpl *tmpl;
};

int core_chat_template_new(const char *src, core_chat_template **out, char *err, size_t errlen)
{
    char msg[256] = "";
    *out = NULL;
    if (!src) {
        core_errf(err, errlen, "no tokenizer.chat_template");
        return -ENOTSUP;
    }
    core_chat_template *ct = calloc(1, sizeof *ct);
    if (!ct) {
        core_errf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int rc = jinja_parse(src, strlen(src), &ct->tmpl, msg, sizeof msg);
    if (rc < 0) {
        free(ct);
        if (rc == -ENOMEM)
            core_errf(err, errlen, "out of memory");
        else
            core_errf(err, errlen, "chat template not supported: %s", msg);
        return rc;
    }
    *out = ct;
    return 0;
}

void core_chat_template_free(core_chat_template *ct)
{
    if (ct) {
        jinja_free(ct->tmpl);
        free(ct);
    }
}

static int check_msgs(const core_chat_msg *msgs, size_t n, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content) {
            core_errf(err, errlen, "message %zu has no %s", i, msgs[i].role ? "content" : "role");
            return -EINVAL;
        }
        for (const char *r = msgs[i].role; *r; r++)
            if ((unsigned char)*r < 0x20 || *r == 0x7F) {
                core_errf(err, errlen, "message %zu: role contains a control character", i);
                return -EINVAL;
            }
    }
    return 0;
}

int core_chat_template_render(const core_chat_template *ct, const core_chat_msg *msgs, size_t n,
                              const core_chat_opts *o, char **out, char *err, size_t errlen)
{
    char dummy[1];
    if (!err || !errlen) {
        err = dummy;
        errlen = sizeof dummy;
    }
    err[0] = '\0';
    *out = NULL;
    int rc = check_msgs(msgs, n, err, errlen);
    if (rc < 0)
        return rc;
    jinja_vars v = {.msgs = msgs,
                    .n_msgs = n,
                    .add_generation_prompt = o->add_generation_prompt,
                    .bos_token = o->bos_token,
                    .eos_token = o->eos_token,
                    .now = o->now ? o->now : (int64_t)time(NULL)};
    return jinja_render(ct->tmpl, &v, out, err, errlen);
}

int core_chat_render_template(const char *tmpl, const core_chat_msg *msgs, size_t n,
                              bool add_generation_prompt, char **out, char *err, size_t errlen)
{
    core_chat_template *ct;
    *out = NULL;
    int rc = core_chat_template_new(tmpl, &ct, err, errlen);
    if (rc < 0)
        return rc;
    core_chat_opts o = {.add_generation_prompt = add_generation_prompt};
    rc = core_chat_template_render(ct, msgs, n, &o, out, err, errlen);
    core_chat_template_free(ct);
    return rc;
}

/* The example registries shipped in registry/ (for the default model) and registry-gemma/ (for
 * Gemma 3 270M): every node loads and validates against its model, and each language adapter
 * moves the model its way, measured with adaptree itself: the perplexity of text in its language
 * (written for this test, not training data) drops with the adapter applied, and text in the
 * other language does not gain as much. */
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "adapters/registry.h"
#include "core/model/model.h"
#include "core/text/tokenizer.h"
#include "tests/shared_model.h"
#include "tests/test.h"

static const char *const french =
    "Le matin, la boulangerie du village ouvre ses portes avant le lever du soleil. Les "
    "habitants viennent chercher leur pain encore chaud et échangent quelques nouvelles sur la "
    "pluie, les récoltes et la fête qui aura lieu samedi sur la place de l'église.";
static const char *const german =
    "Am Morgen öffnet die Bäckerei im Dorf ihre Türen, noch bevor die Sonne aufgeht. Die "
    "Nachbarn holen ihr frisches Brot und erzählen sich Neuigkeiten über das Wetter, die Ernte "
    "und das Fest, das am Samstag auf dem Marktplatz stattfindet.";

/* Gemma 3 already writes everyday French and German well, and its adapters learnt the style of
 * their corpora (Debian documentation, fortunes) rather than the languages, so its texts are in
 * those styles (also written for this test, not training data). */
static const char *const french_debian =
    "Pour installer un paquet, utilisez la commande apt install suivie du nom du paquet. Le "
    "système télécharge alors le paquet et ses dépendances depuis les dépôts indiqués dans le "
    "fichier sources.list, puis les configure dans le bon ordre. Pensez à lancer apt update "
    "auparavant afin que la liste des paquets disponibles soit à jour.";
static const char *const german_fortune =
    "Wer morgens zu spät aufsteht, dem läuft der ganze Tag davon.\n"
    "Wer aber gar nicht erst schlafen geht, der hat am Abend nichts mehr zu erzählen.\n"
    "Und wer immer nur erzählt, dem hört am Ende keiner mehr zu.";

/* Mean negative log-likelihood per token of text under the model with set (NULL = base); BOS
 * first when the model's tokenizer asks for it (Gemma), as the server does. */
static double nll(core_model *m, const core_tokenizer *tok, const adapter_set *set,
                  const char *text)
{
    char err[256];
    int32_t *ids = NULL;
    size_t n = 0;
    if (core_tokenize(tok, text, strlen(text), false, &ids, &n) || n < 2 || n > 255)
        return NAN;
    if (core_tokenizer_add_bos(tok) && core_tokenizer_bos(tok) >= 0) {
        int32_t *b = realloc(ids, sizeof(int32_t) * (n + 1));
        if (!b) {
            free(ids);
            return NAN;
        }
        ids = b;
        memmove(ids + 1, ids, sizeof(int32_t) * n++);
        ids[0] = core_tokenizer_bos(tok);
    }
    int nv = m->cfg.n_vocab;
    float *lg = malloc(sizeof(float) * n * nv);
    int32_t pos[256], slot[256] = {0};
    const adapter_set *rows[256];
    for (size_t i = 0; i < n; i++) {
        pos[i] = (int32_t)i;
        rows[i] = set;
    }
    core_ctx *c = core_ctx_new(m);
    core_kv *kv = core_kv_new(&m->cfg, 1, 256, err, sizeof err);
    adapter_plan *p = adapter_plan_new();
    const core_lora_plan *plan = NULL;
    core_batch b = {.n_rows = (int)n, .tokens = ids, .pos = pos, .slot = slot};
    double sum = NAN;
    if (adapter_plan_build(p, m->cfg.n_layer, (int)n, rows, &plan) == 0 &&
        core_forward(c, kv, &b, set ? plan : NULL, lg, err, sizeof err) == 0) {
        sum = 0;
        for (size_t i = 0; i + 1 < n; i++) {
            const float *row = lg + i * nv;
            double mx = row[0], z = 0;
            for (int v = 1; v < nv; v++)
                mx = row[v] > mx ? row[v] : mx;
            for (int v = 0; v < nv; v++)
                z += exp(row[v] - mx);
            sum += -(row[ids[i + 1]] - mx - log(z));
        }
        sum /= (double)(n - 1);
    }
    adapter_plan_free(p);
    core_kv_free(kv);
    core_ctx_free(c);
    free(lg);
    free(ids);
    return sum;
}

/* Every node of the registry at root loads on m (at least min_adapters of them); fr and de each
 * lower the loss of text in their language (fr_text, de_text), by more than the other's. */
static void check_registry(core_model *m, const char *root, int min_adapters, const char *fr_text,
                           const char *de_text)
{
    char err[512];
    core_tokenizer *tok = core_tokenizer_new(m->gguf, err, sizeof err);
    CHECK(tok != NULL);
    uv_loop_t loop;
    uv_loop_init(&loop);
    adapter_registry_opts o = {.root = root, .cfg = &m->cfg, .loop = &loop, .rescan_ms = -1};
    adapter_registry *reg = adapter_registry_new(&o, err, sizeof err);
    CHECK_MSG(reg, "%s", err);
    adapter_node_info *info;
    size_t n;
    CHECK(adapter_registry_list(reg, &info, &n) == 0);
    int n_adapters = 0;
    for (size_t i = 0; i < n; i++) {
        if (info[i].state == ADAPTER_NAMESPACE)
            continue;
        adapter_selection sel;
        adapter_set *set = NULL;
        int rc = adapter_registry_resolve(reg, info[i].id, NULL, 0, &sel, err, sizeof err);
        if (rc == 0)
            rc = adapter_registry_acquire_wait(reg, &sel, &set, err, sizeof err);
        CHECK_MSG(rc == 0, "registry node %s: %s", info[i].id, err);
        printf("    %-24s chain of %d, %zu bytes\n", info[i].id, sel.n,
               set->items[sel.n - 1].a->bytes);
        adapter_set_free(set);
        n_adapters++;
    }
    free(info);
    CHECK_MSG(n_adapters >= min_adapters, "%s has %d adapters (want >= %d)", root, n_adapters,
              min_adapters);

    const char *langs[2] = {"fr", "de"};
    const char *texts[2] = {fr_text, de_text};
    double base[2] = {nll(m, tok, NULL, fr_text), nll(m, tok, NULL, de_text)};
    for (int l = 0; l < 2; l++) {
        adapter_selection sel;
        adapter_set *set = NULL;
        CHECK(adapter_registry_resolve(reg, langs[l], NULL, 0, &sel, err, sizeof err) == 0);
        CHECK(adapter_registry_acquire_wait(reg, &sel, &set, err, sizeof err) == 0);
        double own = nll(m, tok, set, texts[l]), other = nll(m, tok, set, texts[1 - l]);
        printf("    %s: perplexity of %s text %.1f -> %.1f, of %s text %.1f -> %.1f\n", langs[l],
               langs[l], exp(base[l]), exp(own), langs[1 - l], exp(base[1 - l]), exp(other));
        /* Its own language improves (mean loss down by > 0.05 nats; fr was trained on technical
         * Debian text, so everyday French gains less than German does with de) and more than
         * the other language. */
        CHECK_MSG(own < base[l] - 0.05, "%s does not lower its own language's loss", langs[l]);
        CHECK_MSG(base[l] - own > base[1 - l] - other, "%s helps the other language more",
                  langs[l]);
        adapter_set_free(set);
    }
    adapter_registry_free(reg);
    uv_loop_close(&loop);
    core_tokenizer_free(tok);
}

TEST(registry_shipped_loads_and_moves_the_model)
{
    TEST_NEED_MODEL();
    char err[512];
    core_model *m = core_model_load(test_model_path(), err, sizeof err);
    CHECK_MSG(m, "%s", err);
    check_registry(m, "registry", 4, french, german);
    core_model_free(m);
}

TEST(registry_gemma_shipped_loads_and_moves_the_model)
{
    TEST_NEED_GEMMA();
    core_model *m = test_gemma_model();
    CHECK(m != NULL);
    check_registry(m, "registry-gemma", 3, french_debian, german_fortune);
}

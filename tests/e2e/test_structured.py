"""End-to-end: structured outputs. response_format json_object and json_schema (and vLLM's
guided_json, guided_regex, guided_choice and guided_grammar, and their structured_outputs
successor; llama.cpp's GBNF grammar and json_schema) through the OpenAI Python SDK on /v1/chat/completions and /v1/completions, streamed
and not, greedy and sampled, on the base model and with adapters, several requests at once in one
batch; every output is parsed and validated by the jsonschema package (with its format checker).
Also: a schema with one valid output gives exactly it, max_tokens mid-JSON ends with "length",
unsupported keywords get a 400 naming them, and an unconstrained request batched with constrained
ones gives the same text as alone. (Recursive schemas are covered by the C tests: a 135M model
nests a recursive tree until max_tokens, valid but never finished.)"""

import json
from concurrent.futures import ThreadPoolExecutor

import e2e
from e2e import check, eq

suite = e2e.Suite("structured", budget=420)
S = None
C = None

NAME = {"type": "string", "minLength": 1, "maxLength": 24}
SCHEMAS = {
    "person": {
        "type": "object",
        "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                       "email": {"type": "string", "format": "email"}},
        "required": ["name", "age"], "additionalProperties": False},
    "colors": {
        "type": "object",
        "properties": {"colors": {"type": "array", "items": {"enum": ["red", "green", "blue",
                                                                     "yellow", "black"]},
                                  "minItems": 1, "maxItems": 3}},
        "required": ["colors"], "additionalProperties": False},
    "order": {
        "$defs": {"item": {"type": "object",
                           "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                                          "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                           "required": ["sku", "qty"], "additionalProperties": False}},
        "type": "object",
        "properties": {"id": {"type": "string", "format": "uuid"},
                       "items": {"type": "array", "items": {"$ref": "#/$defs/item"},
                                 "minItems": 1, "maxItems": 2},
                       "paid": {"type": "boolean"}},
        "required": ["id", "items", "paid"], "additionalProperties": False},
    "measure": {
        "type": "object",
        "properties": {"value": {"type": "number", "minimum": -10, "maximum": 10},
                       "ratio": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.75},
                       "unit": {"anyOf": [{"const": "cm"}, {"const": "kg"}, {"type": "null"}]},
                       "date": {"type": "string", "format": "date"}},
        "required": ["value", "ratio", "unit", "date"], "additionalProperties": False},
    "event": {
        "type": "object",
        "properties": {"title": {"type": "string", "maxLength": 30},
                       "start": {"type": "string", "format": "date-time"},
                       "tags": {"type": "array", "maxItems": 3,
                                "items": {"type": "string", "pattern": "^#[a-z]{2,10}$"}}},
        "required": ["title", "start", "tags"], "additionalProperties": False},
    "flags": {
        "type": "array", "items": {"type": ["boolean", "null", "integer"]}, "minItems": 2,
        "maxItems": 4},
}
PROMPTS = ["Describe a customer as JSON.", "Reply in JSON about your favourite things."]
SELS = [("base", None), ("fr/manpages", None), ("base", [{"id": "de", "scale": 1.0}])]


def setup():
    global S, C
    import openai

    reg = e2e.make_registry(suite.tmp, fixtures=False)
    S = suite.server([], registry=reg, name="server")
    S.start()
    C = openai.OpenAI(base_url=S.url() + "/v1", api_key="none", max_retries=0,
                      timeout=120 * e2e.SLOW)


def validate(schema, text, what):
    import jsonschema

    try:
        doc = json.loads(text)
    except ValueError as e:
        raise e2e.Fail(f"{what}: not JSON ({e}): {text!r}")
    try:
        jsonschema.validate(doc, schema, format_checker=jsonschema.FormatChecker())
    except jsonschema.ValidationError as e:
        raise e2e.Fail(f"{what}: does not validate ({e.message}): {text!r}")
    return doc


def rf(schema):
    if schema is None:
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, "strict": True}}


def chat(schema, prompt, model="base", adapters=None, stream=False, max_tokens=300, **kw):
    """(text, finish_reason) of a chat completion under schema (None: json_object)."""
    extra = {"adapters": adapters} if adapters else {}
    args = dict(model=model, messages=[{"role": "user", "content": prompt}],
                response_format=rf(schema), max_tokens=max_tokens, extra_body=extra, **kw)
    if not stream:
        r = C.chat.completions.create(**args)
        return r.choices[0].message.content, r.choices[0].finish_reason
    text, finish = "", None
    for ch in C.chat.completions.create(stream=True, **args):
        if ch.choices:
            text += ch.choices[0].delta.content or ""
            finish = ch.choices[0].finish_reason or finish
    return text, finish


def cmpl(schema, prompt, model="base", adapters=None, stream=False, max_tokens=300, **kw):
    extra = {"response_format": rf(schema)}
    if adapters:
        extra["adapters"] = adapters
    args = dict(model=model, prompt=prompt, max_tokens=max_tokens, extra_body=extra, **kw)
    if not stream:
        r = C.completions.create(**args)
        return r.choices[0].text, r.choices[0].finish_reason
    text, finish = "", None
    for ch in C.completions.create(stream=True, **args):
        if ch.choices:
            text += ch.choices[0].text
            finish = ch.choices[0].finish_reason or finish
    return text, finish


def run_all(jobs):
    """Runs (what, schema, fn, kwargs) jobs 8 at a time (one shared batch on the server);
    validates each output; returns the texts."""
    def one(job):
        what, schema, fn, kw = job
        text, finish = fn(schema, **kw)
        eq(finish, "stop", f"{what}: finish_reason (text {text!r})")
        validate(schema if schema is not None else {"type": "object"}, text, what)
        return text

    with ThreadPoolExecutor(8) as ex:
        return list(ex.map(one, jobs))


@suite.test
def schema_battery_greedy_chat():
    jobs = [(f"chat {n} / {p!r}", s, chat, dict(prompt=p, temperature=0))
            for n, s in SCHEMAS.items() for p in PROMPTS]
    texts = run_all(jobs)
    print(f"    e.g. {texts[0]}  |  {texts[4]}")


@suite.test
def schema_battery_sampled_completions_and_streams():
    jobs = []
    for i, (n, s) in enumerate(SCHEMAS.items()):
        for seed in (1, 2):
            jobs.append((f"completion {n} seed {seed}", s, cmpl,
                         dict(prompt=PROMPTS[seed - 1], temperature=1.0, seed=seed,
                              stream=(i + seed) % 2 == 0)))
        jobs.append((f"chat {n} streamed top_p", s, chat,
                     dict(prompt=PROMPTS[0], temperature=0.8, top_p=0.9, seed=i, stream=True)))
    run_all(jobs)


@suite.test
def every_adapter_selection():
    jobs = []
    for model, adapters in SELS:
        for n in ("person", "order", "measure"):
            jobs.append((f"{model} {adapters} {n}", SCHEMAS[n], chat,
                         dict(prompt=PROMPTS[0], model=model, adapters=adapters, temperature=0.7,
                              seed=3)))
            jobs.append((f"{model} {adapters} {n} streamed completion", SCHEMAS[n], cmpl,
                         dict(prompt=PROMPTS[1], model=model, adapters=adapters, temperature=0,
                              stream=True)))
    run_all(jobs)


@suite.test
def json_object_mode_and_guided_json():
    for stream in (False, True):
        text, finish = chat(None, "List three fruits as JSON.", temperature=0, stream=stream,
                            max_tokens=120)
        if finish == "stop":
            check(isinstance(json.loads(text), dict), f"json_object gave {text!r}")
        else:  # a free-form object may run past max_tokens; what was made is still a prefix
            eq(finish, "length", "json_object finish")
            check(text.lstrip().startswith("{"), f"json_object gave {text!r}")
    s = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"],
         "additionalProperties": False}
    r = C.completions.create(model="base", prompt="Is water wet?", max_tokens=20, temperature=0,
                             extra_body={"guided_json": s})
    validate(s, r.choices[0].text, "guided_json")
    eq(r.choices[0].finish_reason, "stop", "guided_json finish")


REGEXES = [r"\(\d{3}\) \d{3}-\d{4}", r"20\d\d-(0[1-9]|1[0-2])-[0-3]\d",
           r'"[A-Z][a-z]{1,10}" said (yes|no)[.!]', r"[^\n]{3,12}\n[A-Z]{2}"]
CHOICES = ["Paris", "London", "Berlin", "Madrid", "Par"]


def guided(extra, prompt, route, model="base", adapters=None, stream=False, **kw):
    """(text, finish_reason) with vLLM's guided_* field(s) in extra_body."""
    extra = dict(extra, **({"adapters": adapters} if adapters else {}))
    if route == "chat":
        args = dict(model=model, messages=[{"role": "user", "content": prompt}], extra_body=extra,
                    **kw)
        make, piece = C.chat.completions.create, lambda c: c.delta.content or ""
        whole = lambda c: c.message.content
    else:
        args = dict(model=model, prompt=prompt, extra_body=extra, **kw)
        make, piece, whole = C.completions.create, lambda c: c.text, lambda c: c.text
    if not stream:
        r = make(**args)
        return whole(r.choices[0]), r.choices[0].finish_reason
    text, finish = "", None
    for ch in make(stream=True, **args):
        if ch.choices:
            text += piece(ch.choices[0])
            finish = ch.choices[0].finish_reason or finish
    return text, finish


def refused_guided(extra, param, needle):
    """extra is a 400 on both routes, its message holding needle, its param param."""
    import openai

    for route in ("chat", "completions"):
        try:
            guided(extra, "x", route, max_tokens=4)
            raise e2e.Fail(f"{route} {extra} was accepted")
        except openai.BadRequestError as e:
            body = e.body or {}
            check(needle in body.get("message", ""), f"{route} {extra}: message {body}")
            eq(body.get("param"), param, f"{route} {extra}: param")


@suite.test
def guided_regex_and_guided_choice():
    """vLLM's guided_regex (the text matches it whole, as re.fullmatch) and guided_choice (the
    text is one of the strings), chat and completions, greedy and sampled, streamed, with
    adapters, eight at a time; bad ones are 400s naming the field."""
    import re

    jobs = []
    for i, rx in enumerate(REGEXES):
        for route, (model, adapters) in (("chat", SELS[i % 3]), ("completions", SELS[(i + 1) % 3])):
            for kw in (dict(temperature=0), dict(temperature=1.0, seed=11 + i, stream=True)):
                jobs.append((rx, None, route, model, adapters, kw))
    for route in ("chat", "completions"):
        for kw in (dict(temperature=0), dict(temperature=1.0, seed=3, stream=True)):
            jobs.append((None, CHOICES, route, "fr/manpages", None, kw))
    # vLLM's structured_outputs, which replaced the guided_* fields in v0.12
    jobs.append((REGEXES[0], None, "chat", "base", None, dict(temperature=0, so=True)))
    jobs.append((None, CHOICES, "completions", "base", None, dict(temperature=0, so=True)))

    def one(job):
        rx, choices, route, model, adapters, kw = job
        kw = dict(kw)
        if kw.pop("so", False):
            extra = {"structured_outputs": {"regex": rx} if rx else {"choice": choices}}
        else:
            extra = {"guided_regex": rx} if rx else {"guided_choice": choices}
        return guided(extra, "Write something short.", route, model, adapters, max_tokens=60,
                      **kw)

    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(one, jobs))
    for (rx, choices, route, model, adapters, kw), (text, finish) in zip(jobs, outs):
        what = f"{route} {model} {adapters} {kw} {rx or choices}"
        if rx:
            check(re.fullmatch(rx, text) is not None, f"{what}: {text!r} does not match")
        else:
            check(text in choices, f"{what}: {text!r} is not a choice")
        eq(finish, "stop", f"{what}: finish")
    print(f"    {len(jobs)} guided requests, e.g. {outs[0][0]!r}, {outs[-1][0]!r}")
    for extra, param, needle in (({"guided_regex": "(a"}, "guided_regex", "a group without ')'"),
                                 ({"guided_regex": "a(?=b)"}, "guided_regex", "lookarounds"),
                                 ({"guided_choice": []}, "guided_choice", "1 to 1024 strings"),
                                 ({"guided_choice": ["a"], "guided_regex": "a"}, "guided_choice",
                                  "not both")):
        refused_guided(extra, param, needle)
    text, _ = guided({"guided_choice": CHOICES}, "The capital of France is", "completions",
                     temperature=0, max_tokens=8)
    check(text in CHOICES, f"the server still serves: {text!r}")


# GBNF grammars (llama.cpp's "grammar", vLLM's "guided_grammar"), each with a Python check of
# the language it describes: a regular expression, or a small parser for the recursive one.
def arith_ok(text):
    """root ::= expr " = " [0-9]{1,4}; expr ::= term ([-+*] term){0,3}; term ::= [0-9]{1,3} |
    "(" expr ")" -- by recursive descent."""
    import re

    def expr(i, depth):
        i = term(i, depth)
        for _ in range(3):
            if i is None or i >= len(text) or text[i] not in "-+*":
                break
            j = term(i + 1, depth)
            if j is None:
                break
            i = j
        return i

    def term(i, depth):
        m = re.match(r"[0-9]{1,3}", text[i:])
        if m:
            return i + m.end()
        if depth < 8 and text[i:i + 1] == "(":
            j = expr(i + 1, depth + 1)
            if j is not None and text[j:j + 1] == ")":
                return j + 1
        return None

    # the grammar is ambiguous only in where expr ends; try every split at " = "
    for k in range(len(text)):
        if text.startswith(" = ", k) and re.fullmatch(r"[0-9]{1,4}", text[k + 3:]) \
                and expr(0, 0) == k:
            return True
    return False


GRAMMARS = [
    ('root ::= ("Yes" | "No") ", because " reason "."\nreason ::= [a-z ]{3,40}',
     r"(Yes|No), because [a-z ]{3,40}\."),
    ('root ::= item ("\\n" item){1,3}\n# one item a line\nitem ::= "- " [A-Z] [a-z]{1,12}',
     r"- [A-Z][a-z]{1,12}(\n- [A-Z][a-z]{1,12}){1,3}"),
    ('root ::= "{\\"name\\": \\"" [A-Za-z ]{1,20} "\\", \\"age\\": " [1-9] [0-9]? "}"',
     r'\{"name": "[A-Za-z ]{1,20}", "age": [1-9][0-9]?\}'),
    ("root ::= [\u00e0-\u00ff]{2,5} [!?]", r"[\u00e0-\u00ff]{2,5}[!?]"),
    ('root ::= expr " = " [0-9]{1,4}\nexpr ::= term ([-+*] term){0,3}\n'
     'term ::= [0-9]{1,3} | "(" expr ")"', arith_ok),
]


@suite.test
def gbnf_grammar_and_guided_grammar():
    """GBNF through llama.cpp's "grammar", vLLM's "guided_grammar" and its "structured_outputs"
    {"grammar": ...} (extra_body of the OpenAI SDK), chat and completions, greedy and sampled, streamed, with adapters, eight at a time:
    every text is in the grammar's language (checked by a regular expression or a parser);
    grammars with errors are 400s naming the field, the line and the column."""
    import re

    jobs = []
    for i, (gram, lang) in enumerate(GRAMMARS):
        for field, route, (model, adapters) in (("grammar", "chat", SELS[i % 3]),
                                                ("guided_grammar", "completions",
                                                 SELS[(i + 1) % 3]),
                                                ("structured_outputs",
                                                 ("chat", "completions")[i % 2], SELS[i % 3])):
            for kw in (dict(temperature=0), dict(temperature=1.0, seed=21 + i, stream=True)):
                jobs.append((field, gram, lang, route, model, adapters, kw))

    def one(job):
        field, gram, _, route, model, adapters, kw = job
        extra = {field: {"grammar": gram} if field == "structured_outputs" else gram}
        return guided(extra, "Answer briefly.", route, model, adapters, max_tokens=80, **kw)

    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(one, jobs))
    for (field, gram, lang, route, model, adapters, kw), (text, finish) in zip(jobs, outs):
        what = f"{field} {route} {model} {adapters} {kw} {gram!r}"
        ok = lang(text) if callable(lang) else re.fullmatch(lang, text) is not None
        check(ok, f"{what}: {text!r} is not in the language")
        eq(finish, "stop", f"{what}: finish")
    print(f"    {len(jobs)} grammar requests, e.g. {outs[0][0]!r}, {outs[-2][0]!r}")
    for extra, param, needle in (
            ({"grammar": "root ::= digits"}, "grammar",
             "line 1, column 10: rule 'digits' is used but not defined"),
            ({"guided_grammar": "root ::= root \"a\" | \"b\""}, "guided_grammar",
             "rule 'root' is left-recursive"),
            ({"grammar": "root ::= \"a\"\nroot ::= \"b\""}, "grammar",
             "line 2, column 1: rule 'root' is defined twice"),
            ({"grammar": "root ::= [a]", "guided_regex": "a"}, "grammar", "not both"),
            ({"structured_outputs": {"grammar": "root ::= [a"}}, "structured_outputs.grammar",
             "line 1, column 10: unterminated class")):
        refused_guided(extra, param, needle)
    # ambiguity that shows only after the first byte (2^40 ways to read nothing between "x" and
    # "y"): the request ends with an error in milliseconds, the server goes on
    amb = 'root ::= "x" ' + "e " * 40 + '"y"\ne ::= "" | "a"?'
    r = S.post("/v1/completions", {"prompt": "x", "max_tokens": 5, "grammar": amb})
    eq(r.status, 500, f"an ambiguous grammar: {r}")
    check("too ambiguous" in r.json()["error"]["message"], f"ambiguous grammar message {r}")
    # curl-style raw JSON, llama.cpp's json_schema field too
    r = S.post("/v1/completions", {"prompt": "Weight:", "max_tokens": 12, "temperature": 0,
                                   "grammar": 'root ::= " " [1-9] [0-9]{0,2} ("kg" | "g")'})
    eq(r.status, 200, f"raw grammar request: {r}")
    text = r.json()["choices"][0]["text"]
    check(re.fullmatch(r" [1-9][0-9]{0,2}(kg|g)", text), f"raw grammar text {text!r}")
    r = S.post("/v1/completions", {"prompt": "Age:", "max_tokens": 8, "temperature": 0,
                                   "json_schema": {"type": "integer", "minimum": 1,
                                                   "maximum": 99}})
    eq(r.status, 200, f"json_schema request: {r}")
    age = int(r.json()["choices"][0]["text"])
    check(1 <= age <= 99, f"json_schema integer {age}")


@suite.test
def generate_command_takes_a_grammar_or_a_schema():
    """`adaptree generate` with --grammar, --grammar-file and --json-schema: the printed text is
    in the grammar's language or validates against the schema; errors exit 2 with the reason."""
    import re
    import subprocess
    import tempfile

    def gen(*args):
        r = subprocess.run([e2e.ADAPTREE, "generate", "-m", e2e.MODEL, "--temperature", "0",
                            *args], capture_output=True, text=True, timeout=120)
        return r.returncode, r.stdout.rstrip("\n"), r.stderr

    gram, lang = GRAMMARS[1]
    rc, out, err = gen("-p", "A shopping list:\n", "-n", "40", "--grammar", gram)
    eq(rc, 0, f"--grammar: {err}")
    check(re.fullmatch(lang, out), f"--grammar text {out!r}")
    with tempfile.NamedTemporaryFile("w", suffix=".gbnf") as f:
        f.write(GRAMMARS[4][0] + "\n")
        f.flush()
        rc, out, err = gen("-p", "Arithmetic:", "-n", "40", "--grammar-file", f.name)
    eq(rc, 0, f"--grammar-file: {err}")
    check(arith_ok(out), f"--grammar-file text {out!r}")
    rc, out, err = gen("--chat", "-p", PROMPTS[0], "-n", "120", "--json-schema",
                       json.dumps(SCHEMAS["person"]))
    eq(rc, 0, f"--json-schema: {err}")
    validate(SCHEMAS["person"], out, "--json-schema")
    print(f"    generate: {out!r}")
    for args, needle in ((("--grammar", "root ::= x"), "rule 'x' is used but not defined"),
                         (("--grammar-file", "/nonexistent.gbnf"), "cannot read it"),
                         (("--json-schema", "{"), "not JSON"),
                         (("--json-schema", '{"not": {}}'), "unsupported keyword 'not'"),
                         (("--grammar", "root ::= [a]", "--json-schema", "{}"), "give one of")):
        rc, _, err = gen("-p", "x", *args)
        eq(rc, 2, f"{args}: exit code ({err})")
        check(needle in err, f"{args}: {err!r}")


@suite.test
def a_schema_with_one_valid_output_gives_it():
    fixed = {"answer": "forty-two", "ok": True, "n": [1, 2]}
    for schema in ({"const": fixed},
                   {"type": "object", "properties": {"answer": {"enum": ["forty-two"]},
                                                     "ok": {"const": True},
                                                     "n": {"const": [1, 2]}},
                    "required": ["answer", "ok", "n"], "additionalProperties": False}):
        for stream in (False, True):
            text, finish = chat(schema, "Say anything.", temperature=1.0, seed=5, stream=stream)
            eq(json.loads(text), fixed, f"fixed output of {schema}")
            eq(finish, "stop", "finish")
    text, _ = chat({"const": fixed}, "Say anything.", temperature=0)
    eq(text, json.dumps(fixed, separators=(",", ":")), "the exact bytes")


@suite.test
def max_tokens_mid_json_is_length():
    for stream in (False, True):
        text, finish = chat(SCHEMAS["order"], PROMPTS[0], temperature=0, max_tokens=6,
                            stream=stream)
        eq(finish, "length", f"finish at max_tokens 6 ({text!r})")
        try:
            json.loads(text)
            raise e2e.Fail(f"6 tokens made a whole order: {text!r}")
        except ValueError:
            pass
        check(text.startswith("{"), f"a prefix of the JSON: {text!r}")


@suite.test
def unsupported_schemas_are_refused_by_name():
    import openai

    cases = [({"type": "string", "not": {"const": "x"}}, "'not'"),
             ({"type": "object", "properties": {"a": {"oneOf": [{}]}}}, "'oneOf' at #/properties/a"),
             ({"type": "string", "format": "hostname"}, "'format': 'hostname'"),
             ({"type": "array", "uniqueItems": True}, "'uniqueItems'"),
             ({"$ref": "#/$defs/none"}, "no such definition"),
             ({"type": "string", "pattern": "(?<=a)b"}, "lookarounds")]
    for schema, needle in cases:
        for route in ("chat", "completions"):
            try:
                if route == "chat":
                    chat(schema, "x", max_tokens=4)
                else:
                    cmpl(schema, "x", max_tokens=4)
                raise e2e.Fail(f"{route} {schema} was accepted")
            except openai.BadRequestError as e:
                body = e.body or {}
                check(needle in body.get("message", ""), f"{route} {schema}: message {body}")
                check(body.get("param", "").startswith("response_format"),
                      f"{route} {schema}: param {body.get('param')}")
    r = S.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                        "response_format": {"type": "json_schema",
                                                            "json_schema": {"name": "x"}}})
    e2e.check_error(r, 400, what="json_schema without schema")
    text, _ = chat(SCHEMAS["person"], PROMPTS[0], temperature=0, max_tokens=80)
    validate(SCHEMAS["person"], text, "the server still serves")


@suite.test
def n_choices_each_follow_the_schema():
    schema = {"type": "object", "properties": {"name": NAME, "age": SCHEMAS["person"]["properties"]
                                               ["age"]},
              "required": ["name", "age"], "additionalProperties": False}
    for stream in (False, True):
        args = dict(model="base", messages=[{"role": "user", "content": PROMPTS[0]}],
                    response_format=rf(schema), max_tokens=120, n=3, temperature=1.0,
                    seed=11)
        texts = ["", "", ""]
        finish = [None] * 3
        if stream:
            for ch in C.chat.completions.create(stream=True, **args):
                for c in ch.choices:
                    texts[c.index] += c.delta.content or ""
                    finish[c.index] = c.finish_reason or finish[c.index]
        else:
            r = C.chat.completions.create(**args)
            eq(len(r.choices), 3, "choices")
            for c in r.choices:
                texts[c.index] = c.message.content
                finish[c.index] = c.finish_reason
        for i in range(3):
            eq(finish[i], "stop", f"choice {i} finish ({texts[i]!r})")
            validate(schema, texts[i], f"choice {i} streamed={stream}")
        check(len(set(texts)) > 1, f"three sampled choices are all the same: {texts}")


@suite.test
def free_rows_in_a_structured_batch_are_unchanged():
    """A greedy unconstrained completion gives the same text alone and beside 6 constrained
    rows in the same steps: masking is per row."""
    prompt = "The history of the bicycle begins"

    def free():
        r = C.completions.create(model="base", prompt=prompt, max_tokens=40, temperature=0)
        return r.choices[0].text

    alone = free()
    with ThreadPoolExecutor(7) as ex:
        busy = [ex.submit(chat, SCHEMAS["order"], PROMPTS[i % 2], temperature=0.9, seed=i)
                for i in range(6)]
        beside = ex.submit(free).result()
        for f in busy:
            f.result()
    eq(beside, alone, "the free row's text beside structured rows")


if __name__ == "__main__":
    import sys

    sys.exit(e2e.run_file(__file__))

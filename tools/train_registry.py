#!/usr/bin/env python3
"""Train adaptree's example adapter registries with PEFT and measure them.

  --model smollm2 (default)  registry/         for models/SmolLM2-135M-Instruct.Q4_1.gguf
  --model gemma              registry-gemma/   for models/gemma-3-270m-q4_k_m.gguf (fr,
                             fr/manpages, de only; see GEMMA below)

The SmolLM2 registry:

The tree (docs/ARCHITECTURE.md §4: a chain is applied additively, every node at scale 1):

  fr                    French, trained on the base
  fr/manpages           French manual pages, trained on base + fr (merged)
  fr/manpages/alice     one user's terse command notes, trained on base + fr + fr/manpages
  de                    German, trained on the base
  de/witze              German jokes, trained on base + de

Data (regenerated from installed Debian packages on every run; nothing but the user's own
text is committed):
  fr        paragraphs of the French Debian FAQ and Debian Reference (debian-faq-fr,
            debian-reference-fr; GPL-2+). Debian bookworm no longer ships fortunes-fr.
  fr/man..  French manual pages from manpages-fr (GPL-3+), rendered with man(1)
  alice     tools/train_data/alice.txt (written for this project)
  de        fortunes-de (GPL-2+): every file except witze/asciiart/translations
  de/witze  fortunes-de: witze
Each corpus is split 90/10 train/held-out by a hash of the document key (deterministic).

Base weights: models/SmolLM2-135M-Instruct.Q4_1.gguf loaded by transformers (dequantized to
fp32; q/k rows un-permuted to HF order, so the adapters are ordinary PEFT adapters).
Adapters are trained in fp32 and saved with save_pretrained after casting the LoRA tensors to
float16 (fr chain) or bfloat16 (de chain); the measurements use the saved (rounded) files.

Setup:  apt-get install -y fortunes-de debian-faq-fr debian-reference-fr manpages-fr
        .venv-ref/bin/pip install -r tools/requirements-train.txt
Run:    .venv-ref/bin/python tools/train_registry.py            (train all, measure, README)
        .venv-ref/bin/python tools/train_registry.py --eval-only (measure the committed files)
        nice .venv-ref/bin/python tools/train_registry.py --model gemma   (registry-gemma/)

Gemma 3 270M: the base is tests/reference/make_gemma_fixtures.py's load_reference() (the GGUF
dequantized to fp32 into a hand-built Gemma3ForCausalLM, q/k rows as stored, which for Gemma are
Hugging Face's), the tokenizer transformers' GemmaTokenizer read from the same GGUF, every block
starts with BOS (Gemma is trained that way), shorter blocks and fewer steps (its 262144-entry
vocabulary makes each step ~6x SmolLM2's cost), a smaller tree.
"""

import argparse
import copy
import gzip
import hashlib
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
import peft  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

torch.set_num_threads(1)
transformers.utils.logging.disable_progress_bar()

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "models"
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
BASE_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
ALICE_TXT = REPO / "tools" / "train_data" / "alice.txt"
FORTUNES_DE = Path("/usr/share/games/fortunes/de")
FR_DOCS = [Path("/usr/share/doc/debian/FAQ/debian-faq.fr.txt.gz"),
           Path("/usr/share/debian-reference/debian-reference.fr.txt.gz")]

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ATTN = ["q_proj", "k_proj", "v_proj", "o_proj"]

SEQ = 128          # tokens per training / eval block
BATCH = 2          # blocks per optimizer step
WARMUP = 10
EVAL_BLOCKS = 16   # held-out blocks per corpus (<= 16 x 128 tokens)

# Training order matters: a child is trained on its parent's merged chain.
ADAPTERS_SMOLLM2 = [
    dict(id="fr", data="fr", r=4, alpha=8, targets=ALL_LINEAR, dtype="float16",
         steps=140, lr=1e-3, seed=11),
    dict(id="fr/manpages", data="fr_man", r=4, alpha=8, targets=ALL_LINEAR, dtype="float16",
         steps=140, lr=1e-3, seed=12),
    dict(id="fr/manpages/alice", data="alice", r=8, alpha=16, targets=ATTN, dtype="float16",
         steps=80, lr=1e-3, seed=13),
    dict(id="de", data="de", r=4, alpha=8, targets=ALL_LINEAR, dtype="bfloat16",
         steps=140, lr=1e-3, seed=21),
    dict(id="de/witze", data="de_witze", r=4, alpha=8, targets=ALL_LINEAR, dtype="bfloat16",
         steps=100, lr=1e-3, seed=22),
]

GEMMA_QV = ["q_proj", "v_proj"]
ADAPTERS_GEMMA = [
    dict(id="fr", data="fr", r=8, alpha=16, targets=GEMMA_QV, dtype="bfloat16",
         steps=100, lr=2e-3, seed=31),
    dict(id="fr/manpages", data="fr_man", r=8, alpha=16, targets=GEMMA_QV, dtype="bfloat16",
         steps=80, lr=2e-3, seed=32),
    dict(id="de", data="de", r=8, alpha=16, targets=GEMMA_QV, dtype="bfloat16",
         steps=80, lr=2e-3, seed=41),
]

CORPORA = {  # name -> (description, document separator)
    "fr": ("French prose: Debian FAQ + Debian Reference (fr)", "\n\n"),
    "fr_man": ("French manual pages (manpages-fr)", "\n\n"),
    "alice": ("alice's command notes (tools/train_data/alice.txt)", "\n"),
    "de": ("German fortunes (fortunes-de, without witze)", "\n\n"),
    "de_witze": ("German jokes (fortunes-de: witze)", "\n\n"),
}

SAMPLES_SMOLLM2 = [  # (label, prompt, chains)
    ("French prompt", "Debian est", ["base", "fr"]),
    ("Man-page prompt", "La commande", ["fr", "fr/manpages"]),
    ("User prompt", "grep :", ["fr/manpages", "fr/manpages/alice"]),
    ("German prompt", "Die", ["base", "de"]),
    ("Joke prompt", "Ein Mann", ["de", "de/witze"]),
    ("Chat prompt (fr)", "@chat:Qu'est-ce qu'un paquet Debian ?", ["base", "fr"]),
]
SAMPLES_GEMMA = [
    ("French prompt", "Debian est", ["base", "fr"]),
    ("Man-page prompt", "La commande", ["fr", "fr/manpages"]),
    ("German prompt", "Die", ["base", "de"]),
]

# What differs between the two registries. use_model() installs one profile into the module
# globals the rest of the script reads.
PROFILES = {
    "smollm2": dict(model_name="SmolLM2-135M-Instruct.Q4_1.gguf",
                    base_id="HuggingFaceTB/SmolLM2-135M-Instruct", registry="registry",
                    base_desc="the Q4_1 GGUF dequantized", adapters=ADAPTERS_SMOLLM2,
                    samples=SAMPLES_SMOLLM2, seq=128, bos=False,
                    stats="/tmp/train_registry_stats.json"),
    "gemma": dict(model_name="gemma-3-270m-q4_k_m.gguf", base_id="google/gemma-3-270m",
                  registry="registry-gemma", base_desc="the Q4_K_M GGUF dequantized",
                  adapters=ADAPTERS_GEMMA, samples=SAMPLES_GEMMA, seq=64, bos=True,
                  stats="/tmp/train_registry_gemma_stats.json"),
}
PROFILE = None
ADAPTERS, BY_ID, SAMPLES = [], {}, []


def use_model(name):
    global PROFILE, MODEL_NAME, BASE_ID, ADAPTERS, BY_ID, SAMPLES, SEQ
    PROFILE = PROFILES[name]
    MODEL_NAME, BASE_ID = PROFILE["model_name"], PROFILE["base_id"]
    ADAPTERS = PROFILE["adapters"]
    BY_ID = {a["id"]: a for a in ADAPTERS}
    SAMPLES = PROFILE["samples"]
    SEQ = PROFILE["seq"]


def corpora_used():
    """The corpora the installed profile's adapters train on, in CORPORA's order."""
    used = {a["data"] for a in ADAPTERS}
    return [n for n in CORPORA if n in used]


def log(*a):
    print(*a, flush=True)


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------

FR_WORDS = set("le la les de des du un une et est en que qui pour dans sur pas vous avec ce "
               "cette il ne se par au aux sont plus ou peut être votre".split())
EN_WORDS = set("the and of to is that for with you this are be it on as by not or can your "
               "from".split())
DE_WORDS = set("der die das und ist nicht ein eine ich zu den mit sich es auf für von dem auch "
               "wenn sie wir du er im nur noch aber wie".split())


def words(s):
    return re.findall(r"[A-Za-zÀ-ÿ']+", s.lower())


def score(ws, vocab):
    return sum(1 for w in ws if w in vocab)


def held_out(key):
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 10 == 0


def corpus_fr():
    docs = []
    for path in FR_DOCS:
        text = gzip.open(path, "rt", encoding="utf-8").read()
        for block in re.split(r"\n\s*\n", text):
            lines = [ln.strip() for ln in block.splitlines() if ln.strip()]
            if not lines:
                continue
            para = " ".join(lines)
            if "|" in para or "+--" in para or para.startswith(("$", "#", "*")):
                continue
            ws = words(para)
            if len(ws) < 8:
                continue
            nonspace = [c for c in para if not c.isspace()]
            if sum(c.isalpha() for c in nonspace) < 0.75 * len(nonspace):
                continue
            f, e = score(ws, FR_WORDS), score(ws, EN_WORDS)
            if f < 3 or f <= 2 * e:
                continue
            docs.append((para, para))
    return docs


MAN_DROP_SECTIONS = {"TRADUCTION", "COPYRIGHT", "AUTEUR", "AUTEURS", "SIGNALER DES BOGUES",
                     "COLOPHON", "HISTORIQUE"}


def render_man(path):
    env = dict(os.environ, MANWIDTH="80", MANROFFOPT="-rHY=0", LC_ALL="C.UTF-8", MAN_KEEP_FORMATTING="",
               MANPAGER="cat", PAGER="cat")
    out = subprocess.run(["man", "-E", "UTF-8", "-l", str(path)], env=env, capture_output=True,
                         timeout=60).stdout
    out = subprocess.run(["col", "-bx"], input=out, capture_output=True, env=env).stdout
    return out.decode("utf-8", "replace")


def clean_man(rendered, max_chars=4000):
    lines = rendered.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    lines = lines[1:-1]  # running header / footer
    out, para, section = [], [], None

    def flush():
        if para and section not in MAN_DROP_SECTIONS:
            out.append(" ".join(para))
        para.clear()

    for ln in lines:
        if not ln.strip():
            flush()
        elif not ln[0].isspace():  # section heading
            flush()
            section = ln.strip()
            if section not in MAN_DROP_SECTIONS:
                out.append(section)
        else:
            para.append(re.sub(r"\s+", " ", ln.strip()))
    flush()
    text, n = [], 0
    for p in out:
        if n + len(p) > max_chars and text:
            break
        text.append(p)
        n += len(p) + 1
    return "\n".join(text)


def corpus_fr_man():
    files = subprocess.run(["dpkg", "-L", "manpages-fr"], capture_output=True, text=True,
                           check=True).stdout.split("\n")
    files = sorted(f for f in files if re.match(r"/usr/share/man/fr/man\d/.*\.gz$", f)
                   and os.path.isfile(f) and not os.path.islink(f))
    docs = []
    for f in files:
        text = clean_man(render_man(f))
        if len(text) >= 200:
            docs.append((os.path.basename(f), text))
    return docs


def corpus_alice():
    return [(ln, ln) for ln in ALICE_TXT.read_text(encoding="utf-8").splitlines() if ln.strip()]


def read_fortunes(path):
    text = path.read_text(encoding="utf-8", errors="replace")
    docs = []
    for chunk in re.split(r"^%\s*$", text, flags=re.M):
        lines = [re.sub(r"[ \t]+", " ", ln).strip() for ln in chunk.strip("\n").splitlines()]
        body = "\n".join(lines).strip()
        if not (15 <= len(body) <= 1500):
            continue
        ws = words(body)
        if score(ws, EN_WORDS) > score(ws, DE_WORDS):
            continue
        docs.append((body, body))
    return docs


DE_SKIP = {"witze", "asciiart", "translations"}


def corpus_de():
    docs = []
    for p in sorted(FORTUNES_DE.iterdir()):
        # plain fortune files only (skip .dat/.u8 and the IRC log channel-debian.fortunes)
        if p.suffix or p.name in DE_SKIP or not p.is_file():
            continue
        docs += read_fortunes(p)
    return docs


def corpus_de_witze():
    return read_fortunes(FORTUNES_DE / "witze")


CORPUS_FN = {"fr": corpus_fr, "fr_man": corpus_fr_man, "alice": corpus_alice, "de": corpus_de,
             "de_witze": corpus_de_witze}


def load_corpus(name, tok):
    """-> dict(train=[ids blocks], heldout=[ids blocks], stats)"""
    docs = CORPUS_FN[name]()
    seen, uniq = set(), []
    for key, text in docs:
        if text not in seen:
            seen.add(text)
            uniq.append((key, text))
    sep = CORPORA[name][1]
    parts = {"train": [], "heldout": []}
    for key, text in uniq:
        parts["heldout" if held_out(key) else "train"].append(text)
    res = {"docs": {k: len(v) for k, v in parts.items()}}
    bos = [tok.bos_token_id] if PROFILE["bos"] else []
    n = SEQ - len(bos)  # text tokens per block
    for split, texts in parts.items():
        stream = []
        for t in texts:
            stream += tok(t + sep, add_special_tokens=False)["input_ids"]
        res[split + "_tokens"] = len(stream)
        blocks = [bos + stream[i:i + n] for i in range(0, len(stream), n)]
        if split == "train":
            blocks = [b for b in blocks if len(b) == SEQ]
        else:
            blocks = [b for b in blocks if len(b) >= 16]
        res[split] = blocks
    return res



# ------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------

def load_base():
    t = time.time()
    if PROFILE is PROFILES["gemma"]:
        sys.path.insert(0, str(REPO / "tests" / "reference"))
        import make_gemma_fixtures
        m = make_gemma_fixtures.load_reference().model
    else:
        m = AutoModelForCausalLM.from_pretrained(str(MODEL_DIR), gguf_file=MODEL_NAME,
                                                 dtype=torch.float32)
    m.eval()
    log(f"base loaded from {MODEL_NAME} in {time.time() - t:.1f}s")
    return m


def chain_of(node):
    """'fr/manpages/alice' -> ['fr', 'fr/manpages', 'fr/manpages/alice'] (adapters only)."""
    if node == "base":
        return []
    segs = node.split("/")
    return [p for p in ("/".join(segs[:i + 1]) for i in range(len(segs))) if p in BY_ID]


def merged(base, ids, registry):
    """A copy of base with every adapter in ids (saved files) merged in, in order."""
    m = copy.deepcopy(base)
    for i in ids:
        m = PeftModel.from_pretrained(m, str(registry / i)).merge_and_unload()
    m.eval()
    return m


def lr_at(step, total, peak):
    if step < WARMUP:
        return peak * (step + 1) / WARMUP
    p = (step - WARMUP) / max(1, total - WARMUP)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def train_adapter(spec, base, corpus, registry):
    aid = spec["id"]
    parent = chain_of(aid)[:-1]
    log(f"\n=== train {aid} on base{''.join(' + ' + p for p in parent)} | data={spec['data']} "
        f"r={spec['r']} alpha={spec['alpha']} targets={','.join(spec['targets'])} "
        f"steps={spec['steps']} batch={BATCH}x{SEQ} lr={spec['lr']}")
    model = merged(base, parent, registry)
    torch.manual_seed(spec["seed"])
    cfg = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], target_modules=list(spec["targets"]),
                     lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    pm = get_peft_model(model, cfg)
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec["lr"], weight_decay=0.0)
    blocks = list(corpus["train"])
    rng = random.Random(spec["seed"])
    order, pos, epoch = [], 0, 0
    t0, losses, first = time.time(), [], None
    for step in range(spec["steps"]):
        batch = []
        while len(batch) < BATCH:
            if pos >= len(order):
                order = list(range(len(blocks)))
                rng.shuffle(order)
                pos, epoch = 0, epoch + 1
            batch.append(blocks[order[pos]])
            pos += 1
        x = torch.tensor(batch, dtype=torch.long)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, spec["steps"], spec["lr"])
        loss = pm(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if first is None:
            first = losses[0]
        if (step + 1) % 5 == 0 or step == 0 or step + 1 == spec["steps"]:
            el = time.time() - t0
            eta = el / (step + 1) * (spec["steps"] - step - 1)
            log(f"[{aid}] step {step + 1:4d}/{spec['steps']} loss {sum(losses[-5:]) / len(losses[-5:]):.4f} "
                f"lr {opt.param_groups[0]['lr']:.2e} epoch {epoch} elapsed {el:6.1f}s eta {eta:6.1f}s")
    wall = time.time() - t0
    out = registry / aid
    out.mkdir(parents=True, exist_ok=True)
    dt = getattr(torch, spec["dtype"])
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_" in n:
                p.data = p.data.to(dt)
    pm.peft_config["default"].base_model_name_or_path = BASE_ID
    pm.save_pretrained(str(out))
    card = out / "README.md"  # the model card save_pretrained writes; only registry/README.md is kept
    if card.exists():
        card.unlink()
    for f in out.iterdir():
        if f.is_file():
            f.chmod(0o644)
    stat = dict(wall_s=round(wall, 1), steps=spec["steps"], tokens=spec["steps"] * BATCH * SEQ,
                train_blocks=len(blocks), epochs=round(spec["steps"] * BATCH / len(blocks), 2),
                loss_first=round(first, 4), loss_last10=round(sum(losses[-10:]) / len(losses[-10:]), 4))
    log(f"[{aid}] saved to {out.relative_to(REPO) if out.is_relative_to(REPO) else out}: "
        + ", ".join(f"{f.name} {f.stat().st_size} B" for f in sorted(out.iterdir()) if f.is_file())
        + f" | {json.dumps(stat)}")
    del pm, model, opt
    return stat


# ------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------

@torch.no_grad()
def perplexity(model, blocks):
    nll, n = 0.0, 0
    for b in blocks:
        x = torch.tensor([b], dtype=torch.long)
        logits = model(input_ids=x).logits[0, :-1].float()
        lp = torch.log_softmax(logits, -1)
        tgt = x[0, 1:]
        nll -= lp.gather(1, tgt[:, None]).sum().item()
        n += len(tgt)
    return math.exp(nll / n), n


def eval_blocks(corpus, n):
    blocks = list(corpus["heldout"])
    random.Random(1234).shuffle(blocks)
    return blocks[:n]


@torch.no_grad()
def generate(model, tok, prompt, n_new=40):
    if prompt.startswith("@chat:"):
        text = tok.apply_chat_template([{"role": "user", "content": prompt[6:]}], tokenize=False,
                                       add_generation_prompt=True)
    else:
        text = prompt
    ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    if PROFILE["bos"]:
        ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], 1)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new,
                         do_sample=False, pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=False)


def measure(base, tok, corpora, registry, eval_n):
    chains = ["base"] + [a["id"] for a in ADAPTERS]
    sets = {name: eval_blocks(c, eval_n) for name, c in corpora.items()}
    ppl = {}
    for ch in chains:
        t = time.time()
        model = merged(base, chain_of(ch), registry)
        ppl[ch] = {}
        for name, blocks in sets.items():
            p, n = perplexity(model, blocks)
            ppl[ch][name] = p
        log(f"[eval] {ch:20s} " + " ".join(f"{k}={v:8.2f}" for k, v in ppl[ch].items())
            + f"  ({time.time() - t:.0f}s)")
        del model
    ntok = {name: sum(len(b) - 1 for b in blocks) for name, blocks in sets.items()}
    samples = []
    for label, prompt, chs in SAMPLES:
        outs = []
        for ch in chs:
            ids = chain_of(ch)
            if ids:  # parents merged, leaf applied as a live PEFT adapter
                model = PeftModel.from_pretrained(merged(base, ids[:-1], registry),
                                                  str(registry / ids[-1]))
            else:
                model = copy.deepcopy(base)
            model.eval()
            outs.append((ch, generate(model, tok, prompt)))
            log(f"[sample] {label} | {ch}: {outs[-1][1]!r}")
            del model
        samples.append((label, prompt, outs))
    return dict(ppl=ppl, ntok=ntok, samples=samples)


# ------------------------------------------------------------------------------------------
# README section
# ------------------------------------------------------------------------------------------

BEGIN, END = "<!-- measurements:begin -->", "<!-- measurements:end -->"
OWN = {"fr": "fr", "fr/manpages": "fr_man", "fr/manpages/alice": "alice", "de": "de",
       "de/witze": "de_witze"}
OTHER = {"fr": "de", "fr/manpages": "de", "fr/manpages/alice": "de", "de": "fr", "de/witze": "fr"}


def js(text):
    """JSON string for the README, with no-break spaces visible."""
    return json.dumps(text, ensure_ascii=False).replace("\xa0", "\\u00a0").replace("\u202f", "\\u202f")


def fmt_md(meas, stats, data_stats, registry):
    ppl, lines = meas["ppl"], []
    names = corpora_used()
    lines.append("Generated by `tools/train_registry.py` (transformers "
                 f"{transformers.__version__}, peft {peft.__version__}, torch {torch.__version__.split('+')[0]}; "
                 f"fp32, base = {PROFILE['base_desc']}).\n")
    lines.append("### Data\n")
    lines.append("| corpus | source | docs train / held-out | tokens train / held-out | eval tokens |")
    lines.append("|---|---|---|---|---|")
    for n in names:
        d = data_stats[n]
        lines.append(f"| `{n}` | {CORPORA[n][0]} | {d['docs']['train']} / {d['docs']['heldout']} | "
                     f"{d['train_tokens']} / {d['heldout_tokens']} | {meas['ntok'][n]} |")
    lines.append("\n### Adapters\n")
    lines.append("| id | trained on | r | alpha | target modules | dtype | file bytes | steps x tokens | "
                 "epochs | loss first -> last10 | wall time |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for a in ADAPTERS:
        st = stats.get(a["id"], {})
        size = (registry / a["id"] / "adapter_model.safetensors").stat().st_size
        parent = " + ".join(["base"] + chain_of(a["id"])[:-1])
        tm = ",".join(t.replace("_proj", "") for t in a["targets"])
        lines.append(f"| `{a['id']}` | {parent} | {a['r']} | {a['alpha']} | {tm} | {a['dtype']} | {size} | "
                     f"{a['steps']} x {BATCH * SEQ} | {st.get('epochs', '?')} | "
                     f"{st.get('loss_first', '?')} -> {st.get('loss_last10', '?')} | "
                     f"{st.get('wall_s', '?')} s |")
    lines.append("\n### Perplexity on held-out text (lower is better)\n")
    lines.append("Rows: what is applied (a node means its whole chain). Columns: held-out corpus.\n")
    lines.append("| applied | " + " | ".join(f"`{n}`" for n in names) + " |")
    lines.append("|---|" + "---:|" * len(names))
    for ch, row in ppl.items():
        lines.append(f"| `{ch}` | " + " | ".join(f"{row[n]:.2f}" for n in names) + " |")
    lines.append("\nBefore = the parent chain (base for `fr`/`de`), after = the node's chain:\n")
    lines.append("| adapter | own text | before | after | change | other language | before | after | change |")
    lines.append("|---|---|---:|---:|---:|---|---:|---:|---:|")
    for a in ADAPTERS:
        ch = a["id"]
        par = chain_of(ch)[:-1]
        par = par[-1] if par else "base"
        o, x = OWN[ch], OTHER[ch]
        b1, a1, b2, a2 = ppl[par][o], ppl[ch][o], ppl[par][x], ppl[ch][x]
        lines.append(f"| `{ch}` | `{o}` | {b1:.2f} | {a1:.2f} | {100 * (a1 / b1 - 1):+.1f}% | `{x}` | "
                     f"{b2:.2f} | {a2:.2f} | {100 * (a2 / b2 - 1):+.1f}% |")
    lines.append("\n### Sample generations (greedy, 40 new tokens)\n")
    lines.append("Leaf applied with PEFT on top of its merged ancestors. Prompts are raw text"
                 + (", BOS first" if PROFILE["bos"] else " except the chat one (SmolLM2 chat "
                    "template, default system prompt)") + ".\n")
    for label, prompt, outs in meas["samples"]:
        shown = prompt[6:] if prompt.startswith("@chat:") else prompt
        lines.append(f"**{label}**: `{js(shown)}`\n")
        for ch, text in outs:
            lines.append(f"- `{ch}`: {js(text)}")
        lines.append("")
    return "\n".join(lines)


def write_readme(registry, section):
    path = registry / "README.md"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Example registry\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN not in text:
        text += "\n" + BEGIN + "\n" + END + "\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(head + BEGIN + "\n" + section + "\n" + END + tail, encoding="utf-8")
    log(f"wrote {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(PROFILES), default="smollm2",
                    help="which base and registry (smollm2: registry/, gemma: registry-gemma/)")
    ap.add_argument("--registry", type=Path, help="default: the model's (registry/ or registry-gemma/)")
    ap.add_argument("--only", default="", help="comma-separated adapter ids to (re)train")
    ap.add_argument("--eval-only", action="store_true", help="measure the saved adapters only")
    ap.add_argument("--no-eval", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="2 steps per adapter, 1 eval block (pipeline check)")
    ap.add_argument("--eval-blocks", type=int, default=EVAL_BLOCKS)
    ap.add_argument("--stats", type=Path, help="training stats kept between runs (outside the "
                    "registry; default /tmp/train_registry[_gemma]_stats.json)")
    args = ap.parse_args()
    use_model(args.model)
    args.registry = args.registry or REPO / PROFILE["registry"]
    args.stats = args.stats or Path(PROFILE["stats"])
    t_all = time.time()
    log(f"torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__} "
        f"threads {torch.get_num_threads()}")
    if args.smoke:
        for a in ADAPTERS:
            a["steps"] = 2
        args.eval_blocks = 1
    tok = AutoTokenizer.from_pretrained(str(MODEL_DIR), gguf_file=MODEL_NAME)
    corpora, data_stats = {}, {}
    for name in corpora_used():
        t = time.time()
        corpora[name] = load_corpus(name, tok)
        c = corpora[name]
        data_stats[name] = {k: c[k] for k in ("docs", "train_tokens", "heldout_tokens")}
        log(f"[data] {name:9s} docs train/held {c['docs']['train']}/{c['docs']['heldout']} "
            f"tokens {c['train_tokens']}/{c['heldout_tokens']} blocks {len(c['train'])}/{len(c['heldout'])} "
            f"({time.time() - t:.1f}s)")
    base = load_base()
    stats = json.loads(args.stats.read_text()) if args.stats.exists() else {}
    if not args.eval_only:
        only = set(filter(None, args.only.split(",")))
        for spec in ADAPTERS:
            if only and spec["id"] not in only:
                continue
            stats[spec["id"]] = train_adapter(spec, base, corpora[spec["data"]], args.registry)
            args.stats.write_text(json.dumps(stats, indent=1))
    if not args.no_eval:
        meas = measure(base, tok, corpora, args.registry, args.eval_blocks)
        Path(PROFILE["stats"].replace("stats", "results")).write_text(json.dumps(meas, indent=1, ensure_ascii=False))
        write_readme(args.registry, fmt_md(meas, stats, data_stats, args.registry))
    log(f"done in {time.time() - t_all:.0f}s")


if __name__ == "__main__":
    sys.exit(main())

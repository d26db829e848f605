"""The model card (README.md) of an exported model: what it predicts and how, the data and the training that
made it, its validation figures as the run recorded them (metrics.jsonl, eval.json, summary.json), intended use
and limits, and how to load it with plain timm. Torch-free text; `gzfast.export` gathers the facts."""
from __future__ import annotations

from dataclasses import dataclass

from .data_facts import DataFacts
from .export_layout import CONFIG, ONNX, WEIGHTS

HEAD_WORDS = {
    "sigmoid": "`outputs = sigmoid(logits)`: each answer's cumulative vote fraction on its own (the Kaggle models' head).",
    "tree": "per question, a softmax over its answers' logits, times the cumulative fraction of the answer that asks "
            "it (`asked_after`): the fractions obey the decision tree by construction.",
    "dirichlet": "`concentrations = 1 + 99 * sigmoid(logits)`: per answer a Dirichlet concentration (zoobot's range); "
                 "the expected fractions are the concentrations normalised per question, times the cumulative fraction "
                 "of the answer that asks it.",
}
# The head of each kind as plain torch, for the card's code block (per_question is defined there).
HEAD_CODE = {
    "sigmoid": "def head(logits):\n    return torch.sigmoid(logits.float())\n",
    "tree": "def head(logits):\n    return per_question(logits.float(), lambda v: torch.softmax(v, dim=1))\n",
    "dirichlet": "def head(logits):  # Dirichlet concentrations\n    return 1 + 99 * torch.sigmoid(logits.float())\n\n\n"
                 "def fractions(concentrations):  # their expected vote fractions, cumulative\n"
                 "    return per_question(concentrations, lambda v: v / v.sum(dim=1, keepdim=True))\n",
}
PER_QUESTION_CODE = '''def per_question(values, fn):
    """fn over each question's answers, chained down the tree (parents come first)."""
    column = {a: i for i, a in enumerate(answers)}
    out = [None] * len(answers)
    for q in questions:
        idx = [column[a] for a in q["answers"]]
        part = fn(values[:, idx])
        if q["asked_after"] is not None:
            part = part * out[column[q["asked_after"]]]
        for k, i in enumerate(idx):
            out[i] = part[:, k:k + 1]
    return torch.cat(out, dim=1)
'''


@dataclass
class CardFacts:
    """Everything the card states, as the run recorded it."""
    name: str                   # the folder's name
    architecture: str
    config: dict                # the run's training config (TrainConfig.to_dict())
    data: DataFacts
    checkpoint: str             # the checkpoint's file name
    epoch: int | None           # epochs completed when it was written
    epochs: list[dict]          # the run's epoch records
    command: str | None
    commit: str | None
    fingerprint: str | None     # of the packed set trained on
    data_origin: str            # words: synthetic, or not, or not known
    eval_report: dict | None = None   # eval.json, when it evaluated this checkpoint
    summary: dict | None = None       # summary.json
    onnx: bool = False


def fmt(value) -> str:
    return "–" if value is None else f"{value:.5f}"


def figures_section(f: CardFacts) -> list[str]:
    """Validation RMSE (on cumulative fractions, the Kaggle metric) at the exported epoch, and the curve."""
    lines = ["## Validation", ""]
    record = next((r for r in f.epochs if r.get("epoch") == f.epoch), None)
    if record is None:
        lines += [f"The run's metrics.jsonl holds no validation record for epoch {f.epoch} (the exported checkpoint's); "
                  f"no figures can be given for it.", ""]
    else:
        lines += [f"At epoch {f.epoch} (the exported `{f.checkpoint}`), on the validation split of the packed set: "
                  f"**RMSE {fmt(record.get('val_rmse'))}** over all answers"
                  + (f"; predicting the training mean for every galaxy scores {fmt(f.summary['baseline_rmse'])}"
                     if f.summary and isinstance(f.summary.get("baseline_rmse"), float) else "") + ".", ""]
        lines += table(["confidence tier", "val RMSE"], [[t, fmt(v)] for t, v in (record.get("val_per_tier") or {}).items()])
        texts = {q.name: q.text for q in f.data.tree.questions}
        lines += table(["question", "", "val RMSE"],
                       [[q, texts.get(q, ""), fmt(v)] for q, v in (record.get("val_per_question") or {}).items()])
    lines += eval_lines(f.eval_report)
    lines += ["Every epoch of the run (metrics.jsonl):", ""]
    lines += table(["epoch", "stage", "train loss", "val RMSE", "seconds"],
                   [[str(r["epoch"]), str(r.get("stage", "")), fmt(r.get("train_loss")), fmt(r.get("val_rmse")),
                     f"{r.get('epoch_time', 0):.1f}"] for r in f.epochs])
    return lines


def eval_lines(rep: dict | None) -> list[str]:
    """eval.json's figures (gzfast.evaluate, with test-time augmentation), when given."""
    rmse = (rep or {}).get("rmse")
    if not isinstance(rmse, dict) or not isinstance(rmse.get("model"), float):
        return []
    tiers = {t: v.get("model") for t, v in (rep.get("per_tier") or {}).items() if isinstance(v, dict)}
    return [f"`gzfast.evaluate` on this checkpoint ({rep.get('galaxies', '?')} validation galaxies, {rep.get('tta', '?')} "
            f"view(s) averaged): RMSE {fmt(rmse['model'])}"
            + (f" (training mean {fmt(rmse.get('training mean'))})" if isinstance(rmse.get("training mean"), float) else "")
            + ("; per tier " + ", ".join(f"{t} {fmt(v)}" for t, v in tiers.items()) if tiers else "") + ".", ""]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows), ""]


def outputs_section(f: CardFacts) -> list[str]:
    tree, head = f.data.tree, f.config["head"]
    rows = [[q.name, q.text, ", ".join(f"`{tree.columns[c]}`" for c in q.columns),
             "everyone" if q.parent is None else f"`{tree.columns[q.parent]}`"] for q in tree.questions]
    return ["## What it predicts", "",
            f"For a galaxy image, {tree.n} logits, one per answer of the `{tree.name}` decision tree ({len(tree.questions)} "
            f"questions), in the order of `label_names` in {CONFIG}. The {head} head turns them into the outputs: "
            f"{HEAD_WORDS[head]} Fractions are cumulative: an answer's value is the share of all the galaxy's volunteers "
            f"who gave it, so a question's answers sum to the value of the answer that asks it.", "",
            *table(["question", "text", "answers", "asked after"], rows)]


def data_section(f: CardFacts) -> list[str]:
    d, c = f.data, f.config
    fit = {"crop": "other sizes were brought to it by pack's centred square, resized",
           "resize": "other sizes were brought to it by pack resizing the whole image",
           None: "the Kaggle layout's images are all this size"}[d.fit]
    samples = max((r.get("samples", 0) for r in f.epochs), default=0)
    return ["## Data", "",
            f"- Packed set `{c.get('shards')}`, fingerprint `{f.fingerprint}` (a hash of its input and every shard's "
            f"sha256, as `PackedSet.fingerprint` computes it).",
            f"- {f.data_origin}",
            f"- Labels: the `{d.tree.name}` tree's cumulative vote fractions" + (", packed from vote counts" if d.has_counts else "")
            + f"; at most {samples:,} training images an epoch.",
            f"- Images: {d.image_side} x {d.image_side} px JPEGs ({fit}); the model "
            f"sees the centred {c['crop_size']} px crop resized to {c['image_size']} px.", ""]


def training_section(f: CardFacts) -> list[str]:
    c = f.config
    schedule = c.get("curriculum") or f"all:{c.get('epochs')} (no curriculum)"
    return ["## Training", "",
            f"- Command: `{f.command or 'not recorded'}` at gzfast commit `{f.commit or 'not recorded'}`.",
            f"- timm `{f.architecture}`, {c['head']} head, loss {c.get('loss')}, "
            + (f"from `{c['pretrained']}`" if c.get("pretrained") else "from random weights") + f", seed {c.get('seed')}.",
            f"- Schedule (curriculum) `{schedule}`, epochs {c.get('epochs')}, global batch {c.get('batch_size')}, AdamW "
            f"lr {c.get('lr_backbone')} (backbone) / {c.get('lr_head')} (head), weight decay {c.get('weight_decay')}, "
            f"{c.get('lr_schedule')} LR, {c.get('precision')}.",
            f"- Exported: `{f.checkpoint}`, written after epoch {f.epoch} of {c.get('epochs')}.", ""]


def use_section(f: CardFacts) -> list[str]:
    return ["## Intended use and limits", "",
            f"Morphology of galaxies imaged like its training set: the `{f.data.tree.name}` tree's answers as vote "
            f"fractions, for catalogues and as a starting point for fine-tuning (`--pretrained {WEIGHTS}` of gzfast's "
            f"trainer keeps its classifier when the answers and head are the same). Its figures hold for images prepared "
            f"as below and drawn from the same survey and selection; other surveys, depths, pixel scales or cut-out sizes "
            f"need a new validation. {f.data_origin} Vote fractions are what volunteers answered, not a ground truth.", ""]


def load_section(f: CardFacts) -> list[str]:
    c, d, n = f.config, f.data, f.data.tree.n
    lo = (d.image_side - c["crop_size"]) / 2
    code = ["import json", "", "import numpy as np", "import timm", "import torch", "from PIL import Image", "",
            f'folder = "{f.name}"  # this folder', f'config = json.load(open(f"{{folder}}/{CONFIG}"))',
            'model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()',
            "# or, without reading config.json:",
            f'# model = timm.create_model("{f.architecture}", pretrained=True, num_classes={n},',
            f'#     pretrained_cfg_overlay=dict(file=f"{{folder}}/{WEIGHTS}", num_classes={n})).eval()',
            'answers = config["label_names"]', 'questions = config["gzfast"]["tree"]["questions"]', "", "",
            *PER_QUESTION_CODE.splitlines(), "", "", *HEAD_CODE[c["head"]].splitlines(), "", "",
            "def prepare(path):",
            f'    """As gzfast\'s eval loader: the centred {c["crop_size"]} px of the {d.image_side} px image, resized to '
            f'{c["image_size"]} px, ImageNet mean/std."""',
            '    img = Image.open(path).convert("RGB")',
            f"    box = ({lo}, {lo}, {lo + c['crop_size']}, {lo + c['crop_size']})",
            f"    img = img.resize(({c['image_size']}, {c['image_size']}), Image.BILINEAR, box=box)",
            "    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)",
            '    mean, std = (torch.tensor(config["pretrained_cfg"][k]).view(3, 1, 1) for k in ("mean", "std"))',
            "    return (x - mean) / std", "", "",
            f"images = torch.zeros(1, 3, {c['image_size']}, {c['image_size']})  # or torch.stack([prepare(p) for p in paths])",
            "with torch.no_grad():", f"    logits = model(images)  # N x {n}", "    outputs = head(logits)"]
    return ["## Loading it with plain timm", "",
            f"`{WEIGHTS}` holds the backbone under timm's own names and `{CONFIG}` is timm's pretrained config, so timm "
            f"alone rebuilds it; the head is the fixed function above, in plain torch below. `prepare` follows gzfast's "
            f"loader geometry; gzfast decodes JPEGs in draft mode (a DCT reduction), so its pixels differ from these by "
            f"about 1/255. Images of another size must first be brought to {d.image_side} px as `shard_tools pack` does.",
            "", "```python", *code, "```", ""]


def onnx_section(f: CardFacts) -> list[str]:
    if not f.onnx:
        return []
    size = f.config["image_size"]
    return ["## ONNX", "",
            f"`{ONNX}`: the backbone and the head, input `images` N x 3 x {size} x {size} (float32, prepared as above; "
            f"N is free), outputs `outputs` (the head's) and `logits`; checked against PyTorch with onnxruntime "
            f"(within 1e-3) when it was exported.", ""]


def model_card(f: CardFacts) -> str:
    tree = f.data.tree
    lines = [f"# {f.name}: galaxy morphology, timm `{f.architecture}`, `{tree.name}` tree", "",
             f"A timm `{f.architecture}` trained by gzfast to predict Galaxy Zoo volunteers' vote fractions for the "
             f"{tree.n} answers of the `{tree.name}` decision tree. Exported by `python -m gzfast.export`.", "",
             *outputs_section(f), *data_section(f), *training_section(f), *figures_section(f), *use_section(f),
             *load_section(f), *onnx_section(f)]
    return "\n".join(lines).rstrip() + "\n"

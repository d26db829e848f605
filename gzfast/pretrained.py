"""Reading `--pretrained` weights: a timm state dict in any of the forms they are published in, and, when it
does not fit, which timm model it does fit.

Accepted: `.safetensors` or a torch pickle (`.pth`/`.pt`, read with `weights_only=True`), possibly nested under
`state_dict` / `model` / `model_state_dict`, possibly with a wrapper's prefix (`module.` of DDP, `backbone.` of a
gzfast model, `encoder.` of a zoobot Lightning checkpoint, whose other tensors are its head); a folder that
`gzfast.export` wrote stands for its `model.safetensors`. A full classifier and a headless encoder (timm's
`num_classes=0`, the form zoobot publishes) are both backbones here: what `gzfast.model.load_pretrained`
does with the classifier is decided there.
"""
from __future__ import annotations

import difflib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from shard_tools.errors import UserError, first_line

from . import export_layout as layout

NESTED = ("state_dict", "model", "model_state_dict")
# A wrapper's prefix: the tensors under it are the encoder, any others belong to the wrapper (e.g. its head).
ENCODER_PREFIXES = ("backbone.", "encoder.")
LOOKALIKE_SECONDS = 8.0  # the search for the model a file fits stops after this long (28 convnext* take ~6 s)


class PretrainedError(UserError, ValueError):
    """--pretrained weights that cannot be used; the message says why and what to give instead."""


class PretrainedMissing(PretrainedError, FileNotFoundError):
    pass


@dataclass
class EncoderWeights:
    """The tensors of a file under timm's own names, and what was left out of them."""
    path: Path
    tensors: dict[str, torch.Tensor]
    prefix: str = ""                                        # the wrapper prefix removed, if any
    outside: list[str] = field(default_factory=list)       # tensors of the wrapper outside that prefix
    export_config: dict | None = None                      # the config.json of a gzfast export holding the file


def weights_file(path: Path) -> tuple[Path, dict | None]:
    """The weights to read and, for a gzfast export (the folder or its model.safetensors), its config."""
    folder = path if path.is_dir() else path.parent
    config = layout.export_config(folder)
    if path.is_dir():
        if config is None:
            raise PretrainedError(f"--pretrained {path}: cannot use it: a folder that gzfast.export did not write (no "
                                  f"gzfast {layout.CONFIG}); give a .safetensors/.pth file or an exported folder")
        return folder / layout.WEIGHTS, config
    return path, config if path.name == layout.WEIGHTS else None


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """A flat {name: tensor} from a .safetensors file or a torch pickle of tensors."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - safetensors, pickle and torch each raise their own kind
        raise PretrainedError(f"--pretrained {path}: cannot use it: not a readable state dict ({first_line(exc)[:200]}); "
                              f"give a timm state dict (.safetensors or .pth)") from None
    for key in NESTED:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PretrainedError(f"--pretrained {path}: cannot use it: it holds no state dict of tensors; give a timm "
                              f"state dict (.safetensors or .pth)")
    return state


def read_encoder(path: str | Path) -> EncoderWeights:
    """The file's tensors under timm's names: DDP's `module.` removed, and a wrapper's encoder taken out."""
    path = Path(path)
    if not path.exists():
        raise PretrainedMissing(f"--pretrained {path}: file not found; give a timm state dict (.safetensors or .pth) "
                                f"or a folder that gzfast.export wrote")
    path, config = weights_file(path)
    state = {k.removeprefix("module."): v for k, v in read_tensors(path).items()}
    for prefix in ENCODER_PREFIXES:
        if any(k.startswith(prefix) for k in state):
            inside = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
            return EncoderWeights(path, inside, prefix, sorted(k for k in state if not k.startswith(prefix)), config)
    return EncoderWeights(path, state, export_config=config)


# --- when it does not fit: what it is ---------------------------------------------------------------------

def shapes(state: dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state.items()}


def misfits(theirs: dict[str, tuple], ours: dict[str, tuple], classifier: set[str]) -> list[str]:
    """Every tensor, apart from the classifier, that differs between the file and the model, in words."""
    out = []
    for k, shape in theirs.items():
        if k in classifier:
            continue
        if k not in ours:
            out.append(f"{k} is not in the model")
        elif ours[k] != shape:
            out.append(f"{k} is {list(shape)} in the file, {list(ours[k])} in the model")
    out += [f"{k} is missing from the file" for k in ours if k not in theirs and k not in classifier]
    return out


def family(name: str) -> str:
    """The timm family of a model name: its leading letters (convnext_atto -> convnext, resnet10t -> resnet)."""
    match = re.match(r"[a-z]+", name.lower())
    return match.group(0) if match else name


def headless_shapes(name: str) -> dict[str, tuple] | None:
    """The tensor shapes of timm model `name` with num_classes=0, built on the meta device (no memory, no init
    cost); None if it cannot be built so."""
    import timm
    try:
        with torch.device("meta"):
            return shapes(timm.create_model(name, pretrained=False, num_classes=0).state_dict())
    except Exception:  # noqa: BLE001 - a model that cannot be built headless or on meta is just not a candidate
        return None


def lookalike(theirs: dict[str, tuple], ours: dict[str, tuple], model_name: str, classifier: set[str]) -> str:
    """Words naming the timm model of the same family whose backbone has exactly the file's tensors, or saying
    that none has (and how far the search got). Candidates are tried most similar name first, for a few seconds."""
    import timm
    wanted = {k: v for k, v in theirs.items() if k not in classifier}
    fam = family(model_name)
    if len(wanted.keys() & ours.keys()) < len(wanted) / 2:  # models of one family share most tensor names
        example = next(k for k in wanted if k not in ours)
        return (f"most of its tensor names (e.g. {example}) are not those of a {fam} model: it is another kind of "
                f"network; give a timm state dict of {model_name}")
    names = sorted((n for n in timm.list_models(f"{fam}*") if n != model_name),
                   key=lambda n: -difflib.SequenceMatcher(None, n, model_name).ratio())
    start, checked = time.perf_counter(), 0
    for name in names:
        if time.perf_counter() - start > LOOKALIKE_SECONDS:
            break
        checked += 1
        if headless_shapes(name) == wanted:
            return f"they are the tensors of timm's {name}: train with --model {name}, or give weights of {model_name}"
    searched = f"none of timm's {len(names)} other {fam}* models" if checked == len(names) else \
        f"none of the {checked} {fam}* models most like it (of {len(names)}; the search stops after {LOOKALIKE_SECONDS:.0f} s)"
    return f"{searched} has exactly these tensors; give a timm state dict of {model_name}"

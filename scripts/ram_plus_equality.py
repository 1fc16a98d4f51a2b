"""Our RAM++ port against the Recognize Anything authors' code, on files in the released layout (by hand; CI does not
run it).

Two Python environments, as the authors' code needs packages this project does not:

    python3.11 -m venv /tmp/ramenv
    /tmp/ramenv/bin/pip install torch 'timm==1.0.*' 'transformers<=4.55.4' fairscale pillow torchvision
    git clone https://github.com/xinyu1205/recognize-anything /tmp/recognize-anything   # on a connected machine
    .venv/bin/python scripts/ram_plus_equality.py --authors-python /tmp/ramenv/bin/python \\
        --authors-repo /tmp/recognize-anything --work /tmp/ram_check IMAGE...

(The recorded figures were made with a lighter authors' environment that reuses this project's torch, timm,
torchvision and PIL: a venv whose site-packages hold a ``.pth`` file naming ``.venv``'s site-packages, and
``pip install --no-deps 'transformers==4.55.4' 'tokenizers<0.22' 'huggingface_hub<1.0' fairscale`` into it.)

The file a user downloads differs from the authors' ``state_dict`` in two keys. Each ``--layouts`` entry is one file:

- ``release``: as released: an extra scalar ``logit_scale`` (written as log 100, which would change every probability
  were it the temperature) and no ``reweight_scale`` (their loader leaves it at its initial log(1/0.07));
- ``finetuned``: a file fine-tuned with their code: ``reweight_scale`` present (log 30 here) and no ``logit_scale``.

Full size (IMAGE... given):

1. In the authors' environment (this script again, ``--authors-side``): their ``ram_plus(vit='swin_l',
   image_size=384)`` with random weights (``label_embed`` random unit rows: their eval constructor leaves it at zero
   and fills it from the file) is saved in each layout (``{"model": state}``), and each file is loaded the way
   users load the release, ``ram_plus(pretrained=FILE)``: their loader, ``load_state_dict(strict=False)``; the keys
   it reports missing and unexpected are printed. Their probabilities on the images (a hook on their ``fc``,
   through their own ``generate_tag``) with their transform (PIL resize to 384 x 384, ToTensor, Normalize), and
   their tags (their per-tag thresholds). Their tokenizer is only asked for its length (30524); no network is used.
2. Here: each file through ``clipomaly_ros``'s strict loader, our probabilities with our preprocessing, and on
   their preprocessed tensors too (the model alone). Prints max |dp| both ways and whether the tag sets agree;
   exit 1 when our max |dp| exceeds 1e-4 or a tag set differs. The random files stay in ``--work``.

``--tiny-reference OUT.json`` (no images): the tiny CI fixture of ``test/tagger_fixture.py`` instead, written here
in both layouts with its frames; the authors' code builds a model of the fixture's size (its Swin and head sizes,
tag list and thresholds given to their constructor through their own config files, in a folder their
``CONFIG_PATH`` is pointed at), loads each file with their loader and tags the frames. Their probabilities go to
OUT.json, which ``test/test_tagger.py`` compares ours with:

    .venv/bin/python scripts/ram_plus_equality.py --authors-python /tmp/ramenv/bin/python \\
        --authors-repo /tmp/recognize-anything --authors-commit "recognize-anything 7cb804a" \\
        --work /tmp/ram_tiny --tiny-reference test/ram_plus_tiny_reference.json
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

TOLERANCE = 1e-4
LAYOUTS = ("release", "finetuned")
RELEASE_LOGIT_SCALE = math.log(100.0)
FINETUNED_REWEIGHT_SCALE = math.log(30.0)
TOKENIZER_LENGTH = 30524
SWIN_BUFFERS = ("relative_position_index", "attn_mask")
"""Buffers their loader drops from a file and their Swin recomputes (so it reports them missing)."""


# --- the authors' side (their environment: torch, timm, transformers, fairscale; not this package) --------------------
def authors_module(repo: Path):
    """Their ``ram.models.ram_plus`` module, with the tokenizer reduced to its one use at inference (its length),
    and their loader wrapped to keep the missing and unexpected keys it reports."""
    import importlib

    sys.path.insert(0, str(repo))
    # the package's __init__ binds the name ram_plus to the factory function: the module itself from sys.modules
    module = importlib.import_module("ram.models.ram_plus")

    class LengthOnly(list):  # resize_token_embeddings(len(tokenizer)) is all inference asks of it
        def __len__(self):
            return TOKENIZER_LENGTH

    module.init_tokenizer = lambda *args, **kwargs: LengthOnly()
    their_loader = module.load_checkpoint_swinlarge
    module.loader_reports = []

    def reporting_loader(model, url_or_filename, kwargs):
        model, message = their_loader(model, url_or_filename, kwargs)
        module.loader_reports.append({"missing": sorted(message.missing_keys),
                                      "unexpected": sorted(message.unexpected_keys)})
        return model, message

    module.load_checkpoint_swinlarge = reporting_loader
    return module


def in_layout(state: dict, layout: str) -> dict:
    """The authors' ``state_dict`` as a file of ``layout`` holds it (see the module docstring)."""
    import torch

    state = dict(state)
    if layout == "release":
        state.pop("reweight_scale")
        state["logit_scale"] = torch.tensor(RELEASE_LOGIT_SCALE)
    else:
        state["reweight_scale"] = torch.tensor(FINETUNED_REWEIGHT_SCALE)
    return state


def write_random_files(module, work: Path, layouts: list[str]) -> dict[str, Path]:
    """Their full-size model with random weights, saved once per layout."""
    import torch

    torch.manual_seed(0)
    model = module.ram_plus(image_size=384, vit="swin_l").eval()
    with torch.no_grad():
        model.label_embed.copy_(torch.nn.functional.normalize(torch.randn_like(model.label_embed), dim=-1))
    files = {}
    for layout in layouts:
        files[layout] = work / f"ram_plus_random_swin_l_{layout}.pth"
        torch.save({"model": in_layout(model.state_dict(), layout)}, files[layout])
    return files


def point_config_at_tiny(module, work: Path, job: dict) -> dict:
    """Their config files for the fixture's sizes, in ``work/authors_config`` with their own layout, and their
    ``CONFIG_PATH`` pointed there; returns the tag list arguments of their constructor."""
    import ram.models.utils as their_utils

    size = job["architecture"]
    config = work / "authors_config"
    (config / "configs" / "swin").mkdir(parents=True, exist_ok=True)
    (config / "data").mkdir(exist_ok=True)
    vision_width = size["embed_dim"] * 2 ** (len(size["depths"]) - 1)
    (config / "configs" / "swin" / "config_swinL_384.json").write_text(json.dumps({
        "vision_width": vision_width, "image_res": 384, "window_size": size["window"],
        "embed_dim": size["embed_dim"], "depths": size["depths"], "num_heads": size["heads"]}))
    head = json.loads((Path(module.__file__).parents[1] / "configs" / "q2l_config.json").read_text())
    head.update(hidden_size=size["hidden"], intermediate_size=size["ffn"], num_hidden_layers=size["layers"])
    (config / "configs" / "q2l_config.json").write_text(json.dumps(head))
    (config / "data" / "ram_tag_list_threshold.txt").write_text("\n".join(map(str, job["thresholds"])) + "\n")
    tag_list = config / "data" / "tag_list.txt"
    tag_list.write_text("\n".join(job["tags"]) + "\n")
    module.CONFIG_PATH = their_utils.CONFIG_PATH = config
    return {"tag_list": str(tag_list), "tag_list_chinese": str(tag_list)}


def their_probabilities(module, checkpoint: Path, images: list[Path], **constructor) -> dict:
    """The file loaded by their loader, and their probabilities (N, T), inputs (N, 3, 384, 384) and tags."""
    import numpy as np
    import torch
    from PIL import Image
    from ram import get_transform

    model = module.ram_plus(pretrained=str(checkpoint), image_size=384, vit="swin_l", **constructor).eval()
    logits = []
    model.fc.register_forward_hook(lambda layer, inputs, output: logits.append(output.squeeze(-1)))
    transform = get_transform(image_size=384)
    inputs, probabilities, tags = [], [], []
    for path in images:
        tensor = transform(Image.open(path)).unsqueeze(0)
        with torch.no_grad():
            english, _ = model.generate_tag(tensor)
        inputs.append(tensor[0].numpy())
        probabilities.append(torch.sigmoid(logits[-1])[0].numpy())
        tags.append(sorted(english[0].split(" | ")) if english[0] else [])
    return {"inputs": np.stack(inputs), "probabilities": np.stack(probabilities), "tags": tags,
            "reweight_scale": float(model.reweight_scale), "loader": module.loader_reports[-1]}


def authors_side(repo: Path, work: Path) -> None:
    """Runs in the authors' environment on ``work/job.json``: one result per layout into ``work``."""
    import numpy as np
    import timm
    import torch
    import transformers

    job = json.loads((work / "job.json").read_text())
    module = authors_module(repo)
    if job["tiny"]:
        constructor = point_config_at_tiny(module, work, job)
        files = {layout: Path(path) for layout, path in job["files"].items()}
    else:
        constructor, files = {}, write_random_files(module, work, job["layouts"])
    for layout, checkpoint in files.items():
        result = their_probabilities(module, checkpoint, [Path(p) for p in job["images"]], **constructor)
        np.save(work / f"authors_{layout}_inputs.npy", result.pop("inputs"))
        np.save(work / f"authors_{layout}_probabilities.npy", result.pop("probabilities"))
        result.update(checkpoint=str(checkpoint), versions={"torch": torch.__version__, "timm": timm.__version__,
                                                            "transformers": transformers.__version__})
        (work / f"authors_{layout}.json").write_text(json.dumps(result))
        missing = [key for key in result["loader"]["missing"] if not key.endswith(SWIN_BUFFERS)]
        print(f"their loader on the {layout} layout: missing {missing} (and the Swin buffers it recomputes), "
              f"unexpected {result['loader']['unexpected']}; reweight_scale {result['reweight_scale']:.4f}")


# --- our side --------------------------------------------------------------------------------------------------------
def compare(work: Path, layout: str, frames: list, names: list[str], tags=None) -> tuple[dict, object]:
    """Our probabilities on ``layout``'s file against theirs: a summary, and theirs (N, T)."""
    import numpy as np
    import torch

    from clipomaly_ros.core.model.tagger import load_tagger, tagger_input

    authors = json.loads((work / f"authors_{layout}.json").read_text())
    model = load_tagger(authors["checkpoint"], tags)
    theirs = np.load(work / f"authors_{layout}_probabilities.npy")
    their_inputs = torch.from_numpy(np.load(work / f"authors_{layout}_inputs.npy"))
    ours_inputs = torch.cat([tagger_input(torch.from_numpy(frame)[None]) for frame in frames])
    with torch.no_grad():
        ours = model(ours_inputs).numpy()
        model_only = model(their_inputs).numpy()
    thresholds = model.tags.thresholds
    same_tags = []
    for index, name in enumerate(names):
        our_tags = sorted(model.tags.names[i] for i in np.flatnonzero(ours[index] > thresholds))
        same_tags.append(our_tags == authors["tags"][index])
        print(f"  {name}: {len(our_tags)} tags ours, {len(authors['tags'][index])} theirs, same: {same_tags[-1]}; "
              f"max |dp| {np.abs(ours[index] - theirs[index]).max():.2e}")
    summary = {"max_dp": float(np.abs(ours - theirs).max()), "max_dp_model_only": float(np.abs(model_only - theirs)
                                                                                         .max()),
               "input_gap": float(np.abs(ours_inputs.numpy() - their_inputs.numpy()).max()),
               "same_tags": all(same_tags), "their_reweight_scale": authors["reweight_scale"],
               "our_reweight_scale": float(model.reweight_scale), "versions": authors["versions"]}
    print(f"{layout} layout: max |dp| over {len(names)} images x {theirs.shape[1]} tags: {summary['max_dp']:.2e} "
          f"with our preprocessing, {summary['max_dp_model_only']:.2e} on their preprocessed inputs (the model "
          f"alone); largest input difference {summary['input_gap']:.3f} (normalised units); reweight_scale "
          f"{summary['our_reweight_scale']:.4f} ours, {summary['their_reweight_scale']:.4f} theirs; tag sets "
          f"identical: {summary['same_tags']}")
    return summary, theirs


def run_authors(args, job: dict) -> None:
    (args.work / "job.json").write_text(json.dumps(job))
    subprocess.run([args.authors_python, __file__, "--authors-side", "--authors-repo", str(args.authors_repo),
                    "--work", str(args.work)], check=True)


def full_size(args) -> int:
    from clipomaly_ros.core.images import read_rgb

    images = [path.resolve() for path in args.images]
    run_authors(args, {"tiny": False, "layouts": args.layouts, "images": list(map(str, images))})
    frames = [read_rgb(path) for path in images]
    results = [compare(args.work, layout, frames, list(map(str, images)))[0] for layout in args.layouts]
    return 0 if all(r["max_dp"] <= TOLERANCE and r["same_tags"] for r in results) else 1


def tiny_reference(args) -> int:
    """The fixture's files and frames here, the authors' probabilities on them there, written to the reference."""
    import dataclasses

    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "test"))
    from tagger_fixture import (FINETUNED_REWEIGHT_SCALE as FIXTURE_FINETUNED, TINY, reference_frames, tiny_model,
                                tiny_tags, write_checkpoint)

    assert FIXTURE_FINETUNED == FINETUNED_REWEIGHT_SCALE
    frames, tags = list(reference_frames()), tiny_tags()
    files = {"release": write_checkpoint(args.work / "tiny_release.pth", tiny_model(), layout="release"),
             "finetuned": write_checkpoint(args.work / "tiny_finetuned.pth",
                                           tiny_model(reweight_scale=FIXTURE_FINETUNED), layout="finetuned")}
    images = []
    for index, frame in enumerate(frames):
        images.append(args.work / f"tiny_frame{index}.png")
        Image.fromarray(frame).save(images[-1])
    run_authors(args, {"tiny": True, "architecture": dataclasses.asdict(TINY), "tags": list(tags.names),
                       "thresholds": tags.thresholds.tolist(), "images": list(map(str, images)),
                       "files": {layout: str(path) for layout, path in files.items()}})
    reference = {"made_by": "scripts/ram_plus_equality.py --tiny-reference: the authors' RAM++ code "
                            f"({args.authors_commit}) on test/tagger_fixture.py's files, built at the fixture's "
                            "size and loaded by their own loader (strict=False), on reference_frames()",
                 "probabilities": {}, "checks": {}}
    for layout in LAYOUTS:
        summary, theirs = compare(args.work, layout, frames, [p.name for p in images], tags)
        reference["probabilities"][layout] = theirs.tolist()
        reference["checks"][layout] = summary
    args.tiny_reference.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {args.tiny_reference}")
    return 0 if all(r["max_dp"] <= TOLERANCE for r in reference["checks"].values()) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="*", type=Path, help="real frames (the full-size comparison)")
    parser.add_argument("--authors-repo", type=Path, required=True, help="a checkout of xinyu1205/recognize-anything")
    parser.add_argument("--authors-python", help="the Python of the authors' environment (see the docstring)")
    parser.add_argument("--authors-commit", default="commit not given", help="recorded in the tiny reference")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ram_plus_check"))
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    parser.add_argument("--tiny-reference", type=Path, metavar="OUT.json",
                        help="compare on the tiny test fixture instead, and write the authors' probabilities here")
    parser.add_argument("--authors-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.authors_side:
        authors_side(args.authors_repo.resolve(), args.work)
        return 0
    if not args.authors_python:
        parser.error("--authors-python is needed (the environment with transformers and fairscale)")
    if bool(args.images) == bool(args.tiny_reference):
        parser.error("give real frames (IMAGE...) or --tiny-reference OUT.json, one of the two")
    args.authors_repo = args.authors_repo.resolve()
    return tiny_reference(args) if args.tiny_reference else full_size(args)


if __name__ == "__main__":
    sys.exit(main())

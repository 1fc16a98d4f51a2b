"""Our RAM++ port against the Recognize Anything authors' code, on real images (by hand; CI does not run it).

Two Python environments, as the authors' code needs packages this project does not:

    python3.11 -m venv /tmp/ramenv
    /tmp/ramenv/bin/pip install torch==2.13.0 'timm==1.0.*' 'transformers<=4.55.4' fairscale pillow
    git clone https://github.com/xinyu1205/recognize-anything /tmp/recognize-anything   # on a connected machine
    .venv/bin/python scripts/ram_plus_equality.py --authors-python /tmp/ramenv/bin/python \\
        --authors-repo /tmp/recognize-anything --work /tmp/ram_check IMAGE...

1. In the authors' environment (this script again, ``--authors-side``): their ``ram_plus(vit='swin_l',
   image_size=384)`` with random weights (``label_embed`` random unit rows too: their eval constructor leaves it at
   zero and fills it from the release), saved as the release is (``{"model": state_dict}``), and their
   probabilities on the images (a hook on their ``fc``, through their own ``generate_tag``) with their transform
   (PIL resize to 384 x 384, ToTensor, Normalize), and their tags (their per-tag thresholds).
   Their tokenizer is only asked for its length (30524); no network is used.
2. Here: that file through ``clipomaly_ros``'s strict loader, our probabilities with our preprocessing, and on
   their preprocessed tensors too (the model alone). Prints max |dp| both ways and whether the tag sets agree;
   exit 1 when our max |dp| exceeds 1e-4 or a tag set differs. The random file stays in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

TOLERANCE = 1e-4


def authors_side(repo: Path, work: Path, images: list[Path]) -> None:
    """Runs in the authors' environment: writes the random checkpoint, their inputs, probabilities and tags."""
    import numpy as np
    import torch
    from PIL import Image

    sys.path.insert(0, str(repo))
    import importlib

    from ram import get_transform

    # the package's __init__ binds the name ram_plus to the factory function: the module itself from sys.modules
    ram_plus_module = importlib.import_module("ram.models.ram_plus")

    class LengthOnly(list):  # the tokenizer's one use at inference: resize_token_embeddings(len(tokenizer))
        def __len__(self):
            return 30524

    ram_plus_module.init_tokenizer = lambda *args, **kwargs: LengthOnly()
    torch.manual_seed(0)
    model = ram_plus_module.ram_plus(image_size=384, vit="swin_l").eval()
    with torch.no_grad():
        model.label_embed.copy_(torch.nn.functional.normalize(torch.randn_like(model.label_embed), dim=-1))
    checkpoint = work / "ram_plus_random_swin_l.pth"
    torch.save({"model": model.state_dict()}, checkpoint)
    logits = []
    model.fc.register_forward_hook(lambda module, inputs, output: logits.append(output.squeeze(-1)))
    transform = get_transform(image_size=384)
    inputs, probabilities, tags = [], [], []
    for path in images:
        tensor = transform(Image.open(path)).unsqueeze(0)
        with torch.no_grad():
            english, _ = model.generate_tag(tensor)
        inputs.append(tensor[0].numpy())
        probabilities.append(torch.sigmoid(logits[-1])[0].numpy())
        tags.append(sorted(english[0].split(" | ")) if english[0] else [])
    np.save(work / "authors_inputs.npy", np.stack(inputs))
    np.save(work / "authors_probabilities.npy", np.stack(probabilities))
    (work / "authors_tags.json").write_text(json.dumps({"checkpoint": str(checkpoint), "tags": tags}))


def our_side(work: Path, images: list[Path]) -> int:
    import numpy as np
    import torch

    from clipomaly_ros.core.images import read_rgb
    from clipomaly_ros.core.model.tagger import load_tagger, tagger_input

    authors = json.loads((work / "authors_tags.json").read_text())
    model = load_tagger(authors["checkpoint"])
    theirs = np.load(work / "authors_probabilities.npy")
    their_inputs = torch.from_numpy(np.load(work / "authors_inputs.npy"))
    thresholds = model.tags.thresholds
    with torch.no_grad():
        ours = np.stack([model(tagger_input(torch.from_numpy(read_rgb(path))[None]))[0].numpy() for path in images])
        model_only = model(their_inputs).numpy()
    worst, worst_model = float(np.abs(ours - theirs).max()), float(np.abs(model_only - theirs).max())
    input_gap = float(np.abs(torch.cat([tagger_input(torch.from_numpy(read_rgb(p))[None]) for p in images]).numpy()
                             - their_inputs.numpy()).max())
    same_tags = []
    for index, path in enumerate(images):
        our_tags = sorted(model.tags.names[i] for i in np.flatnonzero(ours[index] > thresholds))
        same_tags.append(our_tags == authors["tags"][index])
        print(f"{path}: {len(our_tags)} tags ours, {len(authors['tags'][index])} theirs, same: {same_tags[-1]}; "
              f"max |dp| {np.abs(ours[index] - theirs[index]).max():.2e}")
    print(f"max |dp| over {len(images)} images x {theirs.shape[1]} tags: {worst:.2e} with our preprocessing, "
          f"{worst_model:.2e} on their preprocessed inputs (the model alone); largest input difference "
          f"{input_gap:.3f} (normalised units); tag sets identical: {all(same_tags)}")
    return 0 if worst <= TOLERANCE and all(same_tags) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("images", nargs="+", type=Path)
    parser.add_argument("--authors-repo", type=Path, required=True, help="a checkout of xinyu1205/recognize-anything")
    parser.add_argument("--authors-python", help="the Python of the authors' environment (see the docstring)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ram_plus_check"))
    parser.add_argument("--authors-side", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    images = [path.resolve() for path in args.images]
    if args.authors_side:
        authors_side(args.authors_repo.resolve(), args.work.resolve(), images)
        return 0
    if not args.authors_python:
        parser.error("--authors-python is needed (the environment with transformers and fairscale)")
    subprocess.run([args.authors_python, __file__, "--authors-side", "--authors-repo", str(args.authors_repo),
                    "--work", str(args.work), *map(str, images)], check=True)
    return our_side(args.work, images)


if __name__ == "__main__":
    sys.exit(main())

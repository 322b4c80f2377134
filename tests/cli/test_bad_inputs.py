"""Bad inputs and faults, as a hostile user would try them: each ends with exit 2, a message that names the field or
file at fault, no traceback, and nothing outside the new run directory (and the teacher cache) changed. Problems
that a sample batch can reveal are reported before the teacher stage trains anything."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import pytest
import torch

from featdistill.run import main

ROOT = Path(__file__).resolve().parents[2]
RESNET = str(ROOT / "recipes" / "resnet_to_resnet.py")
VIT = str(ROOT / "recipes" / "vit_to_deit.py")
FAST = ["--quiet", "--set", "teacher.pretrain.epochs=1", "--set", "train.epochs=1"]


def text(w: Path, name: str, content: str) -> str:
    (w / name).write_text(content)
    return str(w / name)


def garbage(w: Path, name: str) -> str:
    (w / name).write_bytes(b"\x80\x04not a checkpoint at all")
    return str(w / name)


def other_state_dict(w: Path) -> str:
    torch.save({"weight": torch.zeros(3)}, w / "other.pt")
    return str(w / "other.pt")


def saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def run_dir_with(w: Path, run_json: str | None = None, checkpoint: bytes | None = None) -> str:
    d = w / "old_run"
    d.mkdir()
    if run_json is not None:
        (d / "run.json").write_text(run_json)
    if checkpoint is not None:
        (d / "recipe.py").write_text(Path(RESNET).read_text())
        (d / "run.json").write_text(f'{{"recipe_path": "{RESNET}", "overrides": []}}')
        (d / "checkpoint.pt").write_bytes(checkpoint)
    return str(d)


def cifar_root(w: Path, payload: bytes) -> str:
    folder = w / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(payload)
    return str(w / "cifar")


def imagefolder_with_corrupt_image(w: Path) -> str:
    from PIL import Image

    for split in ("train", "val"):
        for label in ("a", "b"):
            folder = w / "images" / split / label
            folder.mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(folder / f"{i}.png")
    (w / "images" / "train" / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    return str(w / "images")


# (id, argv from the world folder, text the message must hold, whether it may train before failing)
CASES = [
    # the recipe file
    ("missing recipe", lambda w: [str(w / "nope.py")], ["does not exist"], False),
    ("syntax error", lambda w: [text(w, "r.py", "x = 1\nrecipe = Recipe(\n")], ["syntax error at", "r.py:2"], False),
    ("recipe raises", lambda w: [text(w, "r.py", "recipe = undefined\n")], ["NameError", "r.py:1"], False),
    ("no recipe defined", lambda w: [text(w, "r.py", "x = 1\n")], ["module-level `recipe = Recipe"], False),
    ("no recipe given", lambda w: [], ["give a recipe file"], False),
    # overrides
    ("unknown key", lambda w: [RESNET, "--set", "train.epoch=3"], ["unknown key 'epoch'", "'epochs'"], False),
    ("dict with a misspelled key", lambda w: [RESNET, "--set", "kd={'temprature': 2}"],
     ["['temprature']", "'temperature'"], False),
    ("pair dict misspelled", lambda w: [RESNET, "--set", "pairs=[{'studnet': 'layer1', 'teacher': 'layer1'}]"],
     ["pairs[0]", "'studnet'", "'student'"], False),
    ("pairs as a bare word", lambda w: [RESNET, "--set", "pairs=blocks.1"], ["pairs must be a list of Pair"], False),
    ("wrong type", lambda w: [RESNET, "--set", "train.epochs=three"], ["expected int", "'three'"], False),
    ("no equals sign", lambda w: [RESNET, "--set", "nonsense"], ["expected KEY=VALUE"], False),
    ("index out of range", lambda w: [RESNET, "--set", "pairs.7.weight=1"], ["'7' is not an index"], False),
    ("override error and validation error together", lambda w: [RESNET, "--set", "train.epoch=3", "--set",
                                                                 "train.lr=-1"], ["'epoch'", "train.lr must be > 0"],
     False),
    # settings out of range
    ("infinite temperature", lambda w: [RESNET, "--set", "kd.temperature=1e999"], ["kd.temperature"], False),
    ("two kd problems", lambda w: [RESNET, "--set", "kd.temperature=0", "--set", "kd.alpha=2"],
     ["kd.temperature must be > 0", "kd.alpha must be in [0, 1]"], False),
    ("unknown logit loss", lambda w: [RESNET, "--set", "kd.loss=medium"], ["unknown logit loss 'medium'"], False),
    ("unknown logit loss kwargs", lambda w: [RESNET, "--set", "kd.loss=dkd", "--set", "kd.loss_kwargs={'gama': 2}"],
     ["kd.loss_kwargs {'gama': 2}", "'dkd'"], False),
    ("negative weight decay", lambda w: [RESNET, "--set", "train.weight_decay=-1"], ["train.weight_decay"], False),
    ("negative momentum", lambda w: [RESNET, "--set", "train.momentum=-0.5"], ["train.momentum"], False),
    ("overflowing seed", lambda w: [RESNET, "--set", "train.seed=99999999999999999999999"], ["train.seed"], False),
    ("infinite warm-up", lambda w: [RESNET, "--set", "train.warmup_epochs=1e999"], ["train.warmup_epochs"], False),
    ("zero batch size", lambda w: [RESNET, "--set", "train.batch_size=0"], ["train.batch_size"], False),
    ("unknown optimizer", lambda w: [RESNET, "--set", "train.optimizer=lbfgs"], ["train.optimizer"], False),
    ("unknown amp", lambda w: [RESNET, "--set", "train.amp=fp8"], ["train.amp"], False),
    ("label smoothing 1.5", lambda w: [RESNET, "--set", "train.label_smoothing=1.5"], ["train.label_smoothing"], False),
    ("negative clip", lambda w: [RESNET, "--set", "train.clip_grad=-1"], ["train.clip_grad"], False),
    ("pretrain lr", lambda w: [RESNET, "--set", "teacher.pretrain.lr=0"], ["teacher.pretrain.lr"], False),
    ("misspelled dataset", lambda w: [RESNET, "--set", "data.name=digts"], ["'digits'"], False),
    ("tiny image size", lambda w: [RESNET, "--set", "data.image_size=2"], ["data.image_size"], False),
    ("two channels", lambda w: [RESNET, "--set", "data.in_chans=2"], ["data.in_chans"], False),
    ("val fraction", lambda w: [RESNET, "--set", "data.val_size=1.5"], ["data.val_size"], False),
    ("cifar without root", lambda w: [RESNET, "--set", "data.name=cifar10"], ["data.root is required"], False),
    ("misspelled model", lambda w: [RESNET, "--set", "teacher.name=resnet1"], ["timm has no model 'resnet1'"], False),
    ("missing checkpoint", lambda w: [RESNET, "--set", "teacher.checkpoint='/no/such.pt'"],
     ["checkpoint '/no/such.pt' does not exist"], False),
    ("unknown loss", lambda w: [RESNET, "--set", "pairs.0.loss=mes"], ["unknown loss 'mes'", "'mse'"], False),
    ("unknown adapter", lambda w: [RESNET, "--set", "pairs.0.adapter=lin"], ["unknown adapter 'lin'"], False),
    ("unknown capture", lambda w: [RESNET, "--set", "pairs.0.capture=outputs"], ["capture must be one of"], False),
    ("unknown normalize", lambda w: [RESNET, "--set", "pairs.0.normalize=teachers"], ["normalize must be"], False),
    ("negative weight", lambda w: [RESNET, "--set", "pairs.0.weight=-1"], ["weight must be a number >= 0"], False),
    # found by building the models on a sample batch, before the teacher stage
    ("two misspelled layers", lambda w: [RESNET, "--set", "pairs.0.student=layer9", "--set", "pairs.1.teacher=layr2"],
     ["2 layer names are wrong", "'layer9'", "'layr2'", "'layer2'"], False),
    ("constructor rejects kwargs", lambda w: [RESNET, "--set", "student.kwargs={'depht': 2}"],
     ["student 'resnet10t' cannot be built", "depht", "student.kwargs"], False),
    ("image size the ViT cannot take", lambda w: [VIT, "--set", "data.image_size=18"],
     ["cannot run on a sample batch", "data.image_size=18"], False),
    ("unknown loss_kwargs", lambda w: [RESNET, "--set", "pairs.0.loss_kwargs={'gamma': 1}"],
     ["loss_kwargs {'gamma': 1}", "gamma"], False),
    ("attention transfer on a 1x1 map", lambda w: [RESNET, "--set", "pairs.2.student=layer4", "--set",
                                                   "pairs.2.teacher=layer4"], ["one position"], False),
    ("garbage teacher checkpoint", lambda w: [RESNET, "--set", f"teacher.checkpoint='{garbage(w, 't.pt')}'",
                                              "--set", "teacher.pretrain=None"], ["cannot read checkpoint", "t.pt"],
     False),
    ("checkpoint of another model", lambda w: [RESNET, "--set", f"teacher.checkpoint='{other_state_dict(w)}'",
                                               "--set", "teacher.pretrain=None"], ["does not fit", "other.pt"], False),
    ("crafted CIFAR file", lambda w: [RESNET, "--set", "data.name=cifar10", "--set",
                                      f"data.root='{cifar_root(w, pickle.dumps(print))}'", "--dry-run"],
     ["data_batch_1", "refuse"], False),
    ("garbage CIFAR file", lambda w: [RESNET, "--set", "data.name=cifar10", "--set",
                                      f"data.root='{cifar_root(w, b'garbage')}'"], ["data_batch_1"], False),
    ("no ImageFolder train split", lambda w: [RESNET, "--set", "data.name=imagefolder", "--set",
                                              f"data.root='{w}'"], ["no train folder"], False),
    # the run directory and resuming
    ("--out is a file", lambda w: [RESNET, "--out", text(w, "taken.txt", "mine")], ["is a file", "taken.txt"], False),
    ("--out is not empty", lambda w: [RESNET, "--out", str(Path(text(w, "t.txt", "mine")).parent)],
     ["already exists and is not empty"], False),
    ("--out under a file", lambda w: [RESNET, "--out", str(Path(text(w, "f.txt", "mine")) / "run")],
     ["f.txt", "--out"], False),
    ("--stop-after 0", lambda w: [RESNET, "--stop-after", "0"], ["--stop-after must be 1 or more"], False),
    ("no CUDA", lambda w: [RESNET, "--device", "cuda"] if not torch.cuda.is_available() else [RESNET, "--set",
                                                                                              "train.lr=-1"],
     ["cuda" if not torch.cuda.is_available() else "train.lr"], False),
    ("resume nothing", lambda w: ["--resume", str(w / "nothing")], ["no run.json there"], False),
    ("resume a damaged run.json", lambda w: ["--resume", run_dir_with(w, run_json='{"recipe_pa')],
     ["run.json is damaged"], False),
    ("resume with a recipe", lambda w: [RESNET, "--resume", run_dir_with(w, run_json="{}")], ["drop RECIPE"], False),
    ("resume changing the model", lambda w: ["--resume", run_dir_with(w, checkpoint=b"x"), "--set",
                                             "student.name=resnet18"], ["can change only", "student.name"], False),
    ("resume a damaged checkpoint", lambda w: ["--resume", run_dir_with(w, checkpoint=b"\x80 cut off")],
     ["cannot read checkpoint", "checkpoint.pt"], False),
    ("resume a checkpoint missing keys",
     lambda w: ["--resume", run_dir_with(w, checkpoint=saved({"position": [1, 0]}))],
     ["lacks", "module", "checkpoint.pt"], False),
    # found only while training: the run directory stays resumable
    ("student diverges", lambda w: [RESNET, *FAST, "--set", "train.lr=1e30", "--out", str(w / "run")],
     ["the first non-finite term", "--resume", "train.lr="], True),
    ("teacher stage diverges", lambda w: [RESNET, *FAST, "--set", "teacher.pretrain.lr=1e30", "--out", str(w / "run")],
     ["teacher stage diverged", "teacher.pretrain.lr"], True),
    ("corrupt image", lambda w: [RESNET, *FAST, "--set", "data.name=imagefolder", "--set",
                                 f"data.root='{imagefolder_with_corrupt_image(w)}'", "--set", "data.image_size=32",
                                 "--out", str(w / "run")], ["broken.png"], True),
]


def files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_at_least_forty_distinct_cases():
    assert len({case[0] for case in CASES}) == len(CASES) >= 40


@pytest.mark.parametrize("name, make_argv, expected, may_train", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_naming_the_fix_and_changing_nothing(name, make_argv, expected, may_train, tmp_path,
                                                               monkeypatch, capsys):
    world, cache = tmp_path / "world", tmp_path / "cache"
    world.mkdir()
    monkeypatch.setenv("FEATDISTILL_CACHE", str(cache))
    monkeypatch.chdir(world)  # a default run directory would land here, under runs/
    argv = make_argv(world)
    before, recipes = files(world), files(ROOT / "recipes")
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and "Traceback" not in out + err
    for part in expected:
        assert part in err, part
    after = files(world)
    changed = {k for k in before if after.get(k) != before[k]}
    new = {k for k in after if k not in before and not k.startswith(("run/", "runs/"))}
    assert changed == set() and new == set() and files(ROOT / "recipes") == recipes
    if not may_train:  # found before any teacher was trained (or cached)
        assert not cache.exists() or not any(cache.rglob("*.pt"))

"""On a CUDA device: fp16 with a GradScaler, bf16, torch.compile (inductor) with hooks, channels-last, and a real run
of a shipped recipe. Deselected where no CUDA device is visible (tests/conftest.py); benchmarks/gpu.sh runs them."""

import json
from pathlib import Path

import pytest
import timm
import torch

from featdistill import Distiller, LogitKD, Pair
from featdistill.config import Train
from featdistill.data import Batch
from featdistill.run import main
from featdistill.train import Trainer, speedups

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.device("cuda")


def models():
    torch.manual_seed(0)
    teacher = timm.create_model("resnet18", pretrained=False, num_classes=10)
    student = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    return teacher.to(CUDA), student.to(CUDA)


def data(n=16):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g).to(CUDA), torch.randint(0, 10, (n,), generator=g).to(CUDA)


def distiller():
    teacher, student = models()
    x, _ = data(2)
    return Distiller(teacher, student, [Pair("layer2", "layer2"), Pair("layer3", "layer3", loss="at")],
                     kd=LogitKD(), sample_input=x)


def terms(d, amp=None):
    x, y = data()
    with torch.autocast("cuda", dtype=amp, enabled=amp is not None):
        out = d(x, y)
    return {k: v.float().item() for k, v in out.items()}


@pytest.mark.parametrize("amp", [torch.bfloat16, torch.float16])
def test_autocast_terms_stay_close_to_fp32(amp):
    d = distiller()
    full, low = terms(d), terms(d, amp)
    for k in full:
        assert low[k] == pytest.approx(full[k], rel=0.05, abs=1e-3), k
    d.close()


def test_fp16_trainer_steps_with_a_grad_scaler_and_changes_the_weights():
    d = distiller()
    before = {k: v.clone() for k, v in d.student.state_dict().items()}
    x, y = data(32)
    loaders = type("L", (), {"train": [(x[i:i + 8], y[i:i + 8]) for i in range(0, 32, 8)]})()
    trainer = Trainer(d, d, loaders, Train(epochs=1, batch_size=8, amp="fp16"), CUDA, eval_model=d.student, quiet=True)
    assert trainer.scaler.is_enabled()
    for batch in loaders.train:
        values = trainer.step(Batch(*batch))
        assert all(torch.isfinite(torch.tensor(v)) for v in values.values())
    changed = [k for k, v in d.student.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed
    d.close()


def test_inductor_compiled_hooked_step_equals_eager():
    torch._dynamo.reset()
    d = distiller()
    eager = terms(d)
    speedups.compile_in_place([d.student, d.teacher], fullgraph=True)
    compiled = terms(d)
    for k in eager:
        assert compiled[k] == pytest.approx(eager[k], rel=1e-3, abs=1e-5), k
    d.close()
    torch._dynamo.reset()


def test_channels_last_on_cuda_changes_no_term():
    d = distiller()
    eager = terms(d)
    speedups.to_channels_last(d)
    x, y = data()
    out = {k: v.item() for k, v in d(x.contiguous(memory_format=torch.channels_last), y).items()}
    for k in eager:
        assert out[k] == pytest.approx(eager[k], rel=1e-3, abs=1e-5), k
    d.close()


def test_shipped_recipe_runs_on_cuda(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code = main([str(ROOT / "recipes" / "vit_to_deit.py"), "--device", "cuda", "--quiet", "--out", str(out),
                 "--set", "train.epochs=1", "--set", "teacher.pretrain.epochs=1", "--set", "train.amp='bf16'"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["student_accuracy"] <= 1

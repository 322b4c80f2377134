"""A multi-layer term (ReviewKD over three stages) in the Distiller: one result key, the fusion modules train with
the student, the plan shows every level, 'auto' weights, user multi-layer functions, and build errors."""

import pytest
import torch
from torch import nn

from featdistill import Distiller, FeatdistillError, LogitKD, Pair, UnknownNameError, count_hooks
from featdistill.capture import pair_taps, per_pair
from featdistill.losses import ReviewKD, declares

X = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 2, 3])
STAGES = ("stage1", "stage2", "stage3")


class TinyCNN(nn.Module):
    """Three named stages: [w, 16, 16] -> [2w, 8, 8] -> [4w, 4, 4], then a linear head."""

    def __init__(self, width: int):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, padding=1)
        self.stage1 = nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.stage2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.stage3 = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(4 * width, 10)

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


def models():
    torch.manual_seed(0)
    return TinyCNN(16), TinyCNN(4)


KEY = "feat/stage1+stage2+stage3~stage1+stage2+stage3"


def test_review_kd_term_trains_its_fusion_modules_with_the_student():
    teacher, student = models()
    pair = Pair(student=STAGES, teacher=STAGES, loss="review_kd", weight=1.0)
    with Distiller(teacher, student, [pair], kd=LogitKD(temperature=4.0, alpha=0.5), sample_input=X[:2]) as d:
        review = d.feature_losses[0]
        assert isinstance(review, ReviewKD) and len(review.abfs) == 3
        params = {id(p) for p in d.parameters()}
        assert {id(p) for p in review.parameters()} <= params
        assert params == {id(p) for p in student.parameters()} | {id(p) for p in review.parameters()}
        opt = torch.optim.SGD(d.parameters(), lr=0.01)
        before = [p.detach().clone() for p in review.parameters()]
        out = d(X, Y)
        assert set(out) == {"loss", "task", "kd", KEY} and out[KEY] > 0
        opt.zero_grad()
        out["loss"].backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in review.abfs[0].parameters())
        for stage in STAGES:  # every student level gets a gradient through its ABF
            assert getattr(student, stage)[0].weight.grad.abs().sum() > 0
        assert all(p.grad is None for p in teacher.parameters())
        opt.step()
        assert any(not torch.equal(a, b) for a, b in zip(before, review.parameters()))
        assert any(k.startswith("feature_losses.0.abfs.") for k in d.state_dict())
    assert count_hooks(teacher) == 0 and count_hooks(student) == 0


def test_plan_shows_the_term_with_every_level_and_the_loss_parameters():
    teacher, student = models()
    pairs = [Pair(student=list(STAGES), teacher=list(STAGES), loss="reviewkd"), Pair("stage2", "stage2")]
    with Distiller(teacher, student, pairs, sample_input=X[:2]) as d:
        plan = d.plan()
        n = sum(p.numel() for p in d.feature_losses[0].parameters())
        assert f"stage1+stage2+stage3 -> ReviewKD ({n:,} params, in the loss) -> stage1+stage2+stage3" in plan
        assert f"losses: {n:,} params" in plan
        for line in ("level 1: stage1 [4, 16, 16] -> stage1 [16, 16, 16]",
                     "level 2: stage2 [8, 8, 8] -> stage2 [32, 8, 8]",
                     "level 3: stage3 [16, 4, 4] -> stage3 [64, 4, 4]",
                     "stage2 [8, 8, 8] -> Conv1x1"):
            assert line in plan
        assert "1*reviewkd(stage1+stage2+stage3, stage1+stage2+stage3)" in repr(d.combiner)
        assert set(d(X, Y)) == {"loss", "task", "kd", KEY, "feat/stage2~stage2"}


def test_auto_weight_calibrates_a_multi_layer_term():
    teacher, student = models()
    pair = Pair(student=STAGES, teacher=STAGES, loss="review_kd", weight="auto", auto_ratio=0.5, name="review")
    with Distiller(teacher, student, [pair], sample_input=X[:2], calibration_steps=2) as d:
        kd = raw = 0.0
        for _ in range(2):
            out = d(X, Y)
            kd += out["kd"].item()
            raw += out["feat/review"].item() / d.auto_weights.weights[0].item()
        assert abs(d.auto_weights.weights[0].item() * raw - 0.5 * kd) < 1e-4 * max(kd, 1.0)


def test_a_users_multi_layer_function_receives_lists_shallow_to_deep():
    seen = {}

    @declares(multi_layer=True)
    def sum_of_means(students, teachers):
        seen["student"], seen["teacher"] = [tuple(s.shape) for s in students], [tuple(t.shape) for t in teachers]
        return sum((s.mean() - t.mean()) ** 2 for s, t in zip(students, teachers))

    teacher, student = models()
    with Distiller(teacher, student, [Pair(STAGES[:2], STAGES[1:], loss=sum_of_means)], sample_input=X[:2]) as d:
        d(X, Y)["loss"].backward()
    assert seen == {"student": [(4, 4, 16, 16), (4, 8, 8, 8)], "teacher": [(4, 32, 8, 8), (4, 64, 4, 4)]}


def test_taps_regroup_one_entry_per_pair():
    teacher, student = models()
    pairs = [Pair("stage1", "stage2"), Pair(STAGES, STAGES, loss="review_kd"), Pair("stage3", "stage3")]
    taps = pair_taps(student, pairs, "student")
    assert [t.layer for t in taps] == ["stage1", "stage1", "stage2", "stage3", "stage3"]
    grouped = per_pair(pairs, ["a", "b", "c", "d", "e"])
    assert grouped == ["a", ["b", "c", "d"], "e"]


@pytest.mark.parametrize("pair, expected", [
    (Pair(STAGES, STAGES[:2], loss="review_kd"), "student names 3 layer(s)"),
    (Pair(STAGES, STAGES, loss="mse"), "loss 'mse' compares one student layer with one teacher layer"),
    (Pair("stage3", "stage3", loss="review_kd"), "give student and teacher as tuples"),
    (Pair(STAGES, STAGES, loss="review_kd", normalize="teacher"), "normalize='teacher' is not supported"),
])
def test_build_errors_name_the_problem(pair, expected):
    teacher, student = models()
    with pytest.raises(FeatdistillError, match="cannot build the Distiller") as err:
        Distiller(teacher, student, [pair], sample_input=X[:2])
    assert expected in str(err.value)
    assert count_hooks(teacher) == 0 and count_hooks(student) == 0


def test_every_wrong_layer_of_a_multi_layer_pair_is_named():
    teacher, student = models()
    with pytest.raises(UnknownNameError) as err:
        Distiller(teacher, student, [Pair(("stage1", "stag2", "stage3"), ("stage1", "stage2", "stage4"),
                                          loss="review_kd")], sample_input=X[:2])
    msg = str(err.value)
    assert "2 layer names are wrong" in msg
    assert "student[1]: layer 'stag2' not found" in msg and "'stage2'" in msg
    assert "teacher[2]: layer 'stage4' not found" in msg
    assert count_hooks(teacher) == 0 and count_hooks(student) == 0


def test_levels_out_of_order_are_refused_at_build():
    teacher, student = models()
    with pytest.raises(FeatdistillError, match=r"pair 'stage3\+stage1~stage3\+stage1'.*shallow -> deep"):
        Distiller(teacher, student, [Pair(("stage3", "stage1"), ("stage3", "stage1"), loss="review_kd")],
                  sample_input=X[:2])
    assert count_hooks(teacher) == 0 and count_hooks(student) == 0

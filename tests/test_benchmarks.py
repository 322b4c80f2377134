"""The benchmark scripts run end to end at toy sizes (their numbers are checked in RESULTS.md, not here)."""

import importlib
import json
import shlex
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name):
    """Imported by name from benchmarks/ on sys.path, so spawned worker processes can import it too."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEATDISTILL_CACHE", str(tmp_path / "cache"))


def test_compare_kd_writes_paired_results(tmp_path):
    out = tmp_path / "out"
    recipe = str(BENCH.parent / "recipes" / "vit_to_deit.py")
    assert load("compare_kd").main([recipe, "--seeds", "2", "--first-seed", "3", "--modes", "alone", "logit",
                                    "--set", "train.epochs=1", "--set", "teacher.pretrain.epochs=1",
                                    "--out", str(out), "--tag", "t"]) == 0
    saved = json.loads((out / "t.json").read_text())
    assert saved["meta"]["seeds"] == [3, 4]
    result = saved["results"]["vit_to_deit"]["modes"]
    alone, logit = result["alone"]["accuracy"], result["logit"]["accuracy"]
    assert len(alone) == len(logit) == 2
    # the paired difference is taken seed by seed against the logit-KD baseline
    diffs = [a - b for a, b in zip(alone, logit)]
    assert result["alone"]["paired_diff_mean"] == pytest.approx(sum(diffs) / 2)
    std = abs(diffs[0] - diffs[1]) / 2 ** 0.5
    assert result["alone"]["paired_diff_std"] == pytest.approx(std)
    half = 12.706204736 * std / 2 ** 0.5  # t(0.975, 1 degree of freedom) * standard error
    assert result["alone"]["paired_diff_low"] == pytest.approx(sum(diffs) / 2 - half)
    assert result["alone"]["paired_diff_high"] == pytest.approx(sum(diffs) / 2 + half)
    assert result["alone"]["verdict"] in ("wins", "within noise", "loses") and "verdict" not in result["logit"]
    assert len(saved["results"]["vit_to_deit"]["teacher_sha256"][0]) == 64
    table = (out / "t.md").read_text()
    assert table.count("| vit_to_deit |") == 3 and "[95% CI] | verdict |" in table and "sha256" in table
    assert (out / "t.png").stat().st_size > 0
    assert len((out / "t.runs.jsonl").read_text().splitlines()) == 4  # every finished run is journaled


def test_compare_kd_trains_only_the_runs_its_journal_lacks(tmp_path, monkeypatch, capsys):
    compare_kd = load("compare_kd")
    recipe = str(BENCH.parent / "recipes" / "vit_to_deit.py")
    common = [recipe, "--seeds", "1", "--set", "train.epochs=1", "--set", "teacher.pretrain.epochs=1",
              "--out", str(tmp_path), "--tag", "j", "--jobs", "1"]
    assert compare_kd.main(common + ["--modes", "logit"]) == 0
    first = json.loads((tmp_path / "j.json").read_text())["results"]["vit_to_deit"]["modes"]["logit"]
    trained = []
    real = compare_kd.train_once
    monkeypatch.setattr(compare_kd, "train_once", lambda *a: trained.append(a[1]) or real(*a))
    assert compare_kd.main(common + ["--modes", "alone", "logit"]) == 0
    assert len(trained) == 1 and trained[0][-2:] == ["kd=None", "pairs=[]"]  # logit comes from the journal
    assert "1 of 2 runs are already in" in capsys.readouterr().out
    again = json.loads((tmp_path / "j.json").read_text())["results"]["vit_to_deit"]["modes"]["logit"]
    assert again["accuracy"] == first["accuracy"]
    # a changed override is another run: trained again, not taken from the journal
    assert compare_kd.main(common + ["--modes", "logit", "--set", "kd.temperature=2"]) == 0
    assert len(trained) == 2
    # a run journaled under the older key scheme is found, not trained, and journaled again under the new key
    journal = load("journal")
    real_keys = journal.RunJournal.keys
    monkeypatch.setattr(journal.RunJournal, "keys", staticmethod(lambda *a: ("v2" + real_keys(*a)[0],
                                                                               real_keys(*a)[0])))
    assert compare_kd.main(common + ["--modes", "logit"]) == 0
    assert len(trained) == 2
    lines = [json.loads(line) for line in (tmp_path / "j.runs.jsonl").read_text().splitlines()]
    assert [line["key"][:2] for line in lines].count("v2") == 1


def test_journal_keys_a_recipe_by_its_code_not_its_docstring(tmp_path):
    journal = load("journal")
    recipe = tmp_path / "r.py"
    code = "x = Model('a', kwargs=dict(w=4))\n\ndef f():\n    \"\"\"{doc}\"\"\"\n    return 1\n"
    recipe.write_text('"""Measured: +0.19."""\n' + code.format(doc="one"))
    args = (["pairs=[]"], 70, 1, ["abc"])
    key, old_key = journal.RunJournal.keys(recipe, *args)
    recipe.write_text('"""Measured again: +0.25, reworded."""\n# a comment\n' + code.format(doc="two"))
    reworded, reworded_old = journal.RunJournal.keys(recipe, *args)
    assert reworded == key and reworded_old != old_key  # the older key followed the bytes
    recipe.write_text('"""Measured: +0.19."""\n' + code.format(doc="one").replace("w=4", "w=8"))
    assert journal.RunJournal.keys(recipe, *args)[0] != key  # a code change is another run
    assert journal.RunJournal.keys(recipe, ["pairs=[]"], 71, 1, ["abc"])[0] != key
    # a journal written with the older key still finds the run, while the recipe's bytes are as they were
    recipe.write_text('"""Measured: +0.19."""\n' + code.format(doc="one"))
    book = journal.RunJournal(tmp_path / "j.runs.jsonl")
    book.add(old_key, {"student_accuracy": 0.5})
    assert journal.RunJournal(tmp_path / "j.runs.jsonl").find((key, old_key)) == {"student_accuracy": 0.5}
    assert book.find((reworded, "not-there")) is None


def test_journal_says_why_none_of_its_runs_were_reused(tmp_path):
    journal = load("journal")
    book = journal.RunJournal(tmp_path / "j.runs.jsonl")
    assert book.none_reused(["b" * 64]) is None  # an empty journal has nothing to explain
    book.add("k1", {"student_accuracy": 0.5}, ["a" * 64])
    again = journal.RunJournal(tmp_path / "j.runs.jsonl")  # the teacher is read back from the file
    assert again.teachers == {"a" * 64}
    note = again.none_reused(["b" * 64])
    assert "none of the 1 runs" in note and "a" * 12 in note and "b" * 12 in note and "cache file" in note
    # the same teacher: the cause is elsewhere, and the note does not blame the teacher
    assert "cache file" not in again.none_reused(["a" * 64])


def test_journal_names_the_cpu_by_family_model_and_vector_width():
    machine = load("journal").machine
    block = ("processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {m}\n"
             "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 {extra}\n")
    genoa = block.format(n=0, m=17, extra="avx512f avx512bw") + "\n" + block.format(n=1, m=1, extra="")
    assert machine(genoa) == "AMD EPYC (family 25 model 17, avx512)"  # the first processor's block
    assert machine(block.format(n=0, m=1, extra="")) == "AMD EPYC (family 25 model 1, avx2)"
    assert machine("model name\t: Some CPU\n") == "Some CPU"


def test_paired_interval_and_verdict_by_hand():
    paired = load("paired")
    # d = 1, 2, 3, 4: mean 2.5, s = sqrt(5/3), se = s / 2, t(0.975, 3) = 3.182446305
    result = paired.paired([2.0, 4.0, 6.0, 8.0], [1.0, 2.0, 3.0, 4.0])
    half = 3.182446305 * (5 / 3) ** 0.5 / 2
    assert result.mean == pytest.approx(2.5) and result.std == pytest.approx((5 / 3) ** 0.5)
    assert (result.low, result.high) == (pytest.approx(2.5 - half), pytest.approx(2.5 + half))
    assert result.low == pytest.approx(0.44574, abs=1e-5) and result.verdict == "wins" and result.p is None
    assert paired.paired([1.0, -1.0, 2.0], [0.0, 0.0, 0.0]).verdict == "within noise"
    assert paired.paired([-1.0, -2.0, -3.0, -4.0], [0.0] * 4).verdict == "loses"
    # six differences, all positive: the exact two-sided Wilcoxon p is 2 / 2^6
    assert paired.paired([1.0, 2, 3, 4, 5, 6], [0.0] * 6).p == pytest.approx(2 / 64)
    assert paired.seed_range("40-44") == [40, 41, 42, 43, 44] and paired.seed_range("7") == [7]
    with pytest.raises(ValueError, match="A-B"):
        paired.seed_range("a-b")


def test_chart_title_names_only_the_modes_the_chart_shows():
    title = load("kd_tables").chart_title
    assert title("accuracy", ["logit", "both"]) == "logit KD vs logit + feature KD (recipe)"
    assert "alone" not in title("accuracy", ["logit", "w4"])
    assert title("accuracy", ["logit", "both", "a", "b"]) == "student test accuracy per mode"
    assert title("bits_per_byte", ["logit"]) == "LM distillation modes"


def test_compare_kd_chooses_on_selection_seeds_and_reports_on_confirmation_seeds(tmp_path):
    recipe = str(BENCH.parent / "recipes" / "resnet_to_resnet.py")
    assert load("compare_kd").main([recipe, "--modes", "logit", "both", "--variant", "l1=pairs=[{'student': "
                                    "'layer1', 'teacher': 'layer1', 'loss': 'at', 'weight': 'auto'}]",
                                    "--select-seeds", "0-1", "--confirm-seeds", "2-3", "--set", "train.epochs=1",
                                    "--set", "teacher.pretrain.epochs=1", "--out", str(tmp_path), "--tag", "p"]) == 0
    select = json.loads((tmp_path / "p_select.json").read_text())
    confirm = json.loads((tmp_path / "p_confirm.json").read_text())
    assert select["meta"]["seeds"] == [0, 1] and confirm["meta"]["seeds"] == [2, 3]
    modes = select["results"]["resnet_to_resnet"]["modes"]
    chosen = max(("both", "l1"), key=lambda m: modes[m]["paired_diff_mean"])
    assert confirm["meta"]["chosen"] == {"resnet_to_resnet": chosen}
    assert list(confirm["results"]["resnet_to_resnet"]["modes"]) == ["logit", chosen]
    with pytest.raises(SystemExit):  # a lever cannot be confirmed on the seeds that chose it
        load("compare_kd").main([recipe, "--select-seeds", "0-4", "--confirm-seeds", "4-9"])


def test_compare_kd_parallel_workers_match_one_thread_in_process(tmp_path, monkeypatch):
    """Two single-thread worker processes give the same accuracies as one single-thread process."""
    import torch

    recipe = str(BENCH.parent / "recipes" / "resnet_to_resnet.py")
    common = [recipe, "--seeds", "2", "--modes", "logit", "both", "--set", "train.epochs=1",
              "--set", "teacher.pretrain.epochs=1", "--out", str(tmp_path)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert load("compare_kd").main(common + ["--jobs", "1", "--tag", "serial"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert load("compare_kd").main(common + ["--jobs", "2", "--tag", "parallel"]) == 0
    serial, parallel = (json.loads((tmp_path / f"{t}.json").read_text()) for t in ("serial", "parallel"))
    assert parallel["meta"]["jobs"] == 2 and parallel["meta"]["seeds"] == [0, 1]
    for mode in ("logit", "both"):
        assert (serial["results"]["resnet_to_resnet"]["modes"][mode]["accuracy"]
                == parallel["results"]["resnet_to_resnet"]["modes"][mode]["accuracy"])


def test_step_cost_reports_ratios(tmp_path):
    assert load("step_cost").main(["--pairs", "vit", "--rounds", "2", "--warmup", "0", "--batch", "2",
                                   "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "step_cost_cpu_none.json").read_text())["results"]["vit"]
    steps = {name for name in results if name.startswith("step:")}
    assert {"step: student only", "step: logit KD", "step: KD + 1 pair", "step: KD + 8 pairs"} <= steps
    # every mode is reported against the logit-KD step of the same rounds (no timing is asserted)
    for name in steps:
        assert results[name]["median_ms"] > 0 and 0 < results[name]["ratio"] < float("inf"), name


def test_step_cost_times_speedup_twins_against_their_eager_modes(tmp_path):
    assert load("step_cost").main(["--pairs", "cnn", "--rounds", "1", "--warmup", "1", "--batch", "2", "--image", "16",
                                   "--compile", "--compile-backend", "eager", "--channels-last",
                                   "--out", str(tmp_path)]) == 0
    saved = json.loads((tmp_path / "step_cost_cpu_none_compile_channels_last.json").read_text())
    results = saved["results"]["cnn"]
    assert saved["meta"]["variants"] == [["compiled"], ["channels_last"], ["compiled", "channels_last"]]
    for mode in ("step: student only", "step: logit KD", "step: KD + 2 pairs"):
        for variant in ("compiled", "channels_last", "compiled + channels_last"):
            assert results[f"{mode} [{variant}]"]["vs_eager"] > 0
        assert "vs_eager" not in results[mode]


def test_attention_cost_times_the_modes_and_charges_the_profile_to_its_parts(tmp_path):
    from featdistill.capture.qkv import QkvToAttention
    from featdistill.distill.combiner import LossCombiner

    before = QkvToAttention.__call__, LossCombiner.__call__
    assert load("attention_cost").main(["--rounds", "1", "--warmup", "0", "--profile-steps", "1",
                                        "--set", "train.batch_size=4", "--out", str(tmp_path), "--tag", "a"]) == 0
    assert (QkvToAttention.__call__, LossCombiner.__call__) == before  # the profile's ranges are undone
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["meta"]["overrides"][0] == "teacher.pretrain=None" and saved["meta"]["batch"] == 4
    assert set(saved["modes"]) == {"logit KD", "attention (shipped)", "tokens (same blocks)"}
    assert saved["modes"]["logit KD"]["ratio"] == 1.0  # no timing is asserted, only that every mode ran
    rows = saved["profile_rows_ms"]
    for part in ("teacher qkv -> maps (no_grad)", "student qkv -> maps, forward", "student qkv -> maps, backward",
                 "adapter (student maps), backward", "feature loss, forward", "feature loss, backward"):
        assert rows[part]["attention (shipped)"] > 0 and rows[part]["logit KD"] == 0, part
    assert "| attention (shipped) |" in (tmp_path / "a.md").read_text()


def test_vs_peers_matches_timm_terms_exactly(tmp_path):
    assert load("vs_peers").main(["--pairs", "vit", "--rounds", "1", "--warmup", "0", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "vs_peers.json").read_text())["results"]["vit"]
    for mode in ("feat", "logit"):
        assert results[mode]["abs_diff"]["featdistill"] == {"task": 0.0, "distill": 0.0, "loss": 0.0}
        assert results[mode]["grad_diff"]["featdistill"] == 0.0


def test_recorded_command_splits_back_into_the_same_arguments():
    argv = ["recipes/a.py", "--variant", "x=pairs=[{'student':'layer2'}]", "--set", 'a="b"', "--set", "c=$HOME"]
    command = load("compare_kd").shell_join(argv)
    assert shlex.split(command) == argv and "\"x=pairs=[{'student':'layer2'}]\"" in command


def test_losses_vs_torchdistill_tensors_reload_with_weights_only_and_table_rows(tmp_path):
    """Without torchdistill: the saved inputs are plain tensors that load with weights_only=True, are the same for
    the same seed, and the table formats matched, differing and one-sided rows."""
    import torch

    bench = load("losses_vs_torchdistill")
    sizes = dict(seed=1, batch=4, classes=5, num_samples=16, negatives=3)
    x = bench.save_and_reload(bench.make_tensors(**sizes), tmp_path / "t.pt")
    again = torch.load(tmp_path / "t.pt", weights_only=True)
    assert set(x) == set(again) and all(torch.equal(x[k], v) for k, v in bench.make_tensors(**sizes).items())
    assert x["logits_s"].shape == (4, 5) and x["feat_s"].shape == (4, 16, 8, 8)
    assert x["hint_s"].shape == x["feat_t"].shape == (4, 32, 8, 8)  # equal widths where a loss needs them
    assert x["crd_negatives"].shape == (2, 4, 3) and not (x["crd_negatives"] == x["index"][None, :, None]).any()
    rows = [bench.row("KD (soft)", "T=4", 2.0, 2.0 * (1 + 1e-7), notes=["kd-target"]),
            bench.row("KD (soft)", "as called", 2.0, 0.125, "as called", ["kd-t2", "kd-defaults"]),
            bench.row("DKD", "T=4", 1.5, None, "featdistill only")]
    assert rows[0]["rel_diff"] == pytest.approx(1e-7, rel=1e-3) and rows[2]["rel_diff"] is None
    lines = bench.format_table(rows).splitlines()
    number = {key: str(i + 1) for i, key in enumerate(bench.DIFFERENCES)}
    assert lines[0].startswith("| loss | setting | kind | featdistill | torchdistill | rel. diff |") and len(lines) == 5
    assert lines[2] == f"| KD (soft) | T=4 | matched | 2 | 2 | 1.0e-07 | {number['kd-target']} |"
    assert lines[3].endswith(f"| 0.125 | 1.5e+01 | {number['kd-t2']}, {number['kd-defaults']} |")
    assert lines[4] == "| DKD | T=4 | featdistill only | 1.5 | - | - | - |"
    listed = bench.format_differences(["kd-t2"])
    assert listed.startswith(f"{number['kd-t2']}. **KD (soft)** (`kd-t2`). torchdistill: ") and "Paper:" in listed


def test_methods_place_every_method_where_its_paper_does_and_each_mode_plans(capsys):
    """Each --methods mode is a valid recipe: the runner's dry run builds both models and every term."""
    from featdistill.cli.run import main as run_main

    methods = load("methods")
    recipe = BENCH.parent / "recipes" / "resnet_to_resnet.py"
    modes = methods.method_modes(recipe, list(methods.METHODS))
    assert set(modes) == {*methods.FEATURE, *(f"{m}+kd" for m in methods.FEATURE), *methods.LOGIT}
    for name in methods.FEATURE:  # the same term with and without logit KD
        assert modes[name] == [*modes[f"{name}+kd"], "kd=None"]
    assert "'student': 'fc'" in modes["crd"][0] and "'capture': 'input'" in modes["crd"][0]  # pre-logits
    assert "'student': 'layer2'" in modes["fitnet"][0]  # the middle of layers 1-3
    assert "('layer1', 'layer2', 'layer3')" in modes["review_kd"][0]
    assert modes["dkd"] == ["pairs=[]", "kd.loss='dkd'"]
    for name, overrides in modes.items():
        argv = [str(recipe), "--dry-run", "--set", "teacher.pretrain.epochs=1"]
        for item in overrides:
            argv += ["--set", item]
        assert run_main(argv) == 0, name
        plan = capsys.readouterr().out
        method = name.removesuffix("+kd")
        shown = {"fitnet": "mse", "at": "attention_transfer", "dkd": "TCKD", "dist": "DIST(", "ls": "zscore("}
        assert shown.get(method, method) in plan, (name, plan)
        if method in methods.FEATURE:  # logit KD only in the +kd modes
            assert ("KL(t||s" in plan) == name.endswith("+kd"), (name, plan)
    with pytest.raises(SystemExit, match="unknown method"):
        methods.method_modes(recipe, ["fitnets"])


def test_convergence_curves_one_row_per_schedule_length(tmp_path, capsys):
    out = tmp_path / "out"
    recipe = str(BENCH.parent / "recipes" / "resnet_to_resnet.py")
    argv = [recipe, "--epochs", "1", "2", "--seeds", "1", "--modes", "logit", "--jobs", "1",
            "--set", "teacher.pretrain.epochs=1", "--out", str(out), "--tag", "c"]
    assert load("convergence").main(argv) == 0
    saved = json.loads((out / "c.json").read_text())["results"]["resnet_to_resnet"]
    assert sorted(saved["modes"]["logit"]) == ["1", "2"] and 0 < saved["teacher_accuracy"] <= 1
    assert "| logit |" in (out / "c.md").read_text() and (out / "c.png").stat().st_size > 0
    # one journal line per run; a second call trains nothing and gives the same table
    assert len((out / "c.runs.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    assert load("convergence").main(argv) == 0
    assert capsys.readouterr().out.count("1 of 1 runs are already in") == 2
    assert json.loads((out / "c.json").read_text())["results"]["resnet_to_resnet"]["modes"] == saved["modes"]


def test_compare_kd_workers_end_when_the_main_process_is_killed(tmp_path):
    """``kill`` reaches only the main process; its spawned workers must not train on alone."""
    import os
    import signal
    import subprocess
    import time

    recipe = str(BENCH.parent / "recipes" / "vit_to_deit.py")
    env = {**os.environ, "FEATDISTILL_CACHE": str(tmp_path / "cache")}
    main = subprocess.Popen([sys.executable, str(BENCH / "compare_kd.py"), recipe, "--seeds", "2", "--modes", "logit",
                             "--set", "train.epochs=50", "--set", "teacher.pretrain.epochs=1", "--jobs", "2",
                             "--out", str(tmp_path / "out")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    def children() -> set[int]:
        found = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == main.pid:
                found.add(int(stat.parent.name))
        return found

    try:
        deadline = time.monotonic() + 120
        while len(children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        workers = children()
        assert len(workers) >= 2, "the worker processes never started"
        os.kill(main.pid, signal.SIGKILL)
        main.wait()

        def running(pid: int) -> bool:  # a zombie has exited; only its entry is left
            try:
                return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
            except OSError:
                return False

        deadline = time.monotonic() + 60
        while any(map(running, workers)) and time.monotonic() < deadline:
            time.sleep(0.5)
        alive = [w for w in workers if running(w)]
        assert not alive, f"workers {alive} outlived the main process"
    finally:
        if main.poll() is None:
            os.killpg(main.pid, signal.SIGKILL)

"""The result pages of ``benchmarks/zoo.py`` and ``benchmarks/guider_any_student.py``: a command
for a few models rewrites its page without dropping the rows earlier commands wrote, and the
page names the command that regenerates all of it."""
import importlib.util
import json
import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def load(name):
    sys.path.insert(0, BENCH)
    try:
        spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(BENCH)


zoo = load("zoo")
any_student = load("guider_any_student")


def refuse_to_run(*args):
    raise AssertionError("--summarise-only ran a job")


def zoo_record(model, seed, recall):
    return {"model": model, "dataset": "synthetic", "seed": seed, "overrides": {"epochs": 30}, "status": "ok",
            "valid_recall@20": recall, "valid_ndcg@20": recall / 2, "test_recall@20": recall,
            "test_ndcg@20": recall / 2, "epochs_run": 30, "train_epoch_s": 1.0, "eval_s": 0.5, "peak_rss_mb": 500}


def test_a_command_for_one_model_keeps_the_other_models_rows(tmp_path, monkeypatch):
    out = str(tmp_path / "zoo_synthetic.md")
    with open(os.path.splitext(out)[0] + ".jsonl", "w") as handle:
        for model, recall in (("VBPR", 0.25), ("FREEDOM", 0.35)):
            handle.write(json.dumps(zoo_record(model, 999, recall)) + "\n")
    monkeypatch.setattr(zoo, "run_once", lambda model, *args: zoo_record(model, 999, 0.41))
    zoo.main(["--models", "DRAGON", "--seeds", "999", "--set", "epochs=30", "--out", out])
    rows = [line.split("|")[1].strip() for line in open(out) if line.startswith("| ") and "model" not in line]
    assert rows == ["DRAGON", "FREEDOM", "VBPR"]
    text = open(out).read()
    assert "Command: `python benchmarks/zoo.py --seeds 999 --set epochs=30 --out " in text
    assert "--models" not in text


def test_zoo_summarise_only_rewrites_the_page_from_its_jsonl_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(zoo, "run_once", refuse_to_run)
    out = str(tmp_path / "zoo_synthetic.md")
    with open(os.path.splitext(out)[0] + ".jsonl", "w") as handle:
        handle.write(json.dumps(zoo_record("VBPR", 999, 0.25)) + "\n")
    zoo.main(["--models", "VBPR", "FREEDOM", "--seeds", "999", "--set", "epochs=30", "--summarise-only", "--out", out])
    text = open(out).read()
    assert [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| VBPR")] == ["VBPR"]
    assert f"Command: `python benchmarks/zoo.py --seeds 999 --set epochs=30 --out {out}`" in text


def test_the_command_keeps_models_outside_the_default_list():
    argv = ["--models", "ItemKNN", "--jobs", "1"]
    assert zoo.page_command("zoo.py", argv, ["ItemKNN"], ["BPR", "VBPR"]) == "python benchmarks/zoo.py " + " ".join(argv)
    assert zoo.page_command("zoo.py", argv[:2], ["VBPR"], ["BPR", "VBPR"]) == "python benchmarks/zoo.py"


def test_the_guider_page_keeps_every_model_it_has_records_for(tmp_path):
    def record(model, method, recall):
        return {"model": model, "noise": 0.0, "method": method, "seed": 1, "status": "ok", "seconds": 10,
                "valid_recall@20": recall, "test_recall@20": recall, "extra": {}}

    records = [record(m, method, r) for m, r in (("VBPR", 0.2), ("MGCN", 0.3)) for method in ("plain", "GUIDER")]
    out = str(tmp_path / "page.md")
    any_student.write_markdown(out, records, ["VBPR"], [0.0], "python benchmarks/guider_any_student.py", {})
    rows = [line.split("|")[1].strip() for line in open(out) if line.startswith("| ") and "model" not in line]
    assert rows == ["VBPR", "MGCN"]


def guider_page_record(method, seed, model="VBPR", **fields):
    """One run (0 noise) of the any-student page, with ``fields`` (its fallback, retry or status)."""
    return {"model": model, "dataset": "synthetic", "noise": 0.0, "method": method, "seed": seed, "status": "ok",
            "seconds": 10, "valid_recall@20": 0.2, "test_recall@20": 0.2, "extra": {}, **fields}


def test_the_guider_page_counts_the_seeds_whose_guider_run_was_kept(tmp_path):
    def record(method, seed, kept=None):
        return guider_page_record(method, seed, **({"fallback": {"guider": 0.3, "plain": 0.2, "kept": kept}}
                                                   if kept else {}))

    out = str(tmp_path / "page.md")
    records = [record("plain", 1), record("plain", 2), record("plain", 3),
               record("GUIDER", 1, "guider"), record("GUIDER", 2, "plain"), record("GUIDER", 3, "guider")]
    any_student.write_markdown(out, records, ["VBPR"], [0.0], "python benchmarks/guider_any_student.py", {})
    row = next(line for line in open(out) if line.startswith("| VBPR"))
    assert "| 2/3 |" in row, row
    any_student.write_markdown(out, records[:4] + [record("GUIDER", 2)], ["VBPR"], [0.0], "cmd", {})
    assert "| 1/1 |" in next(line for line in open(out) if line.startswith("| VBPR"))


def test_the_guider_page_counts_the_seeds_that_were_retried_and_those_that_kept_the_retry(tmp_path):
    def record(method, seed, retry=None):
        return guider_page_record(method, seed, **({"retry": {"first": 0.2, "retry": 0.3, "kept": retry}}
                                                   if retry else {}))

    out = str(tmp_path / "page.md")
    records = [record("plain", 1), record("plain", 2), record("plain", 3),
               record("GUIDER", 1, "retry"), record("GUIDER", 2, "first"), record("GUIDER", 3, "retry"),
               record("GUIDER", 4)]
    any_student.write_markdown(out, records, ["VBPR"], [0.0], "python benchmarks/guider_any_student.py", {})
    row = next(line for line in open(out) if line.startswith("| VBPR"))
    assert "| 3/4 (2) |" in row, row


def test_the_guider_page_lists_the_plain_runs_that_the_fallback_did_not_reproduce(tmp_path):
    """The fallback's run alone replays the plain run's draws: a plain row whose valid score
    differs from it was recorded under older code, and the page names it (and only it)."""
    def guider(seed, alone):
        return guider_page_record("GUIDER", seed, fallback={"guider": 0.3, "plain": alone, "kept": "guider"})

    out = str(tmp_path / "page.md")
    records = [guider_page_record("plain", 1), guider_page_record("plain", 2), guider(1, 0.2), guider(2, 0.21),
               guider_page_record("GUIDER", 3)]
    any_student.write_markdown(out, records, ["VBPR"], [0.0], "python benchmarks/guider_any_student.py", {})
    listed = [line for line in open(out).read().splitlines() if line.startswith("- VBPR")]
    assert listed == ["- VBPR noise 0 seed 2: plain valid R@20 0.2000, the fallback's run alone 0.2100"]
    any_student.write_markdown(out, records[:3], ["VBPR"], [0.0], "cmd", {})
    assert "does not reproduce" not in open(out).read()


def test_a_model_that_trains_nothing_gets_plain_runs_only_and_a_guider_cell_saying_why(tmp_path, monkeypatch):
    """ItemKNNCBF trains nothing, so ``guider: true`` refuses it: the command runs its plain
    runs only, and its row says why its GUIDER cells are empty (no failed runs listed)."""
    def record(model, method, seed, status="ok"):
        return guider_page_record(method, seed, model, status=status)

    ran = []
    monkeypatch.setattr(any_student, "run_job", lambda model, dataset, noise, method, seed, *rest: (
        ran.append((model, method)) or record(model, method, seed)))
    monkeypatch.setattr(any_student, "run_once", lambda *args: None)
    out = str(tmp_path / "page.md")
    with open(os.path.splitext(out)[0] + ".jsonl", "w") as handle:
        handle.write(json.dumps(record("ItemKNNCBF", "GUIDER", 1, "ConfigError: trains nothing")) + "\n")
    any_student.main(["--models", "ItemKNNCBF", "VBPR", "--noise", "0", "--seeds", "1", "--jobs", "1", "--out", out])
    assert sorted(ran) == [("ItemKNNCBF", "plain"), ("VBPR", "GUIDER"), ("VBPR", "plain")]
    text = open(out).read()
    row = next(line for line in text.splitlines() if line.startswith("| ItemKNNCBF"))
    assert row.count(any_student.NOT_DISTILLED) == 2, row
    assert "Failed runs" not in text


def test_summarise_only_rewrites_the_guider_page_from_its_jsonl_and_runs_nothing(tmp_path, monkeypatch):
    """``--summarise-only`` writes the page from the runs the .jsonl holds, lists what is not run
    yet, and names the command that would run the rest (without the flag)."""
    monkeypatch.setattr(any_student, "run_job", refuse_to_run)
    monkeypatch.setattr(any_student, "run_once", refuse_to_run)
    out = str(tmp_path / "page.md")
    with open(os.path.splitext(out)[0] + ".jsonl", "w") as handle:
        handle.write("".join(json.dumps(guider_page_record(method, 1)) + "\n" for method in ("plain", "GUIDER")))
        handle.write(json.dumps(guider_page_record("plain", 1, "MGCN")) + "\n")
    any_student.main(["--models", "VBPR", "MGCN", "FREEDOM", "--noise", "0", "--seeds", "1", "--out", out,
                      "--summarise-only"])
    text = open(out).read()
    assert next(line for line in text.splitlines() if line.startswith("| VBPR"))
    assert "Not run yet: MGCN (GUIDER), FREEDOM." in text
    assert f"Command: `python benchmarks/guider_any_student.py --noise 0 --seeds 1 --out {out}`" in text


def test_zoo_on_sports_gives_the_clip_models_the_generated_clip_table(monkeypatch):
    """CLIPMLP and NF-VLM score a CLIP embedding, which the Sports folder gets generated beside
    its image and text tables: their runs name it, the others' do not, and the record keeps
    the command line's settings (so that a finished run is recognised as done)."""
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        return type("Done", (), {"returncode": 0, "stderr": "", "stdout": "sports: " + repr({
            "epoch_s": 1.0, "full_sort_eval_s": 2.0, "peak_rss_mb": 3, "epoch_timing": "full epoch",
            "items": 4, "users": 5})})()

    monkeypatch.setattr(zoo.subprocess, "run", fake_run)
    assert "clip" in zoo.packaged_modalities("CLIPMLP") and zoo.packaged_modalities("BPR") == []
    clip_record = zoo.run_sports("NFVLM", "sports.inter", 10, {"epochs": 1})
    plain_record = zoo.run_sports("VBPR", "sports.inter", 10, {"epochs": 1})
    assert any("clip_feat.npy" in part for part in commands[0]) and "epochs=1" in commands[0]
    assert not any("clip" in part for part in commands[1])
    assert clip_record["overrides"] == plain_record["overrides"] == {"epochs": 1}
    assert clip_record["status"] == "ok"


def test_reference_summary_keeps_runs_with_another_stopping_step_apart():
    """A run with early stopping off (``--stopping-step``) is another setting: the summary's
    switches name it, so it gets its own row instead of replacing the early-stopped run."""
    summary = load("reference_summary")
    command = ["compare_reference.py", "--model", "MMGCN", "--set", "reg_weight=0.0001", "--stopping-step", "1000"]
    assert summary.switches({"command": command}) == "reg_weight=0.0001 stopping-step=1000"
    assert summary.switches({"command": command[:5]}) == "reg_weight=0.0001"
    partial = ["compare_reference.py", "--model", "MENTOR", "--epochs", "1", "--max-batches", "3"]
    assert summary.switches({"command": partial}) == "max-batches=3"


def test_a_method_the_student_cannot_take_is_recorded_and_listed_not_fatal(monkeypatch):
    """BOD reweights a BPR loss; BM3 has none, and the config refuses the pair. The denoising
    table records that and goes on with the other runs (it used to end the whole process), and
    its page lists the refusal under the table."""
    from recbole_mm.errors import ConfigError

    noise_table = load("guider_noise")

    def refuse(*args, **kwargs):
        raise ConfigError("BM3 computes its loss without a BPRLoss module")

    monkeypatch.setattr(noise_table, "run_one", refuse)
    args = type("Args", (), {"overrides": {}})()
    record = noise_table.run_or_not_applicable("BM3", "sports", 0.1, "BOD", 2020, args)
    assert record["not_applicable"].startswith("BM3 computes") and record["method"] == "BOD"
    run = {"model": "BM3", "noise": 0.1, "method": "plain", "seed": 2020, "seconds": 5.0, "epoch_seconds": 1.0,
           "valid": dict.fromkeys(noise_table.METRICS, 0.1), "test": dict.fromkeys(noise_table.METRICS, 0.1)}
    page = noise_table.summarise([run, record], "title", "cmd")
    assert "| BM3 | 0.1 | plain | 1 |" in page and "| BM3 | 0.1 | BOD |" not in page
    assert "- BM3 + BOD: BM3 computes its loss without a BPRLoss module" in page
    assert noise_table.summarise([run], "title", "cmd", note="Five jobs shared the cores.").endswith(
        "\n\nFive jobs shared the cores.\n")  # --note: the page says how loaded the machine was


def test_the_ablation_command_runs_every_variant_with_its_overrides_and_resumes(tmp_path, monkeypatch):
    """``guider_ablation.py`` hands each variant's switches and ``--set`` to one run (it crashed
    on the overrides ``run_one`` reads), names ``--set`` in its page's command, and a rerun with the
    same overrides runs nothing again while other overrides run everything anew."""
    import types

    import recbole_mm.quick_start

    configs = []

    def fake_run(model, dataset, config_files, config_dict):
        configs.append(dict(config_dict, model=model))
        saved = tmp_path / f"saved{len(configs)}.pth"
        saved.write_text("")
        metrics = {m: 0.25 for m in ("recall@5", "ndcg@5", "recall@20", "ndcg@20")}
        return {"best_valid_result": metrics, "test_result": metrics, "saved_model_file": str(saved),
                "trainer": types.SimpleNamespace()}

    monkeypatch.setattr(recbole_mm.quick_start, "run_recbole_mm", fake_run)
    ablation = load("guider_ablation")
    argv = ["--out", str(tmp_path), "--epochs", "3", "--set", "guider_kd_retry=~", "guider_kd_balance=none"]
    ablation.main(argv)
    assert len(configs) == len(ablation.VARIANTS)
    assert all(c["guider_kd_retry"] is None and c["guider_kd_balance"] == "none" for c in configs)
    assert {c["epochs"] for c in configs if c["model"] != "LightGCN"} == {3}  # the teacher alone: its own budget
    student = next(c for c in configs if c.get("guider_dbpr_weight") == 1.0)
    assert student["guider"] is True and student["guider_fallback"] is False and student["model"] == "VBPR"
    page = (tmp_path / "guider_ablation_synthetic.md").read_text()
    assert "--set guider_kd_retry=~ guider_kd_balance=none`" in page
    ablation.main(argv)
    assert len(configs) == len(ablation.VARIANTS)
    ablation.main(argv[:4])
    assert len(configs) == 2 * len(ablation.VARIANTS)

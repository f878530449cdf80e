"""`repbench search`: studies in sqlite and journal storage, shared budgets, paper defaults first, failures.

Everything runs on the `smoke` search suite (300 digits, one epoch): about a second per trial.
"""

import optuna
import pytest
import torch

import methods
from bench.data import load_dataset
from bench.experiments import search, search_report
from bench.experiments.search_space import paper_defaults
from bench.experiments.storage import parse_storage


@pytest.fixture(autouse=True)
def one_thread():
    # These models are tiny; on a shared 2-core machine a second OpenMP thread only adds barrier waits.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def finished(study):
    return study.get_trials(deepcopy=False, states=search.FINISHED)


def load(storage, name="simclr-smoke-n3"):
    return optuna.load_study(study_name=name, storage=storage)


def test_search_writes_sqlite_study_with_paper_defaults_first(cli, tmp_path):
    code, out, err = cli("search", "--method", "simclr", "--suite", "smoke", "--trials", 3, "--seeds", 0, "--out", tmp_path)
    assert code == 0, err
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = load(db)
    assert len(finished(study)) == 3
    first = study.trials[0]
    cls = methods.METHODS.get("simclr")
    suite = search.SEARCH_SUITES.get("smoke")
    ds = search.carve_validation(load_dataset("digits", None, 30, 10), suite.val_fraction)
    assert first.params == paper_defaults(cls, suite.base("simclr"), len(ds.train_y))
    assert first.params["lr"] == cls.paper_recipe.lr and first.params["temperature"] == cls.Config().temperature
    assert first.user_attrs["paper_defaults"] is True
    assert 1 in first.intermediate_values  # the pruner was fed epoch 1
    assert study.user_attrs["method"] == "simclr" and study.user_attrs["n_val"] == 60
    report = (tmp_path / "simclr-smoke-n3" / "report.md").read_text()
    assert "fANOVA" in report and "PED-ANOVA" in report
    assert (tmp_path / "simclr-smoke-n3" / "budget.png").read_bytes()[:4] == b"\x89PNG"
    assert "optuna-dashboard sqlite:///" in out
    # Rerunning the finished study adds nothing.
    assert cli("search", "--method", "simclr", "--suite", "smoke", "--trials", 3, "--seeds", 0, "--out", tmp_path)[0] == 0
    assert len(load(db).trials) == 3


def test_workers_share_the_budget_and_reruns_continue(cli, tmp_path):
    args = ("search", "--method", "simclr", "--suite", "smoke", "--trials", 3, "--seeds", 0, "--out", tmp_path)
    db = f"sqlite:///{tmp_path / 'optuna.db'}"
    assert cli(*args, "--worker-trials", 2)[0] == 0  # worker 1 stops after 2 (e.g. killed, or its slot ended)
    assert len(finished(load(db))) == 2
    assert cli(*args)[0] == 0  # worker 2 takes only what is left of the study's total
    study = load(db)
    assert len(finished(study)) == 3 and len(study.trials) == 3
    assert sum(bool(t.user_attrs.get("paper_defaults")) for t in study.trials) == 1


def test_journal_storage(cli, tmp_path):
    path = tmp_path / "studies.log"
    code, _, err = cli("search", "--method", "supervised", "--suite", "smoke", "--trials", 2, "--seeds", 0,
                       "--storage", path, "--study", "sup", "--out", tmp_path / "out")
    assert code == 0, err
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    assert len(finished(optuna.load_study(study_name="sup", storage=storage))) == 2
    assert not (tmp_path / "out" / "optuna.db").exists()


@pytest.mark.parametrize("url", ["nonsense", "nosuchdialect://x/y", "sqlite:///{tmp}/missing/dir/optuna.db",
                                 "sqlite://", "{tmp}/missing/study.journal", "postgresql+nodriver://u@localhost/db"])
def test_bad_storage_is_one_line_and_writes_nothing(cli, tmp_path, url):
    out = tmp_path / "out"
    code, stdout, err = cli("search", "--method", "simclr", "--suite", "smoke", "--trials", 1, "--out", out,
                            "--storage", url.format(tmp=tmp_path))
    assert code == 2
    assert err.startswith("repbench: error: ") and err.count("\n") == 1 and "--storage" in err
    assert not out.exists() and not (tmp_path / "missing").exists()


def test_unreachable_database_is_one_line(cli, tmp_path):
    pytest.importorskip("psycopg2", reason="no PostgreSQL driver installed")
    code, _, err = cli("search", "--method", "simclr", "--suite", "smoke", "--trials", 1, "--out", tmp_path / "o",
                       "--storage", "postgresql://nobody@127.0.0.1:1/none")
    assert code == 2 and err.count("\n") == 1 and "cannot reach storage" in err


@pytest.mark.parametrize("bad", [("--seeds", "2"), ("--suite", "nope"), ("--method", "simclrr"), ("--trials", "0")])
def test_bad_arguments(cli, tmp_path, bad):
    code, _, err = cli("search", "--method", "simclr", "--suite", "smoke", "--trials", 1, "--out", tmp_path / "o", *bad)
    assert code == 2 and err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_divergence_fails_the_trial_with_its_reason(tmp_path, monkeypatch):
    from bench.train import Trainer

    def diverge(self, epoch):
        self.state.status, self.state.status_detail = "diverged", {"step": 1, "loss": float("nan")}

    monkeypatch.setattr(Trainer, "run_epoch", diverge)
    spec = parse_storage(None, tmp_path)
    rows = search.run_search(["simclr"], search.SEARCH_SUITES.get("smoke"), search.Budget(1), spec, tmp_path, seeds=3,
                             log=lambda _: None)
    trial = load(spec.target, "simclr-smoke-n1").trials[0]
    assert trial.state == optuna.trial.TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == "diverged" and trial.user_attrs["fail_detail"]["step"] == 1
    assert rows[0]["fail"] == 1 and rows[0]["test_tuned_n"] == 0  # nothing to re-run
    assert search_report.budget_values(load(spec.target, "simclr-smoke-n1")) == [pytest.approx(0.1)]  # chance level


def test_validation_split_is_carved_from_train_only():
    ds = load_dataset("digits", None, 30, 10)
    split = search.carve_validation(ds, 0.2)
    assert len(split.train_y) == 240 and len(split.test_y) == 60
    assert torch.bincount(split.test_y).tolist() == [6] * 10  # stratified
    rows = {tuple(r.flatten().tolist()) for r in ds.train_x}
    assert all(tuple(r.flatten().tolist()) in rows for r in split.test_x)
    assert len(split.train_y) + len(split.test_y) == len(ds.train_y)


def test_sampler_flags_are_explicit():
    s = search.make_sampler(7)
    assert isinstance(s, optuna.samplers.TPESampler)
    assert s._multivariate is True and s._constant_liar is True


def test_methods_all_reruns_best_with_fresh_seeds(tmp_path):
    spec = parse_storage(None, tmp_path)
    suite = search.SEARCH_SUITES.get("smoke")
    rows = search.run_search(["simclr", "supervised"], suite, search.Budget(2), spec, tmp_path, seeds=3, log=lambda _: None)
    assert [r["method"] for r in rows] == ["simclr", "supervised"]
    from bench.report import load_records

    recs = load_records(tmp_path / "runs")
    assert len(recs) == 6
    for r in recs:
        assert r["config"]["recipe_name"] == "tuned" and r["config"]["seed"] in (1000, 1001, 1002)
        assert r["config"]["test_per_class"] == 10 and r["data"]["test"] == 100  # scored on the real test split
    for r in rows:
        assert r["test_tuned_n"] == 3 and 0 < r["test_tuned_mean"] <= 1
    summary = (tmp_path / "summary.md").read_text()
    assert "supervised" in summary and "bootstrap" in summary
    assert (tmp_path / "budget_curves.png").exists() and (tmp_path / "budget_curves.csv").exists()


def test_suite_names_its_methods_when_none_given():
    import argparse

    from bench.commands.search import method_list

    a = argparse.Namespace(method=None, methods=None, suite="quick-search")
    assert method_list(a) == list(search.SEARCH_SUITES.get("quick-search").methods)
    assert "dino" in method_list(argparse.Namespace(method=None, methods="all", suite="smoke"))

"""The comparison report: built from real tiny runs in a real database."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lowrank.cli import main as cli_main
from lowrank.registry import method_config
from lowrank.config import DataConfig, OptimConfig, TrainConfig
from lowrank.errors import ConfigError, LowRankError
from lowrank.report import (RunData, build_report, load_runs, parse_query, results_table, select_runs,
                            write_report)
from lowrank.store import Store

ROOT = Path(__file__).resolve().parents[1]
EVIL = "<script>alert('x')</script> & co"


def tiny(method: str = "dense", name: str | None = None, **mkw) -> TrainConfig:
    return TrainConfig(data=DataConfig(dataset="mnist", train_size=500, test_size=300),
                       optim=OptimConfig(optimizer="adam", lr=3e-3), method=method_config(method, **mkw),
                       layers=[784, 16, 10], epochs=2, batch_size=50, seed=0, name=name)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """A database with three finished tiny runs: dense (hostile name), vanilla, rank-adaptive DLRT."""
    from lowrank.data import load_dataset
    from lowrank.run import train_run

    tmp = tmp_path_factory.mktemp("report")
    store = Store(tmp / "db.sqlite")
    data = load_dataset(tiny().data, seed=0)
    cfgs = [tiny(name=EVIL), tiny("vanilla", rank=4)]
    cfgs.append(tiny("dlrt", rank=4, integrator="kls", adaptive=True, tau=0.2, max_rank=8))
    ids = [train_run(c, store=store, runs_dir=tmp / "runs", data=data).run_id for c in cfgs]
    yield store, ids, tmp
    store.close()


@pytest.fixture(scope="module")
def report(db):
    """The report of the three runs, written once (figures are the slow part)."""
    store, ids, tmp = db
    return write_report(load_runs(store, ids), tmp / "report", title="T <b>", subtitle=EVIL)


def test_html_is_self_contained_and_escaped(db, report):
    _, ids, _ = db
    text = report.html.read_text()
    assert "<table>" in text and "<th>test accuracy</th>" in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in text
    assert "<script" not in text and "<b>" not in text
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) >= 5  # loss, accuracy, confusion, pareto x2 (+ ranks)
    assert all(base64.b64decode(i).startswith(b"\x89PNG") for i in images)
    assert 'src="http' not in text and "<link" not in text  # nothing fetched from elsewhere
    for title in ("Results", "Loss and accuracy curves", "Confusion matrices", "Accuracy against parameters"):
        assert f">{title}" in text
    if len(ids) == 3:
        assert ">Rank evolution</h2>" in text
    assert "Accuracy against k" not in text and "LoRA rank curves" not in text  # no data: no section


def test_markdown_summary(report):
    md = report.markdown.read_text()
    assert md.startswith("# T &lt;b&gt;\n")
    assert "| run | method | status | epochs | test accuracy |" in md
    assert "&lt;script&gt;" in md and "<script" not in md
    links = re.findall(r"\]\((figures/[^)]+\.png)\)", md)
    assert links and all((report.markdown.parent / link).is_file() for link in links)
    row = next(line for line in md.splitlines() if line.startswith("| vanilla r4 |"))
    assert "%" in row and "finished" in row


def test_results_table_figures(db):
    store, ids, _ = db
    table = results_table(load_runs(store, ids))
    dense = table.rows[0]
    cols = table.columns
    assert dense[cols.index("hidden weights kept")].startswith("100.0%")
    vanilla = table.rows[1]
    assert float(vanilla[cols.index("hidden weights kept")].split("%")[0]) < 100
    assert vanilla[cols.index("test accuracy")].endswith("%")


def test_query_selects_runs(db):
    store, ids, _ = db
    assert [r.method for r in select_runs(store, query=parse_query("method=vanilla"))] == ["vanilla"]
    assert {r.method for r in select_runs(store, query=parse_query("method=dense|vanilla"))} == {"dense", "vanilla"}
    assert [r.method for r in select_runs(store, query=parse_query("method.rank=4,method=vanilla"))] == ["vanilla"]
    assert len(select_runs(store)) == len(ids)  # default: every finished run
    with pytest.raises(ConfigError, match="'colour'"):
        parse_query("colour=red")
    with pytest.raises(ConfigError, match="key=value"):
        parse_query("method")
    with pytest.raises(LowRankError, match="no run 999"):
        load_runs(store, [999])


def test_cli_report_rebuilds_from_database(db, tmp_path, capsys):
    store, ids, _ = db
    out = tmp_path / "rep"
    code = cli_main(["--db", str(store.path), "report", *map(str, ids[:2]), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / "report.html").exists() and (out / "report.md").exists()
    code = cli_main(["--db", str(store.path), "report", "--query", "method=lora", "--out", str(out)])
    assert code == 2 and "no run matches" in capsys.readouterr().err


def _fake(i: int, method: str, acc: float, **extra) -> RunData:
    cfg = (tiny(method, rank=2 ** i) if method != "dense" else tiny(method)).to_dict()
    return RunData(id=i, label=f"{method} {i}", status="finished", method=method, dataset="mnist", config=cfg,
                   summary={"test_acc": acc, "test_loss": 1.0, **extra}, epochs=[], ranks=[])


def test_optional_sections_appear_with_data():
    runs = [_fake(1, "lora", 0.8), _fake(2, "lora", 0.85),
            _fake(3, "dense", 0.9, compression=[{"k": 2, "test_acc": 0.5, "retrained_acc": 0.8},
                                                 {"k": 8, "test_acc": 0.85, "retrained_acc": 0.89}])]
    titles = [s.title for s in build_report(runs, title="t").sections]
    assert "Accuracy against k (post-training SVD)" in titles and "LoRA rank curves" in titles


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_headless_browser_renders_report(report, tmp_path):
    shot = tmp_path / "shot.png"
    p = subprocess.run(["bash", str(ROOT / "scripts" / "check_report.sh"), "--no-install", str(report.html), str(shot),
                        "1400,2400"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
    assert "OK" in p.stdout

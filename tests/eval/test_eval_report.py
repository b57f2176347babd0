"""The evaluation's text: the printed table, markdown escaping and the report files."""

from __future__ import annotations

from pathlib import Path

from eval_helpers import BASE, GUARDED, TARGETS, full_records, rec

from localguard.eval.report import format_table, md, write_report
from localguard.eval.summary import summarize

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_format_table_lists_targets_cells_and_judges():
    records = full_records() + [rec("solo", "direct", "direct", 0, True)]
    text = format_table(summarize(records, TARGETS))
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["target", "direct"]
    for name in (BASE, GUARDED, "solo"):
        assert any(line.startswith(name) for line in lines[2:]), name
    base = next(line for line in lines if line.startswith(f"{BASE}  "))
    assert "25.0 % [4.6, 69.9] (n=4)" in base  # direct, llm judge
    assert "50.0 % [15.0, 85.0] (n=4)" in base  # prefill worst case
    assert "50.0 % [21.5, 78.5] (n=8)" in base  # all attacks, refusal judge
    assert "75.0 % [30.1, 95.4] (n=4)" in base  # utility
    solo = next(line for line in lines if line.startswith("solo"))
    assert "100.0 % [20.7, 100.0] (n=1) refusal" in solo and " - " in solo
    judges = next(line for line in lines if line.startswith("Judges:"))
    assert "llm:j.gguf" in judges and lines[-1].startswith("Judge agreement on attack success:")


def test_md_escapes_and_truncates():
    assert md("a|b*c_d\n<x>") == r"a\|b\*c\_d ↵ &lt;x&gt;"
    assert md("x" * 50, limit=10) == "x" * 9 + "…"


# --- files --------------------------------------------------------------------------------


def assert_png(path: Path) -> None:
    from matplotlib import image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = image.imread(path)
    assert pixels.shape[0] > 0 and pixels.shape[1] > 0


def test_write_report_full(tmp_path):
    records = full_records()
    records[0]["output"] = "line one\n| not a column | **bold**"
    summary = summarize(records, TARGETS)
    out = tmp_path / "eval"
    paths = write_report(out, records, TARGETS, summary, title="demo eval")
    names = [p.name for p in paths]
    assert names == [
        "report.md",
        "attack_success.png",
        "attack_vs_p.png",
        "safety_traces.png",
        "utility_vs_safety.png",
    ]
    for path in paths[1:]:
        assert_png(path)
    text = (out / "report.md").read_text(encoding="utf-8")
    assert text.startswith("# demo eval\n")
    base_row = next(line for line in text.splitlines() if line.startswith(f"| {BASE} |"))
    assert "| 25.0 % [4.6, 69.9] (n=4) | 50.0 % [15.0, 85.0] (n=4) |" in base_row
    assert "Judges: " in text and "llm:j.gguf" in text
    assert "## Guard interventions" in text and "41.7 % [19.3, 68.0] (n=12)" in text
    assert r"line one ↵ \| not a column \| \*\*bold\*\*" in text
    for name in names[1:]:
        assert f"]({name})" in text
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no temporary files


def test_write_report_skips_plots_without_data(tmp_path):
    records = [rec("plain", "direct", "direct", i, i == 0) for i in range(3)]
    targets = [{"name": "plain", "backend": "mlx", "guard": "off", "defense": None, "p": None}]
    out = tmp_path / "eval"
    out.mkdir()
    (out / "attack_vs_p.png").write_bytes(b"stale")  # from an older run: must go
    paths = write_report(out, records, targets, summarize(records, targets))
    assert [p.name for p in paths] == ["report.md", "attack_success.png"]
    assert sorted(p.name for p in out.iterdir()) == ["attack_success.png", "report.md"]
    text = (out / "report.md").read_text(encoding="utf-8")
    assert "33.3 % [6.1, 79.2] (n=3)" in text
    assert "attack_vs_p.png" not in text and "Guard interventions" not in text


def test_write_report_without_records(tmp_path):
    paths = write_report(tmp_path, [], TARGETS, summarize([], TARGETS))
    assert [p.name for p in paths] == ["report.md"]
    assert "| base | " in paths[0].read_text(encoding="utf-8")

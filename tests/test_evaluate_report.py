"""The evaluation report (evaluate/report.py): one self-contained HTML file whose table repeats the JSON."""

from __future__ import annotations

import base64
import copy
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from prefill_router import Router
from prefill_router.data.dataset import RoutingDataset
from prefill_router.evaluate.report import headline_rows, write_report
from prefill_router.evaluate.run import Predictions, eval_costs, predict_split, score
from prefill_router.train import fit_router
from tests.test_evaluate_run import SETTINGS, SYNTHETIC, halves, planted

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BASELINES = ("knn-embed", "random")
#: headline_rows keys in table order, and whether each is shown as a percentage
COLUMNS = (
    ("auc_mean", False),
    ("accuracy", False),
    ("gap_captured", True),
    ("cost_savings", True),
    ("gap_at_50", True),
    ("gap_at_7431", True),
    ("aiq", False),
    ("savings_at_best", True),
    ("savings_within_1", True),
    ("savings_within_2", True),
    ("share_to_best_within_1", True),
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Page(HTMLParser):
    """What a report holds: every src/href attribute, image sources, and the headline table's cells."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.images: list[str] = []
        self.table: list[list[str]] = []
        self._in_table = self._in_cell = False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data") and value is not None:
                self.links.append((tag, name, value))
        if tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        if tag == "table" and dict(attrs).get("id") == "headline":
            self._in_table = True
        elif self._in_table and tag == "tr":
            self.table.append([])
        elif self._in_table and tag in ("td", "th"):
            self._in_cell = True
            self.table[-1].append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_table and self._in_cell:
            self.table[-1][-1] += data


def formatted(value: float | None, percent: bool) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}%" if percent else f"{value:.3f}"


@pytest.fixture(scope="module")
def evaluated() -> tuple[dict[str, Any], Predictions, RoutingDataset, Router]:
    dataset, features = planted()
    train, test, f_train, f_test = halves(dataset, features)
    router, _ = fit_router(train, f_train.encoder, SYNTHETIC, SETTINGS)  # layers "fisher": probes run
    predictions = predict_split(router, train, test, f_train, f_test, BASELINES, SETTINGS)
    result = score(test, predictions, eval_costs(dataset, test), n_boot=100)
    result["setup"] = {"where": "split 'test' of synthetic.parquet (100 prompts; baselines fit on 200)"}
    return result, predictions, test, router


@pytest.fixture(scope="module")
def report(
    evaluated: tuple[dict[str, Any], Predictions, RoutingDataset, Router],
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    folder = tmp_path_factory.mktemp("reports") / "new" / "folder"  # not there yet
    return write_report(*evaluated, folder)


def test_the_report_is_one_html_file(report: Path) -> None:
    assert report.name == "report.html" and report.is_file()
    assert [p.name for p in report.parent.iterdir()] == ["report.html"]  # no temporary file left
    text = report.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and text.rstrip().endswith("</html>")


def test_the_report_embeds_its_figures_as_png(
    report: Path, evaluated: tuple[dict[str, Any], Predictions, RoutingDataset, Router]
) -> None:
    assert "probe" in evaluated[3].info
    page = Page(report.read_text(encoding="utf-8"))
    assert len(page.images) == 4  # plane, AUC bars, reliability, layer probes
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_MAGIC)


def test_the_report_references_no_other_file(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    page = Page(text)
    assert page.links and all(value.startswith("data:") for _, _, value in page.links), [
        (*link[:2], link[2][:40]) for link in page.links if not link[2].startswith("data:")
    ]
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//|file:)""", text, re.IGNORECASE)
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text


def test_without_probes_the_report_has_three_figures(
    evaluated: tuple[dict[str, Any], Predictions, RoutingDataset, Router], tmp_path: Path
) -> None:
    result, predictions, test, router = evaluated
    bare = copy.copy(router)
    bare.info = {k: v for k, v in router.info.items() if k != "probe"}
    page = Page(write_report(result, predictions, test, bare, tmp_path).read_text(encoding="utf-8"))
    assert len(page.images) == 3


def test_headline_rows_repeat_the_json(
    evaluated: tuple[dict[str, Any], Predictions, RoutingDataset, Router],
) -> None:
    result = evaluated[0]
    rows = headline_rows(result)
    keys = ["prefill", *BASELINES, "cheapest", "oracle_router"]
    assert [row["router"] for row in rows] == ["prefill (ours)", *BASELINES, "cheapest", "oracle"]
    for key, row in zip(keys, rows, strict=True):
        r = result[key]
        assert row == {
            "router": row["router"],
            "auc_mean": r["auc_mean"],
            "accuracy": r["argmax"]["accuracy"],
            "gap_captured": r["argmax"]["gap_captured"],
            "cost_savings": r["argmax"]["cost_savings"],
            "gap_at_50": r["gap_captured_at_savings"]["0.5"],
            "gap_at_7431": r["gap_captured_at_savings"]["0.7431"],
            "aiq": r["aiq"],
            "savings_at_best": r["savings_at_best_accuracy"]["savings"],
            "savings_within_1": r["savings_within"]["1"]["savings"],
            "savings_within_2": r["savings_within"]["2"]["savings"],
            "share_to_best_within_1": r["savings_within"]["1"].get("share_to_best"),
        }


def test_the_headline_table_shows_the_json_numbers(
    report: Path, evaluated: tuple[dict[str, Any], Predictions, RoutingDataset, Router]
) -> None:
    result = evaluated[0]
    page = Page(report.read_text(encoding="utf-8"))
    header, *body = page.table
    assert header == [
        "router", "mean AUC", "argmax accuracy", "gap captured", "cost savings",
        "gap @ ≥50% savings", "gap @ ≥74.31% savings", "AIQ", "savings at best's accuracy",
        "within 1 pt", "within 2 pt", "calls to best",
    ]  # fmt: skip
    expected = [
        [row["router"], *(formatted(row[k], pct) for k, pct in COLUMNS)] for row in headline_rows(result)
    ]
    assert body == expected
    assert body[0][0] == "prefill (ours)" and body[-1][2] == f"{result['oracle']['accuracy']:.3f}"
    assert body[-1][1] == "–"  # the oracle has no AUC
    assert body[-1][3] == "100.0%"  # and captures the whole gap


def test_the_report_names_the_setup_and_the_yardstick(
    report: Path, evaluated: tuple[dict[str, Any], Predictions, RoutingDataset, Router]
) -> None:
    result = evaluated[0]
    text = " ".join(report.read_text(encoding="utf-8").split())
    best, oracle = result["best_single"], result["oracle"]
    assert "split &#x27;test&#x27; of synthetic.parquet (100 prompts; baselines fit on 200)" in text
    assert f"Best single: <b>{best['name']}</b> {best['accuracy']:.3f}" in text
    assert f"oracle {oracle['accuracy']:.3f} (headroom {oracle['accuracy'] - best['accuracy']:+.3f})" in text
    assert f"always using {result['most_expensive']['name']}" in text

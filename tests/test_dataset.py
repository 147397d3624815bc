"""RoutingDataset: validation, selection, exact Parquet round trips, and atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefill_router import DataError, RoutingDataset, TargetInfo, UnknownTargetError
from prefill_router.data import dataset as dataset_module
from prefill_router.data.dataset import TARGET_NAME


def make(labels: list[list[float]], **overrides: object) -> RoutingDataset:
    n, m = len(labels), len(labels[0])
    fields: dict[str, object] = {
        "prompt_ids": [f"p{i}" for i in range(n)],
        "prompts": [f"prompt {i}" for i in range(n)],
        "tasks": [None] * n,
        "splits": [None] * n,
        "labels": np.array(labels, dtype=float),
        "targets": tuple(TargetInfo(f"t{j}") for j in range(m)),
    }
    fields.update(overrides)
    return RoutingDataset(**fields)  # type: ignore[arg-type]


# ------------------------------------------------------------------- round trips
label_value = st.one_of(st.just(float("nan")), st.floats(0.0, 1.0, allow_nan=False))
text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30).filter(str.strip)


@st.composite
def datasets(draw: st.DrawFn) -> RoutingDataset:
    n = draw(st.integers(1, 8))
    m = draw(st.integers(1, 4))
    names = draw(st.lists(st.from_regex(TARGET_NAME, fullmatch=True), min_size=m, max_size=m, unique=True))
    ids = draw(st.lists(text, min_size=n, max_size=n, unique=True))
    labels = np.array(draw(st.lists(st.lists(label_value, min_size=m, max_size=m), min_size=n, max_size=n)))
    optional = st.one_of(st.none(), text)
    costs = draw(
        st.one_of(
            st.none(), st.just(None).map(lambda _: np.abs(np.random.default_rng(n).normal(size=(n, m))))
        )
    )
    prices = st.one_of(st.none(), st.floats(0, 100, allow_nan=False))
    return RoutingDataset(
        prompt_ids=ids,
        prompts=draw(st.lists(text, min_size=n, max_size=n)),
        tasks=draw(st.lists(optional, min_size=n, max_size=n)),
        splits=draw(st.lists(optional, min_size=n, max_size=n)),
        labels=labels,
        targets=tuple(
            TargetInfo(name, draw(prices), draw(prices), draw(optional), draw(st.booleans()))
            for name in names
        ),
        costs_usd=costs,
        output_tokens=draw(st.one_of(st.none(), st.just(np.full((n, m), 7.0)))),
        provenance={"source": draw(text), "notes": draw(st.lists(text, max_size=3))},
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ds=datasets())
def test_save_load_round_trips_exactly(ds: RoutingDataset, tmp_path: Path) -> None:
    path = ds.save(tmp_path / "ds.parquet")
    loaded = RoutingDataset.load(path)
    assert loaded.equals(ds)


def test_parquet_is_plain_and_readable_by_pandas(small_dataset: RoutingDataset, tmp_path: Path) -> None:
    import pandas as pd

    small_dataset.save(tmp_path / "ds.parquet")
    frame = pd.read_parquet(tmp_path / "ds.parquet")
    assert list(frame.columns[:4]) == ["prompt_id", "prompt", "task", "split"]
    assert frame["label:medium"].isna().tolist() == [False, False, False, True]
    meta = json.loads(pq.read_schema(tmp_path / "ds.parquet").metadata[b"prefill_router"])
    assert meta["targets"][2] == {
        "name": "large",
        "input_usd_per_mtok": 10.0,
        "output_usd_per_mtok": 30.0,
        "price_source": "test",
        "price_derived": False,
    }


# -------------------------------------------------------------------- selection
def test_select_by_split_task_and_targets(small_dataset: RoutingDataset) -> None:
    picked = small_dataset.select(split="train", targets=["large", "small"])
    assert picked.prompt_ids.tolist() == ["a", "b"]
    assert picked.target_names == ["large", "small"]
    assert picked.labels.tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert small_dataset.select(task=["math"]).prompt_ids.tolist() == ["a", "c"]


def test_select_unknown_target_suggests_the_closest(small_dataset: RoutingDataset) -> None:
    with pytest.raises(UnknownTargetError, match=r"unknown target 'larg'\. Did you mean 'large'\?"):
        small_dataset.select(targets=["larg"])


def test_select_unknown_split_lists_known_ones(small_dataset: RoutingDataset) -> None:
    with pytest.raises(DataError, match=r"no row has split 'dev'; known splits: test, train"):
        small_dataset.select(split="dev")


# ------------------------------------------------------------------- validation
def test_duplicate_prompt_ids_are_rejected() -> None:
    with pytest.raises(DataError, match=r"duplicate prompt_id 'x' \(rows 0 and 1\)"):
        make([[1.0], [0.0]], prompt_ids=["x", "x"])


def test_empty_prompt_names_the_row() -> None:
    with pytest.raises(DataError, match=r"row 1 \(p1\): empty prompt"):
        make([[1.0], [0.0]], prompts=["fine", "   "])


@pytest.mark.parametrize("bad", [1.5, -0.1, float("inf")])
def test_labels_outside_unit_interval_name_row_and_column(bad: float) -> None:
    with pytest.raises(DataError, match=r"row 1 \(p1\), column label:t0: label must be in \[0, 1\] or null"):
        make([[1.0], [bad]])


def test_negative_cost_is_rejected() -> None:
    with pytest.raises(DataError, match="cost_usd must be finite and >= 0"):
        make([[1.0]], costs_usd=np.array([[-1.0]]))


def test_matrix_shape_is_checked() -> None:
    with pytest.raises(DataError, match=r"output_tokens matrix has shape \(1, 2\), expected \(1, 1\)"):
        make([[1.0]], output_tokens=np.ones((1, 2)))


def test_duplicate_target_names_are_rejected() -> None:
    with pytest.raises(DataError, match="duplicate target name 't'"):
        make([[1.0, 0.0]], targets=(TargetInfo("t"), TargetInfo("t")))


def test_negative_price_is_rejected() -> None:
    with pytest.raises(DataError, match="price of target 't0' must be a finite number >= 0"):
        make([[1.0]], targets=(TargetInfo("t0", -1.0, 1.0),))


# ---------------------------------------------------------------------- loading
def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.parquet: no such file"):
        RoutingDataset.load(tmp_path / "nope.parquet")


def test_load_truncated_file(small_dataset: RoutingDataset, tmp_path: Path) -> None:
    path = small_dataset.save(tmp_path / "ds.parquet")
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="not a readable Parquet file"):
        RoutingDataset.load(path)


def test_load_plain_parquet_says_how_to_convert(tmp_path: Path) -> None:
    import pandas as pd

    pd.DataFrame({"prompt": ["x"]}).to_parquet(tmp_path / "plain.parquet")
    with pytest.raises(DataError, match=r"not a prefill-router routing dataset.*data import"):
        RoutingDataset.load(tmp_path / "plain.parquet")


def test_load_newer_format_version(small_dataset: RoutingDataset, tmp_path: Path) -> None:
    table = small_dataset.to_arrow()
    meta = json.loads(table.schema.metadata[b"prefill_router"])
    meta["version"] = 99
    pq.write_table(
        table.replace_schema_metadata({b"prefill_router": json.dumps(meta)}), tmp_path / "new.parquet"
    )
    with pytest.raises(DataError, match="format version 99 is newer"):
        RoutingDataset.load(tmp_path / "new.parquet")


@pytest.mark.parametrize("name", ["evil\r\nx-router-target: gpt-4", "modèle", "a b", "x" * 129])
def test_load_refuses_a_target_name_a_header_or_log_line_cannot_carry(
    name: str, small_dataset: RoutingDataset, tmp_path: Path
) -> None:
    table = small_dataset.to_arrow()
    meta = json.loads(table.schema.metadata[b"prefill_router"])
    meta["targets"][0]["name"] = name
    pq.write_table(
        table.replace_schema_metadata({b"prefill_router": json.dumps(meta)}), tmp_path / "bad.parquet"
    )
    with pytest.raises(DataError, match=r"bad\.parquet.*target name .* is not allowed"):
        RoutingDataset.load(tmp_path / "bad.parquet")


def test_load_missing_label_column(small_dataset: RoutingDataset, tmp_path: Path) -> None:
    table = small_dataset.to_arrow()
    table = table.drop_columns(["label:medium"])
    pq.write_table(table, tmp_path / "cut.parquet")
    with pytest.raises(DataError, match="missing column 'label:medium'"):
        RoutingDataset.load(tmp_path / "cut.parquet")


def test_load_labels_out_of_range_on_disk(small_dataset: RoutingDataset, tmp_path: Path) -> None:
    import pyarrow as pa

    table = small_dataset.to_arrow()
    index = table.column_names.index("label:small")
    table = table.set_column(index, "label:small", pa.array([1.0, 2.0, 0.0, 1.0]))
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: row 1 \(b\), column label:small"):
        RoutingDataset.load(tmp_path / "bad.parquet")


def test_bundled_dataset_loads() -> None:
    ds = RoutingDataset.load("bundled")
    assert ds.n_prompts == 5989
    assert ds.split_names() == ["test", "train"]
    assert len(ds.targets) == 9 and all(t.has_price for t in ds.targets)
    assert "MIT" in ds.provenance["license"]


# ---------------------------------------------------------------- atomic writes
def test_save_is_atomic_when_writing_fails(
    small_dataset: RoutingDataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = small_dataset.save(tmp_path / "ds.parquet")
    before = path.read_bytes()

    def crash(table: object, where: Path, **kwargs: object) -> None:
        Path(where).write_bytes(b"PAR1 half written")
        raise OSError("disk full")

    monkeypatch.setattr(dataset_module.pq, "write_table", crash)
    with pytest.raises(OSError, match="disk full"):
        small_dataset.take([0]).save(path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ds.parquet"]

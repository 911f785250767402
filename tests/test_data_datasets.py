"""Readers of Stanford Cars, FGVC-Aircraft, Stanford Dogs and iNaturalist, on tiny copies of each
layout in the datasets' own file formats (.mat files written by scipy.io.savemat, as MATLAB's are read)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from herbs.cli import main as herbs_main
from herbs.errors import DataError
from herbs.data.aircraft import read_aircraft
from herbs.data.cars import read_cars
from herbs.data.dogs import read_dogs
from herbs.data.inat import read_inat
from herbs.data.manifest import load_manifest

from helpers.data import jpeg

CARS = ["AM General Hummer SUV 2000", "BMW M3 Coupe 2012", "BMW X6 SUV 2012"]


def cells(values) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def make_cars(root: Path) -> Path:
    (root / "devkit").mkdir(parents=True)
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": cells(CARS)})
    fields = [(f"bbox_{c}", "O") for c in ("x1", "y1", "x2", "y2")] + [("class", "O"), ("fname", "O")]
    for split, per_class, annos in (("train", 2, root / "devkit" / "cars_train_annos.mat"), ("test", 1, root / "cars_test_annos_withlabels.mat")):
        (root / f"cars_{split}").mkdir()
        rows = []
        for label in range(1, len(CARS) + 1):
            for i in range(per_class):
                name = f"{len(rows) + 1:05d}.jpg"
                (root / f"cars_{split}" / name).write_bytes(jpeg(seed=len(rows) + 100 * label))
                rows.append((3, 4, 33, 24 + i, label, name))
        savemat(annos, {"annotations": np.array(rows, dtype=fields)})
    return root


def test_stanford_cars_devkit(tmp_path):
    dataset = read_cars(make_cars(tmp_path / "cars"))
    assert dataset.class_names == CARS and dataset.original_ids == ["1", "2", "3"]
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 6, "test": 3}
    assert [s.label for s in dataset.splits["train"]] == [0, 0, 1, 1, 2, 2]
    first = dataset.splits["train"][1]
    assert first.source == "cars_train/00002.jpg" and first.bbox == (3.0, 4.0, 30.0, 21.0)
    assert first.read() == (tmp_path / "cars" / first.source).read_bytes()
    assert {g.name: g.classes for g in dataset.groups} == {"AM": (0,), "BMW": (1, 2)}


def test_stanford_cars_label_outside_the_classes_is_one_sentence(tmp_path):
    root = make_cars(tmp_path / "cars")
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": cells(CARS[:2])})
    with pytest.raises(DataError, match="class 3, outside the 2 classes"):
        read_cars(root)


CARS_CSV = ["AM General Hummer SUV 2000", "BMW M3 Coupe 2012", "Ram C/V Cargo Van Minivan 2012"]


def make_cars_csv(root: Path) -> Path:
    """Kaggle's re-packaging: names.csv, headerless anno_{train,test}.csv, images under
    car_data/car_data/<split>/<class folder>/ (a '/' in a class name becomes '-' in its folder)."""
    root.mkdir(parents=True)
    (root / "names.csv").write_text("".join(f"{name}\n" for name in CARS_CSV))
    for split, per_class in (("train", 2), ("test", 1)):
        lines = []
        for label, name in enumerate(CARS_CSV, 1):
            folder = root / "car_data" / "car_data" / split / name.replace("/", "-")
            folder.mkdir(parents=True)
            for i in range(per_class):
                file = f"{len(lines) + 1:05d}.jpg"
                (folder / file).write_bytes(jpeg(seed=len(lines) + 100 * label))
                lines.append(f"{file},3,4,33,{24 + i},{label}\n")
        (root / f"anno_{split}.csv").write_text("".join(lines))
    return root


def test_stanford_cars_csv_layout_is_found_and_read(tmp_path):
    dataset = read_cars(make_cars_csv(tmp_path / "stanford-car-dataset-by-classes-folder"))
    assert dataset.class_names == CARS_CSV and dataset.original_ids == ["1", "2", "3"]
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 6, "test": 3}
    assert [s.label for s in dataset.splits["train"]] == [0, 0, 1, 1, 2, 2]
    ram = dataset.splits["train"][5]
    assert ram.source == "car_data/car_data/train/Ram C-V Cargo Van Minivan 2012/00006.jpg" and ram.bbox == (3.0, 4.0, 30.0, 21.0)
    assert ram.read() == (tmp_path / "stanford-car-dataset-by-classes-folder" / ram.source).read_bytes()
    assert {g.name: g.classes for g in dataset.groups} == {"AM": (0,), "BMW": (1,), "Ram": (2,)}


def test_stanford_cars_csv_missing_a_column_is_one_sentence(tmp_path):
    root = make_cars_csv(tmp_path / "cars")
    (root / "anno_test.csv").write_text("00001.jpg,3,4,33,24,1\n00002.jpg,3,4,33,2\n")
    with pytest.raises(DataError, match=r"^line 2 of '.*anno_test.csv' has 5 fields where 6 \(file name, x1, y1, x2, y2, class\) belong; "):
        read_cars(root)


def test_stanford_cars_folder_of_neither_layout_is_one_sentence(tmp_path):
    (tmp_path / "cars" / "cars_train").mkdir(parents=True)
    with pytest.raises(DataError, match="neither Stanford Cars' devkit .* nor its CSV layout"):
        read_cars(tmp_path / "cars")


VARIANTS = {"707-320": ("Boeing 707", "Boeing"), "727-200": ("Boeing 727", "Boeing"), "A300B4": ("A300", "Airbus"), "A310": ("A310", "Airbus")}


def make_aircraft(root: Path) -> Path:
    data = root / "data"
    (data / "images").mkdir(parents=True)
    (data / "variants.txt").write_text("".join(f"{v}\n" for v in VARIANTS))
    image = 1000000
    for part, per_variant in (("trainval", 2), ("test", 1)):
        lines = {level: [] for level in ("variant", "family", "manufacturer")}
        for variant, (family, maker) in VARIANTS.items():
            for _ in range(per_variant):
                image += 1
                (data / "images" / f"{image}.jpg").write_bytes(jpeg(seed=image))
                for level, value in (("variant", variant), ("family", family), ("manufacturer", maker)):
                    lines[level].append(f"{image} {value}")
        for level, rows in lines.items():
            (data / f"images_{level}_{part}.txt").write_text("\n".join(rows) + "\n")
    return root


def test_fgvc_aircraft_keeps_variant_family_manufacturer(tmp_path):
    dataset = read_aircraft(make_aircraft(tmp_path / "fgvc-aircraft-2013b"))
    assert dataset.class_names == list(VARIANTS)
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 8, "test": 4}
    assert dataset.splits["test"][2].source == "images/1000011.jpg" and dataset.splits["test"][2].label == 2
    assert {g.name: g.classes for g in dataset.groups} == {"A300": (2,), "A310": (3,), "Boeing 707": (0,), "Boeing 727": (1,)}
    assert dataset.tree["variant:A300B4"] == ("A300B4", "family:A300")
    assert dataset.tree["family:A300"] == ("A300", "manufacturer:Airbus") and dataset.tree["manufacturer:Airbus"] == ("Airbus", None)


def test_fgvc_aircraft_unknown_variant_is_one_sentence(tmp_path):
    root = make_aircraft(tmp_path / "aircraft")
    (root / "data" / "variants.txt").write_text("707-320\n")
    with pytest.raises(DataError, match="variant '727-200', which .*variants.txt' does not list"):
        read_aircraft(root)


BREEDS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02116738-African_hunting_dog"]


def make_dogs(root: Path) -> Path:
    for split, per_breed in (("train", 2), ("test", 1)):
        files, labels = [], []
        for label, breed in enumerate(BREEDS, 1):
            (root / "Images" / breed).mkdir(parents=True, exist_ok=True)
            for i in range(per_breed):
                rel = f"{breed}/{breed.split('-')[0]}_{split}{i}.jpg"
                (root / "Images" / rel).write_bytes(jpeg(seed=len(files) + 10 * label))
                files.append(rel)
                labels.append(label)
        # As in the dataset: N x 1 cells and doubles.
        savemat(root / f"{split}_list.mat", {"file_list": cells(files).reshape(-1, 1), "annotation_list": cells(files).reshape(-1, 1),
                                             "labels": np.array(labels, dtype=float).reshape(-1, 1)})
    return root


def test_stanford_dogs_lists(tmp_path):
    dataset = read_dogs(make_dogs(tmp_path / "dogs"))
    assert dataset.class_names == ["Chihuahua", "Japanese_spaniel", "African_hunting_dog"]
    assert dataset.original_ids == ["n02085620", "n02085782", "n02116738"]
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 6, "test": 3}
    last = dataset.splits["test"][2]
    assert last.label == 2 and last.source == "Images/n02116738-African_hunting_dog/n02116738_test0.jpg"


def make_dogs_text_lists(root: Path) -> Path:
    """The same tiny dataset with lists/train_list.txt and lists/test_list.txt in place of the .mat lists."""
    make_dogs(root)
    (root / "lists").mkdir()
    for split in ("train", "test"):
        files = [str(f) for f in loadmat(root / f"{split}_list.mat", squeeze_me=True)["file_list"]]
        (root / f"{split}_list.mat").unlink()
        (root / "lists" / f"{split}_list.txt").write_text("".join(f"{file}\n" for file in files))
    return root


def test_stanford_dogs_text_lists_read_like_the_mat_lists(tmp_path):
    from_mat = read_dogs(make_dogs(tmp_path / "mat"))
    from_text = read_dogs(make_dogs_text_lists(tmp_path / "text"))
    assert from_text.class_names == from_mat.class_names and from_text.original_ids == from_mat.original_ids
    for split in ("train", "test"):
        assert [(s.source, s.label) for s in from_text.splits[split]] == [(s.source, s.label) for s in from_mat.splits[split]]


def test_stanford_dogs_text_line_without_its_breed_folder_is_one_sentence(tmp_path):
    root = make_dogs_text_lists(tmp_path / "dogs")
    with (root / "lists" / "test_list.txt").open("a") as lists:
        lists.write("n02085620_5927.jpg\n")
    with pytest.raises(DataError, match="test_list.txt' lists 'n02085620_5927.jpg' without its breed folder"):
        read_dogs(root)


def test_stanford_dogs_missing_image_is_one_sentence(tmp_path):
    root = make_dogs(tmp_path / "dogs")
    next((root / "Images" / BREEDS[1]).iterdir()).unlink()
    with pytest.raises(DataError, match="listed by the dataset does not exist"):
        read_dogs(root)


SPECIES = [  # iNat 2021's categories carry the taxonomy; ids are not in order on purpose
    {"id": 7, "name": "Turdus migratorius", "supercategory": "Birds", "kingdom": "Animalia", "class": "Aves", "genus": "Turdus"},
    {"id": 2, "name": "Turdus merula", "supercategory": "Birds", "kingdom": "Animalia", "class": "Aves", "genus": "Turdus"},
    {"id": 5, "name": "Quercus robur", "supercategory": "Plants", "kingdom": "Plantae", "class": "Magnoliopsida", "genus": "Quercus"},
]


def make_inat(root: Path, names=("train.json", "val.json"), taxonomy: bool = True) -> Path:
    image_id = 0
    for name, per_class in zip(names, (2, 1)):
        images, annotations = [], []
        for category in SPECIES:
            for _ in range(per_class):
                image_id += 1
                rel = f"{name.split('.')[0]}/{category['supercategory']}/{category['id']}/{image_id}.jpg"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(jpeg(seed=image_id))
                images.append({"id": image_id, "file_name": rel, "width": 40, "height": 30})
                annotations.append({"id": image_id, "image_id": image_id, "category_id": category["id"]})
        categories = SPECIES if taxonomy else [{k: c[k] for k in ("id", "name", "supercategory")} for c in SPECIES]
        (root / name).write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return root


def test_inaturalist_2021_taxonomy_is_the_tree(tmp_path):
    dataset = read_inat(make_inat(tmp_path / "inat"))
    assert dataset.class_names == ["Turdus merula", "Quercus robur", "Turdus migratorius"] and dataset.original_ids == ["2", "5", "7"]
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 6, "test": 3}
    assert [s.label for s in dataset.splits["train"]] == [2, 2, 0, 0, 1, 1]
    assert {g.name: g.classes for g in dataset.groups} == {"Quercus": (1,), "Turdus": (0, 2)}
    assert dataset.tree["2"] == ("Turdus merula", "genus:Turdus")
    assert dataset.tree["genus:Turdus"] == ("Turdus", "class:Aves") and dataset.tree["supercategory:Birds"] == ("Birds", None)


def test_inaturalist_2018_files_and_supercategories(tmp_path):
    dataset = read_inat(make_inat(tmp_path / "inat", names=("train2018.json", "val2018.json"), taxonomy=False))
    assert {g.name: g.classes for g in dataset.groups} == {"Birds": (0, 2), "Plants": (1,)}
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 6, "test": 3}


@pytest.mark.parametrize("kind, make", [("cars", make_cars), ("cars", make_cars_csv), ("aircraft", make_aircraft), ("dogs", make_dogs),
                                        ("dogs", make_dogs_text_lists), ("inat", make_inat)])
def test_herbs_shard_writes_each_dataset(kind, make, tmp_path, capsys):
    src = make(tmp_path / kind)
    assert herbs_main(["shard", kind, str(src), str(tmp_path / "shards"), "--shard-size", "4"]) == 0
    manifest = load_manifest(tmp_path / "shards", verify=True)
    assert manifest.dataset == kind and set(manifest.splits) == {"train", "test"}
    assert bool(manifest.hierarchy) == (kind != "dogs")  # Stanford Dogs has no class groups of its own


def test_inaturalist_without_its_files_is_one_sentence(tmp_path):
    (tmp_path / "inat").mkdir()
    with pytest.raises(DataError, match="has none of train.json"):
        read_inat(tmp_path / "inat")
    root = make_inat(tmp_path / "damaged")
    written = json.loads((root / "train.json").read_text())
    for where, damage in (("annotations", lambda d: d["annotations"][1].pop("category_id")),
                          ("categories", lambda d: d["categories"][0].update(id=str(d["categories"][0]["id"])))):
        damaged = json.loads(json.dumps(written))
        damage(damaged)
        (root / "train.json").write_text(json.dumps(damaged))
        with pytest.raises(DataError, match=f"is not a COCO-style iNaturalist file .*{where}"):
            read_inat(root)

"""Stanford Cars, from either of the two layouts it is shared in (told apart by their files):

- the devkit: cars_train/, cars_test/ and devkit/cars_meta.mat, devkit/cars_train_annos.mat,
  cars_test_annos_withlabels.mat (at the root or in devkit/);
- its CSV re-packaging (Kaggle's "by classes folder"): names.csv (one class name a line),
  anno_train.csv and anno_test.csv (`file name,x1,y1,x2,y2,class`, no header) and the images in
  car_data/car_data/{train,test}/<class name>/, or one of those folders less deep.

Class indices follow the class list's order (the 1-based `class` minus one); the make (the first
word of a class name, e.g. "BMW") is the class group. Boxes become (x, y, width, height).
"""

from __future__ import annotations

import csv
from pathlib import Path

from herbs.errors import DataError
from herbs.data.matfile import field, read_mat
from herbs.data.source import Sample, SourceDataset, image_paths, require_file, suffix_groups

TEST_ANNOS = "cars_test_annos_withlabels.mat"
CSV_COLUMNS = ("file name", "x1", "y1", "x2", "y2", "class")
# Where the CSV layout's images of a split may sit: the archive nests car_data twice, and
# unpacked copies often drop a level.
CSV_IMAGE_DIRS = ("car_data/car_data/{split}", "car_data/{split}", "{split}", "cars_{split}")

# One annotation: the image's path under the dataset root, its 1-based class, its box corners.
Row = tuple[str, int, float, float, float, float]


def read_cars(root: str | Path) -> SourceDataset:
    root = Path(root)
    if (root / "devkit" / "cars_meta.mat").is_file():
        names, classes_file, annotations = read_devkit(root)
    elif (root / "anno_train.csv").is_file():
        names, classes_file, annotations = read_csv_layout(root)
    else:
        raise DataError(f"'{root}' holds neither Stanford Cars' devkit (devkit/cars_meta.mat) nor its CSV layout (anno_train.csv, "
                        "anno_test.csv, names.csv); point the command at the folder that holds one of them")
    splits = {split: to_samples(root, rows, names, annos, classes_file) for split, (annos, rows) in annotations.items()}
    groups = suffix_groups([name.split(" ", 1)[0] for name in names], separators="\0")  # the whole make is the group key
    return SourceDataset(kind="cars", root=root, class_names=names, original_ids=[str(i) for i in range(1, len(names) + 1)],
                         splits=splits, groups=groups)


def read_devkit(root: Path) -> tuple[list[str], Path, dict[str, tuple[Path, list[Row]]]]:
    devkit = root / "devkit"
    meta = devkit / "cars_meta.mat"
    names = [str(name) for name in read_mat(meta, "class_names")["class_names"]]
    test_annos = root / TEST_ANNOS if (root / TEST_ANNOS).is_file() else devkit / TEST_ANNOS
    annotations = {}
    for split, annos, folder in (("train", devkit / "cars_train_annos.mat", "cars_train"), ("test", test_annos, "cars_test")):
        records = read_mat(annos, "annotations")["annotations"]
        columns = [field(records, name, annos) for name in ("fname", "class", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")]
        annotations[split] = (annos, [(f"{folder}/{file}", int(label), *map(float, box)) for file, label, *box in zip(*columns)])
    return names, meta, annotations


def read_csv_layout(root: Path) -> tuple[list[str], Path, dict[str, tuple[Path, list[Row]]]]:
    names_file = root / "names.csv"
    names = [name for _, (name,) in read_csv(names_file, ("class name",))]
    annotations = {}
    for split in ("train", "test"):
        annos = root / f"anno_{split}.csv"
        images = image_dir(root, split)
        # Files are named by their number within the split, so the name finds the image whatever
        # its class folder is called (a name with '/' cannot be a folder name as it stands).
        found = {path.name: path.relative_to(root).as_posix() for path in images.rglob("*") if path.is_file()}
        rows = []
        for number, (file, *values) in read_csv(annos, CSV_COLUMNS):
            try:
                box, label = [float(v) for v in values[:4]], int(values[4])
            except ValueError:
                raise DataError(f"line {number} of '{annos}' has a box or class that is not a number ({','.join(values)}); "
                                "restore the file from the dataset's archive") from None
            # A file the images folder lacks keeps a path there, so the one missing-image sentence names it.
            rows.append((found.get(file, (images / file).relative_to(root).as_posix()), label, *box))
        annotations[split] = (annos, rows)
    return names, names_file, annotations


def image_dir(root: Path, split: str) -> Path:
    for pattern in CSV_IMAGE_DIRS:
        if (root / pattern.format(split=split)).is_dir():
            return root / pattern.format(split=split)
    raise DataError(f"'{root}' has no folder of {split} images ({', '.join(p.format(split=split) for p in CSV_IMAGE_DIRS)}); "
                    "unpack the images next to the CSV files")


def read_csv(path: Path, columns: tuple[str, ...]) -> list[tuple[int, list[str]]]:
    """The non-blank rows of a headerless CSV file with their line numbers, each row exactly `columns` wide."""
    rows = []
    with require_file(path, "dataset file").open(newline="") as stream:
        reader = csv.reader(stream)
        for row in reader:
            if not any(value.strip() for value in row):
                continue
            if len(row) != len(columns):
                raise DataError(f"line {reader.line_num} of '{path}' has {len(row)} fields where {len(columns)} ({', '.join(columns)}) "
                                "belong; restore the file from the dataset's archive")
            rows.append((reader.line_num, [value.strip() for value in row]))
    return rows


def to_samples(root: Path, rows: list[Row], names: list[str], annos: Path, classes_file: Path) -> list[Sample]:
    bad = [label for _, label, *_ in rows if not 1 <= label <= len(names)]
    if bad:
        raise DataError(f"'{annos}' labels an image with class {bad[0]}, outside the {len(names)} classes of '{classes_file}'; restore the dataset files")
    paths = image_paths(root, [rel for rel, *_ in rows])
    return [Sample(source=rel, label=label - 1, path=path, bbox=(x1, y1, x2 - x1, y2 - y1))
            for (rel, label, x1, y1, x2, y2), path in zip(rows, paths)]

"""Stanford Cars from its devkit layout: cars_train/, cars_test/ and devkit/cars_meta.mat,
devkit/cars_train_annos.mat, cars_test_annos_withlabels.mat (at the root or in devkit/).

Class indices follow cars_meta.mat's order (the devkit's 1-based `class` minus one); the make
(the first word of a class name, e.g. "BMW") is the class group. Boxes become (x, y, width, height).
"""

from __future__ import annotations

from pathlib import Path

from herbs.errors import DataError
from herbs.data.matfile import field, read_mat
from herbs.data.source import Sample, SourceDataset, image_paths, suffix_groups

TEST_ANNOS = "cars_test_annos_withlabels.mat"


def read_cars(root: str | Path) -> SourceDataset:
    root = Path(root)
    devkit = root / "devkit"
    meta = devkit / "cars_meta.mat"
    names = [str(name) for name in read_mat(meta, "class_names")["class_names"]]
    test_annos = root / TEST_ANNOS if (root / TEST_ANNOS).is_file() else devkit / TEST_ANNOS
    splits = {}
    for split, annos, folder in (("train", devkit / "cars_train_annos.mat", "cars_train"), ("test", test_annos, "cars_test")):
        records = read_mat(annos, "annotations")["annotations"]
        files, labels = field(records, "fname", annos), field(records, "class", annos)
        corners = zip(*(field(records, f"bbox_{c}", annos) for c in ("x1", "y1", "x2", "y2")))
        bad = [label for label in labels if not 1 <= int(label) <= len(names)]
        if bad:
            raise DataError(f"'{annos}' labels an image with class {bad[0]}, outside the {len(names)} classes of '{meta}'; restore the devkit")
        paths = image_paths(root / folder, [str(f) for f in files])
        splits[split] = [
            Sample(source=f"{folder}/{file}", label=int(label) - 1, path=path, bbox=(float(x1), float(y1), float(x2 - x1), float(y2 - y1)))
            for file, label, path, (x1, y1, x2, y2) in zip(files, labels, paths, corners)
        ]
    groups = suffix_groups([name.split(" ", 1)[0] for name in names], sep="\0")  # the whole make is the group key
    return SourceDataset(kind="cars", root=root, class_names=names, original_ids=[str(i) for i in range(1, len(names) + 1)],
                         splits=splits, groups=groups)

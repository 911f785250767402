"""CUB-200-2011 from its own layout: images/, images.txt, image_class_labels.txt, classes.txt,
train_test_split.txt and (optional) bounding_boxes.txt, all keyed by image id."""

from __future__ import annotations

from pathlib import Path

from herbs.errors import DataError
from herbs.data.source import SourceDataset, id_order, read_image_tables, read_table, split_samples, suffix_groups


def read_cub(root: str | Path) -> SourceDataset:
    root = Path(root)
    classes = sorted(read_table(root / "classes.txt", 2), key=lambda row: id_order(row[0]))
    index_of = {class_id: index for index, (class_id, _) in enumerate(classes)}
    rows = read_image_tables(root)
    unknown = [row for row in rows if row.class_id not in index_of]
    if unknown:
        raise DataError(
            f"image {unknown[0].image_id} has class {unknown[0].class_id}, which '{root / 'classes.txt'}' does not list; "
            "restore the dataset files"
        )
    names = [name.split(".", 1)[-1] for _, name in classes]  # "001.Black_footed_Albatross" -> "Black_footed_Albatross"
    return SourceDataset(
        kind="cub",
        root=root,
        class_names=names,
        original_ids=[class_id for class_id, _ in classes],
        splits=split_samples(rows, index_of),
        groups=suffix_groups(names),
    )

"""NABirds from its own layout: images/<class dir>/<file>.jpg, images.txt, image_class_labels.txt,
classes.txt, hierarchy.txt, train_test_split.txt and (optional) bounding_boxes.txt.

classes.txt names every node of the bird tree (species, families, ...), but only the ids that
label images are classes: they are sorted by id and become 0..N-1 (555 for the full dataset).
The tree is kept, and each class's parent becomes its group.
"""

from __future__ import annotations

from pathlib import Path

from herbs.errors import DataError
from herbs.data.source import ClassGroup, SourceDataset, id_order, read_image_tables, read_table, split_samples


def read_nabirds(root: str | Path) -> SourceDataset:
    root = Path(root)
    node_names = dict(read_table(root / "classes.txt", 2, rest=True))
    parents = dict(read_table(root / "hierarchy.txt", 2))
    rows = read_image_tables(root)
    used = sorted({row.class_id for row in rows}, key=id_order)
    unknown = [class_id for class_id in used if class_id not in node_names]
    if unknown:
        raise DataError(f"class id {unknown[0]} labels images but '{root / 'classes.txt'}' does not name it; restore the dataset files")
    index_of = {class_id: index for index, class_id in enumerate(used)}

    members: dict[str, list[int]] = {}
    for class_id in used:
        members.setdefault(parents.get(class_id, class_id), []).append(index_of[class_id])
    groups = [ClassGroup(node_names.get(parent, parent), tuple(m)) for parent, m in sorted(members.items(), key=lambda kv: id_order(kv[0]))]
    return SourceDataset(
        kind="nabirds",
        root=root,
        class_names=[node_names[class_id] for class_id in used],
        original_ids=used,
        splits=split_samples(rows, index_of),
        groups=groups,
        tree={node: (name, parents.get(node)) for node, name in sorted(node_names.items(), key=lambda kv: id_order(kv[0]))},
    )

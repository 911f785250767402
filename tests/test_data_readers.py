"""Dataset readers on tiny layouts in the datasets' own file formats, and the val hold-out."""

from __future__ import annotations

import pytest

from helpers.data import CUB_CLASSES, NABIRDS_LEAVES, jpeg, make_cub, make_nabirds
from herbs.errors import DataError
from herbs.data.cub import read_cub
from herbs.data.folder import read_folder
from herbs.data.nabirds import read_nabirds
from herbs.data.val_split import hold_out_val


def one_sentence(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message and message.count("; ") <= 2, message
    return message


def test_cub_counts_classes_groups_and_boxes(tmp_path):
    dataset = read_cub(make_cub(tmp_path / "cub", per_class=6, train_per_class=4))
    assert dataset.class_names == CUB_CLASSES
    assert dataset.original_ids == ["1", "2", "3", "4", "5"]
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 20, "test": 10}
    assert [s.label for s in dataset.splits["train"][:5]] == [0, 0, 0, 0, 1]
    groups = {g.name: g.classes for g in dataset.groups}
    assert groups == {"Albatross": (0, 1), "Warbler": (2, 3), "Cardinal": (4,)}
    first = dataset.splits["train"][0]
    assert first.source == "images/001.Black_footed_Albatross/Black_footed_Albatross_0000_1.jpg"
    assert first.bbox == (1.0, 2.0, 30.0, 20.0)
    assert first.read() == (tmp_path / "cub" / first.source).read_bytes()


@pytest.mark.parametrize("name", ["images.txt", "image_class_labels.txt", "classes.txt", "train_test_split.txt"])
def test_cub_missing_file_is_one_sentence_naming_it(tmp_path, name):
    root = make_cub(tmp_path / "cub", per_class=2, train_per_class=1)
    (root / name).unlink()
    with pytest.raises(DataError) as err:
        read_cub(root)
    assert name in one_sentence(err)


def test_cub_missing_image_and_bad_lines_are_named(tmp_path):
    root = make_cub(tmp_path / "cub", per_class=2, train_per_class=1)
    victim = next((root / "images").rglob("*.jpg"))
    victim.unlink()
    with pytest.raises(DataError) as err:
        read_cub(root)
    assert victim.name in one_sentence(err)
    victim.write_bytes(jpeg())
    (root / "train_test_split.txt").write_text("1 1\n2\n")
    with pytest.raises(DataError, match="line 2 of .*train_test_split.txt"):
        read_cub(root)


def test_cub_text_files_in_another_encoding_or_with_a_repeated_line_are_one_sentence(tmp_path):
    root = make_cub(tmp_path / "cub", per_class=2, train_per_class=1)
    images = (root / "images.txt").read_bytes()
    (root / "images.txt").write_bytes(b"\xef\xbb\xbf" + images)  # a byte-order mark, as some editors save UTF-8
    assert len(read_cub(root).splits["train"]) == len(CUB_CLASSES)
    (root / "images.txt").write_bytes(images + images.splitlines(keepends=True)[0])
    with pytest.raises(DataError) as err:
        read_cub(root)
    assert "image id 1 appears twice in" in one_sentence(err) and "images.txt" in str(err.value)
    (root / "images.txt").write_bytes(images)
    (root / "classes.txt").write_bytes((root / "classes.txt").read_bytes() + b"4 Caf\xe9_Albatross\n")
    with pytest.raises(DataError) as err:
        read_cub(root)
    assert "classes.txt' is not UTF-8 text" in one_sentence(err)


def test_cub_labels_must_be_listed_classes(tmp_path):
    root = make_cub(tmp_path / "cub", per_class=2, train_per_class=1)
    lines = (root / "image_class_labels.txt").read_text().splitlines()
    lines[0] = "1 77"
    (root / "image_class_labels.txt").write_text("\n".join(lines))
    with pytest.raises(DataError, match="class 77"):
        read_cub(root)


def test_nabirds_remaps_used_ids_and_keeps_the_hierarchy(tmp_path):
    dataset = read_nabirds(make_nabirds(tmp_path / "nabirds", per_class=5, train_per_class=3))
    assert dataset.original_ids == NABIRDS_LEAVES  # sorted numerically: 295 < 296 < 313 < 1000
    assert dataset.class_names == ["Mallard (Male)", "Mallard (Female/Juvenile)", "Wood Duck (Breeding male)", "Northern Cardinal (Adult Male)"]
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 12, "test": 8}
    assert sorted({s.label for s in dataset.splits["test"]}) == [0, 1, 2, 3]
    groups = {g.name: g.classes for g in dataset.groups}
    assert groups == {"Ducks, Geese, and Swans": (2,), "Perching Birds": (3,), "Mallard": (0, 1)}
    assert dataset.tree["295"] == ("Mallard (Male)", "100")
    assert dataset.tree["100"] == ("Mallard", "1")
    assert dataset.tree["0"] == ("Birds", None)


def test_nabirds_missing_hierarchy_is_named(tmp_path):
    root = make_nabirds(tmp_path / "nabirds", per_class=1, train_per_class=1)
    (root / "hierarchy.txt").unlink()
    with pytest.raises(DataError) as err:
        read_nabirds(root)
    assert "hierarchy.txt" in one_sentence(err)


def make_folder(root, layout):
    for rel in layout:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(jpeg(seed=len(rel)))
    return root


def test_flat_folder_is_all_train_with_sorted_classes(tmp_path):
    root = make_folder(tmp_path / "f", ["b/1.jpg", "b/2.JPG", "a/1.png", "a/notes.txt", "c/x/3.jpeg"])
    dataset = read_folder(root)
    assert dataset.class_names == ["a", "b", "c"]
    assert sorted((s.source, s.label) for s in dataset.splits["train"]) == [("a/1.png", 0), ("b/1.jpg", 1), ("b/2.JPG", 1), ("c/x/3.jpeg", 2)]
    assert list(dataset.splits) == ["train"]


def test_images_in_linked_sub_folders_are_read_once(tmp_path):
    """A link to a folder of images is followed, as a class folder that is a link is; a loop of links ends."""
    root = make_folder(tmp_path / "f", ["a/1.jpg", "b/1.jpg"])
    make_folder(tmp_path / "elsewhere", ["more/2.jpg"])
    (root / "b" / "more").symlink_to(tmp_path / "elsewhere" / "more")
    (root / "b" / "again").symlink_to(tmp_path / "elsewhere" / "more")  # the same folder twice: its images once
    (root / "a" / "loop").symlink_to(root / "a")
    dataset = read_folder(root)
    assert sorted((s.source, s.label) for s in dataset.splits["train"]) == [("a/1.jpg", 0), ("b/1.jpg", 1), ("b/again/2.jpg", 1)]


def test_folder_with_train_and_test(tmp_path):
    root = make_folder(tmp_path / "f", ["train/a/1.jpg", "train/b/1.jpg", "test/b/2.jpg"])
    dataset = read_folder(root)
    assert {k: [(s.source, s.label) for s in v] for k, v in dataset.splits.items()} == {
        "train": [("train/a/1.jpg", 0), ("train/b/1.jpg", 1)],
        "test": [("test/b/2.jpg", 1)],
    }
    make_folder(root, ["test/zebra/1.jpg"])
    with pytest.raises(DataError, match="zebra"):
        read_folder(root)


def test_split_folders_are_found_whatever_their_case(tmp_path):
    root = make_folder(tmp_path / "f", ["Train/a/1.jpg", "Train/b/1.jpg", "Test/b/2.jpg"])
    dataset = read_folder(root)
    assert dataset.class_names == ["a", "b"] and {k: len(v) for k, v in dataset.splits.items()} == {"train": 2, "test": 1}


@pytest.mark.parametrize("layout", [["training/a/1.jpg", "testing/a/2.jpg"], ["train/a/1.jpg", "TRAIN/a/2.jpg"],
                                    ["bus/1.jpg", "car/1.jpg", "train/1.jpg"]])
def test_split_folders_herbs_cannot_tell_apart_from_classes_are_refused(tmp_path, layout):
    """Read as classes, each would label every image by its split."""
    root = make_folder(tmp_path / "f", layout)
    with pytest.raises(DataError) as err:
        read_folder(root)
    assert any(words in one_sentence(err) for words in ("looks like a split", "more than one", "beside folders that are no split"))


def test_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_folder(tmp_path / "nowhere")
    (tmp_path / "f" / "empty").mkdir(parents=True)
    make_folder(tmp_path / "f", ["full/1.jpg"])
    with pytest.raises(DataError, match="empty"):
        read_folder(tmp_path / "f")
    make_folder(tmp_path / "nest", ["images/a/1.jpg", "images/b/1.jpg"])  # one level too high: one class of every image
    with pytest.raises(DataError) as err:
        read_folder(tmp_path / "nest")
    assert "holds one class folder ('images')" in one_sentence(err) and str(tmp_path / "nest" / "images") in str(err.value)
    with pytest.raises(DataError, match="is not a directory"):
        read_folder(tmp_path / "nest" / "images" / "a" / "1.jpg")


def test_val_hold_out_is_stratified_deterministic_and_disjoint(tmp_path):
    dataset = read_cub(make_cub(tmp_path / "cub", per_class=12, train_per_class=10))
    held = hold_out_val(dataset, 0.2, seed=3)
    train, val = held.splits["train"], held.splits["val"]
    assert len(train) + len(val) == 50 and held.splits["test"] == dataset.splits["test"]
    assert sorted(s.label for s in val) == [c for c in range(5) for _ in range(2)]  # 20 % of 10 per class
    assert not {s.source for s in train} & {s.source for s in val}
    assert hold_out_val(dataset, 0.2, seed=3).splits["val"] == val
    assert hold_out_val(dataset, 0.2, seed=4).splits["val"] != val
    with pytest.raises(DataError, match="already has a val split"):
        hold_out_val(held, 0.1, seed=0)
    with pytest.raises(DataError, match="between 0 and 1"):
        hold_out_val(dataset, 1.5, seed=0)

import numpy as np
import pytest
from PIL import Image

from contextrast.evaluation.report import predict_files, save_grid


def test_grid_titles_each_column_and_draws_a_swatch_per_class(tmp_path):
    panel = np.full((10, 12, 3), 200, dtype=np.uint8)
    palette = [(255, 0, 0), (0, 128, 255), (10, 200, 30)]
    path = save_grid(
        [[panel, panel, panel]],
        tmp_path / "g.png",
        scale=3,
        titles=["image", "truth", "CE"],
        legend=list(zip(["a", "bb", "ccc"], palette)),
    )
    picture = np.asarray(Image.open(path).convert("RGB"))
    width = (3 * 14 - 2) * 3
    assert picture.shape[1] == width
    band, panels = picture[:20], picture[20 : 20 + 30]
    # the panels sit under the title band, unchanged
    assert (panels[:, :36] == 200).all()
    # each column's title writes dark pixels above that column, and only there
    column = 14 * 3
    for c in range(3):
        assert (band[:, c * column : (c + 1) * column] < 100).any(), c
    # every class colour appears in the legend below the panels, nowhere above it
    legend = picture[50:]
    for colour in palette:
        assert (legend == colour).all(-1).any(), colour
        assert not (picture[:50] == colour).all(-1).any(), colour


def test_grid_without_titles_or_legend_is_just_the_panels(tmp_path):
    panel = np.zeros((4, 5, 3), dtype=np.uint8)
    path = save_grid([[panel, panel], [panel, panel]], tmp_path / "g.png", scale=2)
    assert Image.open(path).size == ((2 * 7 - 2) * 2, (2 * 6 - 2) * 2)


def test_accented_titles_are_drawn_in_the_fonts_ascii(tmp_path):
    panel = np.zeros((8, 40, 3), dtype=np.uint8)
    a = save_grid([[panel]], tmp_path / "a.png", titles=["CE + Lovász"])
    b = save_grid([[panel]], tmp_path / "b.png", titles=["CE + Lovasz"])
    assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_predict_never_writes_two_inputs_to_one_output(tmp_path):

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "b.jpg"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(images / name)
    args = ([(0, 0, 0)], (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ValueError, match=r"inputs .*b.jpg and .*b.png would both be written as "
                       r"b_mask.png; rename one"):  # fmt: skip
        predict_files(None, args[0], [str(images)], tmp_path / "out", *args[1:])
    assert not (tmp_path / "out").exists()  # refused before anything was written
    from contextrast.evaluation.report import _inputs  # one file, two spellings: once

    twice = [str(images / "a.png"), str(images / ".." / "images" / "a.png")]
    assert _inputs(twice) == [images / "a.png"]
    taken = tmp_path / "taken"
    taken.write_text("")
    with pytest.raises(ValueError, match=r"--out .*taken is a file; expected a folder"):
        predict_files(None, args[0], [str(images / "a.png")], taken, *args[1:])

"""Slide annotations in: ASAP XML, QuPath GeoJSON, label masks, and every bad file giving one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely.geometry import MultiPolygon, Polygon, box

from pcamlab.errors import DataError
from pcamlab.slide.annotations import (
    ANNOTATION_FORMATS,
    EXCLUDE,
    NORMAL,
    TUMOUR,
    find_annotation_file,
    rasterize,
    read_annotations,
)
from pcamlab.slide.reference import read_reference


def write_asap(path: Path, regions: list[tuple[str, list[tuple[float, float]]]], *, kind: str = "Polygon",
               doctype: str = "") -> Path:
    """An ASAP XML file as ASAP writes it (regions: (group, vertices))."""
    annotations = []
    for number, (group, points) in enumerate(regions):
        coordinates = "".join(f'<Coordinate Order="{order}" X="{x}" Y="{y}" />'
                              for order, (x, y) in enumerate(points))
        annotations.append(f'<Annotation Name="Annotation {number}" Type="{kind}" PartOfGroup="{group}" '
                           f'Color="#F4FA58"><Coordinates>{coordinates}</Coordinates></Annotation>')
    groups = "".join(f'<Group Name="{group}" PartOfGroup="None" Color="#64FE2E"><Attributes /></Group>'
                     for group in dict.fromkeys(group for group, _ in regions))
    path.write_text(f'<?xml version="1.0"?>{doctype}<ASAP_Annotations><Annotations>{"".join(annotations)}'
                    f'</Annotations><AnnotationGroups>{groups}</AnnotationGroups></ASAP_Annotations>')
    return path


def write_geojson(path: Path, features: list[tuple[str | None, dict]], *, bare: bool = False) -> Path:
    """A QuPath GeoJSON export (features: (classification name or None, geometry mapping))."""
    items = []
    for name, geometry in features:
        properties = {"objectType": "annotation"}
        if name is not None:
            properties["classification"] = {"name": name, "color": [200, 0, 0]}
        items.append({"type": "Feature", "id": f"id-{len(items)}", "geometry": geometry, "properties": properties})
    path.write_text(json.dumps(items if bare else {"type": "FeatureCollection", "features": items}))
    return path


SQUARE = [(100.0, 100.0), (500.25, 100.0), (500.25, 500.5), (100.0, 500.5)]
INNER = [(200, 200), (300, 200), (300, 300), (200, 300)]
BOW_TIE = [(600, 600), (700, 700), (700, 600), (600, 700)]


def test_registry_lists_the_three_formats():
    assert ANNOTATION_FORMATS.names() == ["asap", "geojson", "mask"]


@pytest.mark.parametrize("tumour_group", ["Tumor", "_0", "_1", "metastases"])
def test_asap_camelyon_groups_and_exclusions(tmp_path, tumour_group):
    path = write_asap(tmp_path / "tumor_001.xml", [(tumour_group, SQUARE), ("_2", INNER)])
    notes = read_annotations(path, slide_dimensions=(1000, 1000))
    assert notes.format == "asap" and notes.notes == ()
    assert notes.exclude.area == pytest.approx(100 * 100)
    assert notes.tumour.area == pytest.approx(400.25 * 400.5 - 100 * 100)  # fractional coordinates kept
    assert not notes.tumour.contains(shapely.Point(250, 250))  # the `_2` region is cut out
    assert notes.tumour.contains(shapely.Point(150, 150))
    assert isinstance(notes.tumour, MultiPolygon) and notes.normal.is_empty
    summary = notes.summary(mpp=0.25)
    assert summary[TUMOUR]["regions"] == 1
    assert summary[EXCLUDE]["area_mm2"] == pytest.approx(100 * 100 * 0.25**2 / 1e6)


def test_asap_other_group_names_by_class_map(tmp_path):
    path = write_asap(tmp_path / "s.xml", [("Carcinoma", SQUARE), ("Benign", INNER)])
    with pytest.raises(DataError, match=r"class\(es\) \['Benign', 'Carcinoma'\].*class_map"):
        read_annotations(path)
    notes = read_annotations(path, class_map={"carcinoma": TUMOUR, "Benign": NORMAL})
    assert notes.normal.area == pytest.approx(100 * 100)
    assert notes.tumour.area == pytest.approx(400.25 * 400.5)  # normal is not subtracted from tumour
    with pytest.raises(DataError, match="class_map"):
        read_annotations(path, class_map={"carcinoma": "cancer"})


def test_asap_comma_decimals_and_points_without_area(tmp_path):
    text = write_asap(tmp_path / "a.xml", [("Tumor", SQUARE)]).read_text().replace('X="500.25"', 'X="500,25"')
    (tmp_path / "a.xml").write_text(text)
    assert read_annotations(tmp_path / "a.xml").tumour.area == pytest.approx(400.25 * 400.5)
    path = write_asap(tmp_path / "dots.xml", [("Tumor", SQUARE[:1])], kind="Dot")
    with pytest.raises(DataError, match="holds no regions"):
        read_annotations(path)


def test_self_intersecting_polygon_repaired_with_a_note_or_refused(tmp_path):
    path = write_asap(tmp_path / "s.xml", [("Tumor", BOW_TIE)])
    notes = read_annotations(path)
    assert notes.tumour.is_valid and notes.tumour.area == pytest.approx(2 * 50 * 100 / 2)
    assert len(notes.notes) == 1 and "Self-intersection" in notes.notes[0] and "repaired" in notes.notes[0]
    with pytest.raises(DataError, match="not a valid polygon.*repair"):
        read_annotations(path, repair=False)


def test_doctype_and_entities_are_refused(tmp_path):
    bomb = '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
    path = write_asap(tmp_path / "bomb.xml", [("Tumor", SQUARE)], doctype=bomb)
    with pytest.raises(DataError, match="DOCTYPE"):
        read_annotations(path)


def test_geojson_feature_collection_bare_array_multipolygon_with_holes(tmp_path):
    outer = [[0, 0], [1000, 0], [1000, 1000], [0, 1000], [0, 0]]
    hole = [[400, 400], [600, 400], [600, 600], [400, 600], [400, 400]]
    second = [[2000, 2000], [2100, 2000], [2100, 2100], [2000, 2000]]
    features = [
        ("Tumor", {"type": "MultiPolygon", "coordinates": [[outer, hole], [second]]}),
        ("Stroma", {"type": "Polygon", "coordinates": [[[3000, 0], [3100, 0], [3100, 100], [3000, 0]]]}),
        ("Ignore*", {"type": "Polygon", "coordinates": [[[900, 900], [1100, 900], [1100, 1100], [900, 1100],
                                                         [900, 900]]]}),
        ("Tumor", {"type": "Point", "coordinates": [5, 5]}),
    ]
    for bare in (False, True):
        path = write_geojson(tmp_path / f"s{bare}.geojson", features, bare=bare)
        notes = read_annotations(path, slide_dimensions=(4000, 4000))
        assert notes.format == "geojson"
        assert notes.tumour.area == pytest.approx(1000**2 - 200**2 + 100 * 100 / 2 - 100 * 100)
        assert notes.exclude.area == pytest.approx(200 * 200)
        assert notes.normal.area == pytest.approx(100 * 100 / 2)
        assert any("'Point'" in note for note in notes.notes)
        assert ("Tumor", TUMOUR, 1) in notes.source_classes


def test_geojson_unclassified_needs_a_mapping(tmp_path):
    path = write_geojson(tmp_path / "s.geojson", [(None, {"type": "Polygon", "coordinates": [
        [[0, 0], [10, 0], [10, 10], [0, 0]]]})])
    with pytest.raises(DataError, match="unclassified"):
        read_annotations(path)
    assert read_annotations(path, class_map={"unclassified": TUMOUR}).tumour.area == pytest.approx(50)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_label_mask_at_a_stated_downsample(tmp_path, suffix):
    labels = np.zeros((40, 60), dtype=np.uint8)
    labels[5:20, 10:30] = 1
    labels[10:14, 15:20] = 0  # a hole
    labels[11:13, 17] = 1  # an island in the hole
    labels[30:35, 40:50] = 2
    path = tmp_path / f"slide_mask{suffix}"
    Image.fromarray(labels).save(path)
    with pytest.raises(DataError, match=r"class\(es\) \['2'\]"):
        read_annotations(path, mask_downsample=16)
    notes = read_annotations(path, mask_downsample=16, class_map={"2": EXCLUDE})
    assert notes.format == "mask"
    # marching squares cuts each convex corner by a quarter pixel: within a few pixels of the exact area
    assert notes.tumour.area / 16**2 == pytest.approx(15 * 20 - 4 * 5 + 2, abs=4)
    assert notes.exclude.area / 16**2 == pytest.approx(50, abs=1)
    assert not notes.tumour.contains(shapely.Point(16 * 16, 12 * 16))  # inside the hole
    assert notes.tumour.contains(shapely.Point(17.5 * 16, 12 * 16))  # on the island
    back = rasterize(notes.tumour, labels.shape, 16)
    assert np.array_equal(back, (labels == 1).astype(np.uint8))  # pixel centres round-trip exactly
    derived = read_annotations(path, slide_dimensions=(60 * 16, 40 * 16), class_map={"2": EXCLUDE})
    assert derived.tumour.area == pytest.approx(notes.tumour.area)


def test_mask_without_a_downsample_is_refused(tmp_path):
    Image.fromarray(np.ones((4, 4), np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(DataError, match="mask_downsample"):
        read_annotations(tmp_path / "m.png")


def test_rasterize_pixel_centres_holes_and_islands():
    ring = box(0, 0, 100, 100).difference(box(20, 20, 80, 80))
    island = box(40, 40, 60, 60)
    mask = rasterize(MultiPolygon([ring, island]), (10, 10), 10)
    assert mask.dtype == np.uint8 and mask.shape == (10, 10)
    expected = np.ones((10, 10), np.uint8)
    expected[2:8, 2:8] = 0
    expected[4:6, 4:6] = 1
    assert np.array_equal(mask, expected)
    assert rasterize(Polygon(), (3, 3), 1).sum() == 0


@pytest.mark.parametrize("case, pattern", [
    ("empty", "is empty"),
    ("blank", "is empty"),
    ("geojson_as_xml", r"named \.xml .* looks like QuPath GeoJSON"),
    ("xml_as_geojson", r"named \.geojson .* looks like ASAP/Camelyon XML"),
    ("png_as_xml", r"looks like label-mask image"),
    ("text_as_png", "first bytes are not of that format"),
    ("broken_xml", "not well-formed XML"),
    ("broken_json", "not valid JSON"),
    ("other_xml", "not ASAP annotations"),
    ("suffix", "suffix '.txt'"),
    ("two_points", "has 2 coordinates"),
    ("outside", "outside the slide.*another slide"),
    ("far_outside", r"outside the slide \(bounds x 100\.\.1e\+300, "),  # 3 digits, not 301
    ("no_features", "holds no regions"),
    ("missing", "does not exist"),
])
def test_bad_annotation_files_fail_with_one_line(tmp_path, case, pattern):
    path = tmp_path / "bad.xml"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "blank":
        path = tmp_path / "bad.geojson"
        path.write_text("  \n")
    elif case == "geojson_as_xml":
        write_geojson(path, [("Tumor", {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]})])
    elif case == "xml_as_geojson":
        path = write_asap(tmp_path / "bad.geojson", [("Tumor", SQUARE)])
    elif case == "png_as_xml":
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "m.png")
        path.write_bytes((tmp_path / "m.png").read_bytes())
    elif case == "text_as_png":
        path = tmp_path / "bad.png"
        path.write_text("hello")
    elif case == "broken_xml":
        path.write_text("<ASAP_Annotations><Annotations>")
    elif case == "broken_json":
        path = tmp_path / "bad.geojson"
        path.write_text('{"type": "FeatureCollection", "features": [')
    elif case == "other_xml":
        path.write_text("<svg><rect/></svg>")
    elif case == "suffix":
        path = tmp_path / "bad.txt"
        path.write_text("x")
    elif case == "two_points":
        write_asap(path, [("Tumor", SQUARE[:2])])
    elif case == "outside":
        write_asap(path, [("Tumor", [(x + 5000, y) for x, y in SQUARE])])
    elif case == "far_outside":
        write_asap(path, [("Tumor", [(100.0, 100.0), (1e300, 100.0), (1e300, 500.0), (100.0, 500.0)])])
    elif case == "no_features":
        path = tmp_path / "bad.geojson"
        path.write_text('{"type": "FeatureCollection", "features": []}')
    elif case == "missing":
        path = tmp_path / "nothing.xml"
    with pytest.raises(DataError, match=pattern) as caught:
        read_annotations(path, slide_dimensions=(1000, 1000))
    assert "\n" not in str(caught.value)


def test_small_overhang_is_clipped_with_a_note(tmp_path):
    path = write_asap(tmp_path / "s.xml", [("Tumor", [(900, 900), (1010, 900), (1010, 1010), (900, 1010)])])
    notes = read_annotations(path, slide_dimensions=(1000, 1000))
    assert notes.tumour.area == pytest.approx(100 * 100) and "clipped" in notes.notes[0]


def test_find_annotation_file(tmp_path):
    folder = tmp_path / "annotations"
    folder.mkdir()
    write_asap(folder / "tumor_001.xml", [("Tumor", SQUARE)])
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "tumor_002_mask.tif")
    assert find_annotation_file(folder, "tumor_001") == folder / "tumor_001.xml"
    assert find_annotation_file(folder, "tumor_002") == folder / "tumor_002_mask.tif"
    assert find_annotation_file(folder, "normal_001") is None
    assert find_annotation_file(folder / "tumor_001.xml", "anything") == folder / "tumor_001.xml"
    write_geojson(folder / "tumor_001.geojson", [])
    assert find_annotation_file(folder, "tumor_001") == folder / "tumor_001.xml"  # ASAP first, then GeoJSON
    write_geojson(folder / "tumor_001.json", [])
    (folder / "tumor_001.xml").unlink()
    with pytest.raises(DataError, match="2 geojson files for slide 'tumor_001'"):
        find_annotation_file(folder, "tumor_001")
    with pytest.raises(DataError, match="does not exist"):
        find_annotation_file(tmp_path / "nope", "tumor_001")


def test_read_reference(tmp_path):
    path = tmp_path / "reference.csv"
    path.write_text("test_001,Tumor,Macro\ntest_002.tif,normal\ntest_003,1\n")  # Camelyon16's: no header
    assert read_reference(path) == {"test_001": 1, "test_002": 0, "test_003": 1}
    path.write_text("slide,label\na,TUMOUR\nb,0\n")
    assert read_reference(path) == {"a": 1, "b": 0}
    for text, pattern in [("slide,label\n", "no rows"), ("a,maybe\n", "Tumor/Tumour/Normal"), ("a\n", "needs a slide and a label"),
                          ("a,tumor\na,normal\n", "needs one label")]:
        path.write_text(text)
        with pytest.raises(DataError, match=pattern):
            read_reference(path)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-8-sig"])
def test_text_annotations_in_utf16_or_with_a_bom_read_as_utf8(tmp_path, encoding):
    """A UTF-16 ASAP XML (ASAP on Windows) was 'not of that format'; GeoJSON in UTF-16 was 'not valid JSON'."""
    xml = write_asap(tmp_path / "a.xml", [("Tumor", SQUARE)])
    geojson = write_geojson(tmp_path / "a.geojson", [("Tumor", {"type": "Polygon", "coordinates": [[list(p) for p in SQUARE]]})])
    for path in (xml, geojson):
        text = path.read_text()
        if encoding == "utf-16-be":
            recoded = b"\xfe\xff" + text.encode("utf-16-be")
            if path.suffix == ".xml":
                recoded = b"\xfe\xff" + text.replace('version="1.0"', 'version="1.0" encoding="UTF-16"').encode("utf-16-be")
        else:
            recoded = text.replace('version="1.0"', 'version="1.0" encoding="UTF-16"').encode(encoding) \
                if path.suffix == ".xml" and encoding == "utf-16" else text.encode(encoding)
        other = tmp_path / f"{encoding}{path.suffix}"
        other.write_bytes(recoded)
        assert read_annotations(other).tumour.area == pytest.approx(read_annotations(path).tumour.area)

"""Slide-level evaluation (``pcamlab slide evaluate``): every metric against hand-computed cases.

FROC cases follow Camelyon16's ``Evaluation_FROC.py`` step by step (evaluation mask, ITCs, hits, the
pooled curve and ``np.interp``); the end-to-end test builds ``slide predict`` result folders by hand (maps
whose lesions, misses and false positives are known) so every number in ``metrics.json`` is worked out
below.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import shapely

from pcamlab.cli.main import main
from pcamlab.errors import ConfigError, DataError
from pcamlab.evaluate.thresholds import ThresholdSelector
from pcamlab.slide.evaluation.detections import DetectionOptions, detect
from pcamlab.slide.evaluation.froc import (
    EvaluationMask,
    compute_froc,
    evaluation_mask,
    mask_downsample,
    read_detections_csv,
    score_slide,
    write_detections_csv,
)
from pcamlab.slide.evaluation.pixel import overlap, tile_labels
from pcamlab.slide.evaluation.slide_level import cross_validate, map_features, summarise, wrong_slides

# ----------------------------------------------------------------------------------------------- FROC


def test_mask_downsample_is_the_power_of_two_nearest_camelyon16_level_5():
    assert mask_downsample(0.243) == 32  # the official level 5
    assert mask_downsample(0.2265) == 32  # Utrecht's scanner: still level 5
    assert mask_downsample(0.972) == 8  # PCam's resolution: the same 7.776 um pixel
    with pytest.raises(DataError, match="mpp"):
        mask_downsample(0)


def test_evaluation_mask_dilates_by_half_of_75_um_fills_holes_and_finds_itcs():
    # 7.776 um mask pixels (0.972 um/px, downsample 8): the official radius 75 / (7.776 * 2) = 4.82 pixels.
    tumour = np.zeros((120, 120), dtype=np.uint8)
    tumour[20:70, 20:70] = 1  # 50 px = 389 um: a lesion
    tumour[40:50, 40:50] = 0  # a hole inside it: filled
    tumour[100, 100] = 1  # one pixel: grown to a disc about 9.6 px = 75 um across, under 275 um: ITC
    mask = evaluation_mask(tumour, 8, 0.972)
    assert mask.regions == 2 and mask.lesions == 1
    assert mask.itc == frozenset({2}) and mask.labels[100, 100] == 2
    assert mask.labels[45, 45] == 1  # the hole is filled
    assert mask.labels[20 - 4, 30] == 1 and mask.labels[20 - 5, 30] == 0  # 4 px < 4.82 joins, 5 px does not
    assert mask.axes_um[0] > 389 and mask.axes_um[1] < 275
    # Two blobs 8 px apart: the dilation (4.82 px from each) merges them into one region, as the official code.
    merged = np.zeros((60, 60), dtype=np.uint8)
    merged[10:40, 10:20] = merged[10:40, 28:38] = 1
    assert evaluation_mask(merged, 8, 0.972).regions == 1
    assert evaluation_mask(np.zeros((5, 5)), 8, 0.972).regions == 0
    with pytest.raises(ConfigError, match="itc_axis"):
        evaluation_mask(tumour, 8, 0.972, itc_axis="diagonal")


def test_longest_axis_by_the_moments_ellipse_or_the_caliper():
    def axis(tumour, kind):
        return evaluation_mask(tumour, 1, 1.0, dilation_um=0, itc_axis=kind).axes_um[0]

    bar = np.zeros((200, 200), dtype=np.uint8)
    bar[50:52, 20:180] = 1  # 160 x 2 px
    square = np.zeros((200, 200), dtype=np.uint8)
    square[50:150, 50:150] = 1  # 100 x 100 px
    # The official major axis: 4 standard deviations of the pixels along it, 4 * L / sqrt(12) for a bar of length L.
    assert axis(bar, "major_axis") == pytest.approx(4 * np.sqrt((160**2 - 1) / 12 + 1 / 12), rel=1e-3)
    assert axis(square, "major_axis") == pytest.approx(4 * 100 / np.sqrt(12), rel=1e-3)
    # Feret: the caliper length of the outline, the bar's length and the square's diagonal.
    assert axis(bar, "feret") == pytest.approx(160, abs=0.5)
    assert axis(square, "feret") == pytest.approx(100 * np.sqrt(2), abs=1.5)


def hand_mask() -> EvaluationMask:
    """Regions 1 (a lesion), 2 (an ITC), 3 (a lesion no detection reaches), on a 100 x 100 slide at 1 px/pixel."""
    labels = np.zeros((100, 100), dtype=np.int32)
    labels[10:30, 10:30] = 1
    labels[50:53, 50:53] = 2
    labels[70:90, 70:90] = 3
    return EvaluationMask(labels, 1.0, 1.0, frozenset({2}), (400.0, 100.0, 400.0))


def test_hits_misses_itcs_and_false_positives_scored_as_the_official_code():
    detections = np.array([
        [0.9, 20, 20],  # on lesion 1: a hit
        [0.6, 12, 28],  # on lesion 1 again: the region counts once, at 0.9
        [0.8, 51, 51],  # on the ITC: ignored, neither hit nor false positive
        [0.7, 60, 5],  # background (x=60, y=5): a false positive
    ])
    tumour = score_slide("tumour", detections, hand_mask())
    assert list(tumour.outcome) == ["hit", "hit", "itc", "false_positive"]
    assert tumour.region_probabilities.tolist() == [0.9, 0.0, 0.0]  # missed and ITC regions are 0
    assert tumour.false_positives.tolist() == [0.7]
    assert tumour.lesions == 2 and tumour.lesions_hit == 1
    # x is the column, y the row: (x=5, y=60) is background, (x=60, y=5) too, (x=15, y=15) is lesion 1.
    assert score_slide("t", np.array([[0.5, 15, 15]]), hand_mask()).outcome.tolist() == ["hit"]
    normal = score_slide("normal", np.array([[0.95, 20, 20]]), None)  # a normal slide: every detection is false
    assert normal.false_positives.tolist() == [0.95] and normal.lesions == 0
    empty = score_slide("clean", np.zeros((0, 3)), None)
    # FROC over 3 slides, worked out as computeFROC does:
    #   FPs [0.7, 0.95], TPs [0.9, 0, 0], lesions 2; thresholds = distinct probabilities but the lowest (0):
    #   0.7 -> 2 FP (2/3 per slide), 1 TP (0.5); 0.9 -> 1 FP (1/3), 1 TP (0.5); 0.95 -> 1/3, 0; then (0, 0).
    #   np.interp on (0, 0), (1/3, 0), (1/3, 0.5), (2/3, 0.5): 0.25 -> 0, 0.5 -> 0.5, 1..8 -> 0.5 (past the end).
    result = compute_froc([tumour, normal, empty])
    assert result.false_positives_per_slide.tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 3, 0])
    assert result.sensitivity.tolist() == [0.5, 0.5, 0.0, 0.0]
    assert result.sensitivities == pytest.approx({0.25: 0.0, 0.5: 0.5, 1.0: 0.5, 2.0: 0.5, 4.0: 0.5, 8.0: 0.5})
    assert result.score == pytest.approx(2.5 / 6)
    assert result.lesions == 2 and result.slides == 3


def test_froc_drops_the_lowest_score_and_reads_ties_as_np_interp_does():
    # 4 slides, one lesion hit at 0.8, false positives at 0.9 and 0.5. As computeFROC, the thresholds are the
    # distinct scores but the lowest: 0.5 is never a threshold (a quirk kept for equal numbers), so
    # 0.8 -> 1 FP (1/4 per slide), 1 TP; 0.9 -> 1/4, 0; then (0, 0).
    labels = np.zeros((10, 10), dtype=np.int32)
    labels[2:5, 2:5] = 1
    mask = EvaluationMask(labels, 1.0, 1.0, frozenset(), (300.0,))
    slides = [score_slide("a", np.array([[0.8, 3, 3], [0.9, 8, 8], [0.5, 8, 1]]), mask),
              *(score_slide(name, np.zeros((0, 3)), None) for name in "bcd")]
    result = compute_froc(slides)
    assert result.thresholds.tolist() == [0.8, 0.9]
    assert result.false_positives_per_slide.tolist() == [0.25, 0.25, 0.0]
    assert result.sensitivity.tolist() == [1.0, 0.0, 0.0]
    # np.interp on (0, 0), (1/4, 0), (1/4, 1): at the tie 1/4 it takes the last point, 1; past the end, 1.
    assert result.sensitivities == {0.25: 1.0, 0.5: 1.0, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0, 8.0: 1.0}
    assert compute_froc([score_slide("n", np.array([[0.9, 1, 1]]), None)]).score is None


def official_froc(masks: dict, detections: dict) -> tuple[float, list[float]]:
    """A line-by-line transcription of Camelyon16's Evaluation_FROC.py on in-memory masks (level 5, 0.243 um/px)."""
    from scipy import ndimage as nd
    from skimage import measure

    resolution, level = 0.243, 5
    fps_all, tps_all, tumours = [], [], []
    for case, rows in detections.items():
        probs, xcorr, ycorr = [r[0] for r in rows], [int(r[1]) for r in rows], [int(r[2]) for r in rows]
        if case in masks:  # computeEvaluationMask, computeITCList
            distance = nd.distance_transform_edt(255 - masks[case] * 255)
            binary = distance < 75 / (resolution * pow(2, level) * 2)
            evaluation_mask = measure.label(nd.binary_fill_holes(binary), connectivity=2)
            properties = measure.regionprops(evaluation_mask)
            itc = [i + 1 for i in range(np.amax(evaluation_mask))
                   if properties[i].axis_major_length < 275 / (resolution * pow(2, level))]
        # compute_FP_TP_Probs(Ycorr, Xcorr, ...): the main script passes Y first, so the mask is indexed [y, x]
        max_label = np.amax(evaluation_mask) if case in masks else 0
        fp_probs, tp_probs = [], np.zeros((max_label,), dtype=np.float32)
        for i in range(len(xcorr)):
            hit = evaluation_mask[int(ycorr[i] / pow(2, level)), int(xcorr[i] / pow(2, level))] if case in masks else 0
            if hit == 0:
                fp_probs.append(probs[i])
            elif hit not in itc and probs[i] > tp_probs[hit - 1]:
                tp_probs[hit - 1] = probs[i]
        fps_all.append(fp_probs)
        tps_all.append(list(tp_probs))
        tumours.append(max_label - len(itc) if case in masks else 0)
    unlisted_fps = [item for sublist in fps_all for item in sublist]  # computeFROC
    unlisted_tps = [item for sublist in tps_all for item in sublist]
    total_fps, total_tps = [], []
    for threshold in sorted(set(unlisted_fps + unlisted_tps))[1:]:
        total_fps.append((np.asarray(unlisted_fps) >= threshold).sum())
        total_tps.append((np.asarray(unlisted_tps) >= threshold).sum())
    total_fps.append(0)
    total_tps.append(0)
    total_fps = np.asarray(total_fps) / float(len(detections))
    total_sensitivity = np.asarray(total_tps) / float(sum(tumours))
    read = np.interp([0.25, 0.5, 1, 2, 4, 8], total_fps[::-1], total_sensitivity[::-1])
    return float(np.mean(read)), list(read)


def test_froc_equals_a_transcription_of_the_official_script_on_random_cohorts():
    from scipy import ndimage

    generator = np.random.default_rng(3)
    for trial in range(3):
        masks, detections, slides = {}, {}, []
        for case in range(6):
            name = f"case_{case}"
            points = []
            if case < 3:  # tumour slides: squares of 8 um to 0.4 mm at level 5 (7.776 um pixels), ITCs among them
                mask = np.zeros((120, 160), dtype=np.uint8)
                for _ in range(generator.integers(2, 6)):
                    row, col, radius = generator.integers(5, 115), generator.integers(5, 155), generator.integers(0, 25)
                    mask[max(0, row - radius):row + radius + 1, max(0, col - radius):col + radius + 1] = 1
                masks[name] = mask
                blobs, count = ndimage.label(mask)
                for blob in range(1, count + 1):  # one detection on most blobs, ITCs included, at a random pixel
                    pixels = np.argwhere(blobs == blob)
                    row, col = pixels[generator.integers(len(pixels))]
                    if generator.random() < 0.8:
                        points.append((round(float(generator.random()), 6), col * 32 + 16, row * 32 + 16))
            for _ in range(generator.integers(0, 5)):  # false positives anywhere
                points.append((round(float(generator.random()), 6), int(generator.integers(0, 160 * 32)),
                               int(generator.integers(0, 120 * 32))))
            detections[name] = points
            evaluation = evaluation_mask(masks[name], 32, 0.243) if name in masks else None
            slides.append(score_slide(name, np.asarray(points, dtype=np.float64).reshape(-1, 3), evaluation))
        expected_score, expected_read = official_froc(masks, detections)
        result = compute_froc(slides)
        assert list(result.sensitivities.values()) == pytest.approx(expected_read), trial
        assert result.score == pytest.approx(expected_score)


def test_a_detection_outside_the_slide_or_malformed_is_refused():
    with pytest.raises(DataError, match="outside the slide"):
        score_slide("t", np.array([[0.9, 150, 20]]), hand_mask())
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        score_slide("t", np.array([[1.5, 20, 20]]), hand_mask())
    with pytest.raises(DataError, match="probability, x, y"):
        score_slide("t", np.array([[0.5, 20]]), hand_mask())


def test_detection_csv_is_the_challenge_format_and_reads_back(tmp_path):
    path = write_detections_csv(tmp_path / "tumor_001.csv", np.array([[0.91234567, 1200.0, 800.0], [0.5, 3, 4]]))
    assert path.read_text() == "0.912346,1200,800\n0.500000,3,4\n"  # no header: the official reader reads every line
    assert read_detections_csv(path).tolist() == [[0.912346, 1200, 800], [0.5, 3, 4]]


# ----------------------------------------------------------------------------------------------- detections


def test_components_give_one_detection_per_region_at_its_highest_cell():
    probability_map = np.full((10, 12), 0.1, dtype=np.float32)
    probability_map[2:4, 2:5] = 0.7
    probability_map[3, 4] = 0.95  # the region's peak
    probability_map[8, 10] = 0.6  # a second region of one cell
    probability_map[0, :] = np.nan  # glass
    options = DetectionOptions(method="components", threshold=0.5)
    points = detect(probability_map, cell_level0=100.0, mpp=0.5, options=options)
    # centre of cell (row 3, col 4) = (450, 350); of (8, 10) = (1050, 850); highest first
    assert points.tolist() == [[pytest.approx(0.95), 450, 350], [pytest.approx(0.6), 1050, 850]]


def test_local_maxima_merge_a_plateau_and_near_peaks_and_keep_far_ones():
    probability_map = np.zeros((20, 20))
    probability_map[4:6, 4:6] = 0.9  # a 2 x 2 plateau: one lesion
    probability_map[4, 7] = 0.8  # 3 cells (150 um) from the plateau's kept cell (4, 4): within 200 um, merged
    probability_map[9, 4] = 0.6  # 5 cells (250 um) from it: a lesion of its own
    probability_map[15, 15] = 0.7  # far: its own detection
    probability_map[10, 2] = 0.4  # below the threshold
    options = DetectionOptions(method="local_maxima", threshold=0.5, smoothing_um=0, min_distance_um=200)
    points = detect(probability_map, cell_level0=100.0, mpp=0.5, options=options)  # cells of 50 um
    assert points[:, 0].tolist() == [0.9, 0.7, 0.6]
    assert points[0, 1:].tolist() == [450, 450] and points[1, 1:].tolist() == [1550, 1550]
    smoothed = detect(probability_map, 100.0, 0.5, DetectionOptions(smoothing_um=50, threshold=0.3))
    assert 0.3 <= smoothed[0, 0] < 0.9  # smoothing lowers a small peak
    with pytest.raises(ConfigError, match="did you mean 'components'"):
        DetectionOptions(method="component")


# ----------------------------------------------------------------------------------------------- pixel level


def test_dice_and_iou_by_hand():
    predicted = np.zeros((6, 6), dtype=bool)
    predicted[1:3, 1:3] = True  # 4 cells
    truth = np.zeros((6, 6), dtype=np.uint8)
    truth[1:3, 2:5] = 1  # 6 cells, 2 shared
    result = overlap(predicted, truth)
    assert result["dice"] == pytest.approx(2 * 2 / (4 + 6)) and result["iou"] == pytest.approx(2 / 8)
    assert overlap(np.zeros((3, 3), bool), np.zeros((3, 3)))["dice"] is None  # clean normal slide: undefined
    assert overlap(predicted, np.zeros((6, 6)))["dice"] == 0.0  # a false positive on a normal slide


def test_tile_labels_follow_pcams_centre_rule():
    tumour = shapely.box(960, 960, 1440, 1440)  # cells 10..14 of 96 px
    rows, cols = np.meshgrid(np.arange(8, 17), np.arange(8, 17), indexing="ij")
    labels = tile_labels(rows.ravel(), cols.ravel(), 96, 96, tumour).reshape(rows.shape)
    assert labels.sum() == 25 and labels[2:7, 2:7].all()  # tiles 10..14; tile 9's centre third ends at 928
    corner = shapely.box(0, 0, 30, 30)  # covers only a tile's corner, not its centre 32 x 32 (32..64)
    assert tile_labels([0], [0], 96, 96, corner).tolist() == [0]
    assert tile_labels([0], [0], 96, 96, shapely.box(0, 0, 64, 64)).tolist() == [1]  # reaches into the centre
    assert tile_labels([0], [0], 96, 96, shapely.box(0, 0, 32, 96)).tolist() == [0]  # only touches its edge


# ----------------------------------------------------------------------------------------------- slide level


def test_map_features_by_hand():
    probability_map = np.full((10, 10), 0.2)
    probability_map[:, 0] = np.nan  # 90 tissue cells
    probability_map[2:4, 2:5] = 0.95  # 6 cells >= 0.9
    probability_map[7, 7] = 0.6  # 1 more cell >= 0.5 only
    features = map_features(probability_map, cell_um=100.0)  # cells of 0.01 mm2
    assert features["max_probability"] == 0.95
    assert features["regions@0.5"] == 2 and features["regions@0.9"] == 1
    assert features["tumour_fraction@0.5"] == pytest.approx(7 / 90)
    assert features["largest_area_mm2@0.9"] == pytest.approx(6 * 0.01)
    assert features["largest_mean_probability@0.5"] == pytest.approx(0.95)
    assert features["mean_probability@0.5"] == pytest.approx((6 * 0.95 + 0.6) / 7)
    assert features["largest_solidity@0.9"] == pytest.approx(1.0)
    # a 2 x 3 block: the major axis of its moments' ellipse is 4 * sqrt(var) = 4 * sqrt((3**2 - 1) / 12) cells
    assert features["largest_axis_um@0.9"] == pytest.approx(400 * np.sqrt(8 / 12))
    blank = map_features(np.full((4, 4), 0.1), cell_um=100.0)
    assert blank["regions@0.5"] == 0 and blank["largest_axis_um@0.5"] == 0


def test_thresholds_are_chosen_on_training_slides_only():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.65, 0.35, 0.7, 0.8, 0.9])
    result = cross_validate(np.zeros((8, 1)), labels, {"max": scores}, aggregator=None, folds=4, seed=0)["max"]
    for fold in np.unique(result.folds):
        test = result.folds == fold
        expected = ThresholdSelector("youden").fit(labels[~test], scores[~test]).threshold_
        assert np.all(result.thresholds[test] == expected)
    assert result.decisions.tolist() == (scores >= result.thresholds).astype(int).tolist()
    summary = summarise(result, labels, bootstrap=200, seed=0)
    assert summary["roc_auc"] == pytest.approx(15 / 16)  # normal 0.65 above tumour 0.35: 1 of 16 pairs wrong
    assert summary["tp"] + summary["fn"] == 4 and len(summary["thresholds"]) == 4
    wrong = wrong_slides(result, labels, [f"s{i}" for i in range(8)])
    assert {row["slide"] for row in wrong} == {f"s{i}" for i in np.flatnonzero(result.decisions != labels)}
    assert [row["margin"] for row in wrong] == sorted((row["margin"] for row in wrong), reverse=True)


def test_the_aggregator_is_never_scored_on_a_slide_it_was_fitted_on():
    generator = np.random.default_rng(0)
    labels = np.array([0, 1] * 15)
    noise = generator.random((30, 6))  # features that say nothing: out of fold, the forest must guess
    result = cross_validate(noise, labels, {}, aggregator="random_forest", folds=5, seed=0)["aggregator"]
    out_of_fold = summarise(result, labels, bootstrap=0)["roc_auc"]
    from sklearn.ensemble import RandomForestClassifier

    in_sample = RandomForestClassifier(random_state=0).fit(noise, labels).predict_proba(noise)[:, 1]
    assert summarise(type(result)("x", in_sample, result.thresholds, result.folds, result.decisions), labels,
                     bootstrap=0)["roc_auc"] == 1.0  # what fitting and scoring the same slides would report
    assert out_of_fold < 0.8
    informative = np.c_[labels + 0.1 * generator.random(30), noise]
    for aggregator in ("random_forest", "logistic"):  # thresholds from out-of-bag / inner-split training scores
        learned = cross_validate(informative, labels, {}, aggregator=aggregator, folds=5)["aggregator"]
        assert summarise(learned, labels, bootstrap=0)["roc_auc"] == 1.0
        assert np.mean(learned.decisions == labels) >= 0.9, aggregator  # Youden's highest threshold may miss one


def test_cross_validation_needs_two_slides_of_each_class():
    with pytest.raises(DataError, match="1 tumour and 3 normal"):
        cross_validate(np.zeros((4, 1)), [0, 0, 0, 1], {"max": [0.1, 0.2, 0.3, 0.9]})


# ----------------------------------------------------------------------------------------------- end to end

CELL = 96  # level-0 px per map cell (stride 96 at level 0, 0.972 um/px)
ROWS, COLS = 30, 40
LESION = (10, 15)  # map rows/cols 10..14 hold the tumour of tumour slides


def write_result(results: Path, slide: str, probability_map: np.ndarray) -> Path:
    """A ``slide predict`` result folder: summary.json, the maps and a thumbnail (stride = patch: 1 cell per tile)."""
    from PIL import Image

    folder = results / slide
    folder.mkdir(parents=True)
    grid = {"level": 0, "level_downsample": 1.0, "read_scale": 1.0, "model_mpp": 0.972, "patch_size": CELL,
            "stride": CELL, "rows": ROWS, "cols": COLS, "slide_width_level0": COLS * CELL,
            "slide_height_level0": ROWS * CELL, "mpp0": 0.972}
    summary = {"slide": f"{slide}.tif", "slide_name": f"{slide}.tif", "slide_dimensions": [COLS * CELL, ROWS * CELL],
               "slide_mpp": 0.972, "threshold": 0.5, "grid": grid}
    (folder / "summary.json").write_text(json.dumps(summary))
    np.save(folder / "probability_map.npy", probability_map.astype(np.float32))
    np.save(folder / "tile_probabilities.npy", probability_map.astype(np.float32))
    Image.fromarray(np.full((ROWS * 8, COLS * 8, 3), 230, dtype=np.uint8)).save(folder / "thumbnail.png")
    return folder


def write_tumour_geojson(path: Path, box: tuple[float, float, float, float]) -> Path:
    left, top, right, bottom = box
    ring = [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
               "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}}}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


@pytest.fixture
def cohort(tmp_path):
    """6 slides: t1, t2 found (0.95 on the lesion), t3 missed (0.45 at best), n1, n2 clean, n3 a 0.9 false alarm."""
    results, annotations = tmp_path / "results", tmp_path / "annotations"
    annotations.mkdir()
    lesion_box = (LESION[0] * CELL, LESION[0] * CELL, LESION[1] * CELL, LESION[1] * CELL)
    for slide in ("t1", "t2", "t3", "n1", "n2", "n3"):
        probability_map = np.full((ROWS, COLS), 0.1)
        probability_map[0, :] = np.nan  # a row of glass
        if slide in ("t1", "t2"):
            probability_map[LESION[0]:LESION[1], LESION[0]:LESION[1]] = 0.95
        if slide == "t3":
            probability_map[12, 12] = 0.45
        if slide == "n3":
            probability_map[20:22, 30:32] = 0.9
        write_result(results, slide, probability_map)
        if slide.startswith("t"):
            write_tumour_geojson(annotations / f"{slide}.geojson", lesion_box)
    reference = tmp_path / "reference.csv"
    reference.write_text("slide,label\nt1,tumor\nt2,Tumor\nt3,1\nn1,normal\nn2,0\nn3,Normal\n")
    return results, annotations, reference


def test_slide_evaluate_end_to_end_numbers_worked_out_by_hand(cohort, tmp_path, capsys):
    results, annotations, reference = cohort
    out = tmp_path / "evaluation"
    code = main(["slide", "evaluate", str(results), "--annotations", str(annotations), "--reference", str(reference),
                 "--out", str(out), "--detection", "components", "--bootstrap", "200", "--folds", "3"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    metrics = json.loads((out / "metrics.json").read_text())
    # Slide level, max: t1, t2 (0.95) beat every normal; t3 (0.45) beats n1, n2 (0.1) but not n3 (0.9): 8 of 9.
    scores = metrics["slide"]["scores"]
    assert scores["max"]["roc_auc"] == pytest.approx(8 / 9)
    # top-10 mean: t3 = (0.45 + 9 * 0.1) / 10 = 0.135 > 0.1 but < n3's (4 * 0.9 + 6 * 0.1) / 10 = 0.42: also 8 of 9.
    assert scores["top_k_mean"]["roc_auc"] == pytest.approx(8 / 9)
    assert set(scores) == {"max", "top_k_mean", "aggregator"} and scores["aggregator"]["folds"] == 3
    assert scores["max"]["roc_auc_ci"] is not None
    # Lesion level, components at 0.5: t1, t2 hit at 0.95, t3 missed, n3 one false positive at 0.9.
    #   thresholds 0.9 -> 1/6 FP per slide, 2/3 sensitivity; 0.95 -> 0, 2/3; every read point is past 1/6: 2/3.
    lesion = metrics["lesion"]
    assert lesion["froc"] == pytest.approx(2 / 3) and lesion["lesions"] == 3 and lesion["lesions_hit"] == 2
    assert lesion["false_positives"] == 1 and lesion["sensitivity_at"]["0.25"] == pytest.approx(2 / 3)
    # Pixel level: t1, t2 exact (Dice 1), t3 none (0): mean 2/3; pooled 2 * 50 / (54 + 75) with n3's 4 cells.
    pixel = metrics["pixel"]
    assert pixel["dice_mean"] == pytest.approx(2 / 3) and pixel["dice_pooled"] == pytest.approx(100 / 129)
    assert pixel["iou_mean"] == pytest.approx(2 / 3)
    assert pixel["tiles"] == 6 * (ROWS - 1) * COLS and pixel["tumour_tiles"] == 75
    from sklearn.metrics import roc_auc_score

    tile_labels_all, tile_scores = [], []
    for slide in ("t1", "t2", "t3", "n1", "n2", "n3"):
        tiles = np.load(results / slide / "tile_probabilities.npy")[1:]
        truth = np.zeros_like(tiles, dtype=int)
        if slide.startswith("t"):
            truth[LESION[0] - 1:LESION[1] - 1, LESION[0]:LESION[1]] = 1
        tile_labels_all.append(truth.ravel())
        tile_scores.append(tiles.ravel())
    assert pixel["tile_roc_auc"] == pytest.approx(roc_auc_score(np.concatenate(tile_labels_all),
                                                                np.concatenate(tile_scores)))
    # The table: wrong slides first, then the rest; the detections in the challenge's format.
    with open(out / "slides.csv", newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert {row["slide"] for row in rows} == {"t1", "t2", "t3", "n1", "n2", "n3"}
    first_right = next(index for index, row in enumerate(rows) if row["correct"] == "True")
    assert all(row["correct"] == "False" for row in rows[:first_right])
    assert {row["slide"]: row["lesions_hit"] for row in rows}["t3"] == "0"
    assert {row["slide"]: row["false_positives"] for row in rows}["n3"] == "1"
    assert (out / "detections" / "t1.csv").read_text() == "0.950000,1008,1008\n"  # cell (10, 10)'s centre
    assert (out / "detections" / "n1.csv").read_text() == ""
    for name in ("slide_roc.png", "froc.png", "report.html", "slides/t3.png"):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    assert "FROC" in page and "t3" in page and page.count("<figure>") == 2 + 6
    assert "FROC 0.667" in printed and "slide ROC AUC max" in printed
    assert not list(tmp_path.glob(".*.partial"))
    # A finished evaluation is never overwritten.
    again = main(["slide", "evaluate", str(results), "--annotations", str(annotations), "--reference",
                  str(reference), "--out", str(out)])
    assert again == 2 and "never overwritten" in capsys.readouterr().err


def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    error = capsys.readouterr().err.strip()
    assert code == 2, error
    assert len(error.splitlines()) == 1 and error.startswith("pcamlab: error:")
    return error


def test_bad_inputs_are_one_line_and_exit_2(cohort, tmp_path, capsys):
    results, annotations, reference = cohort
    out = tmp_path / "evaluation"

    def run(**changes) -> str:
        argv = {"results": str(results), "--annotations": str(annotations), "--reference": str(reference),
                "--out": str(out), **changes}
        return one_line_error(capsys, ["slide", "evaluate", argv.pop("results"), *(x for item in argv.items()
                                                                                      for x in item)])

    # a tumour slide whose annotation is missing
    (annotations / "t2.geojson").rename(tmp_path / "t2.geojson")
    assert "tumour slide 't2' has no annotation file" in run()
    (tmp_path / "t2.geojson").rename(annotations / "t2.geojson")
    # reference ids without a result folder
    extra = tmp_path / "extra.csv"
    extra.write_text(reference.read_text() + "t9,tumor\nn9,normal\n")
    assert "2 slide(s) of the reference have no result folder" in run(**{"--reference": str(extra)})
    # a cohort of one class
    single = tmp_path / "single.csv"
    single.write_text("t1,tumor\nt2,tumor\n")
    assert "only tumour slides" in run(**{"--reference": str(single)})
    # annotations that do not fit the slide (made for a larger one)
    write_tumour_geojson(annotations / "t1.geojson", (50_000, 50_000, 60_000, 60_000))
    assert "outside the slide" in run()
    write_tumour_geojson(annotations / "t1.geojson", (960, 960, 1440, 1440))
    # a normal slide whose annotation outlines tumour
    write_tumour_geojson(annotations / "n1.geojson", (960, 960, 1440, 1440))
    assert "'n1' is normal in the reference" in run()
    (annotations / "n1.geojson").unlink()
    # too few slides of a class for the cross-validation
    few = tmp_path / "few.csv"
    few.write_text("t1,tumor\nn1,normal\nn2,normal\n")
    assert "at least 2 slides of each class" in run(**{"--reference": str(few)})
    assert "--folds" in run(**{"--folds": "1"})
    assert not out.exists() and not list(tmp_path.glob(".*.partial"))


@pytest.mark.slow
def test_synthetic_cohort_predicted_then_evaluated(tmp_path, capsys):
    """The real chain: a synthetic cohort (slidesin) -> slide predict with the tiny test model -> slide evaluate."""
    from pcamlab.slide.cohort_synthetic import make_cohort

    cohort = make_cohort(tmp_path / "cohort", normal_slides=3, tumour_slides=3, split="valid", seed=0,
                         width=2304, height=1920, pool_size=400)
    model = Path(__file__).parent / "assets" / "slide_model.safetensors"
    results = tmp_path / "results"
    assert main(["slide", "predict", str(model), *map(str, cohort.slides), "--out", str(results)]) == 0
    out = tmp_path / "evaluation"
    code = main(["slide", "evaluate", str(results), "--annotations", str(cohort.annotations_dir), "--reference",
                 str(cohort.reference_csv), "--out", str(out), "--bootstrap", "100"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["slide"]["slides"] == 6 and metrics["lesion"]["lesions"] >= 1
    assert metrics["pixel"]["tile_roc_auc"] > 0.8  # the test model tells the cohort's tumour tiles apart
    assert metrics["slide"]["scores"]["max"]["roc_auc"] is not None
    assert len(list((out / "detections").glob("*.csv"))) == 6


# ---- tester 3's defects: ranges, seeds, two writers of one out_dir, mixed models ----


def test_smoothing_wider_than_the_map_is_the_same_gaussian_and_fast():
    import time

    from scipy import ndimage

    from pcamlab.slide.evaluation.detections import _smooth

    values = np.random.default_rng(0).random((30, 40))
    for sigma in (0.7, 9.9, 10.0, 100.0, 3000.0):  # below and above the map's size (kernel radius 4 sigma)
        assert np.allclose(_smooth(values, sigma), ndimage.gaussian_filter(values, sigma, mode="constant"),
                           rtol=1e-9, atol=1e-15)
    started = time.perf_counter()
    _smooth(values, 1e9 / 7.8)  # the tester's sigma: minutes and gigabytes before
    assert time.perf_counter() - started < 1.0


def test_every_evaluate_number_has_a_declared_range(cohort, tmp_path, capsys):
    results, annotations, reference = cohort
    out = tmp_path / "evaluation"
    base = ["slide", "evaluate", str(results), "--annotations", str(annotations), "--reference", str(reference),
            "--out", str(out)]
    for flag, value, shown in (("--smoothing-um", "1e9", "--smoothing-um must be a number in [0, 2000]"),
                               ("--min-distance-um", "1e12", "--min-distance-um must be a number in [0, 10000]"),
                               ("--detection-threshold", "1.5", "--detection-threshold must be a number in [0, 1]"),
                               ("--threshold", "2", "--threshold must be a number in [0, 1]"),
                               ("--folds", "1000", "--folds must be an integer in [2, 100]"),
                               ("--bootstrap", "1000000000", "--bootstrap must be an integer in [0, 100000]"),
                               ("--top-k", "0", "--top-k must be an integer in [1, 1000000]"),
                               ("--report-slides", "-1", "--report-slides must be an integer in [0, 10000]")):
        assert shown in one_line_error(capsys, [*base, flag, value]), flag
    with pytest.raises(ConfigError, match=r"seed must be an integer in \[0, 4294967295\]; got -1"):
        from pcamlab.slide.evaluation import evaluate_slides

        evaluate_slides(results, annotations, reference, out, seed=-1)
    for seed in ("-1", "99999999999"):  # argparse refuses it: exit 2, the range in the message
        with pytest.raises(SystemExit) as stopped:
            main([*base, "--seed", seed])
        assert stopped.value.code == 2 and "--seed: must be an integer in [0, 4294967295]" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".*partial"))


def test_every_seed_option_of_every_command_has_the_seed_range():
    import argparse

    from pcamlab.cli._common import seed_type
    from pcamlab.cli.main import build_parser

    found = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
            elif "--seed" in action.option_strings:
                found.append((path, action.type))

    walk(build_parser(), "pcamlab")
    assert len(found) >= 7 and all(kind is seed_type for _, kind in found), found
    assert seed_type("0") == 0 and seed_type(str(2**32 - 1)) == 2**32 - 1
    for text in ("-1", str(2**32), "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"\[0, 4294967295\]"):
            seed_type(text)
    from pcamlab.config import RunConfig
    from pcamlab.config_ranges import check_ranges

    config = RunConfig()
    config.train.seed = 2**32
    with pytest.raises(ConfigError, match="train.seed"):
        check_ranges(config)


def test_two_evaluations_into_one_out_dir_one_wins_the_other_is_refused(cohort, tmp_path, capsys):
    import subprocess

    from pcamlab.errors import RunFolderError
    from pcamlab.fileio import _host, staged_folder

    results, annotations, reference = cohort
    out = tmp_path / "evaluation"
    argv = ["slide", "evaluate", str(results), "--annotations", str(annotations), "--reference", str(reference),
            "--out", str(out), "--bootstrap", "0", "--folds", "2"]
    other = subprocess.Popen(["sleep", "30"])  # a live process that is writing out_dir now
    try:
        staging = tmp_path / f".evaluation.{other.pid}@{_host()}.abc123.partial"
        (staging / "detections").mkdir(parents=True)
        (staging / "detections" / "t1.csv").write_text("")
        error = one_line_error(capsys, argv)
        assert f"is being written by pid {other.pid}" in error and "--out" in error
        assert (staging / "detections" / "t1.csv").is_file()  # its files untouched
    finally:
        other.kill()
        other.wait()
    # the writer died: its staging folder is left over and removed; this run writes out_dir
    assert main(argv) == 0, capsys.readouterr().err
    assert not staging.exists() and (out / "metrics.json").is_file()
    # out_dir finished by another process while this one was writing: refused, nothing of this run kept
    late = tmp_path / "late"
    with pytest.raises(RunFolderError, match="already exists and holds files"):
        with staged_folder(late) as mine:
            (mine / "a.txt").write_text("mine")
            late.mkdir()
            (late / "a.txt").write_text("theirs")
    assert (late / "a.txt").read_text() == "theirs" and not list(tmp_path.glob(".late.*"))


def test_results_of_two_models_are_refused_unless_asked_for(cohort, tmp_path, capsys):
    results, annotations, reference = cohort
    for slide, model in (("t1", "a" * 64), ("t2", "a" * 64), ("t3", "b" * 64), ("n1", "a" * 64), ("n2", "b" * 64),
                         ("n3", "a" * 64)):
        summary = json.loads((results / slide / "summary.json").read_text())
        summary["run"] = {"model_sha256": model}
        (results / slide / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "evaluation"
    argv = ["slide", "evaluate", str(results), "--annotations", str(annotations), "--reference", str(reference),
            "--out", str(out), "--bootstrap", "0", "--folds", "2", "--seed", "7"]
    error = one_line_error(capsys, argv)
    assert "come from 2 different models" in error and "--mixed-models" in error and not out.exists()
    assert main([*argv, "--mixed-models"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted((row["model_sha256"], row["slides"]) for row in metrics["models"]) == [("a" * 64, 4), ("b" * 64, 2)]
    assert metrics["options"]["seed"] == 7 and metrics["options"]["folds"] == 2
    assert any("2 different models" in note for note in metrics["warnings"])


def write_tumour_asap(path: Path, box: tuple[float, float, float, float]) -> Path:
    left, top, right, bottom = box
    points = "".join(f'<Coordinate Order="{order}" X="{x}" Y="{y}"/>' for order, (x, y) in
                     enumerate([(left, top), (right, top), (right, bottom), (left, bottom)]))
    path.write_text('<?xml version="1.0"?><ASAP_Annotations><Annotations><Annotation Name="A" Type="Polygon" '
                    f'PartOfGroup="Tumor"><Coordinates>{points}</Coordinates></Annotation></Annotations>'
                    '<AnnotationGroups><Group Name="Tumor" PartOfGroup="None"/></AnnotationGroups></ASAP_Annotations>')
    return path


def test_annotation_notes_two_formats_that_disagree_and_files_of_no_slide(cohort, tmp_path, capsys):
    results, annotations, reference = cohort
    write_tumour_asap(annotations / "t1.xml", (0, 0, 480, 480))  # t1 again, elsewhere: the XML wins, noted
    write_tumour_asap(annotations / "t2.xml", (LESION[0] * CELL, LESION[0] * CELL, LESION[1] * CELL,
                                               LESION[1] * CELL))  # the same outline: no note
    write_tumour_geojson(annotations / "x9.geojson", (0, 0, 480, 480))  # a slide of no reference, no result
    out = tmp_path / "evaluation"
    assert main(["slide", "evaluate", str(results), "--annotations", str(annotations), "--reference", str(reference),
                 "--out", str(out), "--bootstrap", "0", "--folds", "2"]) == 0, capsys.readouterr().err
    warnings = json.loads((out / "metrics.json").read_text())["warnings"]
    assert any(note.startswith("t1: 't1.xml' and 't1.geojson' outline different tumour") for note in warnings), warnings
    assert not any(note.startswith("t2:") for note in warnings), warnings
    assert any("1 annotation file(s) name a slide in neither" in note and "x9" in note for note in warnings)
    for name in ("t3.geojson",):
        (annotations / name).unlink()
    error = one_line_error(capsys, ["slide", "evaluate", str(results), "--annotations", str(annotations),
                                    "--reference", str(reference), "--out", str(tmp_path / "e2")])
    assert "tumour slide 't3' has no annotation file" in error and "label it normal" not in error

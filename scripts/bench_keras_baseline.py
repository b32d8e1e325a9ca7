"""The course CNN in TF-Keras against pcamlab's ``baseline``, same CPU, same patches, same recipe.

Issue 13 asks for the course baseline to train at least 3x faster in pcamlab than in TF-Keras. This
script is the TF-Keras side, written the way the course notebooks train it: JPEGs decoded with Pillow
into a uint8 array, scaled to [0, 1], ``Conv2D(32, 3, relu, same) > MaxPool2D(4) > Conv2D(64, 3, relu,
same) > MaxPool2D(4) > Flatten > Dense(64, relu) > Dense(1, sigmoid)``, Adam 1e-3, binary
cross-entropy, batch 32, no augmentation, validation after every epoch. It prints one JSON line: the
whole process's wall time (from the interpreter's start: imports, decoding, training, validation) and
each epoch's training patches/s.

TensorFlow is NOT a pcamlab dependency; run this in a separate environment::

    python -m venv /tmp/tfvenv && /tmp/tfvenv/bin/pip install tensorflow-cpu==2.20.0 pillow
    python scripts/bench_keras_baseline.py --make-subset ../shared/data/pcam-jpg /tmp/pcam-4000
    /usr/bin/time -v /tmp/tfvenv/bin/python scripts/bench_keras_baseline.py /tmp/pcam-4000 --epochs 2
    /usr/bin/time -v pcamlab train --config configs/baseline.yaml --data /tmp/pcam-4000 \\
        --set train.epochs=2 --set train.patience=0 --out runs/keras-vs-pcamlab

``--make-subset`` (plain Python, no TensorFlow) links the first 2,000 training and 500 validation
patches of each class (sorted file names) into ``class folders`` both tools read.
"""

from __future__ import annotations

import time

START = time.perf_counter()  # as early as possible: imports count

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def make_subset(source: Path, target: Path, train_per_class: int = 2000, valid_per_class: int = 500) -> None:
    """Symlink ``train_per_class`` / ``valid_per_class`` sorted patches of each class into ``target``."""
    if target.exists():
        sys.exit(f"error: {target} exists; remove it or pick another folder")
    chosen = {}
    for split, count in (("train", train_per_class), ("valid", valid_per_class)):
        for label in ("0", "1"):
            folder = source / split / label
            if not folder.is_dir():
                sys.exit(f"error: {folder} does not exist; pass class folders {{train,valid}}/{{0,1}}/*.jpg")
            files = sorted(folder.glob("*.jpg"))[:count]
            if len(files) < count:
                sys.exit(f"error: {folder} has {len(files)} JPEGs; need {count}")
            chosen[split, label] = files
    for (split, label), files in chosen.items():  # every folder checked before anything is written
        folder = target / split / label
        folder.mkdir(parents=True)
        for path in files:
            (folder / path.name).symlink_to(path.resolve())
    print(f"wrote {target}: {2 * train_per_class} train and {2 * valid_per_class} valid patches (symlinks)")


def load(root: Path, split: str):
    """uint8 (N, 96, 96, 3) and float32 (N,) labels of a class-folder split, decoded with Pillow."""
    import numpy as np
    from PIL import Image

    files = [(path, int(label)) for label in ("0", "1") for path in sorted((root / split / label).glob("*.jpg"))]
    images = np.empty((len(files), 96, 96, 3), dtype=np.uint8)
    for index, (path, _) in enumerate(files):
        with Image.open(path) as image:
            images[index] = np.asarray(image.convert("RGB"))
    return images, np.array([label for _, label in files], dtype=np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="class folders {train,valid}/{0,1}/*.jpg")
    parser.add_argument("target", type=Path, nargs="?", help="with --make-subset: the folder to write")
    parser.add_argument("--make-subset", action="store_true", help="link a 4,000 + 1,000 patch subset of DATA")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=0, help="TensorFlow intra/inter-op threads (0 = its default)")
    args = parser.parse_args()
    if args.make_subset:
        if args.target is None:
            sys.exit("error: --make-subset needs a target folder: bench_keras_baseline.py --make-subset SOURCE TARGET")
        make_subset(args.data, args.target)
        return

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    from tensorflow import keras

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    imported = time.perf_counter()
    train_x, train_y = load(args.data, "train")
    valid_x, valid_y = load(args.data, "valid")
    train_x = train_x.astype(np.float32) / 255.0  # the course's rescale=1/255
    valid_x = valid_x.astype(np.float32) / 255.0
    decoded = time.perf_counter()

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((96, 96, 3)),
        keras.layers.Conv2D(32, 3, activation="relu", padding="same"),
        keras.layers.MaxPool2D(4),
        keras.layers.Conv2D(64, 3, activation="relu", padding="same"),
        keras.layers.MaxPool2D(4),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy",
                  metrics=[keras.metrics.AUC(name="auc")])

    class EpochClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.began = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.last = time.perf_counter()

        def on_test_begin(self, logs=None):  # validation starts: the training part of the epoch ended
            self.seconds.append(self.last - self.began)

    clock = EpochClock()
    history = model.fit(train_x, train_y, batch_size=args.batch_size, epochs=args.epochs, shuffle=True,
                        validation_data=(valid_x, valid_y), callbacks=[clock], verbose=2)
    end = time.perf_counter()
    print(json.dumps({
        "tool": f"tf-keras {tf.__version__} (keras {keras.__version__})",
        "train_patches": len(train_x), "valid_patches": len(valid_x), "epochs": args.epochs,
        "batch_size": args.batch_size,
        "wall_seconds_total": round(end - START, 2),
        "seconds_imports": round(imported - START, 2),
        "seconds_decoding": round(decoded - imported, 2),
        "train_patches_per_second_by_epoch": [round(len(train_x) / seconds, 1) for seconds in clock.seconds],
        "val_auc_by_epoch": [round(value, 4) for value in history.history["val_auc"]],
    }))


if __name__ == "__main__":
    main()

"""Trains activebeam's default model: a small Keras CNN on Fashion-MNIST's training set.

The model takes grey 28x28 frames as float32 pixel values in [0, 255] (shape ``(N, 28, 28, 1)``),
rescales them itself, and outputs softmax probabilities over Fashion-MNIST's 10 classes
(``(N, 10)``, float32). Its dense layer ``embedding`` (128-d, the penultimate layer) is the frame
embedding. Dropout layers before and after it make Monte-Carlo-dropout scores possible.

Data: Debian's ``dataset-fashion-mnist`` (Xiao, Rasul & Vollgraf 2017, MIT licence),
``/usr/share/datasets/fashion-mnist``. Everything is seeded, and the training runs on one
thread, so a rerun reproduces the committed ``transforms/score/models/fashion_mnist_cnn.keras``.

Run: ``.venv/bin/python -m models.train_fashion_mnist`` (about 2 minutes on 2 CPU cores).
"""
import argparse
import json
import os

from beam_pipelines.local.sample_media import (  # noqa: F401  (the data set, re-exported)
    CLASS_NAMES, FASHION_MNIST_DIR, load_split, read_idx)

SEED = 20261122
EPOCHS = 4
BATCH_SIZE = 128


def build_model(input_shape=(28, 28, 1), n_classes=10, filters=(32, 64), embedding_size=128):
    """The default model's architecture: two conv blocks, dropout, a dense ``embedding`` layer,
    dropout (so MC dropout works), softmax ``probabilities``. Input: grey pixels in [0, 255].

    The defaults are the bundled ``fashion_mnist_cnn.keras``; ``benchmarks.active_learning``
    trains narrower ones per round.
    """
    import keras
    from keras import layers
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Rescaling(1.0 / 255.0)(inputs)
    for n_filters in filters:
        x = layers.Conv2D(n_filters, 3, activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.25)(x)
    x = layers.Dense(embedding_size, activation="relu", name="embedding")(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="fashion_mnist_cnn")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "transforms", "score", "models", "fashion_mnist_cnn.keras"))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)

    os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")
    import tensorflow as tf
    import keras
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)
    keras.utils.set_random_seed(SEED)

    x_train, y_train = load_split("train")
    x_test, y_test = load_split("t10k")
    model = build_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train[..., None].astype("float32"), y_train, epochs=args.epochs,
              batch_size=BATCH_SIZE, shuffle=True, verbose=2)
    _, accuracy = model.evaluate(x_test[..., None].astype("float32"), y_test, verbose=0)
    # Save an uncompiled copy: the optimizer state would triple the file and is not needed.
    exported = build_model()
    exported.set_weights(model.get_weights())
    exported.save(args.output)
    print(json.dumps({"model": args.output, "test_accuracy": round(float(accuracy), 4)}))


if __name__ == "__main__":
    main()

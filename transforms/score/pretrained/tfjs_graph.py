"""A TensorFlow.js graph model (``model.json`` + weight shards) rebuilt as a TensorFlow graph.

TensorFlow.js's converter writes a frozen ``GraphDef`` as JSON (``modelTopology.node``: the
nodes in protobuf JSON form, constants without their values) and the constants' values in
binary shards listed by ``weightsManifest`` (name, shape, dtype, optional quantisation, in byte
order). :func:`load_graph_def` puts them back together as a ``tf.compat.v1.GraphDef`` with every
constant filled in, so TensorFlow alone (no ``tensorflowjs`` package, which pins an old
TensorFlow) can run the graph or convert it to TFLite (:func:`to_concrete_function`)::

    graph_def, signature = load_graph_def("models/nanodet.json")
    fn = to_concrete_function(graph_def, signature)
    outputs = fn(tf.zeros([1, 3, 416, 416]))      # dict: output name -> tensor

References
----------
TensorFlow.js converter, "Graph model format" (``tfjs-converter/python/tensorflowjs/
write_weights.py`` and ``read_weights.py``: manifest entries, float16 and uint8/uint16 affine
quantisation).
"""
import json
import os
from typing import Dict, List, NamedTuple, Tuple

import numpy as np

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "uint8": np.uint8,
           "float16": np.float16, "uint16": np.uint16, "int64": np.int64}
_TF_DTYPE_ENUM = {np.float32: 1, np.int32: 3, np.uint8: 4, np.int64: 9, np.bool_: 10,
                  np.float16: 19, np.uint16: 17}


class Signature(NamedTuple):
    """The graph's inputs and outputs: tensor names (``"input_1:0"``) and static shapes
    (``-1`` for an unknown dimension), in the order of the model JSON's ``signature``."""
    inputs: Tuple[Tuple[str, Tuple[int, ...]], ...]
    outputs: Tuple[Tuple[str, Tuple[int, ...]], ...]


def _shape(tensor_shape: dict) -> Tuple[int, ...]:
    return tuple(int(d.get("size", -1)) for d in tensor_shape.get("dim", ()))


def read_weights(manifest: List[dict], directory: str) -> Dict[str, np.ndarray]:
    """The weights of a TFJS ``weightsManifest``: name -> array of its original dtype.

    Parameters
    ----------
    manifest : list of dict
        ``[{"paths": [shard, ...], "weights": [{"name", "shape", "dtype", "quantization"?}]}]``.
    directory : str
        Folder of the shards.

    Returns
    -------
    dict of str to ndarray; float16-quantised weights come back as float32, affine
    ``uint8``/``uint16`` quantisation (``min``, ``scale``) is undone.

    Raises
    ------
    ValueError
        If the shards hold fewer bytes than the manifest declares, or a dtype is unknown.
    """
    out = {}
    for group in manifest:
        data = b"".join(open(os.path.join(directory, p), "rb").read() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            q = w.get("quantization")
            stored = np.dtype(_DTYPES[q["dtype"] if q else w["dtype"]])
            count = int(np.prod(w["shape"], dtype=np.int64))
            end = offset + count * stored.itemsize
            if end > len(data):
                raise ValueError(f"weight {w['name']}: the shards end at byte {len(data)}, need {end}")
            value = np.frombuffer(data, dtype=stored.newbyteorder("<"), count=count, offset=offset)
            offset = end
            if q and "scale" in q:
                value = value.astype(np.float32) * np.float32(q["scale"]) + np.float32(q["min"])
            out[w["name"]] = value.astype(_DTYPES[w["dtype"]]).reshape(w["shape"])
    return out


def load_graph_def(model_json: str):
    """The frozen ``GraphDef`` of a TFJS graph model, every ``Const`` holding its weight.

    Parameters
    ----------
    model_json : str
        Path of the model's JSON; its shards are read from the same folder.

    Returns
    -------
    (tf.compat.v1.GraphDef, Signature)

    Raises
    ------
    ValueError
        If the file is not a TFJS ``graph-model`` or a constant has no weight.
    """
    import tensorflow as tf
    from google.protobuf import json_format

    with open(model_json, encoding="utf-8") as f:
        model = json.load(f)
    if model.get("format") != "graph-model":
        raise ValueError(f"{model_json}: not a TensorFlow.js graph model (format {model.get('format')!r})")
    weights = read_weights(model["weightsManifest"], os.path.dirname(os.path.abspath(model_json)))
    graph_def = tf.compat.v1.GraphDef()
    for node in model["modelTopology"]["node"]:
        node_def = json_format.ParseDict(node, tf.compat.v1.NodeDef())
        if node_def.op == "Const":
            if node_def.name not in weights:
                raise ValueError(f"{model_json}: constant {node_def.name} has no weight in the manifest")
            value = weights[node_def.name]
            node_def.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(
                value, dtype=node_def.attr["dtype"].type, shape=value.shape))
        graph_def.node.append(node_def)
    sig = model.get("signature", {})
    signature = Signature(
        tuple((v["name"], _shape(v.get("tensorShape", {}))) for v in sig.get("inputs", {}).values()),
        tuple((v["name"], _shape(v.get("tensorShape", {}))) for v in sig.get("outputs", {}).values()))
    return graph_def, signature


def to_concrete_function(graph_def, signature: Signature):
    """A TensorFlow concrete function running ``graph_def``: positional inputs in
    ``signature.inputs`` order, a list of outputs in ``signature.outputs`` order."""
    import tensorflow as tf

    def _import():
        tf.compat.v1.import_graph_def(graph_def, name="")

    wrapped = tf.compat.v1.wrap_function(_import, [])
    graph = wrapped.graph
    return wrapped.prune([graph.get_tensor_by_name(n) for n, _ in signature.inputs],
                         [graph.get_tensor_by_name(n) for n, _ in signature.outputs])

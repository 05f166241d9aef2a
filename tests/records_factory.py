"""Small FrameRecords for tests of stages after the model (storage, selection)."""
import numpy as np

from schemas.records import FrameMetadata, FrameRecord, ModelVersion, make_frame_id
from transforms.score import uncertainty

TEST_MODEL = ModelVersion(name="test_model", version="0123456789abcdef", embedding_layer="embedding")


def frame_record(source_uri, frame_index=0, probabilities=(0.5, 0.3, 0.2), pixel_hash=None,
                 timestamp_s=None, frame_id=None):
    p = np.asarray(probabilities, dtype=np.float64)
    metadata = FrameMetadata(
        frame_id=frame_id or make_frame_id(source_uri, frame_index), source_uri=source_uri,
        frame_index=frame_index, timestamp_s=timestamp_s, width=28, height=28,
        media_type="image" if timestamp_s is None else "video",
        pixel_hash=pixel_hash or f"hash-{source_uri}-{frame_index}")
    return FrameRecord(
        frame=metadata, embedding=np.arange(4, dtype=np.float32) + frame_index,
        probabilities=p.astype(np.float32), predicted_class=int(p.argmax()),
        entropy=uncertainty.entropy(p), margin=uncertainty.margin(p),
        least_confidence=uncertainty.least_confidence(p), model=TEST_MODEL)


def clustered_records(n, seed=0, dim=16, classes=5):
    """``n`` FrameRecords with random probabilities and embeddings in 8 Gaussian clusters."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim)) * 4
    embeddings = (centres[rng.integers(8, size=n)] + rng.normal(size=(n, dim))).astype(np.float32)
    probabilities = rng.dirichlet(np.ones(classes) * 0.5, size=n)
    return [frame_record(f"file:///cam/{i:04d}.png", probabilities=p)._replace(embedding=e)
            for i, (p, e) in enumerate(zip(probabilities, embeddings))]

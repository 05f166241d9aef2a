"""Stage **Intake** (streaming job only): the arrivals of new files, before :mod:`transforms.decode`.

Public transforms (:mod:`.streaming`, Beam): :class:`ReadArrivals`, :class:`ParseNotifications`,
:class:`ClaimArrivals`, :class:`AttachEventTime`, :class:`AcknowledgeArrivals`,
:class:`ReplayArrivals` (read, claim, event times, acknowledgement); :mod:`.watch`: the local
runners' source (a watched folder or Pub/Sub as a ``TestStream`` service). Pure modules (no Beam;
enforced by ``//transforms/intake:pure_test``):

* :mod:`.notifications`: Cloud Storage notifications and watched files as arrivals.
* :mod:`.event_time`: a frame's capture time, by precedence (EXIF, container, notification, mtime).
* :mod:`.ledger`: the ``arrivals`` ledger in MongoDB (claims, completions), on the index stage's
  store client (:class:`transforms.index.mongodb_client.MongoUpserter`).
"""
from transforms._exports import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "streaming": ("ReadArrivals", "ParseNotifications", "ClaimArrivals", "AttachEventTime",
                  "AcknowledgeArrivals", "ReplayArrivals"),
    "notifications": ("parse_notification", "NotificationError"),
    "ledger": ("ArrivalLedger", "Claim"),
})

"""What the stages share: :mod:`.files` (local and remote files through Beam's ``FileSystems``),
:mod:`.outputs` (``candidates.jsonl``, ``dead_letter.jsonl``, ``summary.json``), :mod:`.redact`
(credentials out of URIs and messages, pure) and :mod:`.gcp_emulators` (local emulators, pure)."""

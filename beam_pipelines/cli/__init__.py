"""Command-line plumbing shared by the jobs: checks before a job starts (:mod:`.preflight`), exit
codes, signals and clean-up (:mod:`.shutdown`), the run's lineage in ``runs``
(:mod:`.run_record`) and progress lines on local runners (:mod:`.progress`)."""

"""Tools around the jobs: the Flex Template's metadata generator (:mod:`.dataflow_template`) and
a local streaming demonstration (:mod:`.stream_demo`)."""

"""What the jobs start on this machine: the processes helper every local service uses
(:mod:`.processes`), the embedded ``mongod`` (:mod:`.mongod`), Label Studio
(:mod:`.label_studio`), the Cloud Storage and Pub/Sub emulators (:mod:`.emulators`), local worker
processes (:mod:`.worker`), activebeam's home folder (:mod:`.home`) and the sample media
(:mod:`.sample_media`)."""

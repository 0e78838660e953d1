"""File safety shared by run folders, the teacher cache, checkpoints and exports: the ownership
rule (kdistill deletes or replaces only what a manifest proves it wrote) and file hashes
(:mod:`.ownership`), writes that never go through a link kdistill did not create
(:mod:`.writing`), fingerprints of the inputs a run reads (:mod:`.fingerprints`), folder locks
that die with their process (:mod:`.locks`), and where kdistill keeps its own caches
(:mod:`.locations`)."""

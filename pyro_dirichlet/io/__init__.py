"""Everything read from or written to disk: pruned models without pickle (:mod:`.serialization`,
:mod:`.spec_file`, :mod:`.spec_checks`), users' weights and factories (:mod:`.weights`,
:mod:`.factories`, :mod:`.user_code`), what a deployment needs (:mod:`.deployment`), atomic
writes (:mod:`.atomic`), files that are not what their name says (:mod:`.regular_files`) and
the cache folder (:mod:`.cache`).

Nothing here imports Pyro or ArviZ: loading a pruned model needs torch alone.
"""

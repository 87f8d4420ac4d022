"""Which channels each layer keeps: from scores and target widths (:mod:`.plan`), and the
per-layer widths that meet a global FLOPs or parameter budget (:mod:`.allocation`)."""

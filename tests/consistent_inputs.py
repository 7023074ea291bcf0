"""Consistent Self-Attention's node inputs at their defaults, for tests that call the node directly:
`dict(CSA_DEFAULTS, blocks="all", apply_probability="1")` names only what a test changes."""

CSA_DEFAULTS = dict(
    keep_rate_1_8=0.5,
    keep_rate_1_16=0.5,
    keep_rate_1_32=0.5,
    keep_rate_1_64=0.5,
    blocks="up",
    warmup_steps=1,
    start_percent=0.0,
    end_percent=1.0,
    apply_probability="0.7, 0.9@40",
    window=0,
    seed=0,
    strength=1.0,
)

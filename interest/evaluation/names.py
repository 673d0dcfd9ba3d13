"""Names of the protocols and methods (importable without numpy, for the command line)."""

LEAVE_LAST_OUT = "leave-last-out"
REPLAY = "replay"
PROTOCOLS = (LEAVE_LAST_OUT, REPLAY)
BASELINES = ("popularity", "itemknn", "ease")
PRODUCTION = ("content_mean", "content_decayed", "driftrec")
METHODS = BASELINES + PRODUCTION

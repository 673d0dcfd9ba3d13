"""Names of the protocols and methods (importable without numpy, for the command line)."""

LEAVE_LAST_OUT = "leave-last-out"
REPLAY = "replay"
PROTOCOLS = (LEAVE_LAST_OUT, REPLAY)
BASELINES = ("popularity", "itemknn", "ease")
PRODUCTION = ("content_mean", "content_decayed", "driftrec")
#: Ablations of driftrec's trained model (run only when asked for with --methods):
#: the learned item side with a fixed 1-day recency, then with the recency chosen on validation
#: but no content term and no correction network. `driftrec` itself adds both when they validate,
#: and the cold term and text-in weight (new items) when they validate; `driftrec_nocold` is
#: `driftrec` without the cold term, `driftrec_notextin` without the text-in weight,
#: `driftrec_noseq` without the transition term.
ABLATIONS = (
    "driftrec_1d",
    "driftrec_linear",
    "driftrec_nocold",
    "driftrec_notextin",
    "driftrec_noseq",
)
#: Overrides of `interest.train.TrainConfig` for each trained production method.
TRAIN_OVERRIDES: dict[str, dict[str, object]] = {
    "driftrec_1d": {
        "half_life_grid_s": (86_400.0,),
        "content_weight_grid": (0.0,),
        "cold_weight_grid": (0.0,),
        "text_in_weight_grid": (0.0,),
        "transition_weight_grid": (0.0,),
        "use_correction": False,
    },
    "driftrec_linear": {
        "content_weight_grid": (0.0,),
        "cold_weight_grid": (0.0,),
        "text_in_weight_grid": (0.0,),
        "transition_weight_grid": (0.0,),
        "use_correction": False,
    },
    "driftrec_nocold": {"cold_weight_grid": (0.0,)},
    "driftrec_notextin": {"text_in_weight_grid": (0.0,)},
    "driftrec_noseq": {"transition_weight_grid": (0.0,)},
    "driftrec": {},
}
METHODS = BASELINES + PRODUCTION + ABLATIONS
DEFAULT_METHODS = BASELINES + PRODUCTION

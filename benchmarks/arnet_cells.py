"""The cells of the ARNet precision sweep: shared by its command line (arnet_precision) and the sweep
(arnet_sweep), which must not import each other."""

ALPHAS = {"nncf-sq-off": -1.0, "nncf-sq-0.15": 0.15, "nncf-sq-0.3": 0.3, "nncf-sq-0.6": 0.6, "nncf-sq-0.95": 0.95}
#: measured first when the grid does not fit (the brief's most informative cells)
PRIORITY = ("transformer", "bf16", "weight-only", "dynamic", "reparam", "nncf-sq-off", "nncf-sq-0.15", "nncf-sq-0.3",
            "nncf-sq-0.6", "nncf-sq-0.95", "fp16", "old-default", "noise-floor")

"""Why the default pipeline trails Torch-Pruning on the small BN ResNet: ranking, allocation or fold.

At 50% FLOPs, on the protocol's data of :data:`benchmarks.versus_torch_pruning.REDUCED`,
each row crosses a channel ranking (the Dirichlet posterior mean, or L1-norm) with a
per-layer allocation (the Dirichlet budget allocation, or the same fraction of every site)
and with or without folding ``E[s]*C`` into the kept weights, and is scored right after
pruning and after the benchmark's calibration. Every row prunes the same switch sites
(the default coupling), so Torch-Pruning's widths are printed beside them for reference.

    OMP_NUM_THREADS=1 python -m benchmarks.versus_torch_pruning_diagnosis --fit-epochs 1 5
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from torch import nn

from benchmarks.small_resnet import load_or_train_small_resnet
from benchmarks.versus_torch_pruning import REDUCED, tp_prune_to_flops
from pyro_dirichlet import DirichletSwitches, fit
from pyro_dirichlet.planning.allocation import budget_counts, uniform_counts
from pyro_dirichlet.io.atomic import atomic_write_json
from pyro_dirichlet.repair.calibrate import CalibrationConfig, calibrate
from pyro_dirichlet.criteria import get_criterion
from pyro_dirichlet.infer.fit import FitConfig
from pyro_dirichlet.measure import accuracy, count_flops
from pyro_dirichlet.planning.plan import plan_keep
from pyro_dirichlet.criteria.posterior import posterior_mean
from pyro_dirichlet.pruning import prune_to_keep, switch_scales

__all__ = ["main"]

RESULTS = Path(__file__).parent / "results" / "versus_torch_pruning_diagnosis.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit-epochs", nargs="+", type=int, default=[1])
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    protocol = REDUCED
    network, data, _ = load_or_train_small_resnet()
    data = data.subset(train=protocol.train_images, validation=protocol.validation_images, test=protocol.test_images, seed=0)
    example = data.train.images[:2]
    calibration = CalibrationConfig(steps=protocol.calibration_steps, batchnorm_batches=protocol.calibration_batchnorm_batches,
                                    check_batches=protocol.calibration_check_batches)
    tp_network, _ = tp_prune_to_flops(network, "tp-magnitude", args.budget, example)
    result = {"budget": args.budget, "baseline_test": accuracy(network, data.test),
              "tp_magnitude_widths": {n: m.weight.shape[0] for n, m in tp_network.named_modules()
                                      if isinstance(m, (nn.Conv2d, nn.Linear))}, "fits": []}
    for epochs in args.fit_epochs:
        switches = DirichletSwitches(copy.deepcopy(network), example)
        posterior = fit(switches, data.train, FitConfig(seed=0, progress=False, epochs=epochs)).posterior(seed=0)
        means = posterior_mean(posterior)
        widths = {layer.name: layer.channels for layer in switches.layers}
        allocations = {"dirichlet": budget_counts(network, means, example, budget=args.budget, layers=switches.layers),
                       "uniform": uniform_counts(network, widths, example, budget=args.budget, layers=switches.layers)}
        rankings = {"dirichlet": means, "l1-norm": get_criterion("l1-norm")(network, switches.layers, data.train)}
        rows = []
        for ranking, allocation, fold in [("dirichlet", "dirichlet", True), ("dirichlet", "dirichlet", False),
                                          ("dirichlet", "uniform", True), ("l1-norm", "dirichlet", False),
                                          ("l1-norm", "uniform", False)]:
            keep = plan_keep(rankings[ranking], allocations[allocation])
            scales = switch_scales(means) if fold else None
            pruned = prune_to_keep(network, keep, example, scales=scales, layers=switches.layers).eval()
            calibrated = calibrate(pruned, data.train, example, calibration).network.eval()
            rows.append({"ranking": ranking, "allocation": allocation, "fold": fold,
                         "flops": count_flops(pruned, example) / count_flops(network, example),
                         "test_pruned": accuracy(pruned, data.test), "test_calibrated": accuracy(calibrated, data.test)})
            print(f"fit {epochs} epoch(s), {ranking} ranks, {allocation} allocation, fold {fold}: "
                  f"pruned {rows[-1]['test_pruned']:.3f}, calibrated {rows[-1]['test_calibrated']:.3f}", flush=True)
        result["fits"].append({"fit_epochs": epochs, "allocations": allocations, "rows": rows})
        atomic_write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

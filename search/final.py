"""The final report: the exported loss next to the hand-made reference, trained with the search's
settings on each training set and scored once on its test split, after everything was chosen."""
from __future__ import annotations

from pathlib import Path

from trainers.files import write_json

FINAL_REPORT = "final_report.json"


def final_pu_report(folder: Path, opts, log=print) -> dict:
    """Per data set: the best loss and PAN, test F1/AUC (seed and epochs of the search)."""
    from trainers.config import PUConfig
    from trainers.pu import load_tables, train_pu

    from search.tasks import training_sources

    o = opts.task_options
    pairs = list(zip(training_sources(opts), opts.test)) if opts.train else [(None, None)]
    if opts.train and not opts.test:
        log("no --test given: the best loss is not scored on held-out data")
        return {}
    report = {"datasets": []}
    for train_path, test_path in pairs:
        train, test = load_tables(train_path, test_path)
        entry = {"train": train_path or "<built-in>", "test": test_path or "<built-in>"}
        for label, loss in (("best", str(folder / "best_loss.json")), ("pan", "pan")):
            cfg = PUConfig(loss=loss, seed=opts.seed, epochs=opts.epochs, prior=o.prior, **o.labelling_fields())
            result = train_pu(cfg, train, test)
            entry[label] = {k: result.get(k) for k in ("val_fitness", "test_f1", "test_auc", "threshold", "status")}
            entry["validation"] = result["validation"]
        report["datasets"].append(entry)
        log(f"test split {entry['test']} (scored once, after the search): " + "  ".join(
            f"{k}: F1 {entry[k]['test_f1']:.4f} AUC {entry[k]['test_auc']:.4f}" for k in ("best", "pan")
            if entry[k].get("test_f1") is not None))
    write_json(folder / FINAL_REPORT, report)
    return report


def final_dpo_report(folder: Path, opts, cfg, log=print) -> dict:
    """Train the best loss and plain DPO with the search's settings, score both on the test pairs."""
    from trainers.data.pairs import read_pairs
    from trainers.dpo import default_pairs, train_dpo
    from trainers.losses.preference_taylor import PreferenceTaylorLoss

    if opts.train:
        train, test = read_pairs(opts.train[0]), read_pairs(opts.test[0]) if opts.test else None
    else:
        train, test = default_pairs(opts.seed)
    if test is None:
        log("no --test given: the best loss is not scored on held-out data")
        return {}
    report = {}
    for label, loss in (("best", PreferenceTaylorLoss.load(folder / "best_loss.json")), ("dpo", None)):
        result = train_dpo(cfg, train, test, loss=loss)
        report[label] = {"val_agreement": result["val_agreement"], "status": result["status"],
                         **{f"test_{k}": v for k, v in result.get("test", {}).items() if k in ("agreement", "agreement_lc", "brier")}}
    write_json(folder / FINAL_REPORT, report)
    log("test pairs (scored once, after the search): " + "  ".join(
        f"{k}: agreement {v['test_agreement']:.4f} (length-controlled {v['test_agreement_lc']:.4f})"
        for k, v in report.items() if v.get("test_agreement") is not None))
    return report

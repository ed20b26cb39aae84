"""Evaluation beyond top-1: few-shot linear probes on frozen features, reports, confusion plots.

features, labels = gather_features(*extract_features(model, loader), ctx)
fewshot_eval(train_x, train_y, test_x, test_y, shots=(5, 10), num_classes=K)
write_report(eval_result, classes, run_dir / "eval")
"""

from .features import extract_features, gather_features
from .fewshot import fewshot_accuracy, fewshot_eval
from .report import confusion_png, per_class_table, write_report

__all__ = [
    "confusion_png",
    "extract_features",
    "fewshot_accuracy",
    "fewshot_eval",
    "gather_features",
    "per_class_table",
    "write_report",
]

"""Text classification (``task: text_classification``, the default): labelled sentences or sentence
pairs from CSV/TSV/JSON(L)/Parquet files or the hub, an ``AutoModelForSequenceClassification``
teacher and student, accuracy, macro-F1 and agreement."""

from kdistill.tasks import register_task
from kdistill.tasks.text_classification.task import TextClassification

__all__ = ["TextClassification"]

register_task(TextClassification)

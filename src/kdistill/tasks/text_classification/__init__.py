"""Text classification (``task: text_classification``, the default): labelled sentences or sentence
pairs from CSV/TSV/JSON(L)/Parquet files or the hub, an ``AutoModelForSequenceClassification``
teacher and student, accuracy, macro-F1 and agreement. The task registers itself when :mod:`.task` is imported
(:func:`kdistill.tasks.get_task` does so the first time a config names it)."""
